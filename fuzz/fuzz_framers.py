"""atheris harness: anycore's public framers.

Input layout: byte 0 picks the framer (:data:`FRAMERS`), byte 1 its
``max_frame_size`` (0-63), byte 2 seeds the cut points; the rest is the
stream.  The stream is fed once whole and once cut into reads.

Properties: only :class:`anycore.errors.AnycoreError` escapes; no frame is
larger than ``max_frame_size`` (plus a kept line ending); after draining, at
most one incomplete frame (plus its header) is buffered; a read adds at most
its own size to the buffer; the frames and the error do not depend on how
the stream was cut into reads (for the raw framer: their concatenation is
the stream); and one input costs bounded memory.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable

from _harness import MemoryBound, Reader, instrumented, main

with instrumented():
    from anycore import (
        FixedSizeFramer,
        LengthPrefixFramer,
        NetstringFramer,
        RawFramer,
        TerminatorFramer,
        UniversalNewlineFramer,
    )
    from anycore.errors import AnycoreError

Framer = (
    TerminatorFramer
    | UniversalNewlineFramer
    | FixedSizeFramer
    | LengthPrefixFramer
    | NetstringFramer
    | RawFramer
)

FRAMERS: list[tuple[str, Callable[[int], Framer]]] = [
    ("lf", lambda m: TerminatorFramer(b"\n", max_frame_size=m)),
    ("crlf", lambda m: TerminatorFramer(b"\r\n", max_frame_size=m)),
    (
        "crlf-keepends-eof",
        lambda m: TerminatorFramer(b"\r\n", max_frame_size=m, keepends=True, eof_terminates=True),
    ),
    ("long-terminator", lambda m: TerminatorFramer(b"\r\n.\r\n", max_frame_size=m)),
    ("universal", lambda m: UniversalNewlineFramer(max_frame_size=m)),
    ("universal-keepends", lambda m: UniversalNewlineFramer(max_frame_size=m, keepends=True)),
    ("fixed", lambda m: FixedSizeFramer(m + 1)),
    ("prefix-!I", lambda m: LengthPrefixFramer("!I", m)),
    ("prefix-!H", lambda m: LengthPrefixFramer("!H", m)),
    ("prefix-<i", lambda m: LengthPrefixFramer("<i", m)),
    ("prefix->q", lambda m: LengthPrefixFramer(">q", m)),
    ("prefix-B", lambda m: LengthPrefixFramer("B", m)),
    ("prefix-b", lambda m: LengthPrefixFramer("b", m)),
    ("netstring", lambda m: NetstringFramer(m)),
    ("raw", lambda m: RawFramer(m + 1)),
]
OVERHEAD = 32  # a terminator, a length header, netstring digits and ","
MEMORY = MemoryBound(per_byte=64, fixed=256 * 1024)


def frame_limit(framer: Framer) -> int:
    keeps = getattr(framer, "keepends", False)
    terminator = getattr(framer, "terminator", b"\r\n")
    return framer.max_frame_size + (len(terminator) if keeps else 0)


def run(framer: Framer, reads: list[bytes]) -> tuple[list[bytes], type[AnycoreError] | None]:
    frames: list[bytes] = []

    def drain() -> None:
        while (frame := framer.next_frame()) is not None:
            if len(frame) > frame_limit(framer):
                raise AssertionError(f"frame of {len(frame)} bytes > {framer.max_frame_size}")
            frames.append(frame)
        if framer.buffered > framer.max_frame_size + OVERHEAD:
            raise AssertionError(f"{framer.buffered} bytes buffered after draining")

    try:
        for read in reads:
            before = framer.buffered
            framer.feed(read)
            if framer.buffered > before + len(read):
                raise AssertionError("a read added more than itself to the buffer")
            # The bulk path, then frame by frame (what the stream drivers do).
            for frame in framer.next_frames():
                if len(frame) > frame_limit(framer):
                    raise AssertionError(f"bulk frame of {len(frame)} bytes")
                frames.append(frame)
            drain()
        framer.feed_eof()
        drain()
    except AnycoreError as exc:
        return frames, type(exc)
    return frames, None


def cut(stream: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    if seed == 255:  # the worst split: one byte per read
        return [stream[i : i + 1] for i in range(len(stream))]
    points = sorted(rng.randrange(len(stream) + 1) for _ in range(seed % 17))
    reads, last = [], 0
    for p in points:
        reads.append(stream[last:p])
        last = p
    reads.append(stream[last:])
    return reads


def test_one_input(data: bytes) -> None:
    reader = Reader(data)
    name, make = FRAMERS[reader.byte() % len(FRAMERS)]
    max_frame_size = reader.byte() % 64
    seed = reader.byte()
    stream = reader.rest()
    with MEMORY.check(data):
        whole = run(make(max_frame_size), [stream])
        split = run(make(max_frame_size), cut(stream, seed))
    if name == "raw":
        if b"".join(whole[0]) != stream or b"".join(split[0]) != stream:
            raise AssertionError("raw frames do not add up to the stream")
    elif split != whole:
        raise AssertionError(f"{name}: cutting the stream changed the result")


def seeds() -> list[bytes]:
    streams = [
        b"hello\nworld\r\nagain\r\r\n.\r\n",
        b"\x00\x00\x00\x03abc\x00\x05",
        b"\x00\x03abc\xff\xff",
        b"3:abc,0:,12:hello world!,",
        b"\x80\x00\x00\x00abcd",
        b"abcdefgh" * 8,
    ]
    return [bytes([i, 16, i * 7 % 256]) + s for i in range(len(FRAMERS)) for s in streams]


if __name__ == "__main__":
    main(test_one_input, seeds())
    sys.exit(0)
