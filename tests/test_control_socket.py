"""The supervisor's control socket: private directory, 0600 from the start,
peer credentials on both ends, bounded requests, no terminal escapes printed.

Another local user is simulated by a root test process that binds, then drops
to uid ``nobody`` before listening (SO_PEERCRED reports the listener's
credentials at listen()); those tests are skipped when not running as root.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest

import anycore._supervise._control as control_module
from anycore import ControlSocketError, Program, ProgramState, Supervisor
from anycore._proc._subprocess import PIPE, STDOUT, Process, run_process

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
NOBODY = 65534
SLEEPER = (PY, "-c", "import time; print('READY', flush=True); time.sleep(120)")
as_root = pytest.mark.skipif(os.getuid() != 0, reason="simulating another user needs root")


def private_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "ANYCORE_CTL_SOCKET")
    }
    env["TMPDIR"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "framework"), str(TESTS)])
    return env


async def cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    out = await run_process(
        [PY, "-m", "anycore", *args], stdout=PIPE, stderr=PIPE, env=env, cwd=ROOT, timeout=60
    )
    return out.returncode, out.stdout.decode(), out.stderr.decode()


async def read_line(proc: Process, needle: str, seen: list[str], timeout: float = 30) -> str:
    assert proc.stdout is not None
    with anyio.fail_after(timeout):
        async for raw in proc.stdout:
            line = (raw if isinstance(raw, str) else raw.decode(errors="replace")).rstrip("\n")
            seen.append(line)
            if needle in line:
                return line
    raise AssertionError(f"{needle!r} never printed:\n" + "\n".join(seen))


def start_squatter(path: str, chown: bool, env: dict[str, str]) -> Process:
    code = f"from _supervisor_targets import squat; squat({path!r}, {NOBODY}, {chown})"
    return Process([PY, "-c", code], stdout=PIPE, stderr=STDOUT, env=env, cwd=TESTS)


def test_control_directory_is_created_private(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = control_module.control_directory()
    assert path == str(tmp_path / "anycore")
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.getuid()
    assert control_module.control_directory() == path  # an existing good one is kept


@pytest.mark.parametrize("mode", [0o777, 0o750])
def test_an_open_control_directory_is_refused(tmp_path: Path, monkeypatch: Any, mode: int) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "anycore").mkdir()
    os.chmod(tmp_path / "anycore", mode)
    with pytest.raises(ControlSocketError, match=f"mode {mode:04o}"):
        control_module.control_directory()


def test_a_symlinked_control_directory_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "anycore").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ControlSocketError, match="not a directory"):
        control_module.control_directory()


@as_root
def test_another_users_control_directory_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "anycore").mkdir(mode=0o700)
    os.chown(tmp_path / "anycore", NOBODY, NOBODY)
    with pytest.raises(ControlSocketError, match=f"belongs to uid {NOBODY}"):
        control_module.control_directory()


async def test_supervise_and_ctl_refuse_an_open_directory_in_one_line(tmp_path: Path) -> None:
    env = private_env(tmp_path)
    (tmp_path / "Procfile").write_text("a: sleep 60\n")
    bad = tmp_path / f"anycore-{os.getuid()}"
    bad.mkdir()
    os.chmod(bad, 0o777)
    for args in (["supervise", str(tmp_path / "Procfile")], ["ctl", "status"]):
        code, _, err = await cli(*args, env=env)
        assert code == 1, err
        assert "Traceback" not in err
        assert f"{bad} has mode 0777" in err


async def test_socket_is_0600_in_a_0700_directory_from_the_start(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # Watch the moment the socket appears at its path: already 0600 and listening.
    seen: list[tuple[int, bool]] = []
    real_rename = os.rename

    def spy(src: str, dst: str) -> None:
        parent = os.stat(os.path.dirname(src))
        with socket.socket(socket.AF_UNIX) as probe:
            listening = probe.connect_ex(src) == 0
        seen.append((stat.S_IMODE(os.stat(src).st_mode) | stat.S_IMODE(parent.st_mode) << 9,
                     listening))  # fmt: skip
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", spy)
    path = str(tmp_path / "ctl.sock")
    old = os.umask(0)
    try:
        async with Supervisor([], control_socket=path):
            pass
    finally:
        os.umask(old)
    assert seen == [(0o600 | 0o700 << 9, True)]
    assert not os.path.exists(path)
    assert [p.name for p in tmp_path.iterdir()] == []  # the private directory is gone


async def test_supervise_default_socket_lives_in_the_private_directory(tmp_path: Path) -> None:
    env = private_env(tmp_path)
    (tmp_path / "Procfile").write_text(
        f"a: {PY} -c \"import time; print('up', flush=True); time.sleep(60)\"\n"
    )
    seen: list[str] = []
    args = [PY, "-m", "anycore", "supervise", str(tmp_path / "Procfile")]
    async with Process(args, stdout=PIPE, stderr=STDOUT, env=env, cwd=tmp_path) as sup:
        await read_line(sup, "a running", seen)
        sock = tmp_path / f"anycore-{os.getuid()}" / "supervisor.sock"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
        code, out, err = await cli("ctl", "status", env=env)
        assert code == 0, err
        assert out.splitlines()[1].split()[:2] == ["a", "RUNNING"]
        sup.send_signal(15)
        assert await sup.wait(30) == 0


@as_root
async def test_a_squatter_on_the_old_path_changes_nothing(tmp_path: Path) -> None:
    env = private_env(tmp_path)
    old_path = str(tmp_path / f"anycore-{os.getuid()}.sock")
    (tmp_path / "Procfile").write_text("a: sleep 60\n")
    squatter_out: list[str] = []
    seen: list[str] = []
    async with start_squatter(old_path, True, env) as squatter:
        await read_line(squatter, "listening", squatter_out)
        args = [PY, "-m", "anycore", "supervise", str(tmp_path / "Procfile")]
        async with Process(args, stdout=PIPE, stderr=STDOUT, env=env, cwd=tmp_path) as sup:
            await read_line(sup, "a running", seen)
            code, out, err = await cli("ctl", "status", env=env)
            assert code == 0, err
            assert "FORGED" not in out
            assert "\x1b" not in out
            assert out.splitlines()[1].split()[:2] == ["a", "RUNNING"]
            sup.send_signal(15)
            assert await sup.wait(30) == 0
        squatter.kill()
        await squatter.wait(10)
        assert squatter.stdout is not None
        async for raw in squatter.stdout:
            squatter_out.append(raw.decode() if isinstance(raw, bytes) else raw)
    assert not any("request" in line for line in squatter_out), squatter_out


@as_root
@pytest.mark.parametrize("chown", [True, False], ids=["file-and-peer", "peer-only"])
async def test_ctl_refuses_a_socket_of_another_user(tmp_path: Path, chown: bool) -> None:
    env = private_env(tmp_path)
    path = str(tmp_path / "ctl.sock")
    squatter_out: list[str] = []
    async with start_squatter(path, chown, env) as squatter:
        await read_line(squatter, "listening", squatter_out)
        code, out, err = await cli("ctl", "--socket", path, "stop", "all", env=env)
        assert code == 1
        assert "FORGED" not in out + err
        assert "\x1b" not in out + err
        what = "belongs to uid" if chown else "is served by a process of uid"
        assert f"refusing {path}: it {what} {NOBODY}" in err
        if not chown:  # it connected, learnt who answers, and sent nothing
            await read_line(squatter, "request", squatter_out)
            assert squatter_out[-1] == "request b''"


@as_root
async def test_the_supervisor_refuses_connections_of_another_user() -> None:
    # A directory and socket others may reach (as a careless --socket could be):
    # the peer-credential check still refuses them.
    where = tempfile.mkdtemp()
    try:
        os.chmod(where, 0o755)
        path = os.path.join(where, "ctl.sock")
        async with Supervisor([Program("a", command=SLEEPER, ready_line="READY")],
                              control_socket=path) as sup:  # fmt: skip
            await sup.wait_state("a", ProgramState.RUNNING, timeout=30)
            os.chmod(path, 0o666)
            replies = {}
            for uid in (NOBODY, os.getuid()):
                code = f"from _supervisor_targets import connect_as; connect_as({path!r}, {uid})"
                out = await run_process([PY, "-c", code], stdout=PIPE, cwd=TESTS, timeout=30)
                replies[uid] = out.stdout.decode()
            assert replies[NOBODY].strip() == "reply b''"
            assert '"state": "running"' in replies[os.getuid()]
    finally:
        for name in os.listdir(where):
            os.unlink(os.path.join(where, name))
        os.rmdir(where)


def test_ctl_strips_terminal_escapes() -> None:
    from anycore._cli import _printable, _status_table

    row = json.loads(
        '{"name": "\\u001b[31mx", "state": "running", "pid": 1, "uptime": 1,'
        ' "restarts": 0, "description": "\\u001b]0;t\\u0007 \\u202e \\u009b"}'
    )
    table = _status_table([row])
    assert "\x1b" not in table
    assert "\x07" not in table
    assert "\u202e" not in table
    assert "\x9b" not in table
    assert "\\x1b[31mx" in table
    assert _printable("a\nb") == "a\\x0ab"


# -- bounded requests ---------------------------------------------------------------------


async def send_raw(path: str, data: bytes) -> list[dict[str, Any]]:
    async with await anyio.connect_unix(path) as stream:
        await stream.send(data)
        received = b""
        with anyio.fail_after(10):
            while not received.endswith(b"\n"):
                received += await stream.receive()
    return [json.loads(line) for line in received.splitlines()]


async def test_deeply_nested_json_request_gets_an_error_reply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "ctl.sock")
    deep = '{"command": ' + "[" * 2000 + "]" * 2000 + "}"
    bare = "[" * 2000 + "]" * 2000
    caplog.set_level(logging.DEBUG)
    async with Supervisor([], control_socket=path) as sup:
        for request in (deep, bare):
            reply = await sup.handle_command(request)
            assert reply == {
                "ok": False,
                "error": "a request object must be flat: one JSON object of strings",
            }
            [wire] = await send_raw(path, request.encode() + b"\n")
            assert wire == reply
        [too_long] = await send_raw(path, b"status " + b"x" * 5000 + b"\n")
        assert too_long["ok"] is False
        assert "too long" in too_long["error"]
        # The connection still works for good requests afterwards.
        [ok] = await send_raw(path, b'{"command": "status"}\n')
        assert ok == {"ok": True, "result": []}
    assert "RecursionError" not in caplog.text
    assert "Traceback" not in caplog.text


async def test_a_long_socket_path_is_0600_too(tmp_path: Path) -> None:
    # Too long for the private bind directory beside it: bound in place under umask.
    deep = tmp_path / ("d" * (100 - len(str(tmp_path)) - 8))  # the path: 100 bytes
    deep.mkdir()
    path = str(deep / "c.sock")
    assert len(path) < 108
    old = os.umask(0)
    try:
        async with Supervisor([], control_socket=path):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            [reply] = await send_raw(path, b"status\n")
            assert reply == {"ok": True, "result": []}
    finally:
        os.umask(old)
    assert not os.path.exists(path)
