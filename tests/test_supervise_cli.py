"""anycore supervise / ctl / run --workers end to end: what the user sees.

Real processes; synchronisation through the lines they print, with bounded
timeouts.  Programs that record the signals they get come from
``_supervisor_targets.record_signals``.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import anyio

from _support import wait_for_text
from anycore._proc._subprocess import PIPE, STDOUT, Process, run_process

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
CLI = [PY, "-m", "anycore"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "framework"), str(TESTS)])}
RECORDER = f'{PY} -c "from _supervisor_targets import record_signals; record_signals()"'
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


class Output:
    """The lines a process prints, read on demand."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.read = 0  # lines already matched by `expect`

    async def expect(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The next line (after the last match) matching ``pattern``."""
        regex = re.compile(pattern)
        while True:
            for i in range(self.read, len(self.lines)):
                m = regex.search(self.lines[i])
                if m:
                    self.read = i + 1
                    return m
            self.read = len(self.lines)
            assert self.proc.stdout is not None
            with anyio.fail_after(timeout):
                raw = await self.proc.stdout.readline()
            if not raw:
                raise AssertionError(f"{pattern!r} never printed:\n" + "\n".join(self.lines))
            text = raw if isinstance(raw, str) else raw.decode(errors="replace")
            self.lines.append(text.rstrip("\r\n"))

    async def rest(self) -> list[str]:
        assert self.proc.stdout is not None
        with anyio.fail_after(30):
            async for raw in self.proc.stdout:
                text = raw if isinstance(raw, str) else raw.decode(errors="replace")
                self.lines.append(text.rstrip("\r\n"))
        return self.lines


async def ctl(sock: str, *args: str) -> tuple[int, str, str]:
    out = await run_process(
        [*CLI, "ctl", "--socket", sock, *args], stdout=PIPE, stderr=PIPE, env=ENV, timeout=60
    )
    return out.returncode, out.stdout.decode(), out.stderr.decode()


def comm(pid: int, expected: str = "sleep", timeout: float = 5) -> str:
    """The command name of ``pid`` once it is ``expected``, else the last one seen
    (polled, bounded: a fresh child goes python -> sh -> the program as it execs)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/comm") as f:
            name = f.read().strip()
        if name == expected or time.monotonic() > deadline:
            return name
        time.sleep(0.01)  # polling OS state, bounded


async def test_workers_lines_are_rendered_once_without_pid_none(tmp_path: Path) -> None:
    args = [*CLI, "run", "examples.echo:EchoHandler", "--workers", "2"]
    args += ["--bind", "tcp://127.0.0.1:0"]
    log = tmp_path / "out"
    with open(log, "w") as f:
        async with Process(args, stdout=f, stderr=f, cwd=ROOT, env=ENV) as proc:
            await anyio.to_thread.run_sync(wait_for_text, log, "with 2 workers")
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait(30) == 0
    lines = log.read_text().splitlines()
    assert sum("[anycore.server]" in ln for ln in lines) == 2, lines  # each worker's own
    assert any("worker:0 starting" in ln for ln in lines), lines
    for line in lines:
        assert len(TIMESTAMP.findall(line)) <= 1, line
        assert "pid=None" not in line, line


async def test_ctl_restart_shows_the_outcome_and_pid_is_the_programs(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("a: sleep 60\nb: exec sleep 61\n")
    sock = str(tmp_path / "ctl.sock")
    args = [*CLI, "supervise", str(tmp_path / "Procfile"), "--socket", sock]
    async with Process(args, stdout=PIPE, stderr=STDOUT, cwd=tmp_path, env=ENV) as proc:
        out = Output(proc)
        await out.expect(r"a running")
        out.read = 0  # b may have been ready before a
        await out.expect(r"b running")
        code, text, err = await ctl(sock, "status")
        assert code == 0, err
        rows = {ln.split()[0]: ln.split() for ln in text.splitlines()[1:]}
        old = int(rows["a"][2])
        assert comm(old) == "sleep"  # not /bin/sh's pid
        assert comm(int(rows["b"][2])) == "sleep"
        code, text, err = await ctl(sock, "restart", "a")
        assert code == 0, err
        [row] = [ln.split() for ln in text.splitlines()[1:]]
        assert row[:2] == ["a", "RUNNING"], text
        assert int(row[2]) != old
        assert comm(int(row[2])) == "sleep"
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait(30) == 0


STACK = f"""
[supervisor]
forward_signals = ["SIGHUP", "SIGUSR2"]

[programs.a]
command = '{RECORDER}'
ready_line = "READY"

[programs.b]
command = '{RECORDER}'
ready_line = "READY"
"""


async def test_signals_ctl_signal_forwarding_and_tail(tmp_path: Path) -> None:
    stack = tmp_path / "stack.toml"
    stack.write_text(STACK)
    sock = str(tmp_path / "ctl.sock")
    args = [*CLI, "supervise", str(stack), "--socket", sock]
    async with Process(args, stdout=PIPE, stderr=STDOUT, cwd=tmp_path, env=ENV) as proc:
        out = Output(proc)
        await out.expect(r"a running")
        out.read = 0  # b may have been ready before a
        await out.expect(r"b running")

        # ctl tail: the history first, then what comes.
        tail_args = [*CLI, "ctl", "--socket", sock, "tail", "a", "-n", "3"]
        async with Process(tail_args, stdout=PIPE, stderr=STDOUT, env=ENV) as tail:
            followed = Output(tail)
            for i in range(2):
                await followed.expect(rf"^a +\| line {i + 1}$" if i else r"^a +\| line 1$")
            await followed.expect(r"^a +\| READY$")

            # ctl signal NAME SIG reaches that program only.
            code, text, err = await ctl(sock, "signal", "a", "USR1")
            assert code == 0, err
            assert "RUNNING" in text
            await out.expect(r"^a +\| got SIGUSR1$")
            await followed.expect(r"^a +\| got SIGUSR1$")
            tail.send_signal(signal.SIGINT)
            assert await tail.wait(30) == 130

        # Forwarded: SIGUSR2 and SIGHUP reach every program; SIGHUP still reloads.
        proc.send_signal(signal.SIGUSR2)
        got = {(await out.expect(r"^([ab]) +\| got SIGUSR2$")).group(1) for _ in range(2)}
        assert got == {"a", "b"}
        proc.send_signal(signal.SIGHUP)
        await out.expect(r"reloaded: added -, changed -, removed -")
        out.read = 0
        got = {(await out.expect(r"^([ab]) +\| got SIGHUP$")).group(1) for _ in range(2)}
        assert got == {"a", "b"}
        # Not forwarded: SIGUSR1 only reopens the log.
        proc.send_signal(signal.SIGUSR1)
        await out.expect(r"log files reopened")
        proc.send_signal(signal.SIGUSR2)  # a marker: it arrives after any SIGUSR1 would
        for _ in range(2):
            await out.expect(r"^[ab] +\| got SIGUSR2$")

        code, _, err = await ctl(sock, "signal", "a", "NOPE")
        assert code == 2
        assert "unknown signal 'NOPE'" in err
        code, _, err = await ctl(sock, "signal", "zz", "HUP")
        assert code == 1
        assert "no such program: 'zz'" in err
        proc.send_signal(signal.SIGTERM)
        lines = await out.rest()
        assert await proc.wait(30) == 0
    assert [ln for ln in lines if ln.startswith("b") and "got SIGUSR1" in ln] == []


async def test_supervise_defaults_to_procfile_and_reads_dotenv(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(
        "a: sh -c 'echo \"greeting=$GREETING word=$WORD\"; exec sleep 60'\n"
    )
    (tmp_path / ".env").write_text('# the environment\nGREETING="hi there"\nexport WORD=x # c\n')
    sock = str(tmp_path / "ctl.sock")
    args = [*CLI, "supervise", "--socket", sock]
    async with Process(args, stdout=PIPE, stderr=STDOUT, cwd=tmp_path, env=ENV) as proc:
        out = Output(proc)
        await out.expect(r"^a +\| greeting=hi there word=x$")
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait(30) == 0
    (tmp_path / ".env").write_text("not a line\n")
    out_ = await run_process([*CLI, "supervise"], stdout=PIPE, stderr=PIPE, cwd=tmp_path,
                             env=ENV, timeout=30)  # fmt: skip
    assert out_.returncode == 1
    assert ".env:1: expected KEY=VALUE, got 'not a line'" in out_.stderr.decode()


async def test_programs_die_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("a: sleep 61\nb: sh -c 'sleep 62; echo never'\n")
    sock = str(tmp_path / "ctl.sock")
    args = [*CLI, "supervise", str(tmp_path / "Procfile"), "--socket", sock]
    async with Process(args, stdout=PIPE, stderr=STDOUT, cwd=tmp_path, env=ENV) as proc:
        out = Output(proc)
        pids = [int((await out.expect(r"a running \(pid (\d+)\)")).group(1))]
        out.read = 0
        pids.append(int((await out.expect(r"b running \(pid (\d+)\)")).group(1)))
        proc.kill()
        assert await proc.wait(30) == -signal.SIGKILL
    assert await anyio.to_thread.run_sync(all_gone, pids), pids


def all_gone(pids: list[int], timeout: float = 10) -> bool:
    """Whether every pid is gone or a zombie (polled, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        alive.append(pid)
            except OSError:
                pass
        if not alive:
            return True
        time.sleep(0.02)  # polling OS state, bounded
    return False
