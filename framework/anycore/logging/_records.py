"""The stdlib's network wire format for log records, and a safe way to read it.

Owns the conversion between :class:`logging.LogRecord` and the plain dict the
stdlib's ``SocketHandler.makePickle`` sends (a 4-byte big-endian length, then
``pickle.dumps(record.__dict__)`` with the message already merged and the
traceback already formatted), and the *restricted* unpickler that reads it.

The stdlib's receiver example calls ``pickle.loads`` on whatever arrives,
which runs arbitrary code for anyone who can connect.  :func:`loads_record`
uses an :class:`pickle.Unpickler` whose ``find_class`` refuses every global,
so only plain containers and scalars (dict, list, tuple, str, bytes, int,
float, bool, None) can be built; the result must be a dict with string keys.
Records from the network are untrusted in two more ways, both bounded here:
a small pickle can describe a huge or deep structure (memo references make
``x = [x, x]`` forty times a graph with 2**40 paths: formatting it never
ends), so the rebuilt value is walked, iteratively, with a budget of visits
and a depth limit; and a small message can ask for a huge one (``"%0200000000d"
% 1``), so the receiver merges the message itself, refusing widths and
precisions beyond :data:`MAX_FORMAT_WIDTH` and capping the result at
:data:`MAX_MESSAGE_SIZE`.  What formatting would build is bounded before it
is built, by adding sizes along the value (:func:`_text_bound`): ``str()``
of a list holding one string ten thousand times is the 20 MB it avoids, and
``str()`` of an int past ``sys.get_int_max_str_digits()`` raises.  The
attributes a formatter uses get their types (numbers stay numbers, texts
become bounded strings), so no formatter downstream fails or builds a huge
string from a record.

CPython's C unpickler trusts two kinds of argument before reading what
follows (gh-115952, fixed only in newer releases): a memo index sizes its
memo table (``LONG_BINPUT 4000000`` in a 9-byte record costs 64 MB) and a
BINBYTES length is allocated up front.  :func:`_scan_opcodes` walks the
opcodes first, refusing a memo index or a length past the end of the
record and every opcode that builds anything but plain data; it costs about
what the unpickling does (the pure-Python unpickler, safe here, is 4x slower).

Rejected: JSON on the wire (the stdlib's receivers and senders speak pickle,
and interoperating with them is the point).
"""

from __future__ import annotations

import io
import logging
import pickle
import reprlib
import struct
from collections.abc import Iterator
from typing import Any

from ..errors import RemoteProtocolError

__all__ = [
    "MAX_ATTRIBUTE_SIZE",
    "MAX_DEPTH",
    "MAX_FORMAT_WIDTH",
    "MAX_MESSAGE_SIZE",
    "MAX_NODES",
    "MAX_RECORD_SIZE",
    "dict_to_record",
    "dumps_record",
    "frame_record",
    "loads_record",
    "record_to_dict",
]

MAX_RECORD_SIZE = 1 << 20
# A received record's value: at most this many visits of a container or
# scalar (shared references count each time they are reached), this deep.
MAX_NODES = 100_000
MAX_DEPTH = 32
# A received message: % widths and precisions up to this, at most this long.
MAX_FORMAT_WIDTH = 1_000
MAX_MESSAGE_SIZE = 64 * 1024
_LENGTH = struct.Struct(">L")
_repr = reprlib.Repr()
_repr.maxstring = 1_000
_repr.maxother = 1_000


def record_to_dict(
    record: logging.LogRecord, formatter: logging.Formatter | None = None
) -> dict[str, Any]:
    """The dict the stdlib's ``SocketHandler`` pickles for ``record``.

    The message is merged with its arguments (``args`` becomes ``None``) and
    an exception is formatted into ``exc_text`` (``exc_info`` becomes
    ``None``), so the dict holds only plain values.

    Args:
        record: the record to convert.
        formatter: used to format the traceback (default: a plain Formatter).

    Returns:
        A new dict; the record is not modified.
    """
    d = dict(record.__dict__)
    d["msg"] = record.getMessage()
    d["args"] = None
    if record.exc_info:
        if not record.exc_text:
            d["exc_text"] = (formatter or _default_formatter).formatException(record.exc_info)
        d["exc_info"] = None
    d.pop("message", None)
    return d


_default_formatter = logging.Formatter()


def dumps_record(record: logging.LogRecord) -> bytes:
    """Pickle ``record`` as the stdlib's ``SocketHandler.makePickle`` does (without the length)."""
    d = record_to_dict(record)
    try:
        return pickle.dumps(d, 1)
    except Exception:
        # An unpicklable value in an extra attribute: send its repr.
        return pickle.dumps({k: _plain(v) for k, v in d.items()}, 1)


def frame_record(record: logging.LogRecord) -> bytes:
    """Length prefix + pickled dict: one frame of the stdlib ``SocketHandler`` stream."""
    data = dumps_record(record)
    return _LENGTH.pack(len(data)) + data


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | bytes | int | float | bool):
        return value
    return repr(value)


# How _scan_opcodes skips each opcode's argument (see pickletools.opcodes):
# a fixed size >= 0, or one of these kinds; opcodes absent from the table
# (globals, REDUCE, BUILD, INST, OBJ, NEWOBJ, EXT*, PERSID, buffers) are refused.
_LINE, _LEN1, _LEN4, _LEN8, _STOP, _REFUSED = -1, -2, -3, -4, -5, -6
_LONG_BINPUT, _PUT = ord("r"), ord("p")
_GLOBALS = (ord("c"), ord("i"))  # GLOBAL and INST name theirs on two lines
_STACK_GLOBAL = 0x93
_ARGUMENT_KIND = [_REFUSED] * 256
for _codes, _kind in (
    ("N\x88\x89]ael)t\x85\x86\x87}dsu\x8f\x90\x910(12\x94", 0),
    ("Khq\x80", 1),
    ("M", 2),
    ("Jjr", 4),
    ("G\x95", 8),
    ("ILSVFgp", _LINE),
    ("\x8aU\x8cC", _LEN1),
    ("\x8bTBX", _LEN4),
    ("\x8e\x96\x8d", _LEN8),
    (".", _STOP),
):
    for _code in _codes:
        _ARGUMENT_KIND[ord(_code)] = _kind
_U4 = struct.Struct("<I").unpack_from
_U8 = struct.Struct("<Q").unpack_from


def _scan_opcodes(data: bytes) -> None:
    """Refuse a pickle that makes the C unpickler allocate beyond its size.

    Walks the opcodes up to the first STOP, as the unpickler will: a memo
    index or an argument length that points past the end of ``data`` is
    refused, as is any opcode that does not build plain data.
    """
    end = len(data)
    pos = 0
    kinds = _ARGUMENT_KIND
    while pos < end:
        op = data[pos]
        kind = kinds[op]
        pos += 1
        if kind >= 0:
            if op == _LONG_BINPUT and _U4(data, pos)[0] > end:
                raise RemoteProtocolError("log record's memo index is past its end")
            pos += kind
        elif kind == _LEN4:
            pos += 4 + _U4(data, pos)[0]
        elif kind == _LEN1:
            pos += 1 + data[pos]
        elif kind == _LINE:
            newline = data.find(b"\n", pos)
            if newline < 0:
                break
            if op == _PUT and not (data[pos:newline].isdigit() and int(data[pos:newline]) <= end):
                raise RemoteProtocolError("log record's memo index is past its end")
            pos = newline + 1
        elif kind == _LEN8:
            pos += 8 + _U8(data, pos)[0]
        elif kind == _STOP:
            return
        elif op in _GLOBALS:
            module, name, *_ = [*data[pos : pos + 400].split(b"\n", 2), b"", b""]
            what = f"global {module.decode('latin-1')}.{name.decode('latin-1')}"[:200]
            raise RemoteProtocolError(f"refusing to load {what} from a log record")
        elif op == _STACK_GLOBAL:
            raise RemoteProtocolError("refusing to load global (STACK_GLOBAL) from a log record")
        else:
            raise RemoteProtocolError(f"log record holds opcode {op:#04x}, which builds objects")
    raise RemoteProtocolError("log record is truncated")


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a log record")


def loads_record(data: bytes) -> dict[str, Any]:
    """Unpickle one record dict, refusing anything but plain data.

    Args:
        data: the pickled payload (without the length prefix).

    Returns:
        The record's attribute dict.

    Raises:
        RemoteProtocolError: the payload is not a pickled plain dict with
            string keys (the unpickler never imports or calls anything).
    """
    if len(data) > MAX_RECORD_SIZE:
        raise RemoteProtocolError(f"log record of {len(data)} bytes exceeds {MAX_RECORD_SIZE}")
    try:
        _scan_opcodes(data)
        obj = _RecordUnpickler(io.BytesIO(data)).load()
    except RemoteProtocolError:
        raise
    except Exception as exc:
        raise RemoteProtocolError(f"not a plain pickled log record: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise RemoteProtocolError("a log record must be a dict with string keys")
    _check_bounded(obj)
    return obj


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _check_bounded(obj: Any) -> None:
    # Iterative walk: a deep structure must not cost a RecursionError here,
    # and a graph of shared references must not cost 2**n steps.  Each
    # container counts itself and its items; only containers are walked.
    budget = MAX_NODES
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise RemoteProtocolError(f"log record nested deeper than {MAX_DEPTH}")
        children: Any = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        budget -= 1 + len(children)
        if budget < 0:
            raise RemoteProtocolError(f"log record holds more than {MAX_NODES} values")
        depth += 1
        stack.extend([(child, depth) for child in children if isinstance(child, _CONTAINERS)])


def _spec_sizes(text: str, sizes: list[str]) -> Iterator[None]:
    """Yield once per % spec in ``text``; append its widths and precisions
    (``"*"`` for a star) to ``sizes``.

    Scans as Python's % operator does - a mapping key may hold nested
    parentheses, ``%(a(b)c)5d`` - which a regular expression cannot follow.
    """
    i = 0
    n = len(text)
    while True:
        i = text.find("%", i)
        if i < 0 or i + 1 >= n:
            return
        i += 1
        if text[i] == "(":
            depth = 1
            i += 1
            while i < n and depth:
                if text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                i += 1
        while i < n and text[i] in "#0- +":
            i += 1
        for _part in ("width", "precision"):
            if i < n and text[i] == "*":
                sizes.append("*")
                i += 1
            else:
                start = i
                while i < n and text[i].isdigit():
                    i += 1
                if i > start:
                    sizes.append(text[start:i])
            if _part == "width" and i < n and text[i] == ".":
                i += 1
            else:
                break
        while i < n and text[i] in "hlL":
            i += 1
        if i < n and text[i] != "%":
            yield None
        i += 1  # the conversion character (or "%" of "%%")


def _text_bound(value: Any, limit: int) -> int:
    """At least ``len(str(value))`` and ``len(repr(value))``, or more than ``limit``.

    Adds sizes along the value without building any text, so shared
    references cost a visit each (at most ``MAX_NODES``, as loads_record
    allowed) and a huge int costs no ``str()``.  Values of other types than
    the unpickler builds count as over the limit.
    """
    total = 0
    visits = MAX_NODES
    stack = [value]
    while stack:
        item = stack.pop()
        visits -= 1
        if visits < 0 or total > limit:
            return limit + 1
        if isinstance(item, str):
            # repr escapes a non-printable character in at most 10 ("\U000e0000").
            total += 2 + (len(item) if item.isprintable() else 10 * len(item))
        elif isinstance(item, bytes | bytearray):
            total += 14 + 4 * len(item)
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += 2 + item.bit_length() // 3  # octal digits, the most of %d %o %x
        elif isinstance(item, float):
            total += 320  # "%f" % 1e308
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 13 + 2 * len(item)  # "frozenset({" ... "})"
            stack.extend(item)
        else:
            return limit + 1
    return total


def safe_message(msg: Any, args: Any) -> str:
    """Merge ``msg % args`` the way ``LogRecord.getMessage`` does, with bounds.

    A % width or precision beyond :data:`MAX_FORMAT_WIDTH` (or a ``*``) is not
    formatted: the message and a short repr of the arguments are kept
    instead.  The result is cut at :data:`MAX_MESSAGE_SIZE` characters.
    """
    text = msg if isinstance(msg, str) else _short_repr(msg)
    if args:
        sizes: list[str] = []
        specs = sum(1 for _ in _spec_sizes(text, sizes))
        reasonable = all(size != "*" and int(size) <= MAX_FORMAT_WIDTH for size in sizes)
        if reasonable and specs:
            # Bound what formatting could build before building it: positional
            # arguments are used once each; a mapping's keys can repeat, so
            # every spec may print the widest value, padded to the widest width.
            widest = max((int(x) for x in sizes), default=0)
            limit = 2 * MAX_RECORD_SIZE
            if isinstance(args, dict):
                widest_arg = max((_text_bound(v, limit) for v in args.values()), default=0)
                bound = len(text) + specs * (widest + widest_arg)
            else:
                items = args if isinstance(args, tuple) else (args,)
                bound = len(text) + specs * widest + _text_bound(items, limit)
            reasonable = bound <= 2 * MAX_RECORD_SIZE
        merged = None
        if reasonable:
            try:
                merged = text % args
            except Exception:
                merged = None
        if merged is None:
            merged = f"{text} {_short_repr(args)}"
        text = merged
    if len(text) > MAX_MESSAGE_SIZE:
        text = text[:MAX_MESSAGE_SIZE] + f"... [{len(text) - MAX_MESSAGE_SIZE} characters cut]"
    return text


def _short_repr(value: Any) -> str:
    try:
        return _repr.repr(value)
    except Exception:  # an int past sys.get_int_max_str_digits(), at any depth
        return f"<{type(value).__name__} too large to print>"


# The number attributes and the values formatters can take: "%(msecs)03d"
# raises on NaN and infinities, time.localtime and datetime on a "created"
# past the year 9999.
_NUMBERS: dict[str, tuple[float, float]] = {
    "created": (0.0, 253_402_300_799.0),
    "msecs": (-1e15, 1e15),
    "relativeCreated": (-1e15, 1e15),
    "lineno": (-(2**63), 2**63),
    "process": (-(2**63), 2**63),
    "thread": (-(2**63), 2**63),
}
_FLOATS = {"created", "msecs", "relativeCreated"}
_TEXTS = (
    "name",
    "levelname",
    "pathname",
    "filename",
    "module",
    "funcName",
    "processName",
    "threadName",
    "taskName",
)
_OPTIONAL_TEXTS = ("processName", "threadName", "taskName")
_SET_HERE = {"msg", "args", "levelno", "exc_info", "exc_text", "stack_info"}
_STANDARD = _SET_HERE | set(_NUMBERS) | set(_TEXTS)
_SMALL_SCALARS = (bool, float)  # (their text is short; a str or an int may not be)
MAX_ATTRIBUTE_SIZE = 4_096  # a path or a name (PATH_MAX)


def _as_text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else _short_repr(value)
    return text if len(text) <= limit else text[:limit] + "... [cut]"


def dict_to_record(d: dict[str, Any]) -> logging.LogRecord:
    """Rebuild a :class:`logging.LogRecord` from a received dict (``makeLogRecord``).

    Missing essentials get safe defaults so that formatters do not fail:
    the message is merged here (:func:`safe_message`); a number attribute
    of another type is dropped (the record's own value stays); a text
    attribute that is not a string becomes a short repr, and one longer
    than :data:`MAX_ATTRIBUTE_SIZE` is cut; an extra attribute whose text
    could be larger than :data:`MAX_MESSAGE_SIZE` becomes a short repr.
    """
    d.setdefault("name", "remote")
    args = d.get("args") if isinstance(d.get("args"), tuple | dict) else None
    # Merged here, bounded, so that no formatter downstream formats the
    # sender's message with the sender's arguments.
    d["msg"] = safe_message(d.get("msg", ""), args)
    d["args"] = None
    levelno = d.get("levelno")
    if not (isinstance(levelno, int) and -(2**63) <= levelno <= 2**63):
        d["levelno"] = logging.INFO
    d.setdefault("levelname", logging.getLevelName(d["levelno"]))
    d["exc_info"] = None
    for key in ("exc_text", "stack_info"):
        if d.get(key) is not None:
            d[key] = _as_text(d[key], MAX_MESSAGE_SIZE)
    for key, (low, high) in _NUMBERS.items():
        if key not in d:
            continue
        value = d[key]
        if value is None and key in ("process", "thread"):
            continue  # logging.logProcesses / logThreads off
        number = isinstance(value, int) or (key in _FLOATS and isinstance(value, float))
        if number and low <= value <= high:  # (NaN fails it; a huge int compares exactly)
            continue
        del d[key]
    for key in _TEXTS:
        value = d.setdefault(key, None if key in _OPTIONAL_TEXTS else "")
        if value is None and key in _OPTIONAL_TEXTS:
            continue
        if not (isinstance(value, str) and len(value) <= MAX_ATTRIBUTE_SIZE):
            d[key] = _as_text(value, MAX_ATTRIBUTE_SIZE)
    for key, value in d.items():
        if value is None or key in _STANDARD or type(value) in _SMALL_SCALARS:
            continue
        if _text_bound(value, MAX_MESSAGE_SIZE) > MAX_MESSAGE_SIZE:
            d[key] = _as_text(value, MAX_MESSAGE_SIZE)
    return logging.makeLogRecord(d)
