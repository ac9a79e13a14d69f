"""The anycore command: usage errors, messages, run --workers, supervise and SIGTERM.

Real processes: the command is run with ``python -m anycore``; synchronisation
through the lines it prints ("serving on", "running (pid N)"); leftover
processes are checked in /proc with a bounded poll.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import anyio
import pytest

from anycore import __version__
from anycore._proc._subprocess import PIPE, STDOUT, Process, run_process

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
CLI = [PY, "-m", "anycore"]


async def cli(*args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    out = await run_process([*CLI, *args], stdout=PIPE, stderr=PIPE, cwd=cwd, timeout=30)
    return out.returncode, out.stdout.decode(), out.stderr.decode()


def gone(pids: list[int], timeout: float = 10.0) -> bool:
    """Whether every pid has disappeared (or is a zombie of someone else), polled."""
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


async def read_until(
    proc: Process, pattern: str, seen: list[str], timeout: float = 30
) -> re.Match[str]:
    assert proc.stdout is not None
    regex = re.compile(pattern)
    with anyio.fail_after(timeout):
        async for raw in proc.stdout:
            text = raw if isinstance(raw, str) else raw.decode(errors="replace")
            line = text.rstrip("\n")
            seen.append(line)
            m = regex.search(line)
            if m:
                return m
    raise AssertionError(f"{pattern!r} never printed; output:\n" + "\n".join(seen))


async def test_version_and_help() -> None:
    code, out, _ = await cli("--version")
    assert code == 0
    assert out.strip() == f"anycore {__version__}"
    for command in ("run", "supervise", "ctl", "examples"):
        code, out, _ = await cli(command, "--help")
        assert code == 0
        assert out.startswith(f"usage: anycore {command}")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["run"],
        ["run", "examples.echo:EchoHandler", "--workers", "0", "--bind", "tcp://127.0.0.1:0"],
        ["run", "examples.echo:EchoHandler", "--loop", "trio"],
        ["run", "examples.echo:EchoHandler"],
        ["run", "examples.echo:EchoHandler", "--bind", "localhost:80"],
        ["run", "examples.echo:EchoHandler", "--bind", "udp://127.0.0.1:0"],
        ["run", "no_colon_here", "--bind", "tcp://127.0.0.1:0"],
        ["ctl", "stop"],
        ["ctl", "dance"],
    ],
)
async def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    code, _, err = await cli(*args)
    assert code == 2, err
    assert "Traceback" not in err
    assert "usage:" in err or "error:" in err


async def test_unknown_module_and_attribute() -> None:
    code, _, err = await cli("run", "no_such_module_xyz:App", "--bind", "tcp://127.0.0.1:0")
    assert code == 2
    assert "Traceback" not in err
    assert "cannot import 'no_such_module_xyz': no module named 'no_such_module_xyz'" in err
    code, _, err = await cli("run", "examples.echo:Nope", "--bind", "tcp://127.0.0.1:0")
    assert code == 2
    assert "module 'examples.echo' has no attribute 'Nope'" in err


async def test_port_in_use_message() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            code, _, err = await cli(
                "run", "examples.echo:EchoHandler", "--bind", f"tcp://127.0.0.1:{port}", *extra
            )
            assert code == 1, err
            assert "Traceback" not in err
            assert f"cannot listen on tcp://127.0.0.1:{port}: address already in use" in err


async def test_examples_lists_how_to_start_each() -> None:
    code, out, _ = await cli("examples")
    assert code == 0
    assert "anycore run examples.echo:EchoHandler --bind tcp://127.0.0.1:PORT" in out
    assert "anycore supervise examples/stack.toml" in out


PID_APP = """
import os
from anycore import LineHandler

class PidHandler(LineHandler):
    delimiter = b"\\n"

    def line_received(self, line):
        self.send_line(str(os.getpid()).encode())
"""


async def ask_pid(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"pid?\n")
        return int(await reader.readline())
    finally:
        writer.close()
        await writer.wait_closed()


async def test_run_workers_share_the_port(tmp_path: Path) -> None:
    (tmp_path / "pidapp.py").write_text(PID_APP)
    args = [*CLI, "run", "pidapp:PidHandler", "--workers", "2", "--bind", "tcp://127.0.0.1:0"]
    args += ["--app-dir", str(tmp_path), "--log-level", "WARNING"]
    seen: list[str] = []
    async with Process(args, stdout=PIPE, stderr=STDOUT, cwd=tmp_path) as proc:
        m = await read_until(proc, r"serving on tcp://127\.0\.0\.1:(\d+) with 2 workers", seen)
        port = int(m.group(1))
        pids: set[int] = set()
        with anyio.fail_after(30):
            for _ in range(200):
                pids.add(await ask_pid(port))
                if len(pids) == 2:
                    break
        assert len(pids) == 2
        assert proc.pid not in pids
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait(30) == 0
    assert gone(sorted(pids))


async def test_run_serves_inherited_fd_and_notifies_ready(tmp_path: Path) -> None:
    (tmp_path / "pidapp.py").write_text(PID_APP)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    fd = listener.fileno()
    args = [*CLI, "run", "pidapp:PidHandler", "--fd", str(fd), "--app-dir", str(tmp_path)]
    try:
        async with Process(args, stdout=PIPE, stderr=STDOUT, env=env, pass_fds=[fd]) as proc:
            listener.close()
            notify.setblocking(False)
            loop = asyncio.get_running_loop()
            with anyio.fail_after(30):
                message = await loop.sock_recv(notify, 4096)
            assert b"READY=1" in message.split(b"\n")
            assert await ask_pid(port) == proc.pid
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait(30) == 0
    finally:
        notify.close()
        listener.close()


STACK = """
[programs.a]
command = ["{py}", "-c", "import time; print('READY', flush=True); time.sleep(120)"]
ready_line = "READY"

[programs.b]
command = ["{py}", "-c", "import time; print('READY', flush=True); time.sleep(120)"]
ready_line = "READY"
depends_on = ["a"]

[programs.c]
command = "{py} -c \\"import time; print('READY', flush=True); time.sleep(120)\\""
ready_line = "READY"
depends_on = ["b"]
hint = "talk to c"
"""


async def test_supervise_sigterm_stops_in_reverse_order_and_exits_0(tmp_path: Path) -> None:
    stack = tmp_path / "stack.toml"
    stack.write_text(STACK.format(py=PY))
    sock = str(tmp_path / "ctl.sock")
    seen: list[str] = []
    args = [*CLI, "supervise", str(stack), "--socket", sock]
    async with Process(args, stdout=PIPE, stderr=STDOUT, cwd=tmp_path) as proc:
        await read_until(proc, r"try: talk to c", seen)
        pids = []
        for name in ("a", "b", "c"):
            m = await read_until(proc, rf"\| {name} running \(pid (\d+)\)", seen)
            pids.append(int(m.group(1)))
        code, out, _ = await cli("ctl", "--socket", sock, "status")
        assert code == 0
        assert out.count("RUNNING") == 3
        proc.send_signal(signal.SIGTERM)
        await read_until(proc, r"shutdown complete", seen)
        assert await proc.wait(30) == 0
    stopped = [ln.split("|")[1].split()[0] for ln in seen if ln.endswith("stopped (stopped)")]
    assert stopped == ["c", "b", "a"], seen
    assert "a          | READY" in seen
    assert gone(pids)
    assert not os.path.exists(sock)


async def test_supervise_reports_stack_errors(tmp_path: Path) -> None:
    bad = tmp_path / "Procfile"
    bad.write_text("web: true\nnot a line\n")
    code, _, err = await cli("supervise", str(bad))
    assert code == 1
    assert f"{bad}:2: expected 'name: command'" in err
    assert "Traceback" not in err


RELOAD_STACK = """
[programs.keep]
command = ["{py}", "-c", "import time; print('READY', flush=True); time.sleep(120)"]
ready_line = "READY"

[programs.change]
command = ["{py}", "-c", "{code}"]
ready_line = "READY"
env = {{ V = "{version}" }}
"""
PRINT_V = "import os, time; print('READY', os.environ['V'], flush=True); time.sleep(120)"


async def expect(proc: Process, pattern: str, seen: list[str], since: int) -> re.Match[str]:
    """The first line from ``seen[since:]`` on (read further if needed) matching."""
    regex = re.compile(pattern)
    for line in seen[since:]:
        m = regex.search(line)
        if m:
            return m
    return await read_until(proc, pattern, seen)


async def test_supervise_sighup_reloads_and_sigusr1_reopens_the_log(tmp_path: Path) -> None:
    stack = tmp_path / "stack.toml"
    stack.write_text(RELOAD_STACK.format(py=PY, code=PRINT_V, version="one"))
    sock = str(tmp_path / "ctl.sock")
    log = tmp_path / "supervise.log"
    seen: list[str] = []
    args = [*CLI, "supervise", str(stack), "--socket", sock, "--log-file", str(log)]
    async with Process(args, stdout=PIPE, stderr=STDOUT, cwd=tmp_path) as proc:
        keep = int((await expect(proc, r"\| keep running \(pid (\d+)\)", seen, 0)).group(1))
        old = int((await expect(proc, r"\| change running \(pid (\d+)\)", seen, 0)).group(1))
        await expect(proc, r"^change +\| READY one$", seen, 0)

        # SIGHUP: the edited program restarts with its new definition, the other stays.
        stack.write_text(RELOAD_STACK.format(py=PY, code=PRINT_V, version="two"))
        mark = len(seen)
        proc.send_signal(signal.SIGHUP)
        await expect(proc, r"reloaded: added -, changed \['change'\], removed -", seen, mark)
        new = int((await expect(proc, r"\| change running \(pid (\d+)\)", seen, mark)).group(1))
        await expect(proc, r"^change +\| READY two$", seen, mark)
        assert new != old
        assert gone([old])
        code, out, _ = await cli("ctl", "--socket", sock, "status")
        assert code == 0
        rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:]}
        assert rows["keep"][1:3] == ["RUNNING", str(keep)]
        assert rows["change"][1:3] == ["RUNNING", str(new)]

        # SIGUSR1 after logrotate moved the file: later lines go to a new file.
        rotated = tmp_path / "supervise.log.1"
        log.rename(rotated)
        mark = len(seen)
        proc.send_signal(signal.SIGUSR1)
        await expect(proc, r"log files reopened", seen, mark)
        proc.send_signal(signal.SIGTERM)
        await expect(proc, r"shutdown complete", seen, mark)
        assert await proc.wait(30) == 0
    assert "READY two" in rotated.read_text()
    fresh = log.read_text()
    assert "log files reopened" in fresh
    assert "READY two" not in fresh
    assert "keep running" not in fresh
    assert "keep stopped" in fresh
    assert gone([keep, new])
