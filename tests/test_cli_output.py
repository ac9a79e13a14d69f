"""What the anycore command writes: whole lines on shared streams, coloured
prefixes on a terminal only, and the one-line messages of bad arguments.

Real processes throughout; output files are polled with a bounded deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from _support import wait_for_text
from anycore._proc._subprocess import PIPE, STDOUT, Process, run_process

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
CLI = [PY, "-m", "anycore"]
# The subprocesses import this checkout's anycore whatever their directory.
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "framework")}
SERVING = re.compile(r"^anycore: pid (\d+) serving on tcp://127\.0\.0\.1:(\d+)$", re.M)


async def echo_once(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping\n")
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_serving_line_is_whole_with_stdout_and_stderr_in_one_file(tmp_path: Path) -> None:
    env = {**ENV, "PYTHONUNBUFFERED": "1"}
    args = [*CLI, "run", "examples.echo:EchoHandler", "--bind", "tcp://127.0.0.1:0"]
    for attempt in range(6):
        out = tmp_path / f"run{attempt}.log"
        with open(out, "w") as f:
            # Both descriptors on one open file, as `> f 2>&1` makes them.
            async with Process(args, stdout=f, stderr=f, cwd=ROOT, env=env) as proc:
                # The server's own log line follows the printed one at once.
                text = await asyncio.to_thread(wait_for_text, out, "[anycore.server]")
                match = SERVING.search(text)
                assert match is not None, f"no whole 'serving on' line in:\n{text}"
                assert int(match.group(1)) == proc.pid
                assert await echo_once(int(match.group(2))) == b"ping\n"
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait(30) == 0


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
async def test_serving_line_is_one_write_call(tmp_path: Path) -> None:
    # The property itself: the line a script waits for is one write(2) with its
    # newline (print() makes two, and another thread's line can come between).
    trace = tmp_path / "trace"
    out = tmp_path / "out"
    env = {**ENV, "PYTHONUNBUFFERED": "1"}
    args = ["strace", "-f", "-qq", "-e", "trace=write", "-s", "300", "-o", str(trace)]
    args += [*CLI, "run", "examples.echo:EchoHandler", "--bind", "tcp://127.0.0.1:0"]
    with open(out, "w") as f:
        async with Process(args, stdout=f, stderr=f, cwd=ROOT, env=env) as proc:
            text = await asyncio.to_thread(wait_for_text, out, "[anycore.server]")
            if "Operation not permitted" in text:
                pytest.skip("ptrace is not permitted here")
            pid = re.search(r"anycore: pid (\d+)", text)
            assert pid is not None, text
            os.kill(int(pid.group(1)), signal.SIGTERM)  # the traced anycore, not strace
            assert await proc.wait(30) == 0
    calls = re.findall(r'write\(1, "(.*)", \d+\)', trace.read_text())
    serving = [c for c in calls if "serving on" in c]
    assert len(serving) == 1, calls
    assert re.fullmatch(r"anycore: pid \d+ serving on tcp://127\.0\.0\.1:\d+\\n", serving[0])


async def cli(*args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    out = await run_process([*CLI, *args], stdout=PIPE, stderr=PIPE, cwd=cwd, env=ENV, timeout=30)
    return out.returncode, out.stdout.decode(), out.stderr.decode()


async def test_a_closed_fd_is_one_line_not_a_traceback() -> None:
    code, _, err = await cli("run", "examples.echo:EchoHandler", "--fd", "99")
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "anycore run: error: --fd 99: descriptor 99 is not open in this process"
    ]


async def test_arguments_are_checked_before_the_target_is_imported(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "loud.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from anycore import LineHandler\n"
        "class Loud(LineHandler):\n    pass\n"
        "async def main():\n    pass\n"
    )
    for args in (
        ["loud:Loud"],  # a handler with no --bind
        ["loud:Loud", "--bind", "tcp://127.0.0.1:99999"],
        ["loud:main", "--bind", "tcp://127.0.0.1:0"],  # a main takes no --bind
        ["loud:Loud", "--fd", "99"],
    ):
        code, _, err = await cli("run", *args, "--app-dir", str(tmp_path), cwd=tmp_path)
        assert code == 2, (args, err)
        assert "Traceback" not in err
        assert not marker.exists(), f"{args}: imported before the usage error: {err}"
    code, _, err = await cli("run", "loud:Loud", "--app-dir", str(tmp_path), cwd=tmp_path)
    assert "needs --bind ENDPOINT" in err


@pytest.mark.parametrize("tty", [True, False], ids=["tty", "pipe"])
@pytest.mark.parametrize("no_color", [False, True], ids=["color", "NO_COLOR"])
async def test_supervise_colours_prefixes_on_a_terminal_only(
    tmp_path: Path, tty: bool, no_color: bool
) -> None:
    (tmp_path / "Procfile").write_text(
        # ${0} is the name: the banner (which shows the command) has no "hello one".
        "one: sh -c 'echo hello ${0}; exec sleep 60' one\n"
        "two: sh -c 'echo hello ${0}; exec sleep 60' two\n"
    )
    env = {k: v for k, v in ENV.items() if k != "NO_COLOR"}
    if no_color:
        env["NO_COLOR"] = "1"
    sock = str(tmp_path / "ctl.sock")
    args = [*CLI, "supervise", str(tmp_path / "Procfile"), "--socket", sock]
    if tty:
        leader, follower = os.openpty()
        try:
            async with Process(args, stdout=follower, stderr=follower, env=env, cwd=tmp_path) as p:
                os.close(follower)
                follower = -1
                text = await asyncio.to_thread(read_pty_until, leader, ["hello one", "hello two"])
                p.send_signal(signal.SIGTERM)
                assert await p.wait(30) == 0
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)
    else:
        async with Process(args, stdout=PIPE, stderr=STDOUT, env=env, cwd=tmp_path) as p:
            assert p.stdout is not None
            chunks: list[str] = []
            async for raw in p.stdout:
                chunks.append(raw.decode() if isinstance(raw, bytes) else raw)
                joined = "".join(chunks)
                if "hello one" in joined and "hello two" in joined:
                    break
            text = "".join(chunks)
            p.send_signal(signal.SIGTERM)
            assert await p.wait(30) == 0
    coloured = re.search(r"\x1b\[[0-9;]*mone +\|?", text) is not None
    assert coloured == (tty and not no_color), text
    assert "hello one" in text
    if not coloured:
        assert "\x1b[" not in text


def read_pty_until(fd: int, needles: list[str], timeout: float = 30) -> str:
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
            text = data.decode(errors="replace")
            if all(n in text for n in needles):
                return text
    raise AssertionError(f"{needles} never seen:\n{data.decode(errors='replace')}")
