"""Components' context reaches log records: connection id and peer, worker id."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from anyio import fail_after as anyio_fail_after

import anycore
from anycore.logging import ContextFilter


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def capture() -> object:
    handler = _Capture()
    log = logging.getLogger("test.wiring")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)


class _LoggingEcho(anycore.LineHandler):
    delimiter = b"\n"

    def line_received(self, line: bytes) -> None:
        logging.getLogger("test.wiring").info("got %r", line)
        self.send_line(line)


async def test_connection_context_on_records(capture: _Capture) -> None:
    async with anycore.serve(_LoggingEcho, "tcp://127.0.0.1:0") as server:
        host, port = server.addresses[0][:2]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"hello\n"
        writer.close()
        await writer.wait_closed()
    record = capture.records[0]
    assert record.getMessage() == "got b'hello'"
    assert isinstance(record.connection_id, int)  # type: ignore[attr-defined]
    assert str(record.peer).startswith("127.0.0.1")  # type: ignore[attr-defined]


def _log_in_worker() -> str | None:
    logging.getLogger("test.wiring").info("in worker")
    return anycore.current_worker_id()


async def test_worker_id_on_records(capture: _Capture) -> None:
    async with anycore.WorkerPool(backend="threads", workers=1) as pool:
        worker = await pool.apply(_log_in_worker)
    assert worker is not None
    assert capture.records[0].worker_id == worker  # type: ignore[attr-defined]


async def test_bound_context_wins_over_nothing(capture: _Capture) -> None:
    with anycore.logging.bind_context(request="r1"):
        logging.getLogger("test.wiring").info("bound")
    assert capture.records[0].request == "r1"  # type: ignore[attr-defined]
    assert not hasattr(capture.records[0], "connection_id")


class _Failing(anycore.LineHandler):
    delimiter = b"\n"

    def line_received(self, line: bytes) -> None:
        raise ValueError("boom")


@pytest.mark.parametrize("case", ["handler error", "idle close from a timer"])
async def test_json_lines_carry_the_connection_once(case: str) -> None:
    import io
    import json

    from anycore.logging import structured_formatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(structured_formatter("json", timestamp=None))
    log = logging.getLogger("anycore")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        factory, options = (
            (_Failing, {}) if case == "handler error" else (_LoggingEcho, {"idle_timeout": 0.05})
        )
        async with anycore.serve(factory, "tcp://127.0.0.1:0", **options) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"hi\n")
            await writer.drain()
            with anyio_fail_after(10):
                while await reader.read(1024):
                    pass  # until the server closes the connection
            writer.close()
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    about = [(re.match(r"connection (\d+):", str(line["event"])), line) for line in lines]
    about = [(int(match[1]), line) for match, line in about if match]
    assert about, lines
    for number, line in about:
        assert line["connection_id"] == number
        assert line["peer"].startswith("127.0.0.1:")
        assert "anycore_connection" not in line
