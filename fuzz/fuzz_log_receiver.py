"""atheris harness: the log-record receiver's decoding (anycore.logging.LogReceiver).

What a peer of ``LogReceiver`` controls is a byte stream (TCP, Unix) or
datagrams (UDP) of length-prefixed pickled dicts.  Byte 0 of the input picks
the mode and the receiver's ``max_record_size``:

* stream: the rest is a byte stream, fed to the receiver's stream protocol
  in reads cut by byte 1;
* datagram: the rest is one datagram;
* structured: the rest is a little program (:func:`build`) that builds a
  record dict of plain values - long strings, big ints, lists of shared
  references, cycles, odd types for the standard attributes - which is
  pickled and sent as one frame.  Random bytes rarely make a pickle that
  unpickles at all; this mode reaches the record rebuilding and the message
  merge.

Known bugs (tests/test_fuzz.py, the ``xfail`` tests named in
:data:`KNOWN_BUGS`) are recognised by :func:`known_bug` and their inputs
skipped, so that fuzzing goes on finding new ones; set
``ANYCORE_FUZZ_KNOWN=report`` to have them reported as crashes instead.
Once a fix lands, its entry goes (the xfail test turns into an XPASS first).

Properties: nothing escapes the receiver (the protocol's ``data_received``
and ``datagram_received``); every complete frame is counted once, received
or rejected, and an oversized header stops the stream; every record handed
over has a ``str`` message within ``MAX_MESSAGE_SIZE`` and formats with a
formatter that uses every standard attribute; and handling one input costs
bounded memory (see ``MEMORY``).
"""

from __future__ import annotations

import atexit
import io
import logging
import math
import os
import pickle
import random
import resource
import struct
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from _harness import MemoryBound, Reader, instrumented, main

with instrumented():
    from anycore.logging import LogReceiver
    from anycore.logging._receiver import (  # the protocols a peer talks to
        _DatagramProtocol,
        _StreamProtocol,
    )
    from anycore.logging._records import (
        MAX_DEPTH,
        MAX_MESSAGE_SIZE,
        MAX_NODES,
        MAX_RECORD_SIZE,
    )

LIMITS = [64, 4096, MAX_RECORD_SIZE]
# Unpickling builds objects of ~60 bytes from 1-byte opcodes, up to the
# receiver's node budget; merging may build up to 2 * MAX_RECORD_SIZE
# characters (4 bytes each) before the cut.  Anything a small input makes
# beyond this is an amplification.
MEMORY = MemoryBound(per_byte=128, fixed=16 * 1024 * 1024)
_LENGTH = struct.Struct(">L")

# Every standard attribute a formatter may use.
FORMATTER = logging.Formatter(
    "%(asctime)s %(created)f %(msecs)03d %(relativeCreated)d %(name)s %(levelname)s "
    "%(levelno)d %(pathname)s %(filename)s %(module)s %(funcName)s %(lineno)d "
    "%(process)s %(processName)s %(thread)s %(threadName)s %(message)s"
    + (" %(taskName)s" if sys.version_info >= (3, 12) else "")
)
PLAIN = logging.Formatter()


class _Discard(logging.Handler):
    """Formats the receiver's own warnings (they quote the peer) and drops them."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)  # not caught: failing to format our own warning is a bug too


_own = logging.getLogger("anycore.logging.receiver")
_own.propagate = False
_own.addHandler(_Discard())


class _Transport:
    """What the stream protocol uses of its transport."""

    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


# -- known bugs --------------------------------------------------------------------------

KNOWN_BUGS = {
    "memo": "test_loads_record_huge_memo_index_or_bytes_length_is_refused_cheaply",
    "digits": "test_record_with_an_int_past_the_str_digit_limit_is_read",
    "shared": "test_shared_references_in_args_do_not_build_the_huge_str",
    "types": "test_received_record_with_odd_attribute_types_formats (and _text_attributes_)",
}


class KnownBug(Exception):
    """An input that hit the known bug ``args[0]`` (raised by the checks)."""


SKIP_KNOWN = os.environ.get("ANYCORE_FUZZ_KNOWN", "skip") != "report"
skipped: dict[str, int] = dict.fromkeys(KNOWN_BUGS, 0)


class _CUnpickler(pickle.Unpickler):
    """The unpickler loads_record uses: the C one, refusing every global."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError("no globals")


def _str_size(value: Any, budget: list[int], depth: int = 0) -> int:
    """len(str(value)) (depth 0) or len(repr(value)), computed without building it."""
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        budget[0] = -1
        return 0  # too many paths or too deep: loads_record refuses the record first
    if isinstance(value, str) and not depth:
        return len(value)
    if isinstance(value, dict):
        return 2 + sum(
            _str_size(k, budget, depth + 1) + _str_size(v, budget, depth + 1) + 4
            for k, v in value.items()
        )
    if isinstance(value, list | tuple | set | frozenset):
        return 3 + sum(_str_size(v, budget, depth + 1) + 2 for v in value)
    if isinstance(value, int) and abs(value).bit_length() > 14_000:
        return 0  # str() raises: the "digits" bug, seen as it escapes
    return len(repr(value))


@contextmanager
def _address_space_cap(extra: int) -> Iterator[None]:
    """Let the process map at most ``extra`` more bytes in the block (then MemoryError)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def known_bug(payload: bytes) -> str | None:
    """The known bug ``payload`` (one record) triggers, if any (see KNOWN_BUGS).

    The payload is first unpickled as loads_record does (the C unpickler,
    no globals), with at most 256 MB more address space: what the C
    unpickler allocates beyond 8 MB (or fails to) is the "memo" bug.
    """
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        with _address_space_cap(256 << 20):
            d = _CUnpickler(io.BytesIO(payload)).load()
    except MemoryError:
        return "memo"
    except Exception:
        d = None
    if tracemalloc.get_traced_memory()[1] - base > 8 << 20:
        return "memo"
    if not isinstance(d, dict):
        return None
    args = d.get("args")
    if not isinstance(args, tuple | dict) or not args:
        return None
    budget = [MAX_NODES + 1]
    values = args.values() if isinstance(args, dict) else args
    sizes = [_str_size(v, budget) for v in values]
    if budget[0] >= 0 and max(sizes) > 2 * MAX_RECORD_SIZE:
        return "shared"  # safe_message's bound builds str() of each argument
    return None


def _skip(bug: str | None) -> bool:
    if bug is None or not SKIP_KNOWN:
        return False
    skipped[bug] += 1
    return True


def _payloads(stream: bytes, limit: int) -> list[bytes]:
    pos, out = 0, []
    while len(stream) - pos >= 4:
        (size,) = _LENGTH.unpack_from(stream, pos)
        if size > limit or len(stream) - pos - 4 < size:
            break
        out.append(stream[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


_TEXTS = ("name", "levelname", "pathname", "filename", "module", "funcName")
_OPTIONAL_TEXTS = ("processName", "threadName", "taskName", "exc_text", "stack_info")
_NUMBERS = ("created", "msecs", "relativeCreated", "lineno", "levelno")


def check_records(records: list[logging.LogRecord]) -> None:
    for record in records:
        message = record.getMessage()
        if not isinstance(message, str) or len(message) > MAX_MESSAGE_SIZE + 64:
            raise AssertionError(f"message of {len(message)} characters")
        odd = [k for k in _TEXTS if not isinstance(getattr(record, k, ""), str)]
        odd += [k for k in _OPTIONAL_TEXTS if not isinstance(getattr(record, k, ""), str | None)]
        odd += [k for k in _NUMBERS if not isinstance(getattr(record, k, 0), int | float)]
        odd += [k for k in ("process", "thread") if not isinstance(getattr(record, k), int | None)]
        if odd:  # str() of a graph of shared references could be huge, "%d" % "x" fails
            raise KnownBug("types", odd)
        FORMATTER.format(record)
        PLAIN.format(record)


def frames_in(stream: bytes, limit: int) -> tuple[int, bool]:
    """How many complete frames ``stream`` holds before an oversized header, and
    whether there is one."""
    pos = count = 0
    while len(stream) - pos >= 4:
        (size,) = _LENGTH.unpack_from(stream, pos)
        if size > limit:
            return count, True
        if len(stream) - pos - 4 < size:
            break
        pos += 4 + size
        count += 1
    return count, False


def feed_stream(stream: bytes, limit: int, seed: int) -> None:
    records: list[logging.LogRecord] = []
    receiver = LogReceiver(records.append, max_record_size=limit)
    protocol = _StreamProtocol(receiver)
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    rng = random.Random(seed)
    pos = 0
    while pos < len(stream) and not transport.aborted:
        n = len(stream) if seed == 0 else rng.randint(1, 64)
        protocol.data_received(stream[pos : pos + n])
        pos += n
    protocol.connection_lost(None)
    expected, oversized = frames_in(stream[:pos], limit)
    if transport.aborted != oversized:
        raise AssertionError(f"aborted={transport.aborted}, an oversized header: {oversized}")
    counted = receiver.received + receiver.rejected - (1 if oversized else 0)
    if counted != expected or len(records) != receiver.received:
        raise AssertionError(
            f"{expected} frames, {receiver.received} received, {receiver.rejected} rejected"
        )
    check_records(records)


def feed_datagram(payload: bytes, limit: int) -> None:
    records: list[logging.LogRecord] = []
    receiver = LogReceiver(records.append, max_record_size=limit)
    _DatagramProtocol(receiver).datagram_received(payload, ("127.0.0.1", 9))
    if receiver.received + receiver.rejected != 1 or len(records) != receiver.received:
        raise AssertionError("a datagram was not counted once")
    check_records(records)


# -- the structured mode ---------------------------------------------------------------

_CHARS = ["a", "%", "(", ")", "\x00", "\x7f", "\u00e9", "\u20ac", "\U0001f600", "\ud800", " "]
_ATTRS = [
    "name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
    "exc_info", "exc_text", "stack_info", "lineno", "funcName", "created", "msecs",
    "relativeCreated", "thread", "threadName", "processName", "process", "taskName",
]  # fmt: skip
_FORMATS = [
    "%s", "%r", "%a", "%d", "%x", "%f", "%-10s", "%.5s", "%(k0)s", "%(k1)r", "%s %s",
    "%%", "%c", "%*d", "%(k0)1000s", "%s" * 40, "%(k0)s" * 40,
]  # fmt: skip


def build(reader: Reader) -> dict[str, Any]:
    """A record dict from a little program: each op adds a value to a pool."""
    pool: list[Any] = [None]

    def pick() -> Any:
        return pool[reader.byte() % len(pool)]

    def count() -> int:
        return reader.byte() | (reader.byte() << 8)

    while reader.left and len(pool) < 64:
        op = reader.byte() % 12
        if op == 0:
            pool.append(_CHARS[reader.byte() % len(_CHARS)] * count())
        elif op == 1:
            pool.append(reader.take(reader.byte()).decode("latin-1"))
        elif op == 2:
            pool.append(bytes([reader.byte()]) * (count() % 8192))
        elif op == 3:  # up to 2**65535: far past str()'s 4,300 digits
            sign = -1 if reader.byte() & 1 else 1
            pool.append(sign * ((reader.byte() + 1) << count()))
        elif op == 4:
            (value,) = struct.unpack("<d", reader.take(8).ljust(8, b"\0"))
            pool.append(value if reader.byte() & 1 else math.copysign(math.inf, value))
        elif op == 5:
            pool.append([pick() for _ in range(reader.byte() % 8)])
        elif op == 6:  # one value shared many times
            pool.append([pick()] * (count() % 1024))
        elif op == 7:
            pool.append(tuple(pick() for _ in range(reader.byte() % 8)))
        elif op == 8:
            pool.append({f"k{i}": pick() for i in range(reader.byte() % 8)})
        elif op == 9:
            cycle: list[Any] = [pick()]
            cycle.append(cycle)
            pool.append(cycle)
        elif op == 10:
            pool.append([True, False, 0, -1, 2**63][reader.byte() % 5])
        else:
            pool.append(pick())
    record: dict[str, Any] = {"name": "fuzz", "levelno": logging.WARNING}
    how = reader.byte() % 3
    record["msg"] = _FORMATS[reader.byte() % len(_FORMATS)] if how == 0 else pick()
    args = reader.byte() % 4
    if args == 0:
        record["args"] = tuple(pick() for _ in range(reader.byte() % 4))
    elif args == 1:
        record["args"] = {"k0": pick(), "k1": pick()}
    elif args == 2:
        record["args"] = pick()
    for _ in range(reader.byte() % 4):
        record[_ATTRS[reader.byte() % len(_ATTRS)]] = pick()
    return record


def _run_guarded(payloads: list[bytes], run: Any, data: bytes) -> None:
    """``run()`` under the memory bound, unless a payload hits a known bug."""
    for payload in payloads:
        if _skip(known_bug(payload)):
            return
    try:
        with MEMORY.check(data):
            run()
    except KnownBug as exc:
        if _skip(exc.args[0]):
            return
        raise
    except ValueError as exc:
        if "integer string conversion" in str(exc) and _skip("digits"):
            return
        raise


def test_one_input(data: bytes) -> None:
    reader = Reader(data)
    head = reader.byte()
    mode, limit = head % 3, LIMITS[(head // 3) % len(LIMITS)]
    if mode == 0:
        seed = reader.byte()
        stream = reader.rest()
        _run_guarded(_payloads(stream, limit), lambda: feed_stream(stream, limit, seed), stream)
    elif mode == 1:
        payload = reader.rest()
        inner = payload[4:] if len(payload) >= 4 else payload
        _run_guarded([payload, inner], lambda: feed_datagram(payload, limit), payload)
    else:
        protocol = reader.byte() % (pickle.HIGHEST_PROTOCOL + 1)
        try:
            payload = pickle.dumps(build(reader), protocol)
        except (RecursionError, ValueError):  # the harness's own value, unpicklable
            return
        frame = _LENGTH.pack(len(payload)) + payload
        _run_guarded([payload], lambda: feed_stream(frame, MAX_RECORD_SIZE, 0), frame)


def seeds() -> list[bytes]:
    record = {"name": "seed", "msg": "hello %s %d", "args": ("world", 3), "levelno": 30}
    out = []
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        payload = pickle.dumps(record, protocol)
        frame = _LENGTH.pack(len(payload)) + payload
        for head in range(9):
            if head % 3 == 0:
                out.append(bytes([head, 7]) + frame * 2 + b"\x00\x00")
            elif head % 3 == 1:
                out.append(bytes([head]) + (payload if protocol % 2 else frame))
    # Structured: a string, a list sharing it, a dict; "%s" with the list.
    program = bytes([0, 0, 10, 0, 6, 1, 0, 1, 8, 3, 1, 2, 0, 0, 0, 0, 2, 1, 14, 2])
    out += [bytes([2, p]) + program for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    return out


def _report_skipped() -> None:
    if any(skipped.values()):
        print(f"known bugs skipped (inputs): {skipped}", file=sys.stderr)


if __name__ == "__main__":
    atexit.register(_report_skipped)
    main(test_one_input, seeds())
    sys.exit(0)
