"""Load (issue 19): 10,000 concurrent connections on one server process from
separate client processes; every one answered, and the server's memory per
connection stays under 4 KiB."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONNECTIONS = 10_000
CLIENTS = 4
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _settled_rss(pid: int) -> int:
    """RSS once it stops moving (bounded: at most 5 s)."""
    last = _rss(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.2)  # sampling a number that settles, not synchronising
        now = _rss(pid)
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def _line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """The next stdout line of ``proc`` (which must start with ``prefix``)."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no {prefix!r} line within {timeout} s")
    line = proc.stdout.readline()
    assert line.startswith(prefix), (line, proc.poll())
    return line.split()[1]


@pytest.mark.stress
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_ten_thousand_connections_from_separate_processes(loop: str) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < CONNECTIONS + 512:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) is below {CONNECTIONS + 512}")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "framework")}

    server = subprocess.Popen(
        [sys.executable, str(HERE / "_load_server.py"), loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        port = int(_line(server, "port", 30))
        before = _settled_rss(server.pid)
        per_client = CONNECTIONS // CLIENTS
        clients = [
            subprocess.Popen(
                [sys.executable, str(HERE / "_load_client.py"), str(port), str(per_client)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(CLIENTS)
        ]
        for c in clients:
            assert int(_line(c, "connected", 120)) == per_client
        held = _settled_rss(server.pid)
        for c in clients:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        answered = [int(_line(c, "answered", 180)) for c in clients]
        assert answered == [per_client] * CLIENTS
        after = _settled_rss(server.pid)
        per_connection = (held - before) / CONNECTIONS
        print(
            f"\n{loop}: {CONNECTIONS} connections, server RSS {before / 2**20:.1f} MiB -> "
            f"{held / 2**20:.1f} MiB held ({per_connection / 1024:.2f} KiB per connection), "
            f"{after / 2**20:.1f} MiB after every one was answered "
            f"({(after - before) / CONNECTIONS / 1024:.2f} KiB per connection)"
        )
        assert per_connection < 4 * 1024
        assert (after - before) / CONNECTIONS < 4 * 1024
    finally:
        for c in clients:
            c.kill()
            c.wait(10)
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        for p in [server, *clients]:
            if p.stdout is not None:
                p.stdout.close()
            if p.stdin is not None and not p.stdin.closed:
                p.stdin.close()
