"""The users' test kit: memory_connection, capture_logs and the plugin's fixtures.

Async tests here run on asyncio and uvloop (the suite's parametrization);
the ``*_on_trio`` tests run the same kit under anyio's trio backend.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio
import pytest

import anycore
from anycore.errors import ClosedError
from anycore.logging import bind_context
from anycore.testing import LogCapture, capture_logs, memory_connection


class Echo(anycore.LineHandler):
    def __init__(self) -> None:
        self.events: list[str] = []

    def connection_made(self) -> None:
        self.events.append("made")
        self.send_line(b"welcome")

    def line_received(self, line: bytes) -> None:
        if line == b"quit":
            self.send_line(b"bye")
            self.close()
            return
        self.send_line(line.upper())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(f"lost {exc!r}")


class AsyncEcho(Echo):
    async def line_received(self, line: bytes) -> None:
        await anyio.sleep(0)
        super().line_received(line)


class Flood(anycore.LineHandler):
    """Answers every line with 600 bytes: a few lines pass the high-water mark."""

    write_high_water = 1000
    write_low_water = 100

    def line_received(self, line: bytes) -> None:
        self.send(b"x" * 600)


# -- memory_connection ---------------------------------------------------------------


@pytest.mark.parametrize("cls", [Echo, AsyncEcho])
async def test_feed_bytes_read_replies_in_pieces(cls: type[Echo]) -> None:
    async with memory_connection(cls()) as peer:
        assert await peer.receive_until(b"\r\n") == b"welcome\r\n"
        for piece in (b"he", b"llo\r", b"\nwor", b"ld\r\n"):  # framing across reads
            await peer.send(piece)
        assert await peer.receive_until(b"WORLD\r\n") == b"HELLO\r\nWORLD\r\n"
        assert peer.handler.peer == ("memory", 0)
    assert peer.handler.events == ["made", "lost None"]


async def test_the_handler_closes_its_side() -> None:
    async with memory_connection(Echo()) as peer:
        await peer.send(b"quit\r\n")
        assert await peer.receive_all() == b"welcome\r\nbye\r\n"
        assert peer.handler_closed
        await peer.wait_closed()
        with pytest.raises(ClosedError, match="closed without sending"):
            await peer.receive_until(b"never")


async def test_the_peer_half_closes_and_the_handler_sees_end_of_stream(
    log_capture: LogCapture,
) -> None:
    async with memory_connection(Echo()) as peer:
        await peer.send(b"partial line without end")
        await peer.send_eof()
        await peer.wait_closed()
        assert peer.handler_closed
        with pytest.raises(ClosedError):
            peer.send_nowait(b"more")
    assert peer.handler.events == ["made", "lost None"]
    # The incomplete frame at end of stream is the peer's protocol error, logged.
    assert any("inside a frame" in event for event in log_capture.events), log_capture.events


async def test_the_peer_resets_and_connection_lost_gets_the_error() -> None:
    async with memory_connection(Echo()) as peer:
        await peer.reset()
        await peer.wait_closed()
    assert peer.handler.events == [
        "made",
        "lost ConnectionResetError('the memory peer reset the connection')",
    ]


async def test_flow_control_pauses_and_resumes_writing_at_the_high_water_mark() -> None:
    async with memory_connection(Flood()) as peer:
        handler = peer.handler
        peer.pause_reading()  # a slow client
        await peer.send(b"a\r\nb\r\nc\r\n")
        stats = handler.statistics()
        assert stats.write_buffer_size == 1800 > Flood.write_high_water
        assert stats.writing_paused
        assert peer.received == b""
        # Reading stopped too: these lines wait until the output has drained.
        await peer.send(b"d\r\ne\r\n")
        assert handler.statistics().frames_in == 3
        drained = anyio.Event()

        async def drain() -> None:
            await handler.drain()
            drained.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await peer.settle()
            assert not drained.is_set()  # drain() waits while the peer does not read
            peer.resume_reading()
            with anyio.fail_after(5):
                await drained.wait()
        await peer.settle()
        stats = handler.statistics()
        assert not stats.writing_paused
        assert stats.frames_in == 5
        assert peer.take() == b"x" * 3000


async def test_write_buffer_limit_aborts_a_flooding_handler() -> None:
    async with memory_connection(Flood(), write_buffer_limit=1500) as peer:
        peer.pause_reading()
        await peer.send(b"a\r\nb\r\nc\r\n")
        await peer.wait_closed()
    assert peer.handler.is_closing()


def test_memory_connection_on_trio() -> None:
    async def main() -> None:
        await test_feed_bytes_read_replies_in_pieces(AsyncEcho)
        await test_flow_control_pauses_and_resumes_writing_at_the_high_water_mark()
        await test_the_peer_resets_and_connection_lost_gets_the_error()

    anyio.run(main, backend="trio")


# -- capture_logs --------------------------------------------------------------------


def test_capture_logs_records_stdlib_and_structlog_with_context() -> None:
    import structlog

    with capture_logs() as logs:
        with bind_context(request_id="r-1"):
            logging.getLogger("app.db").warning("slow query %d ms", 250, extra={"table": "t"})
            structlog.get_logger("app").info("cached", key="k")
        logging.getLogger("app").debug("after")
    assert logs.events == ["slow query 250 ms", "cached", "after"]
    (db,) = logs.find(logger="app.db")
    assert db["level"] == "warning"
    assert db["table"] == "t"
    assert db["request_id"] == "r-1"
    (cached,) = logs.find(event="cached")
    assert cached["key"] == "k"
    assert cached["request_id"] == "r-1"
    assert "request_id" not in logs.find(event="after")[0]
    logs.clear()
    assert len(logs) == 0
    logging.getLogger("app").warning("outside")
    assert len(logs) == 0  # the block is over


async def test_connection_errors_carry_the_connection_id(log_capture: LogCapture) -> None:
    class Broken(anycore.LineHandler):
        def line_received(self, line: bytes) -> None:
            raise ValueError("bad line")

    async with memory_connection(Broken()) as peer:
        await peer.send(b"x\r\n")
        await peer.wait_closed()
    errors = log_capture.find(level="error")
    assert errors, log_capture.records
    assert errors[0]["connection_id"] == peer.handler.connection_id
    assert isinstance(errors[0]["exc_info"], ValueError)


def test_capture_logs_refuses_an_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"), capture_logs("LOUD"):
        pass


# -- the plugin's fixtures in the suite ---------------------------------------------------


async def test_loopback_server_fixture(
    loopback_server: Callable[..., Awaitable[anycore.Server]],
) -> None:
    server = await loopback_server(Echo)
    port = server.endpoints[0].port
    assert server.endpoints[0].host == "127.0.0.1"
    assert port
    async with await anyio.connect_tcp("127.0.0.1", port) as client:
        data = b""
        while not data.endswith(b"welcome\r\n"):
            data += await client.receive()
    assert server.is_serving()


async def test_probe_both_loops() -> None:
    assert asyncio.get_running_loop().is_running()


def test_the_suite_runs_every_async_test_on_asyncio_and_uvloop(
    request: pytest.FixtureRequest,
) -> None:
    names = sorted(
        item.name
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_probe_both_loops"
    )
    if not names:
        pytest.skip("test_probe_both_loops was deselected")
    assert names == ["test_probe_both_loops[asyncio]", "test_probe_both_loops[uvloop]"]
