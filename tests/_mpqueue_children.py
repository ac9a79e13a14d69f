"""Child-process bodies for tests/test_mpqueue.py (imported by spawned children)."""

from __future__ import annotations

from typing import Any


def produce_then_close(q: Any, n: int) -> None:
    for i in range(n):
        q.put(i)
    q.close()


def double_worker(jobs: Any, results: Any) -> None:
    # Joinable jobs in, results out; ends when the jobs queue is closed.
    for item in jobs:
        results.put(item * 2)
        jobs.task_done()


def collect_until_closed(q: Any, results: Any) -> None:
    results.put("ready")
    got = list(q)
    results.put(("child", got))


def close_it(q: Any) -> None:
    q.close()
