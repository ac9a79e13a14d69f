"""``Process(kill_tree=True)``: nothing the program starts outlives it (issue 19).

A process-group kill misses a descendant that called ``setsid()`` or was
handed to init by a double fork; the control tests show that on the default
mode, the others that the keeper (a child subreaper) ends it, whether the
program is stopped, exits by itself, or its parent is SIGKILLed.  Every async
test runs on asyncio and on uvloop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import anycore
from _support import alive, wait_until
from anycore import PIPE, Process, ProcessError, Supervisor
from anycore._workers._child import iter_descendants

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreaper")

PY = sys.executable
FRAMEWORK = str(Path(__file__).resolve().parent.parent / "framework")

# Starts a daemon the classic way (fork, setsid, fork; the middle one exits),
# prints the daemon's pid (and writes it to $PID_FILE), then sleeps.
# IGNORE_TERM=1: the daemon ignores SIGTERM; EXIT_AT_ONCE=1: exit $CODE instead.
DAEMONISE = textwrap.dedent(
    """
    import os, signal, sys, time
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork():
            os._exit(0)
        if os.environ.get("IGNORE_TERM") == "1":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(w, b"%d\\n" % os.getpid())
        time.sleep(300)
        os._exit(0)
    pid = os.read(r, 32).decode().strip()
    if os.environ.get("PID_FILE"):
        with open(os.environ["PID_FILE"], "w") as fh:
            fh.write(pid)
    print(pid, flush=True)
    if os.environ.get("EXIT_AT_ONCE") == "1":
        sys.exit(int(os.environ.get("CODE", "0")))
    time.sleep(300)
    """
)


@contextlib.contextmanager
def _reclaimed(*pids: int) -> Iterator[None]:
    """Whatever a test leaves running (the control cases do, on purpose) is killed."""
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, **extra)


async def test_group_kill_leaves_a_setsid_daemon_running() -> None:
    # The control: what kill_tree exists for.
    async with Process([PY, "-c", DAEMONISE], stdout=PIPE, grace_period=2) as proc:
        assert proc.stdout
        daemon = int(await proc.stdout.readline())
    with _reclaimed(daemon):
        assert alive(daemon), "the default group kill was expected to miss the daemon"


async def test_stopping_the_program_ends_a_setsid_daemon_too() -> None:
    async with Process([PY, "-c", DAEMONISE], stdout=PIPE, grace_period=2, kill_tree=True) as proc:
        assert proc.stdout
        daemon = int(await proc.stdout.readline())
        with _reclaimed(daemon):
            assert alive(daemon)
            # The pid is the program's, and its group is its own.
            assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(PY.encode())
            assert os.getpgid(proc.pid) == proc.pid == proc.pgid
    with _reclaimed(daemon):
        assert not alive(daemon)
        assert proc.returncode == -signal.SIGTERM
        assert proc.status is not None
        assert proc.status.pid == proc.pid


async def test_a_daemon_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    started = time.monotonic()
    async with Process(
        [PY, "-c", DAEMONISE],
        stdout=PIPE,
        env=_env(IGNORE_TERM="1"),
        grace_period=0.5,
        kill_tree=True,
    ) as proc:
        assert proc.stdout
        daemon = int(await proc.stdout.readline())
    with _reclaimed(daemon):
        assert not alive(daemon)
    assert time.monotonic() - started < 10


async def test_a_program_that_exits_by_itself_takes_its_daemon_along() -> None:
    async with Process(
        [PY, "-c", DAEMONISE],
        stdout=PIPE,
        env=_env(EXIT_AT_ONCE="1", CODE="3"),
        kill_tree=True,
    ) as proc:
        assert proc.stdout
        daemon = int(await proc.stdout.readline())
        with _reclaimed(daemon):
            assert await proc.wait() == 3  # the program's code, not the keeper's
            assert not alive(daemon)  # the keeper ended it before exiting


@pytest.mark.parametrize(("script", "expected"), [("exit 7", 7), ("kill -USR1 $$", -10)])
async def test_the_exit_status_is_the_programs(script: str, expected: int) -> None:
    async with Process(["sh", "-c", script], kill_tree=True) as proc:
        assert await proc.wait() == expected
    assert str(proc.status) == anycore.errors.describe_returncode(expected)


async def test_signals_reach_the_program() -> None:
    script = "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.05; done"
    async with Process(["sh", "-c", script], stdout=PIPE, text=True, kill_tree=True) as proc:
        assert proc.stdout
        assert (await proc.stdout.readline()).strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        assert (await proc.stdout.readline()).strip() == "got-usr1"
        proc.terminate()
        assert await proc.wait() == -signal.SIGTERM


async def test_group_options_apply_to_the_program() -> None:
    async with Process(["sleep", "30"], start_new_session=True, kill_tree=True) as proc:
        assert os.getsid(proc.pid) == proc.pid
    async with Process(["sleep", "30"], process_group=None, kill_tree=True) as proc:
        assert os.getpgid(proc.pid) == os.getpgid(0)  # ours: closing must not kill us
    assert proc.returncode == -signal.SIGTERM


async def test_pass_fds_and_pipes_reach_the_program(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        script = f"import os; os.write({w}, b'via-fd'); print('via-stdout')"
        async with Process(
            [PY, "-c", script], stdout=PIPE, pass_fds=[w], cwd=tmp_path, kill_tree=True
        ) as proc:
            out, _ = await proc.communicate()
        assert out == b"via-stdout\n"
        assert os.read(r, 64) == b"via-fd"
    finally:
        os.close(r)
        os.close(w)


async def test_an_exec_failure_in_the_keeper_is_the_usual_error(tmp_path: Path) -> None:
    script = tmp_path / "bad-interpreter"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    with pytest.raises(anycore.ExecutableNotFound):
        async with Process([str(script)], kill_tree=True):
            pass


async def test_cancellation_ends_the_tree() -> None:
    daemon = -1
    with anyio.move_on_after(30) as scope:
        async with Process([PY, "-c", DAEMONISE], stdout=PIPE, kill_tree=True) as proc:
            assert proc.stdout
            daemon = int(await proc.stdout.readline())
            scope.cancel()
            await anyio.sleep_forever()
    with _reclaimed(daemon):
        assert scope.cancelled_caught
        await wait_until(lambda: not alive(daemon))


async def test_a_supervised_program_with_kill_tree(tmp_path: Path) -> None:
    out = tmp_path / "daemon.pid"
    program = anycore.Program(
        "d",
        command=(PY, "-c", DAEMONISE),
        env={"PID_FILE": str(out)},
        kill_tree=True,
        grace_period=2,
    )
    async with Supervisor([program]) as sup:
        await wait_until(lambda: out.exists() and out.read_text().strip().isdigit())
        daemon = int(out.read_text())
        with _reclaimed(daemon):
            assert alive(daemon)
            await sup.stop("d")
    with _reclaimed(daemon):
        assert not alive(daemon)


def test_a_target_program_refuses_kill_tree() -> None:
    with pytest.raises(ValueError, match="kill_tree"):
        anycore.Program("t", target=print, kill_tree=True)


def test_elsewhere_than_linux_kill_tree_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anycore._proc._subprocess.TREE_SUPPORTED", False)
    with pytest.raises(ProcessError, match="needs Linux"):
        Process(["true"], kill_tree=True)


def test_a_sigkilled_parent_takes_the_whole_tree_along(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, anycore
            async def main():
                async with anycore.Process(
                    [{PY!r}, "-c", {DAEMONISE!r}], stdout=anycore.PIPE, kill_tree=True
                ) as proc:
                    print("DAEMON", int(await proc.stdout.readline()), flush=True)
                    await proc.wait()
            asyncio.run(main())
            """
        )
    )
    parent = subprocess.Popen(
        [PY, str(script)], stdout=subprocess.PIPE, env=_env(PYTHONPATH=FRAMEWORK)
    )
    assert parent.stdout is not None
    try:
        line = parent.stdout.readline()  # bounded by the test's timeout
        assert line.startswith(b"DAEMON "), line
        daemon = int(line.split()[1])
        family = set(iter_descendants(parent.pid)) | {daemon}
        with _reclaimed(*family):
            assert alive(daemon)
            parent.kill()
            parent.wait(10)
            deadline = time.monotonic() + 10
            while any(alive(p) for p in family) and time.monotonic() < deadline:
                time.sleep(0.02)  # polling /proc, bounded
            assert not [p for p in family if alive(p)], "outlived their SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()
