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

Properties: nothing escapes the receiver (the protocol's ``data_received``
and ``datagram_received``); every complete frame is counted once, received
or rejected, and an oversized header stops the stream; every record handed
over has a ``str`` message within ``MAX_MESSAGE_SIZE`` and formats with a
formatter that uses every standard attribute; and handling one input costs
bounded memory (see ``MEMORY``).
"""

from __future__ import annotations

import logging
import math
import pickle
import random
import struct
import sys
from typing import Any

from _harness import MemoryBound, Reader, instrumented, main

with instrumented():
    from anycore.logging import LogReceiver
    from anycore.logging._receiver import (  # the protocols a peer talks to
        _DatagramProtocol,
        _StreamProtocol,
    )
    from anycore.logging._records import (
        MAX_MESSAGE_SIZE,
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


# Known bugs (each the strict xfail of tests/test_fuzz.py whose inputs the
# checks skip; ANYCORE_FUZZ_KNOWN=report reports them instead): none now.
KNOWN_BUGS: dict[str, str] = {}


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
            raise AssertionError(f"attributes of odd types: {odd}")
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


def _run_guarded(run: Any, data: bytes) -> None:
    """``run()`` under the memory bound."""
    with MEMORY.check(data):
        run()


def test_one_input(data: bytes) -> None:
    reader = Reader(data)
    head = reader.byte()
    mode, limit = head % 3, LIMITS[(head // 3) % len(LIMITS)]
    if mode == 0:
        seed = reader.byte()
        stream = reader.rest()
        _run_guarded(lambda: feed_stream(stream, limit, seed), stream)
    elif mode == 1:
        payload = reader.rest()
        _run_guarded(lambda: feed_datagram(payload, limit), payload)
    else:
        protocol = reader.byte() % (pickle.HIGHEST_PROTOCOL + 1)
        try:
            payload = pickle.dumps(build(reader), protocol)
        except (RecursionError, ValueError):  # the harness's own value, unpicklable
            return
        frame = _LENGTH.pack(len(payload)) + payload
        _run_guarded(lambda: feed_stream(frame, MAX_RECORD_SIZE, 0), frame)


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


if __name__ == "__main__":
    main(test_one_input, seeds())
    sys.exit(0)
