"""Load (issue 19): SIGKILL of pool workers and supervised children under load,
and SIGTERM while 100 clients are mid-request and a queue holds 10,000 items.

Real processes and real sockets on 127.0.0.1; every wait has a deadline.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from _kill_targets import CLIENTS, ITEMS, LOOP, work

from anycore import Program, ProgramState, ProgramStatus, Supervisor, WorkerPool
from anycore.errors import WorkerCrashed
from test_child import assert_no_descendants, wait_for_file
from test_pools_workers import announce_and_sleep

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

TASKS = 200
KILLS = 3


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


# -- 1. pool workers ------------------------------------------------------------


@pytest.mark.stress
@pytest.mark.timeout(60)
async def test_sigkill_of_pool_workers_mid_run_fails_only_their_jobs() -> None:
    killed: set[int] = set()
    async with WorkerPool("processes", workers=2, max_inflight=TASKS) as pool:
        results = [await pool.submit(work, i) for i in range(TASKS)]
        with anyio.fail_after(25):
            for k in range(KILLS):
                # Wait (on results, not time) until the run is well under way.
                mark = (k + 1) * TASKS // (KILLS + 2)
                await results[mark].wait()
                done = [r for r in results[: mark + 1] if r.ready()]
                pids = {(await r)[2] for r in done if r.successful() and (await r)[2] not in killed}
                live = [p for p in pids if _alive(p)]
                assert live, "no live worker to kill"
                pid = live[0]
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            crashed: list[WorkerCrashed] = []
            for i, res in enumerate(results):
                try:
                    got = await res
                except WorkerCrashed as exc:
                    crashed.append(exc)
                else:
                    assert got[:2] == (i, i * i)
        # Only jobs that were running on a killed worker failed, at most one per kill.
        assert 1 <= len(crashed) <= KILLS, crashed
        assert {exc.pid for exc in crashed} <= killed
        assert all(exc.exitcode == -signal.SIGKILL for exc in crashed)
        stats = pool.statistics()
        assert stats.crashed == KILLS  # a kill with a frame unread is a crash too
        assert stats.done == TASKS - len(crashed)
        assert stats.failed == len(crashed)
        assert stats.workers == 2
        # The pool keeps working, on replacement workers.
        again = await pool.map(work, range(20))
        assert [r[:2] for r in again] == [(i, i * i) for i in range(20)]
        assert not {r[2] for r in again} & killed
    assert_no_descendants()


@pytest.mark.stress
@pytest.mark.timeout(60)
async def test_a_worker_killed_with_a_job_unread_counts_as_crashed(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    async with WorkerPool("processes", workers=1) as pool:
        first = await pool.submit(announce_and_sleep, str(ready))
        pid = int(await wait_for_file(ready))
        os.kill(pid, signal.SIGSTOP)  # it reads nothing more
        second = await pool.submit(work, 7)
        with anyio.fail_after(10):  # until the second job is handed to the stopped worker
            while pool.statistics().running < 2:
                await anyio.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            await first
        assert (await second)[:2] == (7, 49)  # requeued on the replacement
        assert pool.statistics().crashed == 1
    assert_no_descendants()


# -- 2. supervised children ------------------------------------------------------


async def _fresh(sup: Supervisor, killed: list[int]) -> tuple[ProgramStatus, int]:
    """``looper:0`` once it runs, ready, in a process not killed yet (10 s at most)."""

    def fresh(snap: list[ProgramStatus]) -> bool:
        (st,) = snap
        return st.state is ProgramState.RUNNING and st.ready and st.pid not in killed

    (st,) = await sup.wait_for("looper:0", fresh, timeout=10)
    assert st.pid is not None
    return st, st.pid


@pytest.mark.stress
@pytest.mark.timeout(60)
async def test_sigkill_of_a_supervised_program_restarts_it_by_policy() -> None:
    program = Program(
        "looper",
        command=(sys.executable, "-u", "-c", LOOP),
        restart="always",
        numprocs=2,
        backoff_initial=0.05,
        backoff_max=0.2,
        max_restarts=20,
        ready_line="tick",
        ready_timeout=10,
        grace_period=2,
    )
    kills = 5
    killed: list[int] = []
    async with Supervisor([program]) as sup:
        (steady,) = await sup.wait_for(
            "looper:1", lambda s: s[0].state is ProgramState.RUNNING and s[0].ready, timeout=10
        )
        for n in range(kills):
            # Restarted by policy each time: a new, ready process within bounded time.
            st, pid = await _fresh(sup, killed)
            assert st.restarts == n
            if n:
                assert st.exit_code == -signal.SIGKILL
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        st, last = await _fresh(sup, killed)
        assert st.restarts == kills
        assert st.exit_code == -signal.SIGKILL
        # The other instance was not touched.
        (other,) = sup.status("looper:1")
        assert other.pid == steady.pid
        assert other.restarts == 0
        survivors = [last, other.pid]
    assert sup.status("looper:0")[0].pid is None
    assert not any(_alive(p) for p in [*killed, *survivors] if p is not None)
    assert_no_descendants()


# -- 3. SIGTERM mid-request ------------------------------------------------------


def _line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of ``proc``, waited for at most ``timeout`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no line from the server within {timeout} s")
    return proc.stdout.readline()


def _reply(sock: socket.socket) -> bytes:
    """What the server sent before closing, or up to a newline (socket timeout bounds it)."""
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(4096)  # ConnectionResetError / TimeoutError fail the test
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.stress
@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sigterm_with_100_requests_in_flight_and_a_full_queue(loop: str, tmp_path: Path) -> None:
    logfile = tmp_path / "requests.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "framework")}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_kill_targets.py"), loop, str(logfile)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    clients: list[socket.socket] = []
    try:
        first = _line(proc, 20).split()
        assert first[0] == "PORT", first
        port = int(first[1])
        for i in range(CLIENTS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=15)
            clients.append(sock)
            sock.sendall(f"{i}\n".encode())
        assert _line(proc, 15).split() == ["BUSY", str(CLIENTS)]
        proc.send_signal(signal.SIGTERM)
        queued = _line(proc, 15).split()
        assert _line(proc, 15).split() == ["DRAINING"]
        # Once the listeners are closed, a newcomer is refused by the kernel at
        # once (never accepted and then reset), while the 100 are still served.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        replies = [_reply(sock) for sock in clients]
        assert proc.wait(30) == 0
        last = _line(proc, 5).split()
    finally:
        for sock in clients:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    # Every accepted request was answered (none was cut: the drain bound is 10 s).
    assert replies == [f"ok {i}\n".encode() for i in range(CLIENTS)]
    # Every queued item was processed (or, had it been left, counted as left).
    assert queued[0] == "QUEUED", queued
    assert int(queued[1]) > 0  # the shutdown began with items in the queue
    assert last[0] == "CONSUMED", last
    assert last[2] == "LEFT", last
    consumed, left = int(last[1]), int(last[3])
    assert consumed + left == ITEMS
    assert consumed == ITEMS
    # Every log record is in the file.
    lines = logfile.read_text().splitlines()
    assert sorted(lines) == sorted(f"request {i}" for i in range(CLIENTS))
