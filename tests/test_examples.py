"""Every example in examples/ runs: its self-demo, its serve mode, its import path."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 30


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_echo_demo() -> None:
    out = run_example("echo.py")
    assert re.search(r"echo server on tcp://127\.0\.0\.1:\d+", out)
    assert "echoed: hello\nechoed: anycore\nechoed: echo\n" in out
    assert "server saw 1 connection(s)" in out
    assert out.rstrip().endswith("done")


def test_chat_demo() -> None:
    out = run_example("chat.py")
    for expected in (
        "alice sees: Hello alice! Here: nobody else yet.",
        "bob sees:   Sorry, alice is taken.",
        "alice sees: * bob has joined",
        "bob sees:   <alice> hi bob!",
        "alice sees: * bob waves",
        "bob sees:   Here: alice, bob",
        "bob sees:   Bye!",
        "alice sees: * bob has left",
    ):
        assert expected in out
    assert out.rstrip().endswith("done")


CTIME = r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}"


def test_time_server_demo() -> None:
    out = run_example("time_server.py")
    assert re.search(rf"TCP says: {CTIME}\n", out), out
    assert re.search(rf"UDP says: {CTIME}\n", out), out
    assert re.search(r"time server on tcp://127\.0\.0\.1:\d+ and udp://127\.0\.0\.1:\d+", out)


def test_resp_kv_demo() -> None:
    out = run_example("resp_kv.py")
    for expected in (
        "PING -> 'PONG'",
        "SET greeting hello -> 'OK'",
        "GET greeting -> b'hello'",
        "INCR counter -> 2",
        "TTL session -> 100",
        "MGET greeting counter missing -> [b'hello', b'2', None]",
        "EXISTS greeting missing -> 1",
        "DEL greeting -> 1",
        "GET greeting -> None",
        "ECHO inline -> b'inline'",
    ):
        assert expected in out, out


class Served:
    """An example started in serve mode on port 0; the READY line gives the port."""

    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        # Wait (bounded) for the line the server prints once it listens.
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        self.ready = self.proc.stdout.readline() if ready else ""
        match = re.search(r"tcp://127\.0\.0\.1:(\d+)", self.ready)
        if match is None:
            self.stop()
            raise AssertionError(f"no READY line from {name}: {self.ready!r}")
        self.port = int(match.group(1))

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def _exchange(port: int, data: bytes, *, until: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(data)
        got = b""
        while until not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


@pytest.mark.parametrize(
    ("name", "request_", "expect"),
    [
        ("echo.py", b"ping over tcp\n", b"ping over tcp\n"),
        ("chat.py", b"carol\n", b"Hello carol!"),
        ("resp_kv.py", b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
        ("time_server.py", b"", b"\r\n"),
    ],
)
def test_serve_mode_answers_and_stops_on_sigterm(name: str, request_: bytes, expect: bytes) -> None:
    served = Served(name)
    try:
        assert expect in _exchange(served.port, request_, until=expect)
    finally:
        code, err = served.stop()
    assert code == 0, err
    assert "Traceback" not in err, err


def test_time_server_serves_udp_on_the_same_port() -> None:
    served = Served("time_server.py")
    try:
        assert f"udp://127.0.0.1:{served.port}" in served.ready
        out = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "time_server.py"),
                "client",
                "--udp",
                "--port",
                str(served.port),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout
        assert re.fullmatch(rf"{CTIME}\n", out), out
        out = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "time_server.py"),
                "client",
                "--port",
                str(served.port),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout
        assert re.fullmatch(rf"{CTIME}\n", out), out
    finally:
        code, err = served.stop()
    assert code == 0, err


def test_echo_client_mode() -> None:
    served = Served("echo.py")
    try:
        out = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "echo.py"),
                "client",
                "--port",
                str(served.port),
                "one",
                "two",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout
        assert out == "one\ntwo\n"
    finally:
        served.stop()


@pytest.mark.parametrize(
    "target",
    [
        "examples.echo:EchoHandler",
        "examples.echo:EchoClient",
        "examples.chat:ChatHandler",
        "examples.time_server:TimeHandler",
        "examples.time_server:TimeDatagramHandler",
        "examples.resp_kv:RespHandler",
    ],
)
def test_handlers_importable_by_module_path(target: str) -> None:
    # What `anycore run module:Handler` does: import the module from the
    # current directory, fetch the class; it must construct without arguments.
    module, _, attr = target.partition(":")
    code = (
        "import importlib, anycore; "
        f"cls = getattr(importlib.import_module({module!r}), {attr!r}); "
        "h = cls(); "
        "assert isinstance(h, (anycore.Handler, anycore.DatagramHandler)), h; "
        "print('ok')"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"
