"""Tests of the sans-IO framers (anycore._net._framing) and anycore.testing.check_framer."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import given, strategies as st

import anycore
from anycore import (
    ClosedError,
    FixedSizeFramer,
    FrameTooLarge,
    IncompleteFrame,
    LengthPrefixFramer,
    LocalProtocolError,
    NetstringFramer,
    RawFramer,
    RemoteProtocolError,
    TerminatorFramer,
    UniversalNewlineFramer,
)
from anycore._net._framing import Framer
from anycore.testing import check_framer


def drain(framer: Framer) -> list[bytes]:
    frames = []
    while (frame := framer.next_frame()) is not None:
        frames.append(frame)
    return frames


def feed_all(framer: Framer, pieces: list[bytes], eof: bool = True) -> list[bytes]:
    frames: list[bytes] = []
    for piece in pieces:
        framer.feed(piece)
        frames += drain(framer)
    if eof:
        framer.feed_eof()
        frames += drain(framer)
    return frames


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def outcome(make: Callable[[], Framer], pieces: list[bytes]) -> tuple[list[bytes], str | None]:
    framer = make()
    frames: list[bytes] = []
    try:
        for piece in pieces:
            framer.feed(piece)
            while (frame := framer.next_frame()) is not None:
                frames.append(frame)
        framer.feed_eof()
        while (frame := framer.next_frame()) is not None:
            frames.append(frame)
    except RemoteProtocolError as exc:
        return frames, type(exc).__name__
    return frames, None


# -- any split of the stream yields the same frames (every framer) -------------

line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
cuts = st.lists(st.integers(min_value=0, max_value=400), max_size=12)

FRAMERS: dict[str, tuple[Callable[[], Framer], st.SearchStrategy[bytes]]] = {
    "crlf": (lambda: TerminatorFramer(b"\r\n", 30), line),
    "lf": (lambda: TerminatorFramer(b"\n", 30), line),
    "long-terminator": (
        lambda: TerminatorFramer(b"<END>", 30),
        st.binary(max_size=40).filter(lambda b: b"<END>" not in b and not b.endswith(b"<")),
    ),
    "universal": (lambda: UniversalNewlineFramer(30), line),
    "universal-keepends": (lambda: UniversalNewlineFramer(30, keepends=True), line),
    "fixed": (lambda: FixedSizeFramer(7), st.binary(min_size=7, max_size=7)),
    "prefix-H": (lambda: LengthPrefixFramer("!H", 30), st.binary(max_size=40)),
    "prefix-<I": (lambda: LengthPrefixFramer("<I", 30), st.binary(max_size=40)),
    "prefix-Q": (lambda: LengthPrefixFramer("!Q", 30), st.binary(max_size=40)),
    "prefix-B": (lambda: LengthPrefixFramer("B", 30), st.binary(max_size=40)),
    "netstring": (lambda: NetstringFramer(30), st.binary(max_size=40)),
}


@pytest.mark.parametrize("name", sorted(FRAMERS))
@given(data=st.data(), cut_points=cuts)
def test_any_split_gives_the_same_frames(
    name: str, data: st.DataObject, cut_points: list[int]
) -> None:
    make, payload = FRAMERS[name]
    payloads = data.draw(st.lists(payload, max_size=8))
    encoder = make()
    stream = b""
    for p in payloads:
        try:
            stream += encoder.encode(p)
        except LocalProtocolError:  # too long to send: the limit is tested below
            stream += p
    whole = outcome(make, [stream])
    assert outcome(make, split_at(stream, cut_points)) == whole
    assert outcome(make, [bytes([b]) for b in stream]) == whole


@pytest.mark.parametrize("name", sorted(FRAMERS))
@given(data=st.data())
def test_limits_hold(name: str, data: st.DataObject) -> None:
    """No frame beyond max_frame_size is ever returned, and the buffer stays bounded."""
    make, _ = FRAMERS[name]
    stream = data.draw(st.binary(max_size=300))
    framer = make()
    limit = framer.max_frame_size
    bound = limit + 64  # header, terminator and one feed of slack
    refused: FrameTooLarge | None = None
    try:
        for b in stream:
            framer.feed(bytes([b]))
            for frame in drain(framer):
                assert len(frame) <= limit + 2  # keepends adds the line ending
            assert framer.buffered <= bound
    except FrameTooLarge as exc:
        refused = exc
    except RemoteProtocolError:
        return
    if refused is not None:
        assert refused.limit == limit
        assert refused.size > limit
        assert framer.buffered == 0  # the refused frame was dropped
        with pytest.raises(FrameTooLarge):
            framer.next_frame()
        with pytest.raises(FrameTooLarge):
            framer.feed(b"x")


@pytest.mark.parametrize("name", sorted(FRAMERS))
@given(data=st.data())
def test_encode_then_parse_round_trips(name: str, data: st.DataObject) -> None:
    """Valid payloads come back unchanged, however the encoded stream is cut."""
    make, payload = FRAMERS[name]
    limit = make().max_frame_size
    payloads = data.draw(st.lists(payload.filter(lambda p: len(p) <= limit), max_size=4))
    if name == "universal-keepends":
        payloads = [p + b"\n" for p in payloads]
    check_framer(make, payloads, chunk_sizes=(1, 2, 7))


def bulk_outcome(make: Callable[[], Framer], pieces: list[bytes]) -> tuple[list[bytes], str | None]:
    """Like outcome(), the way the drivers read: next_frames() then next_frame()."""
    framer = make()
    frames: list[bytes] = []

    def read() -> None:
        frames.extend(framer.next_frames())
        while (frame := framer.next_frame()) is not None:
            frames.append(frame)

    try:
        for piece in pieces:
            framer.feed(piece)
            read()
        framer.feed_eof()
        read()
    except RemoteProtocolError as exc:
        return frames, type(exc).__name__
    return frames, None


BULK_FRAMERS: dict[str, Callable[[], Framer]] = {
    "crlf": lambda: TerminatorFramer(b"\r\n", 12),
    "lf-keepends": lambda: TerminatorFramer(b"\n", 12, keepends=True),
    "lf-eof-terminates": lambda: TerminatorFramer(b"\n", 12, eof_terminates=True),
    # Terminators that overlap themselves: frames are cut left to right.
    "aa": lambda: TerminatorFramer(b"aa", 12),
    "aba": lambda: TerminatorFramer(b"aba", 12),
    "raw": lambda: RawFramer(max_chunk=5),
}


@pytest.mark.parametrize("name", sorted(BULK_FRAMERS))
@given(
    stream=st.lists(
        st.sampled_from([b"a", b"b", b"x" * 5, b"\r", b"\n", b"\r\n"]), max_size=40
    ).map(b"".join),
    cut_points=cuts,
)
def test_bulk_frames_equal_frame_by_frame(name: str, stream: bytes, cut_points: list[int]) -> None:
    """next_frames() returns exactly what next_frame() would, errors and limits included."""
    make = BULK_FRAMERS[name]
    for pieces in ([stream], split_at(stream, cut_points)):
        assert bulk_outcome(make, pieces) == outcome(make, pieces)


def test_bulk_frames_stop_before_an_oversized_frame() -> None:
    framer = TerminatorFramer(b"\n", 4)
    framer.feed(b"ab\ncd\n" + b"x" * 9 + b"\nef\n")
    assert framer.next_frames() == [b"ab", b"cd"]
    with pytest.raises(FrameTooLarge):
        framer.next_frame()


def test_bulk_frames_work_is_linear() -> None:
    """Bulk splitting keeps the O(n) bounds of the frame-by-frame path."""
    framer = TerminatorFramer(b"\n")
    batch = b"".join(b"line %d\n" % i for i in range(1000))
    framer.feed(batch + b"partial")
    assert len(framer.next_frames()) == 1000
    assert framer.next_frame() is None
    framer.feed(b" more\n" + batch)
    assert len(framer.next_frames()) == 1001
    assert framer.bytes_copied <= 3 * len(b"partial") + len(batch) + 6
    assert framer.bytes_scanned <= 3 * len(batch) + 20
    # A large frame arriving in pieces, with a bulk call after every read.
    framer = TerminatorFramer(b"\r\n", max_frame_size=1 << 20)
    stream = b"x" * 200_000 + b"\r\nend\r\n"
    frames: list[bytes] = []
    for i in range(0, len(stream), 1000):
        framer.feed(stream[i : i + 1000])
        frames += framer.next_frames()
        frames += drain(framer)
    assert frames == [b"x" * 200_000, b"end"]
    assert framer.bytes_scanned < 4 * len(stream)
    assert framer.bytes_copied < 4 * len(stream)


@given(payloads=st.lists(st.binary(max_size=20), max_size=5))
def test_raw_framer_concatenation_is_the_stream(payloads: list[bytes]) -> None:
    check_framer(lambda: RawFramer(max_chunk=7), payloads, split_invariant=False)


@pytest.mark.parametrize("name", sorted(FRAMERS))
def test_check_framer_accepts_the_builtin_framers(name: str) -> None:
    make, _ = FRAMERS[name]
    payloads = [b"abcdefg", b"", b"0123456"] if name != "fixed" else [b"abcdefg", b"0123456"]
    if name.startswith("universal-keepends"):
        payloads = [b"abc\n", b"\r", b"de\r\n"]
    elif name == "universal":
        payloads = [b"abcdefg", b"", b"01"]
    check_framer(make, payloads)


# -- specific behaviour --------------------------------------------------------


def test_terminator_basic_and_eof() -> None:
    f = TerminatorFramer(b"\r\n")
    assert feed_all(f, [b"ab\r\ncd\r", b"\nef"], eof=False) == [b"ab", b"cd"]
    f.feed_eof()
    with pytest.raises(IncompleteFrame) as info:
        f.next_frame()
    assert info.value.data == b"ef"
    assert f.next_frame() is None
    with pytest.raises(ClosedError):
        f.feed(b"x")


def test_terminator_keepends_and_eof_terminates() -> None:
    f = TerminatorFramer(b";", keepends=True, eof_terminates=True)
    assert feed_all(f, [b"a;b", b";c"]) == [b"a;", b"b;", b"c"]
    assert f.encode(b"a;") == b"a;"
    assert f.encode(b"a") == b"a;"


def test_terminator_limit_exact() -> None:
    # A payload of exactly the limit passes; one byte more fails, also when it
    # arrives without a terminator (then as soon as the limit is proven).
    f = TerminatorFramer(b"\r\n", max_frame_size=4)
    assert feed_all(f, [b"abcd\r", b"\n"]) == [b"abcd"]
    f = TerminatorFramer(b"\r\n", max_frame_size=4)
    f.feed(b"abcd\r")
    assert f.next_frame() is None
    f.feed(b"x")
    with pytest.raises(FrameTooLarge) as info:
        f.next_frame()
    assert (info.value.size, info.value.limit) == (6, 4)
    f = TerminatorFramer(b"\n", max_frame_size=4)
    f.feed(b"abcde\nok\n")
    with pytest.raises(FrameTooLarge):
        f.next_frame()


def test_take_buffer_resets_a_failed_framer() -> None:
    f = TerminatorFramer(b"\n", max_frame_size=3)
    f.feed(b"toolong")
    with pytest.raises(FrameTooLarge):
        f.next_frame()
    assert f.take_buffer() == b""
    f.feed(b"ok\n")
    assert f.next_frame() == b"ok"


def test_terminator_encode_checks() -> None:
    f = TerminatorFramer(b"\r\n", max_frame_size=3)
    assert f.encode(b"abc") == b"abc\r\n"
    with pytest.raises(LocalProtocolError):
        f.encode(b"a\r\nb")
    with pytest.raises(LocalProtocolError):
        f.encode(b"abcd")
    with pytest.raises(ValueError):
        TerminatorFramer(b"")


def test_universal_newlines() -> None:
    f = UniversalNewlineFramer()
    # A trailing \r is held back until the next byte says whether \n follows.
    assert feed_all(f, [b"a\r"], eof=False) == []
    assert feed_all(f, [b"\nb\rc\n", b"d\r"], eof=False) == [b"a", b"b", b"c"]
    assert feed_all(f, [b"e"], eof=False) == [b"d"]
    assert feed_all(f, [b"\r"]) == [b"e"]  # at EOF the lone \r ends the line
    f = UniversalNewlineFramer(keepends=True)
    assert feed_all(f, [b"a\r\nb\rc\nd"]) == [b"a\r\n", b"b\r", b"c\n", b"d"]
    assert UniversalNewlineFramer(newline=b"\r\n").encode(b"x") == b"x\r\n"
    with pytest.raises(LocalProtocolError):
        UniversalNewlineFramer().encode(b"a\rb")


def test_universal_limit_allows_held_back_cr() -> None:
    f = UniversalNewlineFramer(max_frame_size=3)
    f.feed(b"abc\r")
    assert f.next_frame() is None
    f.feed(b"\n")
    assert f.next_frame() == b"abc"
    f.feed(b"abcd")
    with pytest.raises(FrameTooLarge):
        f.next_frame()


def test_fixed_size() -> None:
    f = FixedSizeFramer(3)
    assert feed_all(f, [b"abcd", b"ef"]) == [b"abc", b"def"]
    f = FixedSizeFramer(3)
    f.feed(b"abcd")
    f.feed_eof()
    assert f.next_frame() == b"abc"
    with pytest.raises(IncompleteFrame):
        f.next_frame()
    with pytest.raises(LocalProtocolError):
        f.encode(b"ab")


@pytest.mark.parametrize("fmt", ["!H", "!I", "!Q", "<I", ">H", "B", "!i"])
def test_length_prefix_formats(fmt: str) -> None:
    f = LengthPrefixFramer(fmt, max_frame_size=100)
    payloads = [b"", b"x", b"hello" * 10]
    stream = b"".join(f.encode(p) for p in payloads)
    assert stream.startswith(struct.pack(fmt, 0))
    assert feed_all(f, [stream]) == payloads
    assert f.header_size == struct.calcsize(fmt)


def test_length_prefix_too_large_is_refused_immediately() -> None:
    f = LengthPrefixFramer("!I", max_frame_size=10)
    f.feed(struct.pack("!I", 11))  # only the header: no payload buffered yet
    with pytest.raises(FrameTooLarge) as info:
        f.next_frame()
    assert (info.value.size, info.value.limit) == (11, 10)
    f = LengthPrefixFramer("!i")
    f.feed(struct.pack("!i", -1))
    with pytest.raises(RemoteProtocolError, match="negative"):
        f.next_frame()
    with pytest.raises(LocalProtocolError):
        LengthPrefixFramer("!H").encode(b"x" * 70000)
    for bad in ["!f", "II", "!!I", "", "!5s"]:
        with pytest.raises(ValueError):
            LengthPrefixFramer(bad)


def test_netstring() -> None:
    f = NetstringFramer()
    assert f.encode(b"hello") == b"5:hello,"
    assert feed_all(f, [b"5:hello,0:,", b"3:a", b"bc,"]) == [b"hello", b"", b"abc"]


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"5:hello!", RemoteProtocolError),
        (b"x:", RemoteProtocolError),
        (b":", RemoteProtocolError),
        (b"05:hello,", RemoteProtocolError),
        (b"GET / HTTP/1.0", RemoteProtocolError),
        (b"99999999:", FrameTooLarge),
        (b"11:", FrameTooLarge),
        (b"5:hel", IncompleteFrame),
    ],
)
def test_netstring_bad_input(stream: bytes, error: type[Exception]) -> None:
    frames, err = outcome(lambda: NetstringFramer(max_frame_size=10), [stream])
    assert err == error.__name__
    # The same error whichever way the stream is cut.
    check_framer(lambda: NetstringFramer(max_frame_size=10), [], stream=stream, expected=frames)


def test_raw_framer_splits_large_chunks() -> None:
    f = RawFramer(max_chunk=4)
    f.feed(b"abcdefghij")
    assert f.buffered == 10
    assert drain(f) == [b"abcd", b"efgh", b"ij"]
    f.feed(b"xy")
    assert f.take_buffer() == b"xy"
    f.feed(b"")
    assert f.next_frame() is None


def test_feed_accepts_bytes_like_objects() -> None:
    f = TerminatorFramer(b"\n")
    buf = bytearray(b"ab\ncd")
    f.feed(cast(bytes, buf))
    buf[:] = b"XXXXX"  # the caller may reuse its buffer
    f.feed(cast(bytes, memoryview(b"\n")))
    assert drain(f) == [b"ab", b"cd"]


# -- switching framers mid-stream ---------------------------------------------


@given(cut_points=cuts, body=st.binary(max_size=60))
def test_switching_header_line_raw_bytes_then_lines(cut_points: list[int], body: bytes) -> None:
    """A header line announces N raw bytes, then lines again (HTTP-like)."""
    stream = b"LEN %d\r\n" % len(body) + body + b"after\r\nmore\r\n"
    events: list[object] = []
    framer: Framer = TerminatorFramer(b"\r\n")
    for piece in split_at(stream, cut_points):
        framer.feed(piece)
        while (frame := framer.next_frame()) is not None:
            if isinstance(framer, TerminatorFramer) and frame.startswith(b"LEN "):
                events.append(frame)
                n = int(frame[4:])
                new: Framer = FixedSizeFramer(n) if n else TerminatorFramer(b"\r\n")
                if n == 0:
                    events.append(b"")
                new.feed(framer.take_buffer())
                framer = new
            elif isinstance(framer, FixedSizeFramer):
                events.append(frame)
                new = TerminatorFramer(b"\r\n")
                new.feed(framer.take_buffer())
                framer = new
            else:
                events.append(frame)
    assert events == [b"LEN %d" % len(body), body, b"after", b"more"]


# -- the work is linear ---------------------------------------------------------

MB = 1 << 20
KB256 = 1 << 18


@pytest.mark.parametrize(
    ("make", "size"),
    [
        (lambda: TerminatorFramer(b"\r\n", max_frame_size=MB), MB),
        (lambda: TerminatorFramer(b"<<END>>", max_frame_size=MB), KB256),
        (lambda: UniversalNewlineFramer(max_frame_size=MB), KB256),
        (lambda: LengthPrefixFramer("!I", max_frame_size=MB), MB),
        (lambda: NetstringFramer(max_frame_size=MB), KB256),
        (lambda: FixedSizeFramer(KB256 - 100), KB256),
    ],
    ids=["crlf", "long-terminator", "universal", "prefix", "netstring", "fixed"],
)
def test_one_megabyte_one_byte_at_a_time_is_linear(make: Callable[[], Framer], size: int) -> None:
    """A large frame arriving one byte per read costs O(n), not O(n^2).

    1 MB for the CRLF and length-prefix framers (the issue's test), 256 KiB for
    the others (quadratic work would still take minutes there).
    """
    framer = make()
    payload = b"x" * (size - 100)
    tail = [] if isinstance(framer, FixedSizeFramer) else [b"tail" * 5]
    stream = b"".join(framer.encode(p) for p in [payload, *tail])
    n = len(stream)
    view = memoryview(stream)
    frames: list[bytes] = []
    for i in range(n):
        framer.feed(cast(bytes, view[i : i + 1]))
        while (frame := framer.next_frame()) is not None:
            frames.append(frame)
    assert frames == [payload, *tail]
    assert framer.bytes_scanned < 4 * n, framer.bytes_scanned
    assert framer.bytes_copied < 4 * n, framer.bytes_copied


def test_many_small_frames_are_not_copied_again() -> None:
    """A batch of complete frames is sliced, never joined or moved."""
    framer = TerminatorFramer(b"\n")
    batch = b"".join(b"line %d\n" % i for i in range(1000))
    framer.feed(batch + b"partial")
    assert len(drain(framer)) == 1000
    framer.feed(b" more\n" + batch)
    assert len(drain(framer)) == 1001
    assert framer.bytes_copied <= 2 * len(b"partial") + len(batch) + 6
    assert framer.bytes_scanned <= 2 * len(batch) + 20


def test_public_names() -> None:
    for name in [
        "Framer",
        "TerminatorFramer",
        "UniversalNewlineFramer",
        "FixedSizeFramer",
        "LengthPrefixFramer",
        "NetstringFramer",
        "RawFramer",
        "TextCodec",
        "TextLineHandler",
    ]:
        assert name in anycore.__all__
        assert getattr(anycore, name).__module__.startswith("anycore.")


def test_check_framer_catches_a_split_dependent_framer() -> None:
    class Broken(Framer):
        """Returns whatever each feed brought, as if every read were a line."""

        def __init__(self) -> None:
            super().__init__(100)
            self.frames: list[bytes] = []

        def feed(self, data: bytes) -> None:
            self.frames += [x for x in bytes(data).split(b"\n") if x]

        def next_frame(self) -> bytes | None:
            return self.frames.pop(0) if self.frames else None

        def take_buffer(self) -> bytes:
            return b""

        def encode(self, payload: bytes) -> bytes:
            return payload + b"\n"

    with pytest.raises(AssertionError, match="split at"):
        check_framer(Broken, [b"abc", b"def"])


def test_framing_example_self_demo() -> None:
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "framing.py"
    proc = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for expected in (
        "parsed header: b'SIZE 5'\nparsed body: b'hello'\nparsed line: b'line one'\n",
        "server replied: b'got 5 bytes\\r\\n'\nserver replied: b'echo bye\\r\\n'\n",
        "server replied: b'line too long\\r\\n'\n",
        "TLVFramer passed check_framer (3 records, every split point)\n",
    ):
        assert expected in proc.stdout
    assert proc.stdout.rstrip().endswith("done")


def test_the_framers_load_neither_anyio_nor_asyncio() -> None:
    # In a fresh interpreter: the sans-IO layer (and the errors it raises) must
    # not pull the async stack in; a ClosedError looked up later still has
    # anyio's base, and the framers' errors keep their identity.
    code = textwrap.dedent(
        """
        import sys
        import anycore
        from anycore._net._framing import TerminatorFramer
        from anycore.errors import FrameTooLarge
        framer = TerminatorFramer(max_frame_size=4)
        try:
            framer.feed(b"too long\\n")
            framer.next_frame()
        except FrameTooLarge:
            pass
        else:
            raise SystemExit("no FrameTooLarge")
        loaded = sorted({"anyio", "asyncio", "trio", "uvloop"} & set(sys.modules))
        assert not loaded, loaded
        framer = TerminatorFramer()
        framer.feed_eof()
        try:
            framer.feed(b"x")
        except Exception as exc:
            import anyio
            assert isinstance(exc, anyio.ClosedResourceError), type(exc).__mro__
            assert exc.__class__ is anycore.errors.ClosedError is anycore.ClosedError
        else:
            raise SystemExit("feed after feed_eof accepted")
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
