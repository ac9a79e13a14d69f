"""Framing throughput: anycore's sans-IO framers against the usual ways to cut lines.

Line traffic (lines of 10-150 bytes, CRLF-terminated) arrives in read batches of
realistic sizes (64 KiB, and 1500 bytes for small reads), not aligned to
lines.  Each contender turns the batches into the same list of lines:

* ``TerminatorFramer`` - ``feed(batch)`` then ``next_frame()`` until None
  (exactly the driver's per-batch loop).
* ``UniversalNewlineFramer`` and ``TextCodec`` (UTF-8 ``str`` lines) - the text
  layer's path.
* ``LengthPrefixFramer`` on the same payloads with a ``!I`` header.
* baseline "bytes.split": join the pending partial line with the batch and
  ``split(b"\\r\\n")`` - C speed, but no limit and a copy of every partial line.
* baseline "StreamReader.readuntil": asyncio's stream reader fed the batches,
  one ``await readuntil()`` per line (what asyncio streams code does).

``main(quick)`` prints MB/s and ratios; quick mode feeds 2 MB, the full run 100 MB.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Callable
from functools import partial

from anycore import LengthPrefixFramer, TerminatorFramer, TextCodec, UniversalNewlineFramer


def make_lines(total: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 =:/"
    lines = []
    size = 0
    while size < total:
        n = rnd.randint(10, 150)
        line = bytes(rnd.choice(alphabet) for _ in range(n))
        lines.append(line)
        size += n + 2
    return lines


def batches_of(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def run_framer(make: Callable[[], object], batches: list[bytes]) -> int:
    framer = make()
    feed = framer.feed  # type: ignore[attr-defined]
    next_frame = framer.next_frame  # type: ignore[attr-defined]
    count = 0
    for batch in batches:
        feed(batch)
        while next_frame() is not None:
            count += 1
    return count


def run_text(batches: list[bytes]) -> int:
    codec = TextCodec("utf-8", newline="\r\n")
    framer = codec.make_framer()
    decode = codec.decode_frame
    count = 0
    for batch in batches:
        framer.feed(batch)
        while (frame := framer.next_frame()) is not None:
            decode(frame)
            count += 1
    return count


def run_split(batches: list[bytes]) -> int:
    pending = b""
    count = 0
    for batch in batches:
        parts = (pending + batch).split(b"\r\n")
        pending = parts.pop()
        count += len(parts)
    return count


def run_streamreader(batches: list[bytes]) -> int:
    async def go() -> int:
        reader = asyncio.StreamReader(limit=2**16)
        count = 0

        async def consume() -> None:
            nonlocal count
            try:
                while True:
                    await reader.readuntil(b"\r\n")
                    count += 1
            except asyncio.IncompleteReadError:
                pass

        task = asyncio.create_task(consume())
        for batch in batches:
            reader.feed_data(batch)
            await asyncio.sleep(0)  # one wake-up per read batch, as from a socket
        reader.feed_eof()
        await task
        return count

    return asyncio.run(go())


def timed(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    best = float("inf")
    result = 0
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(quick: bool) -> None:
    total = 2 * 2**20 if quick else 100 * 2**20
    unit = 2**20 if quick else 4 * 2**20
    lines = make_lines(unit)
    block = b"".join(line + b"\r\n" for line in lines)
    stream = block * (total // len(block) + 1)
    stream = stream[: stream.rfind(b"\r\n", 0, total) + 2]
    expected = stream.count(b"\r\n")
    prefixed_block = b"".join(struct.pack("!I", len(x)) + x for x in lines)
    copies = max(1, len(stream) // len(prefixed_block))
    prefixed = prefixed_block * copies
    prefix_expected = len(lines) * copies
    repeats = 2 if quick else 3
    mb = len(stream) / 2**20
    print(f"framing: {mb:.0f} MB of CRLF lines ({expected} lines), best of {repeats}")
    for batch_size in (65536, 1500):
        batches = batches_of(stream, batch_size)
        contenders: list[tuple[str, Callable[[], int]]] = [
            ("TerminatorFramer", partial(run_framer, TerminatorFramer, batches)),
            ("UniversalNewlineFramer", partial(run_framer, UniversalNewlineFramer, batches)),
            ("TextCodec (utf-8 str lines)", partial(run_text, batches)),
            ("baseline bytes.split", partial(run_split, batches)),
            ("baseline StreamReader.readuntil", partial(run_streamreader, batches)),
        ]
        results: dict[str, float] = {}
        print(f"\n  read batches of {batch_size} bytes")
        print(f"  {'contender':34} {'MB/s':>9} {'vs readuntil':>13} {'vs split':>9}")
        for name, fn in contenders:
            seconds, count = timed(fn, repeats)
            if count != expected:
                raise AssertionError(f"{name} found {count} lines, expected {expected}")
            results[name] = mb / seconds
        base_reader = results["baseline StreamReader.readuntil"]
        base_split = results["baseline bytes.split"]
        for name, rate in results.items():
            print(f"  {name:34} {rate:9.1f} {rate / base_reader:12.2f}x {rate / base_split:8.2f}x")
        prefixed_batches = batches_of(prefixed, batch_size)
        seconds, count = timed(partial(run_framer, LengthPrefixFramer, prefixed_batches), repeats)
        if count != prefix_expected:
            raise AssertionError(f"LengthPrefixFramer found {count} frames")
        rate = len(prefixed) / 2**20 / seconds
        name = "LengthPrefixFramer (!I, same lines)"
        print(f"  {name:34} {rate:9.1f} {rate / base_reader:12.2f}x")


if __name__ == "__main__":
    import sys

    main("--quick" in sys.argv)
