"""Nothing outlives its parent (issue 19): SIGKILL a parent, its descendants go too.

Each test runs a real parent script in a subprocess, waits (bounded, on the
lines it prints) until its children are running, SIGKILLs it and polls /proc
until every descendant it had is gone (a zombie counts as gone: whoever
inherited it reaps it, or not, in its own time).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from _support import alive
from anycore._workers._child import iter_descendants

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")

FRAMEWORK = str(Path(__file__).resolve().parent.parent / "framework")


@contextlib.contextmanager
def _parent(tmp_path: Path, body: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``body`` as the parent script; whatever happens, nothing of it is left."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=FRAMEWORK, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, env=env, cwd=tmp_path
    )
    try:
        yield proc
    finally:
        family = set(iter_descendants(proc.pid)) if proc.poll() is None else set()
        proc.kill()
        proc.wait(10)
        for pid in family:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        assert proc.stdout is not None
        proc.stdout.close()


def _read_until(
    proc: subprocess.Popen[bytes], word: bytes, count: int = 1, deadline: float = 40.0
) -> bytes:
    """What the parent printed until ``count`` lines start with ``word``; bounded."""
    assert proc.stdout is not None
    out = b""
    end = time.monotonic() + deadline
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while sum(line.startswith(word) for line in out.split(b"\n")[:-1]) < count:
            left = end - time.monotonic()
            assert left > 0, f"parent never printed {word!r}: {out!r}"
            if sel.select(left):
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"parent exited ({proc.wait()}) before {word!r}: {out!r}"
                out += chunk
    return out


def _kill_parent_and_check(proc: subprocess.Popen[bytes], expected: int) -> None:
    family = set(iter_descendants(proc.pid))
    try:
        assert len(family) >= expected, f"only {sorted(family)} started"
        proc.kill()
        proc.wait(10)
        end = time.monotonic() + 10.0
        left = {p for p in family if alive(p)}
        while left and time.monotonic() < end:
            time.sleep(0.02)  # polling /proc, bounded
            left = {p for p in left if alive(p)}
        survivors = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left if alive(p)}
        assert not survivors, f"outlived their SIGKILLed parent: {survivors}"
    finally:
        for pid in family:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_process_family_pipeline_and_pty_die_with_parent(tmp_path: Path) -> None:
    with _parent(
        tmp_path,
        """
        import asyncio, anycore
        from anycore._workers._child import iter_descendants

        async def main():
            cmd = "sleep 300 & sleep 300 & wait"
            pipe = anycore.pipeline(["sleep", "301"], ["sleep", "302"], die_with_parent=True)
            async with (
                anycore.Process(cmd, shell=True, die_with_parent=True) as p,
                pipe,
                anycore.open_pty(["sleep", "303"], die_with_parent=True),
            ):
                for _ in range(2000):
                    if len(list(iter_descendants(p.pid))) >= 2:
                        break
                    await asyncio.sleep(0.01)
                print("READY", flush=True)
                await p.wait()

        asyncio.run(main())
        """,
    ) as proc:
        _read_until(proc, b"READY")
        _kill_parent_and_check(proc, 6)  # sh and two sleeps, 2 pipeline stages, the pty


def test_a_killed_guard_is_replaced_and_takes_over_the_list(tmp_path: Path) -> None:
    with _parent(
        tmp_path,
        """
        import asyncio, os, signal, anycore
        from anycore._proc._spawn import _guard

        async def main():
            async with anycore.Process(["sleep", "300"], die_with_parent=True):
                first = _guard.pid
                os.kill(first, signal.SIGKILL)
                os.waitpid(first, 0)
                async with anycore.Process(["sleep", "301"], die_with_parent=True):
                    assert _guard.pid != first
                    print("READY", flush=True)
                    await asyncio.sleep(300)

        asyncio.run(main())
        """,
    ) as proc:
        _read_until(proc, b"READY")
        _kill_parent_and_check(proc, 3)  # both sleeps and the new guard


def test_child_process_and_busy_pool_die_with_parent(tmp_path: Path) -> None:
    with _parent(
        tmp_path,
        """
        import asyncio, os, time, anycore

        def sleeper():
            time.sleep(300)

        def busy(i):
            os.write(1, f"BUSY {os.getpid()}\\n".encode())  # one write: lines never interleave
            time.sleep(300)

        async def main():
            async with anycore.ChildProcess(sleeper):
                async with anycore.WorkerPool("processes", workers=2) as pool:
                    await asyncio.gather(*(pool.apply(busy, (i,)) for i in range(2)))

        if __name__ == "__main__":
            asyncio.run(main())
        """,
    ) as proc:
        _read_until(proc, b"BUSY", count=2)
        # the child, 2 workers, the fork server, the resource tracker (+ the guard)
        _kill_parent_and_check(proc, 5)


# -- a crashing pool worker takes its grandchildren along --------------------------


def start_sleep_then_crash(path: str) -> None:
    """Pool job: start a grandchild, report its pid, die without cleaning up."""
    child = subprocess.Popen(["sleep", "300"])
    Path(path).write_text(str(child.pid))
    os._exit(3)


def worker_pid() -> int:
    return os.getpid()


async def test_crashed_worker_leaves_no_grandchild(tmp_path: Path) -> None:
    from anycore import WorkerPool
    from anycore.errors import WorkerCrashed

    report = tmp_path / "grandchild"
    async with WorkerPool("processes", workers=1) as pool:
        with pytest.raises(WorkerCrashed):
            await pool.apply(start_sleep_then_crash, (str(report),))
        grandchild = int(report.read_text())
        end = time.monotonic() + 10.0
        while alive(grandchild) and time.monotonic() < end:
            await anyio.sleep(0.02)  # polling /proc, bounded
        still_alive = alive(grandchild)
        if still_alive:
            os.kill(grandchild, signal.SIGKILL)
        assert not still_alive, "the crashed worker's `sleep` is still running"
        assert await pool.apply(worker_pid) > 0  # the replacement works
