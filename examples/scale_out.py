"""From one core to a cluster: the same pool code on every backend.

    python examples/scale_out.py [--address tcp://127.0.0.1:8786]

``crunch(pool)`` counts the primes below 60,000 in chunks and sums squares
of a large scattered list; it neither knows nor cares where it runs.  The
script runs it on the tasks, threads and processes backends, then on a
LocalCluster the pool starts and owns (Dask distributed, the
``anycore[dask]`` extra), and, given ``--address``, on an existing Dask
scheduler, which is left running.  Every backend must give the same
answers; the script says so and exits 1 if one does not.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import time
from typing import Any

from anycore import WorkerPool

LIMIT = 60_000
STEP = 5_000


def count_primes(lo: int, hi: int) -> int:
    """Runs on a worker: how many primes in [lo, hi)."""
    found = 0
    for n in range(max(lo, 2), hi):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            found += 1
    return found


def sum_of_squares(data: list[int], start: int, stop: int) -> int:
    """Runs on a worker: a slice of the (scattered) data, squared and summed."""
    return sum(x * x for x in data[start:stop])


async def crunch(pool: WorkerPool) -> tuple[int, int]:
    """The application: written once, for any pool."""
    primes = sum(
        await pool.starmap(count_primes, [(lo, lo + STEP) for lo in range(0, LIMIT, STEP)])
    )
    data = await pool.scatter(list(range(200_000)))  # sent once, used by every job
    parts = await pool.starmap(
        sum_of_squares, [(data, i, i + 50_000) for i in range(0, 200_000, 50_000)]
    )
    return primes, sum(parts)


async def main(address: str | None) -> int:
    runs: list[tuple[str, str, dict[str, Any]]] = [
        ("tasks", "tasks", {"workers": 4}),
        ("threads", "threads", {"workers": 2}),
        ("processes", "processes", {"workers": 2}),
    ]
    if importlib.util.find_spec("distributed") is not None:
        runs.append(("dask LocalCluster", "dask", {"workers": 2}))
        if address is not None:
            runs.append((f"dask at {address}", "dask", {"workers": 2, "address": address}))
    else:
        print("distributed is not installed (pip install 'anycore[dask]'): no dask runs")
    answers = set()
    for label, backend, options in runs:
        started = time.perf_counter()
        async with WorkerPool(backend, **options) as pool:
            answer = await crunch(pool)
        answers.add(answer)
        took = time.perf_counter() - started
        print(f"{label:28s} primes={answer[0]} squares={answer[1]}  {took:.2f} s")
    if len(answers) != 1:
        print(f"the backends disagree: {sorted(answers)}")
        return 1
    print(f"all {len(runs)} runs agree")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="an existing Dask scheduler, e.g. tcp://127.0.0.1:8786")
    sys.exit(asyncio.run(main(parser.parse_args().address)))
