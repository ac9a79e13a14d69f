"""Fail early, say what to do (issue 11): serve()/connect() check the handler
factory before any socket is opened; send_line(str) and send(str) say what to
use instead."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, ClassVar

import pytest

import anycore
from anycore import Handler, HandlerError, LineHandler, connect, serve


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


class StrDelimiter(LineHandler):
    delimiter = "\n"  # type: ignore[assignment]


class NotAHandler:
    def frame_received(self, frame: bytes) -> None:
        pass


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (Echo(), r"got a Echo instance; pass the class \(Echo\)"),
        (NotAHandler, "NotAHandler is not a Handler subclass; subclass anycore.Handler"),
        (42, "needs a Handler subclass or a function returning a handler, not int"),
        (StrDelimiter, r"StrDelimiter.delimiter is a str \('\\n'\).*b'\\n'.*TextLineHandler"),
    ],
)
async def test_serve_and_connect_refuse_a_bad_factory_before_any_socket(
    factory: Any, match: str
) -> None:
    before = _open_fds()
    with pytest.raises(HandlerError, match=match):
        serve(factory, "tcp://127.0.0.1:0")
    with pytest.raises(HandlerError, match=match):
        await connect("tcp://127.0.0.1:9", factory)
    assert _open_fds() == before
    assert issubclass(HandlerError, TypeError)
    assert issubclass(HandlerError, anycore.AnycoreError)


def make_not_a_handler() -> Any:
    return NotAHandler()


async def test_a_factory_returning_something_else_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="anycore.server")
    async with serve(make_not_a_handler, "tcp://127.0.0.1:0") as server:
        with pytest.raises(HandlerError, match="returned NotAHandler, not a Handler"):
            await connect(f"tcp://127.0.0.1:{server.port}", make_not_a_handler)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            assert await asyncio.to_thread(sock.recv, 10) == b""  # closed
    assert "'make_not_a_handler' returned NotAHandler, not a Handler" in caplog.text


class Texter(LineHandler):
    errors: ClassVar[list[BaseException]] = []

    def line_received(self, line: bytes) -> None:
        try:
            self.send_line(line.decode())  # type: ignore[arg-type]
        except HandlerError as exc:
            Texter.errors.append(exc)
            self.send_line(b"refused")


async def test_send_line_with_a_str_points_to_text_line_handler() -> None:
    Texter.errors = []
    async with serve(Texter, "tcp://127.0.0.1:0") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"hello\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"refused\r\n"
        writer.close()
        await writer.wait_closed()
    (exc,) = Texter.errors
    assert "send_line() takes bytes, not str; for str lines use anycore.TextLineHandler" in str(exc)


class SendsStr(Handler):
    def frame_received(self, frame: bytes) -> None:
        self.send(frame.decode())  # type: ignore[arg-type]


async def test_send_with_a_str_closes_that_connection_with_a_clear_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="anycore.protocol")
    async with serve(SendsStr, "tcp://127.0.0.1:0") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"hi")
            assert await asyncio.to_thread(sock.recv, 10) == b""  # closed
        assert server.statistics().errors == 1
    assert "send() takes bytes, not str; for str lines use anycore.TextLineHandler" in caplog.text
