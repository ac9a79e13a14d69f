"""Supervisor: restarts, backoff to FATAL, readiness ordering, stop order, control.

Real processes throughout; synchronisation through READY lines and the status
API (``wait_for`` / ``wait_state``), never fixed sleeps.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest

from anycore import Program, ProgramState, Supervisor, UnknownProgram
from anycore._proc._subprocess import PIPE, run_process

PY = sys.executable
# A program that reports READY and then waits to be stopped.
SLEEPER = (PY, "-c", "import time; print('READY', flush=True); time.sleep(120)")
S = ProgramState


def sleeper(name: str, **kw: object) -> Program:
    options: dict[str, object] = {"backoff_initial": 0.05, **kw}
    return Program(name, command=SLEEPER, ready_line="READY", **options)  # type: ignore[arg-type]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_kill_9_is_restarted_after_backoff() -> None:
    async with Supervisor([sleeper("app", backoff_initial=0.2)]) as sup:
        [st] = await sup.wait_state("app", S.RUNNING, timeout=20)
        first = st.pid
        assert first is not None
        assert st.ready
        assert st.restarts == 0
        os.kill(first, signal.SIGKILL)
        backoff = await sup.wait_state("app", S.BACKOFF, timeout=10)
        assert backoff[0].exit_code == -signal.SIGKILL
        assert "killed by SIGKILL" in backoff[0].description
        [again] = await sup.wait_for(
            "app", lambda s: s[0].state is S.RUNNING and s[0].pid not in (None, first), 20
        )
        assert again.restarts == 1
        assert pid_alive(again.pid or 0)
        assert not pid_alive(first)
    assert not pid_alive(again.pid or 0)


async def test_crash_loop_ends_fatal_while_the_rest_runs() -> None:
    crash = Program(
        "crash",
        command=(PY, "-c", "raise SystemExit(3)"),
        max_restarts=2,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    async with Supervisor([sleeper("steady"), crash]) as sup:
        [steady] = await sup.wait_state("steady", S.RUNNING, timeout=20)
        [fatal] = await sup.wait_state("crash", S.FATAL, timeout=20)
        assert fatal.restarts == 2
        assert fatal.exit_code == 3
        assert "gave up after 2 restarts" in fatal.description
        [still] = sup.status("steady")
        assert still.state is S.RUNNING
        assert still.pid == steady.pid
        # A FATAL program can be started again by hand.
        await sup.start("crash")
        await sup.wait_state("crash", S.FATAL, timeout=20)


async def test_missing_command_is_named_and_goes_fatal() -> None:
    prog = Program("ghost", command=("/no/such/program-xyz",), max_restarts=1, backoff_initial=0.01)
    async with Supervisor([prog]) as sup:
        [st] = await sup.wait_state("ghost", S.FATAL, timeout=10)
        assert "/no/such/program-xyz" in st.description


async def test_restart_policies() -> None:
    ok = (PY, "-c", "pass")
    progs = [
        Program("once", command=ok, restart="never"),
        Program("onfail", command=ok, restart="on-failure"),
        Program("failnever", command=(PY, "-c", "raise SystemExit(1)"), restart="never"),
    ]
    async with Supervisor(progs) as sup:
        for name, code in (("once", 0), ("onfail", 0), ("failnever", 1)):
            [st] = await sup.wait_state(name, S.EXITED, timeout=20)
            assert st.exit_code == code
            assert st.restarts == 0


async def test_dependants_start_only_once_dependencies_are_ready(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # `base` becomes ready only when the test creates the gate file.
    waits = (
        "import os, time\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
        "print('READY', flush=True); time.sleep(120)"
    )
    base = Program("base", command=(PY, "-c", waits), ready_line="READY")
    app = sleeper("app", depends_on=("base",))
    async with Supervisor([app, base]) as sup:
        await sup.wait_for("base", lambda s: s[0].pid is not None, 20)
        [a] = await sup.wait_for("app", lambda s: "waiting for base" in s[0].description, 20)
        assert a.pid is None
        assert a.state is S.STARTING
        gate.touch()
        await sup.wait_state("base", S.RUNNING, timeout=20)
        await sup.wait_state("app", S.RUNNING, timeout=20)
        snap = {st.name: st for st in sup.status()}
        assert snap["app"].pid is not None
        base_up, app_up = snap["base"].uptime, snap["app"].uptime
        assert base_up is not None
        assert app_up is not None
        assert base_up > app_up  # base started first (one snapshot)


async def test_ready_port_check(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import socket, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(120)"
    )
    prog = Program("srv", command=(PY, "-c", code), ready_port=port)
    async with Supervisor([prog]) as sup:
        [st] = await sup.wait_state("srv", S.RUNNING, timeout=20)
        assert st.ready


async def test_stop_in_reverse_dependency_order() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.endswith("stopped (stopped)"):
                records.append(msg.split()[0])

    handler = Collect()
    log = logging.getLogger("anycore.supervisor")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        progs = [sleeper("c", depends_on=("b",)), sleeper("b", depends_on=("a",)), sleeper("a")]
        async with Supervisor(progs) as sup:
            await sup.wait_state("c", S.RUNNING, timeout=30)
            pids = [s.pid for s in sup.status()]
            assert [s.name for s in sup.status()] == ["a", "b", "c"]
        assert records == ["c", "b", "a"]
        assert all(s.state is S.STOPPED and s.pid is None for s in sup.status())
        assert not any(pid_alive(p or 0) for p in pids)
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


async def test_stop_signal_then_kill_after_grace() -> None:
    # Ignores SIGTERM: it is killed after the grace period.
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('READY', flush=True); time.sleep(120)"
    )
    prog = Program("stubborn", command=(PY, "-c", stubborn), ready_line="READY", grace_period=0.3)
    prog2 = Program(
        "polite",
        command=(PY, "-c", "import signal,sys,time\n"
                 "signal.signal(signal.SIGUSR2, lambda *a: sys.exit(7))\n"
                 "print('READY', flush=True); time.sleep(120)"),
        ready_line="READY",
        stop_signal=signal.SIGUSR2,
    )  # fmt: skip
    async with Supervisor([prog, prog2]) as sup:
        await sup.wait_state("stubborn", S.RUNNING, timeout=20)
        await sup.wait_state("polite", S.RUNNING, timeout=20)
        [st] = await sup.stop("stubborn")
        assert st.state is S.STOPPED
        [st] = await sup.stop("polite")
        assert st.state is S.STOPPED


async def test_numprocs_and_index_substitution() -> None:
    prog = Program(
        "w",
        command=(PY, "-c", "import os,time; print('READY', os.environ['IDX'], flush=True); "
                 "time.sleep(120)"),
        env={"IDX": "n{index}"},
        ready_line=r"READY n\d",
        numprocs=3,
    )  # fmt: skip
    async with Supervisor([prog]) as sup:
        snap = await sup.wait_state("w", S.RUNNING, timeout=30)
        assert [s.name for s in snap] == ["w:0", "w:1", "w:2"]
        assert len({s.pid for s in snap}) == 3
        [one] = await sup.restart("w:1")
        assert one.name == "w:1"
        await sup.wait_state("w:1", S.RUNNING, timeout=20)


async def test_control_commands(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")
    ctl = [PY, "-m", "anycore", "ctl", "--socket", path]
    async with Supervisor([sleeper("a"), sleeper("b")], control_socket=path) as sup:
        await sup.wait_state("all", S.RUNNING, timeout=30)
        out = await run_process([*ctl, "status"], stdout=PIPE, stderr=PIPE, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.decode().splitlines()
        assert lines[0].split()[:3] == ["NAME", "STATE", "PID"]
        assert [ln.split()[1] for ln in lines[1:]] == ["RUNNING", "RUNNING"]

        out = await run_process([*ctl, "stop", "b"], stdout=PIPE, stderr=PIPE, timeout=30)
        assert out.returncode == 0
        assert "STOPPED" in out.stdout.decode()
        assert sup.status("b")[0].state is S.STOPPED

        out = await run_process([*ctl, "start", "b"], stdout=PIPE, stderr=PIPE, timeout=30)
        assert out.returncode == 0
        await sup.wait_state("b", S.RUNNING, timeout=20)

        old = sup.status("a")[0].pid
        reply = await sup.handle_command('{"command": "restart", "name": "a"}')
        assert reply["ok"]
        [a] = await sup.wait_state("a", S.RUNNING, timeout=20)
        assert a.pid != old

        out = await run_process([*ctl, "stop", "nope"], stdout=PIPE, stderr=PIPE, timeout=30)
        assert out.returncode == 1
        assert "no such program: 'nope'" in out.stderr.decode()
        assert (await sup.handle_command("dance"))["ok"] is False
        # A second supervisor cannot take the socket of a live one.
        with pytest.raises(Exception, match="another supervisor"):
            async with Supervisor([], control_socket=path):
                pass
    assert not os.path.exists(path)
    out = await run_process([*ctl, "status"], stdout=PIPE, stderr=PIPE, timeout=30)
    assert out.returncode == 1
    assert "no supervisor is listening" in out.stderr.decode()


async def test_reload_restarts_changed_adds_and_removes() -> None:
    async with Supervisor([sleeper("keep"), sleeper("change"), sleeper("drop")]) as sup:
        await sup.wait_state("all", S.RUNNING, timeout=30)
        keep_pid = sup.status("keep")[0].pid
        change_pid = sup.status("change")[0].pid
        result = await sup.reload(
            [sleeper("keep"), sleeper("change", env={"X": "1"}), sleeper("new")]
        )
        assert result == {"added": ["new"], "changed": ["change"], "removed": ["drop"]}
        await sup.wait_state("all", S.RUNNING, timeout=30)
        assert sup.status("keep")[0].pid == keep_pid
        assert sup.status("change")[0].pid != change_pid
        with pytest.raises(UnknownProgram):
            sup.status("drop")
        with pytest.raises(ValueError, match="cycle"):
            await sup.reload([sleeper("x", depends_on=("y",)), sleeper("y", depends_on=("x",))])


def test_program_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Program("x")
    with pytest.raises(ValueError, match="invalid program name"):
        Program("a b", command="true")
    with pytest.raises(ValueError, match="restart"):
        Program("x", command="true", restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown program"):
        Supervisor([Program("x", command="true", depends_on=("y",))])
    assert Program("x", command=["a", "b"]).command == ("a", "b")  # type: ignore[arg-type]
    assert Program("x", command="a") == Program("x", command="a")
    assert Program("x", command="a", env={"A": "1"}) != Program("x", command="a")


async def test_the_supervise_example_runs() -> None:
    root = Path(__file__).resolve().parent.parent
    out = await run_process(
        [PY, str(root / "examples" / "supervise_demo.py")], stdout=PIPE, stderr=PIPE, timeout=50
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert [ln.split()[0] for ln in lines] == ["db", "web:0", "web:1"]
    assert "restarts=1" in lines[2]


async def test_callable_programs_capture_output_with_env_cwd_and_notify(tmp_path: Path) -> None:
    from _supervisor_targets import fail, notify_ready_and_sleep, report_and_sleep

    lines: list[tuple[str, str, int | None, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stream = getattr(record, "stream", "")
            lines.append((record.name, stream, getattr(record, "pid", None), record.getMessage()))

    handler = Collect()
    log = logging.getLogger("anycore.program")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    progs = [
        Program(
            "py",
            target=report_and_sleep,
            env={"GREETING": "hello {index}"},
            cwd=str(tmp_path),
            ready_line=r"^READY ",
        ),
        Program("notified", target=notify_ready_and_sleep, ready_notify=True, ready_timeout=20),
        Program("failing", target=fail, restart="never"),
    ]
    try:
        async with Supervisor(progs) as sup:
            [py] = await sup.wait_state("py", S.RUNNING, timeout=30)
            [notified] = await sup.wait_state("notified", S.RUNNING, timeout=30)
            assert py.ready
            assert notified.ready
            [failing] = await sup.wait_state("failing", S.EXITED, timeout=30)
            assert failing.exit_code == 1
        assert not pid_alive(py.pid or 0)
        assert not pid_alive(notified.pid or 0)
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    own = [(stream, pid, msg) for name, stream, pid, msg in lines if name == "anycore.program.py"]
    assert ("stdout", py.pid, f"READY py hello 0 {tmp_path}") in own
    assert ("stderr", py.pid, "to stderr") in own
    [traceback] = [msg for name, _, _, msg in lines if name == "anycore.program.failing"]
    assert "ValueError: callable program failed" in traceback


async def test_callable_program_with_a_missing_cwd_cannot_start(tmp_path: Path) -> None:
    from _supervisor_targets import report_and_sleep

    prog = Program("nocwd", target=report_and_sleep, cwd=str(tmp_path / "missing"), max_restarts=0)
    async with Supervisor([prog]) as sup:
        [st] = await sup.wait_state("nocwd", S.FATAL, timeout=30)
        assert "cwd is not a directory" in st.description


def comm_after_exec(pid: int, expected: str, timeout: float = 5) -> str:
    """The process's command name once it is ``expected``, or its last one after
    ``timeout`` (polled: it goes python -> sh -> the program as it execs)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/comm") as f:
            name = f.read().strip()
        if name == expected or time.monotonic() > deadline:
            return name
        time.sleep(0.01)  # polling OS state, bounded


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("sleep 60", "exec sleep 60"),
        ('FOO=1 BAR="a b" python x.py', 'FOO=1 BAR="a b" exec python x.py'),
        ('echo "a;b"', 'exec echo "a;b"'),
        ("exec sleep 1", "exec sleep 1"),
        ("a && b", "a && b"),
        ("x | y", "x | y"),
        ("cd d; run", "cd d; run"),
        ("if true; then x; fi", "if true; then x; fi"),
        ("A=1", "A=1"),
        ("echo 'unbalanced", "echo 'unbalanced"),
    ],
)
def test_exec_form_replaces_the_shell_for_one_simple_command(command: str, expected: str) -> None:
    from anycore._supervise._program import exec_form

    assert exec_form(command) == expected


async def test_shell_command_pid_is_the_programs() -> None:
    async with Supervisor([Program("a", command="FOO=1 sleep 60")]) as sup:
        [a] = await sup.wait_state("a", S.RUNNING, timeout=30)
        assert a.pid is not None
        assert (
            await anyio.to_thread.run_sync(comm_after_exec, a.pid, "sleep") == "sleep"
        )  # not "sh"
        with open(f"/proc/{a.pid}/environ", "rb") as f:
            assert b"FOO=1" in f.read().split(b"\0")


async def test_tail_follows_across_restarts_and_reloads(tmp_path: Path) -> None:
    import json

    def printer(version: str) -> Program:
        code = "import os, time; print('V', os.environ['V'], flush=True); time.sleep(120)"
        return Program("a", command=(PY, "-c", code), env={"V": version}, ready_line="V")

    path = str(tmp_path / "ctl.sock")
    async with Supervisor([printer("one")], control_socket=path) as sup:
        await sup.wait_state("a", S.RUNNING, timeout=30)
        async with await anyio.connect_unix(path) as stream:
            await stream.send(b"tail a 5\n")
            buffer = b""

            async def next_item() -> dict[str, object]:
                nonlocal buffer
                with anyio.fail_after(30):
                    while b"\n" not in buffer:
                        buffer += await stream.receive()
                line, _, buffer = buffer.partition(b"\n")
                item: dict[str, object] = json.loads(line)
                return item

            assert await next_item() == {"ok": True, "following": "a"}
            assert await next_item() == {"name": "a", "stream": "stdout", "line": "V one"}
            await sup.restart("a")
            assert (await next_item())["line"] == "V one"
            await sup.reload([printer("two")])
            assert (await next_item())["line"] == "V two"
    assert not os.path.exists(path)
