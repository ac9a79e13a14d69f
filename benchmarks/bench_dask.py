"""WorkerPool("dask") against distributed's Client.map and WorkerPool("processes").

200 calls of ~10 ms of CPU (quick: 20) on a LocalCluster of 2 worker
processes with one thread each, the cluster started before timing.  The
same cluster runs ``Client.map`` + ``gather`` (distributed used directly) and
``WorkerPool("dask", address=...)``'s map, taking turns (median of 5 rounds;
quick: 1), so both see the same machine at the same moment; the processes
backend runs on its own 2 workers.  Figures: wall seconds, overhead per task
(worker-seconds beyond the work itself, divided by the tasks) and parallel
efficiency (serial time / (wall time x workers)).  Target (issue 15):
anycore's dask map within 1.1x of Client.map.  Every run's results are
checked; a wrong or missing result prints FAILED instead of a figure.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import _report

WORKERS = 2


def work(n: int) -> int:
    """About 10 ms of CPU, then a result that can be checked."""
    deadline = time.thread_time() + 0.010
    acc = n
    while time.thread_time() < deadline:
        for i in range(500):
            acc = (acc * 31 + i) & 0xFFFF
    return n * n


async def _timed(run: Callable[[], Awaitable[list[Any]]], expected: list[int]) -> float | None:
    t = time.perf_counter()
    got = await run()
    elapsed = time.perf_counter() - t
    return elapsed if got == expected else None


def _median(samples: list[float | None]) -> float | None:
    if not samples or any(s is None for s in samples):
        return None
    return statistics.median(s for s in samples if s is not None)


async def bench(quick: bool) -> tuple[int, float, dict[str, float | None]]:
    import distributed

    from anycore import WorkerPool

    n = 20 if quick else 200
    rounds = 1 if quick else 5
    expected = [i * i for i in range(n)]
    t = time.perf_counter()
    for i in range(n):
        work(i)
    serial = time.perf_counter() - t

    samples: dict[str, list[float | None]] = {
        "Client.map": [],
        "anycore dask map": [],
        "anycore dask imap_unordered(1)": [],
        "anycore processes map": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as scratch:
        async with (
            distributed.LocalCluster(  # type: ignore[no-untyped-call,unused-ignore]
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                memory_limit="512MiB",
                local_directory=scratch,
                silence_logs=logging.ERROR,
                asynchronous=True,
            ) as cluster,
            distributed.Client(cluster, asynchronous=True) as client,  # type: ignore[no-untyped-call,unused-ignore]
            WorkerPool("dask", workers=WORKERS, address=cluster.scheduler_address) as pool,
        ):

            async def client_map() -> list[Any]:
                futures = client.map(work, range(n), pure=False)
                return list(await client.gather(futures))

            async def pool_map() -> list[Any]:
                return await pool.map(work, range(n))

            async def pool_unchunked() -> list[Any]:
                return sorted([r async for r in pool.imap_unordered(work, range(n))])

            await client_map()  # warm: the function reaches the workers
            await pool_map()
            for _ in range(rounds):
                samples["Client.map"].append(await _timed(client_map, expected))
                samples["anycore dask map"].append(await _timed(pool_map, expected))
                samples["anycore dask imap_unordered(1)"].append(
                    await _timed(pool_unchunked, expected)
                )
    async with WorkerPool("processes", workers=WORKERS) as procs:

        async def procs_map() -> list[Any]:
            return await procs.map(work, range(n))

        await procs_map()
        for _ in range(rounds):
            samples["anycore processes map"].append(await _timed(procs_map, expected))
    return n, serial, {name: _median(s) for name, s in samples.items()}


def main(quick: bool = False) -> None:
    """Run the dask pool benchmark and print seconds, overheads and ratios."""
    n, serial, table = asyncio.run(bench(quick))
    print(
        f"dask pools ({'quick' if quick else 'full'}; {n} tasks of ~10 ms; "
        f"LocalCluster of {WORKERS} workers; seconds, lower is better)"
    )
    print(f"    {'serial, in this process':34s} {serial:9.4f}")
    base = table["Client.map"]
    for name, secs in table.items():
        if secs is None:
            print(f"    {name:34s}   FAILED: a wrong or missing result")
            _report.failure("dask pools", f"{name}: a wrong or missing result")
            continue
        overhead_ms = (secs * WORKERS - serial) / n * 1e3
        efficiency = serial / (secs * WORKERS)
        ratio = f"{secs / base:5.2f}x Client.map" if base else ""
        print(
            f"    {name:34s} {secs:9.4f}  overhead {overhead_ms:6.2f} ms/task  "
            f"efficiency {efficiency:4.0%}  {ratio}"
        )
    ours = table["anycore dask map"]
    if ours is None or base is None:
        print("  FAILED: no anycore dask map / Client.map figure to compare")
        _report.failure("dask pools", "no anycore dask map / Client.map figure to compare")
    else:
        verdict = "ok" if ours <= 1.1 * base else "MISSED"
        print(f"  anycore dask map / Client.map: {ours / base:.2f}x (target <= 1.10: {verdict})")
        _report.ratio(
            "dask pools",
            f"{n} CPU tasks of 10 ms, map on a LocalCluster(2)",
            base / ours,
            baseline="distributed Client.map + gather",
            target=round(1 / 1.1, 2),
        )
        unchunked = table["anycore dask imap_unordered(1)"]
        if unchunked is not None:
            _report.ratio(
                "dask pools",
                f"{n} CPU tasks of 10 ms, imap_unordered (one task each)",
                base / unchunked,
                baseline="distributed Client.map + gather",
            )


if __name__ == "__main__":
    import sys

    main("--quick" in sys.argv)
