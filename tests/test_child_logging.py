"""Records logged in child processes and pool workers reach the parent's handlers."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import anycore
from test_pools_workers import log_from_worker


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def wait_for(self, message: str, timeout: float = 20.0) -> logging.LogRecord:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for record in self.records:
                    if record.getMessage() == message:
                        return record
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{message!r} never arrived: {self.records}")
                self.changed.wait(left)


@pytest.fixture
def collect() -> object:
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


async def test_pool_worker_records_reach_parent(collect: _Collect) -> None:
    async with anycore.WorkerPool(backend="processes", workers=1) as pool:
        pid = await pool.apply(log_from_worker, ("hello from a worker",))
    record = await asyncio.to_thread(collect.wait_for, "hello from a worker")
    assert record.name == "test.children"
    assert record.levelno == logging.WARNING
    assert record.process == pid


async def test_child_process_records_reach_parent(collect: _Collect) -> None:
    async with anycore.ChildProcess(log_from_worker, "hello from a child") as child:
        pid = await child.result()
    record = await asyncio.to_thread(collect.wait_for, "hello from a child")
    assert record.process == pid == child.pid
