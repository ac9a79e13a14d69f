"""Subprocess benchmarks: spawn rate and pipeline throughput.

* Spawn rate of ``/bin/true``, sequential and with 8 in flight, for the floor
  (``os.posix_spawn`` + ``os.waitpid``), ``subprocess.run``,
  ``asyncio.create_subprocess_exec`` on the default loop and on uvloop,
  ``anyio.run_process`` (asyncio backend, both loops) and anycore's
  ``run_process`` on both loops.  Targets: anycore >= 0.8x the floor and ahead of
  every asyncio / anyio variant.
* Throughput of ``head -c N /dev/zero | cat | cat``: the stages wired by anycore
  against the same line run by ``/bin/sh``, once with the output discarded by the
  last stage (pure OS pipes) and once read by Python from the last stage.

Spawn variants run in short bursts interleaved round-robin and the best burst
counts; pipeline variants run ``repeats`` times interleaved, best run counts (the
machine is shared: the best is the least disturbed by neighbours).
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
import uvloop

import anycore
from benchmarks import _report

TRUE = "/bin/true"
IN_FLIGHT = 8


# -- spawn rate -----------------------------------------------------------------------


def floor_sequential(n: int) -> None:
    env = os.environ
    for _ in range(n):
        os.waitpid(os.posix_spawn(TRUE, [TRUE], env), 0)


def floor_parallel(n: int) -> None:
    env = os.environ
    running: collections.deque[int] = collections.deque()
    for _ in range(n):
        if len(running) >= IN_FLIGHT:
            os.waitpid(running.popleft(), 0)
        running.append(os.posix_spawn(TRUE, [TRUE], env))
    while running:
        os.waitpid(running.popleft(), 0)


def subprocess_sequential(n: int) -> None:
    for _ in range(n):
        subprocess.run([TRUE], check=True)


def subprocess_parallel(n: int) -> None:
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(lambda _: subprocess.run([TRUE], check=True), range(n)))


async def _sequential(spawn_one: Callable[[], Awaitable[object]], n: int) -> None:
    for _ in range(n):
        await spawn_one()


async def _parallel(spawn_one: Callable[[], Awaitable[object]], n: int) -> None:
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with sem:
            await spawn_one()

    await asyncio.gather(*(one() for _ in range(n)))


async def asyncio_true() -> None:
    proc = await asyncio.create_subprocess_exec(TRUE)
    await proc.wait()


async def anyio_true() -> None:
    await anyio.run_process([TRUE])


async def anycore_true() -> None:
    await anycore.run_process([TRUE])


async def _timed(coro: Awaitable[None]) -> float:
    started = time.perf_counter()
    await coro
    return time.perf_counter() - started


def on_loop(loop: str, coro_fn: Callable[[], Awaitable[None]]) -> float:
    """Run ``coro_fn()`` on a fresh loop; return the seconds it took (loop set-up excluded)."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_timed(coro_fn()))


def _wall(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def spawn_variants(k: int) -> dict[str, Callable[[], float]]:
    """Each variant spawns ``k`` children and returns the seconds it took."""
    variants: dict[str, Callable[[], float]] = {}
    for mode, drive in (("seq", _sequential), ("x8", _parallel)):
        if mode == "seq":
            variants[f"posix_spawn+waitpid {mode}"] = lambda: _wall(lambda: floor_sequential(k))
            variants[f"subprocess.run {mode}"] = lambda: _wall(lambda: subprocess_sequential(k))
        else:
            variants[f"posix_spawn+waitpid {mode}"] = lambda: _wall(lambda: floor_parallel(k))
            variants[f"subprocess.run {mode}"] = lambda: _wall(lambda: subprocess_parallel(k))
        for loop in ("asyncio", "uvloop"):
            for name, fn in (
                ("asyncio.create_subprocess_exec", asyncio_true),
                ("anyio.run_process", anyio_true),
                ("anycore.run_process", anycore_true),
            ):
                variants[f"{name} [{loop}] {mode}"] = lambda loop=loop, fn=fn, drive=drive: on_loop(
                    loop, lambda: drive(fn, k)
                )
    return variants


def best_rates(n: int, bursts: int) -> dict[str, float]:
    """``n`` spawns per variant, in ``bursts`` bursts interleaved round-robin with the
    other variants (so a noisy neighbour hurts every variant alike); the rate of
    the best burst counts."""
    k = max(1, n // bursts)
    variants = spawn_variants(k)
    best: dict[str, float] = {}
    for _ in range(bursts):
        for name, fn in variants.items():
            best[name] = max(best.get(name, 0.0), k / fn())
    return best


def bench_spawn(quick: bool) -> None:
    n = 50 if quick else 500
    bursts = 2 if quick else 20
    rates = best_rates(n, bursts)
    print(
        f"spawn rate of {TRUE}: {n} spawns per variant in {bursts} interleaved bursts, "
        "best burst (spawns/s; ratio to the floor)"
    )
    for mode in ("seq", "x8"):
        floor = rates[f"posix_spawn+waitpid {mode}"]
        print(f"  -- {'sequential' if mode == 'seq' else f'{IN_FLIGHT} in flight'} --")
        for name, rate in rates.items():
            if name.endswith(mode):
                print(f"  {name[: -len(mode)].strip():45s} {rate:8.0f}/s  {rate / floor:5.2f}x")
        rivals = {
            k[: -len(mode)].strip(): v
            for k, v in rates.items()
            if k.endswith(mode) and k.startswith(("asyncio.", "anyio."))
        }
        best_name = max(rivals, key=lambda k: rivals[k])
        for loop in ("asyncio", "uvloop"):
            ours = rates[f"anycore.run_process [{loop}] {mode}"]
            print(
                f"  anycore [{loop}]: {ours / floor:.2f}x the floor (target >= 0.80); "
                f"{ours / rivals[best_name]:.2f}x the best asyncio/anyio ({best_name})"
            )
            _report.ratio(
                "subprocess",
                f"spawn /bin/true, {'sequential' if mode == 'seq' else f'{IN_FLIGHT} in flight'}"
                f" [{loop}]",
                ours / floor,
                baseline="posix_spawn + waitpid",
                target=0.9,
            )


# -- pipeline throughput --------------------------------------------------------------


def sh_pipeline(nbytes: int, read_in_python: bool) -> int:
    line = f"head -c {nbytes} /dev/zero | cat | cat"
    if not read_in_python:
        subprocess.run(["/bin/sh", "-c", line + " >/dev/null"], check=True)
        return nbytes
    with subprocess.Popen(["/bin/sh", "-c", line], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        total = 0
        while chunk := os.read(fd, 256 * 1024):
            total += len(chunk)
    return total


async def anycore_pipeline(nbytes: int, read_in_python: bool) -> int:
    stages = (["head", "-c", str(nbytes), "/dev/zero"], ["cat"], ["cat"])
    if not read_in_python:
        result = await anycore.pipeline(*stages, stdout=anycore.DEVNULL).run(check=True)
        assert result.returncode == 0
        return nbytes
    total = 0
    async with anycore.pipeline(*stages, stdout=anycore.PIPE) as p:
        assert isinstance(p.stdout, anycore.ProcessReader)
        async for chunk in p.stdout.chunks(256 * 1024):
            total += len(chunk)
        assert await p.wait() == 0
    return total


def bench_pipeline(quick: bool) -> None:
    nbytes = (20 if quick else 1024) << 20
    repeats = 1 if quick else 3
    results: dict[str, float] = {}
    for _ in range(repeats):
        for read in (False, True):
            for name, fn in (
                ("/bin/sh", lambda read=read: sh_pipeline(nbytes, read)),
                (
                    "anycore [uvloop]",
                    lambda read=read: on_loop_result("uvloop", anycore_pipeline, nbytes, read),
                ),
                (
                    "anycore [asyncio]",
                    lambda read=read: on_loop_result("asyncio", anycore_pipeline, nbytes, read),
                ),
            ):
                started = time.perf_counter()
                moved = fn()
                elapsed = time.perf_counter() - started
                assert moved == nbytes, (name, moved)
                key = f"{name} {'-> python' if read else '-> /dev/null'}"
                results[key] = max(results.get(key, 0.0), nbytes / elapsed / 1e6)
    print(f"head -c {nbytes >> 20}MiB /dev/zero | cat | cat, best of {repeats} (MB/s; ratio to sh)")
    for sink in ("-> /dev/null", "-> python"):
        base = results[f"/bin/sh {sink}"]
        for name in ("/bin/sh", "anycore [uvloop]", "anycore [asyncio]"):
            rate = results[f"{name} {sink}"]
            print(f"  {name:18s} {sink:13s} {rate:8.0f} MB/s  {rate / base:5.2f}x")


def on_loop_result(
    loop: str, fn: Callable[[int, bool], Awaitable[int]], nbytes: int, read: bool
) -> int:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(fn(nbytes, read))  # type: ignore[arg-type]


def main(quick: bool) -> None:
    bench_spawn(quick)
    bench_pipeline(quick)


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
