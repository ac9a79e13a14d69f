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
:data:`MAX_MESSAGE_SIZE`.

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
        obj = _RecordUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise RemoteProtocolError(f"not a plain pickled log record: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise RemoteProtocolError("a log record must be a dict with string keys")
    _check_bounded(obj)
    return obj


def _check_bounded(obj: Any) -> None:
    # Iterative walk: a deep structure must not cost a RecursionError here,
    # and a graph of shared references must not cost 2**n steps.
    budget = MAX_NODES
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise RemoteProtocolError(f"log record holds more than {MAX_NODES} values")
        if isinstance(value, dict):
            children: Any = [*value.keys(), *value.values()]
        elif isinstance(value, list | tuple | set | frozenset):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH:
            raise RemoteProtocolError(f"log record nested deeper than {MAX_DEPTH}")
        if len(children) > budget:
            raise RemoteProtocolError(f"log record holds more than {MAX_NODES} values")
        stack.extend((child, depth + 1) for child in children)


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


def safe_message(msg: Any, args: Any) -> str:
    """Merge ``msg % args`` the way ``LogRecord.getMessage`` does, with bounds.

    A % width or precision beyond :data:`MAX_FORMAT_WIDTH` (or a ``*``) is not
    formatted: the message and a short repr of the arguments are kept
    instead.  The result is cut at :data:`MAX_MESSAGE_SIZE` characters.
    """
    text = msg if isinstance(msg, str) else _repr.repr(msg)
    if args:
        sizes: list[str] = []
        specs = sum(1 for _ in _spec_sizes(text, sizes))
        reasonable = all(size != "*" and int(size) <= MAX_FORMAT_WIDTH for size in sizes)
        if reasonable and specs:
            # Bound what formatting could build before building it: positional
            # arguments are used once each; a mapping's keys can repeat, so
            # every spec may print the widest value, padded to the widest width.
            widest = max((int(x) for x in sizes), default=0)
            if isinstance(args, dict):
                widest_arg = max((len(str(v)) for v in args.values()), default=0)
                bound = len(text) + specs * (widest + widest_arg)
            else:
                items = args if isinstance(args, tuple) else (args,)
                bound = len(text) + specs * widest + sum(len(str(a)) for a in items)
            reasonable = bound <= 2 * MAX_RECORD_SIZE
        merged = None
        if reasonable:
            try:
                merged = text % args
            except Exception:
                merged = None
        if merged is None:
            merged = f"{text} {_repr.repr(args)}"
        text = merged
    if len(text) > MAX_MESSAGE_SIZE:
        text = text[:MAX_MESSAGE_SIZE] + f"... [{len(text) - MAX_MESSAGE_SIZE} characters cut]"
    return text


def dict_to_record(d: dict[str, Any]) -> logging.LogRecord:
    """Rebuild a :class:`logging.LogRecord` from a received dict (``makeLogRecord``).

    Missing essentials get safe defaults so that formatters do not fail.
    """
    d.setdefault("name", "remote")
    if not isinstance(d["name"], str):
        d["name"] = _repr.repr(d["name"])
    args = d.get("args") if isinstance(d.get("args"), tuple | dict) else None
    # Merged here, bounded, so that no formatter downstream formats the
    # sender's message with the sender's arguments.
    d["msg"] = safe_message(d.get("msg", ""), args)
    d["args"] = None
    if not isinstance(d.get("levelno"), int):
        d["levelno"] = logging.INFO
    d.setdefault("levelname", logging.getLevelName(d["levelno"]))
    d["exc_info"] = None
    for key in ("exc_text", "stack_info"):
        value = d.get(key)
        if value is not None and not isinstance(value, str):
            d[key] = _repr.repr(value)
        elif isinstance(value, str) and len(value) > MAX_MESSAGE_SIZE:
            d[key] = value[:MAX_MESSAGE_SIZE] + "... [cut]"
    return logging.makeLogRecord(d)
