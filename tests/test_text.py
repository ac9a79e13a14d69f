"""The text layer: TextCodec against io.TextIOWrapper, and TextLineHandler on sockets."""

from __future__ import annotations

import asyncio
import io

import anyio
import pytest
from hypothesis import given, strategies as st

from anycore import FrameTooLarge, TextCodec, TextLineHandler, serve
from anycore.testing import check_framer

NEWLINES = [None, "", "\n", "\r", "\r\n"]
ENCODINGS = ["utf-8", "latin-1", "cp1252", "shift_jis", "utf-8-sig", "iso2022_jp"]

text = st.text(alphabet=st.sampled_from(list("ab \r\n\té€日本\x00")), max_size=60)
cuts = st.lists(st.integers(min_value=0, max_value=200), max_size=10)


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    pieces, last = [], 0
    for p in sorted({min(p, len(data)) for p in points}):
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def wrapper_lines(data: bytes, encoding: str, errors: str, newline: str | None) -> list[str]:
    return io.TextIOWrapper(
        io.BytesIO(data), encoding=encoding, errors=errors, newline=newline
    ).readlines()


def codec_lines(
    pieces: list[bytes], encoding: str, errors: str, newline: str | None, keepends: bool = True
) -> list[str]:
    codec = TextCodec(encoding, errors, newline, keepends=keepends)
    lines: list[str] = []
    for piece in pieces:
        lines += codec.decode(piece)
    lines += codec.decode(b"", final=True)
    return lines


@pytest.mark.parametrize("newline", NEWLINES)
@pytest.mark.parametrize("encoding", ENCODINGS)
@given(s=text, points=cuts)
def test_lines_match_textiowrapper(
    encoding: str, newline: str | None, s: str, points: list[int]
) -> None:
    data = s.encode(encoding, "replace")
    expected = wrapper_lines(data, encoding, "strict", newline)
    assert codec_lines(split_at(data, points), encoding, "strict", newline) == expected
    assert codec_lines([bytes([b]) for b in data], encoding, "strict", newline) == expected
    # Without keepends: the same lines with the ending removed.
    stripped = codec_lines([data], encoding, "strict", newline, keepends=False)
    assert len(stripped) == len(expected)
    for mine, theirs in zip(stripped, expected, strict=True):
        assert theirs.startswith(mine)
        assert theirs[len(mine) :] in ("", "\n", "\r", "\r\n")


@pytest.mark.parametrize("errors", ["replace", "surrogateescape", "backslashreplace", "ignore"])
@pytest.mark.parametrize("newline", NEWLINES)
@given(data=st.binary(max_size=60), points=cuts)
def test_invalid_bytes_follow_the_errors_policy(
    errors: str, newline: str | None, data: bytes, points: list[int]
) -> None:
    expected = wrapper_lines(data, "utf-8", errors, newline)
    assert codec_lines(split_at(data, points), "utf-8", errors, newline) == expected


@given(data=st.binary(max_size=40))
def test_strict_raises_when_textiowrapper_raises(data: bytes) -> None:
    try:
        expected: list[str] | None = wrapper_lines(data, "utf-8", "strict", None)
    except UnicodeDecodeError:
        expected = None
    if expected is None:
        with pytest.raises(UnicodeDecodeError):
            codec_lines([data], "utf-8", "strict", None)
    else:
        assert codec_lines([data], "utf-8", "strict", None) == expected


def test_multibyte_character_split_across_reads() -> None:
    codec = TextCodec("utf-8")
    data = "€uro\n".encode()
    assert codec.decode(data[:1]) == []
    assert codec.decode(data[1:2]) == []
    assert codec.decode(data[2:]) == ["€uro"]


@pytest.mark.parametrize("newline", NEWLINES)
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "utf-8-sig", "iso2022_jp"])
@given(s=st.text(alphabet=st.sampled_from(list("ab\r\n日")), max_size=30))
def test_encode_matches_textiowrapper_write(encoding: str, newline: str | None, s: str) -> None:
    if encoding == "latin-1":
        s = s.replace("日", "é")
    buf = io.BytesIO()
    wrapper = io.TextIOWrapper(buf, encoding=encoding, newline=newline)
    wrapper.write(s)
    wrapper.write("x")
    wrapper.flush()
    codec = TextCodec(encoding, newline=newline)
    assert codec.encode(s) + codec.encode("x") == buf.getvalue()


def test_encode_line_and_errors_policy() -> None:
    assert TextCodec(newline="\r\n").encode_line("a") == b"a\r\n"
    assert TextCodec(newline=None).encode_line("a") == b"a\n"
    assert TextCodec(newline="\r").encode_line("a\nb") == b"a\rb\r"
    assert TextCodec("ascii", "replace").encode_line("é") == b"?\n"
    with pytest.raises(UnicodeEncodeError):
        TextCodec("ascii").encode_line("é")


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="ASCII-compatible"):
        TextCodec("utf-16")
    with pytest.raises(ValueError, match="newline"):
        TextCodec(newline="\n\n")
    with pytest.raises(LookupError):
        TextCodec("no-such-encoding")
    with pytest.raises(LookupError):
        TextCodec(errors="no-such-handler")


def test_line_limit_is_in_bytes() -> None:
    codec = TextCodec(max_line_length=4)
    assert codec.decode("€a\n".encode()) == ["€a"]  # 4 bytes
    with pytest.raises(FrameTooLarge):
        codec.decode("€ab".encode())


def test_codec_framers_pass_the_conformance_checker() -> None:
    for newline in NEWLINES:
        codec = TextCodec(newline=newline)
        check_framer(codec.make_framer, [b"ab\n", b"c\r", b"d\r\n"], stream=b"ab\nc\rd\r\ne")


# -- TextLineHandler over real sockets ------------------------------------------


class Shout(TextLineHandler):
    encoding = "utf-8"
    newline = None

    def line_received(self, line: str) -> None:
        self.send_line(line.upper())


class AsyncShout(TextLineHandler):
    newline = "\r\n"
    errors = "replace"

    async def line_received(self, line: str) -> None:
        await anyio.sleep(0)
        self.send_line(f"<{line}>")


async def exchange(cls: type[TextLineHandler], payload: bytes, n_lines: int) -> bytes:
    async with serve(cls, "tcp://127.0.0.1:0") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # Send byte by byte to split multi-byte characters and \r\n pairs.
        for b in payload:
            writer.write(bytes([b]))
            await writer.drain()
        got = b""
        for _ in range(n_lines):
            got += await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        await writer.wait_closed()
        return got


async def test_text_line_handler_universal_newlines() -> None:
    got = await exchange(Shout, "héllo\r\nwörld\rlast\n".encode(), 3)
    assert got == "HÉLLO\nWÖRLD\nLAST\n".encode()


async def test_text_line_handler_async_and_crlf() -> None:
    got = await exchange(AsyncShout, b"a\rb\r\nbad\xff\r\n", 2)
    assert got == "<a\rb>\r\n<bad\ufffd>\r\n".encode()


def test_text_line_handler_on_trio() -> None:
    import trio

    async def main() -> None:
        with anyio.fail_after(30):
            async with (
                serve(AsyncShout, "tcp://127.0.0.1:0") as server,
                await anyio.connect_tcp("127.0.0.1", server.port) as s,
            ):
                await s.send("é\r\nx\xff".encode("latin-1") + b"\r\n")
                data = b""
                while data.count(b"\r\n") < 2:
                    data += await s.receive()
                assert data == "<\ufffd>\r\n<x\ufffd>\r\n".encode()

    trio.run(main)
