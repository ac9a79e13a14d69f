"""Conformance checks for framers, including users' own.

A framer is correct when the frames it returns do not depend on how the byte
stream was cut into reads.  :func:`check_framer` feeds one stream whole, split
at every point, one byte at a time and in small chunk sizes (the habit of h11's
and Twisted's test suites), also moving the unconsumed bytes into a fresh
framer at every split point (what a mid-stream framer switch does), and
compares every outcome - the frames *and* the error, if the stream is bad.

It raises :class:`AssertionError` with the first difference, so it works in
any test runner.  Every split point means O(n^2) work: keep streams to a few
kilobytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .._net._framing import Framer

__all__ = ["check_framer"]

_Outcome = tuple[list[bytes], type[BaseException] | None]


def _drain(framer: Framer, frames: list[bytes]) -> None:
    while True:
        frame = framer.next_frame()
        if frame is None:
            return
        if type(frame) is not bytes:
            raise AssertionError(f"next_frame() returned {type(frame).__name__}, not bytes")
        frames.append(frame)


def _run(
    make_framer: Callable[[], Framer], pieces: Iterable[bytes], *, switch_at: int = -1
) -> _Outcome:
    framer = make_framer()
    frames: list[bytes] = []
    try:
        for i, piece in enumerate(pieces):
            if i == switch_at:
                leftover = framer.take_buffer()
                if framer.buffered:
                    raise AssertionError("buffered is not 0 after take_buffer()")
                framer = make_framer()
                framer.feed(leftover)
            framer.feed(piece)
            _drain(framer, frames)
        framer.feed_eof()
        _drain(framer, frames)
        if framer.next_frame() is not None:
            raise AssertionError("next_frame() returned a frame after it returned None at EOF")
        if framer.buffered:
            raise AssertionError(f"{framer.buffered} bytes still buffered after EOF was drained")
    except AssertionError:
        raise
    except Exception as exc:
        return frames, type(exc)
    return frames, None


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def check_framer(
    make_framer: Callable[[], Framer],
    payloads: Sequence[bytes],
    *,
    stream: bytes | None = None,
    expected: Sequence[bytes] | None = None,
    split_invariant: bool = True,
    chunk_sizes: Iterable[int] = range(1, 10),
) -> list[bytes]:
    """Check that a framer cuts the same frames however the stream is split.

    Args:
        make_framer: returns a fresh framer (called many times).
        payloads: frame payloads; unless ``stream`` is given the stream is
            their encodings, and parsing must give them back.
        stream: a stream to parse instead (for instance a malformed one);
            then every way of feeding it must give the same frames and raise
            the same error (if any) as feeding it whole.
        expected: the frames parsing must give (default: ``payloads`` when
            ``stream`` is not given).
        split_invariant: False for framers whose frames follow the reads
            (like :class:`~anycore.RawFramer`); then only the concatenation
            of the frames is compared.
        chunk_sizes: chunk sizes to feed the stream in, besides every split
            point.

    Returns:
        The frames parsed from the whole stream.

    Raises:
        AssertionError: the framer's output depends on the split, differs
            from ``expected``, or (for a stream made from ``payloads``)
            ``encode()`` is not the inverse of parsing.
    """
    generated = stream is None
    if stream is None:
        encoder = make_framer()
        stream = b"".join(encoder.encode(p) for p in payloads)
        if expected is None:
            expected = list(payloads)
    reference = _run(make_framer, [stream])
    frames, error = reference

    def same(outcome: _Outcome) -> bool:
        if split_invariant:
            return outcome == reference
        return outcome[1] == error and b"".join(outcome[0]) == b"".join(frames)

    def fail(how: str, outcome: _Outcome) -> AssertionError:
        return AssertionError(
            f"{how}: got {outcome[0]!r} (error {outcome[1]}), "
            f"but the whole stream gives {frames!r} (error {error}); stream={stream!r}"
        )

    if expected is not None:
        want = list(expected)
        if not split_invariant:
            want, got = [b"".join(want)], [b"".join(frames)]
        else:
            got = frames
        if got != want:
            raise AssertionError(f"expected frames {want!r}, got {frames!r} (error {error})")
    if generated and error is None and split_invariant:
        encoder = make_framer()
        again = b"".join(encoder.encode(f) for f in frames)
        if again != stream:
            raise AssertionError(f"encode() is not the inverse of parsing: {again!r} != {stream!r}")
    for k in range(len(stream) + 1):
        pieces = [stream[:k], stream[k:]]
        outcome = _run(make_framer, pieces)
        if not same(outcome):
            raise fail(f"split at {k}", outcome)
        outcome = _run(make_framer, pieces, switch_at=1)
        if not same(outcome):
            raise fail(f"split at {k}, then take_buffer() into a new framer", outcome)
    for size in chunk_sizes:
        outcome = _run(make_framer, _chunks(stream, size))
        if not same(outcome):
            raise fail(f"fed in chunks of {size}", outcome)
    return frames
