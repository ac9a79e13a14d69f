"""Programs on a pseudo-terminal, driven with expect / send."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import anyio
import pytest

from anycore import ClosedError, ExecutableNotFound, PtyProcess, TimeoutExpired, open_pty

PY = sys.executable

GETPASS = (
    "import getpass, os, sys\n"
    "pw = getpass.getpass('Password: ')\n"
    "print('controlling tty:', os.ttyname(0) == os.readlink('/proc/self/fd/0'))\n"
    "print('reversed:', pw[::-1])\n"
    "sys.exit(len(pw))"
)


async def test_password_prompt_with_getpass() -> None:
    async with open_pty([PY, "-c", GETPASS], timeout=20) as term:
        match = await term.expect(b"Password: ")
        assert match.group(0) == b"Password: "
        # getpass opened /dev/tty: it would warn on stderr without a controlling tty.
        assert b"Warning" not in term.before
        await term.sendline("hunter2")
        m = await term.expect(re.compile(rb"reversed: (\w+)"))
        assert m.group(1) == b"2retnuh"
        assert b"hunter2" not in term.before  # getpass turned echo off
        assert b"controlling tty: True" in term.before
        assert await term.wait(10) == 7
    assert term.status is not None
    assert term.status.exit_code == 7


async def test_expect_list_reports_which_pattern() -> None:
    code = "print('noise'); print('state=ready'); input()"
    async with open_pty([PY, "-c", code], timeout=20) as term:
        await term.expect([b"state=busy", re.compile(rb"state=(\w+)")])
        assert term.match_index == 1
        assert term.match is not None
        assert term.match.group(1) == b"ready"
        assert b"noise" in term.before
        assert term.after == b"state=ready"
        await term.sendline()
        await term.expect_eof(10)


async def test_expect_timeout_and_eof() -> None:
    async with open_pty([PY, "-c", "print('hello'); input()"]) as term:
        await term.expect("hello", timeout=20)
        with pytest.raises(TimeoutExpired) as info:
            await term.expect(b"never printed", timeout=0.2)
        assert info.value.timeout == 0.2
        await term.sendline("bye")
        with pytest.raises(anyio.EndOfStream):
            await term.expect(b"never printed", timeout=20)
        assert b"bye" in term.before  # the echo of what we typed
        assert await term.wait(10) == 0


async def test_terminal_settings_dimensions_and_echo() -> None:
    code = "import os; print(tuple(os.get_terminal_size())); input(); print('done')"
    async with open_pty([PY, "-c", code], dimensions=(33, 101), echo=False, timeout=20) as term:
        await term.expect(b"(101, 33)")
        await term.sendline("secret-input")
        await term.expect(b"done")
        assert b"secret-input" not in term.before


async def test_control_characters_reach_the_foreground_group() -> None:
    async with open_pty(["cat"], timeout=20) as term:
        await term.sendline("ping")
        await term.expect(b"ping\r\nping\r\n")  # the echo, then cat's copy
        await term.sendcontrol("c")
        assert await term.wait(10) == -signal.SIGINT
    async with open_pty(["cat"], timeout=20) as term:
        await term.sendeof()
        assert await term.wait(10) == 0


async def test_output_buffer_is_bounded() -> None:
    code = "import sys; sys.stdout.write('x' * 200_000 + 'END'); sys.stdout.flush(); input()"
    async with open_pty([PY, "-c", code], max_buffer=4096, timeout=20) as term:
        await term.expect(b"END")
        assert term.discarded > 0
        assert len(term.before) <= 4096
        assert term.buffered <= 4096
        await term.sendline()
        assert await term.wait(10) == 0


async def test_read_and_cwd(tmp_path: Path) -> None:
    async with open_pty(["pwd"], cwd=tmp_path) as term:
        out = b""
        with anyio.fail_after(20):
            while True:
                try:
                    out += await term.read(10)
                except anyio.EndOfStream:
                    break
        assert Path(out.decode().strip()).resolve() == tmp_path.resolve()


async def test_closing_stops_the_program() -> None:
    async with open_pty(["sleep", "1000"], grace_period=0.5) as term:
        pid = term.pid
    assert term.status is not None
    assert term.status.signaled
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(ClosedError):
        await term.send(b"x")


async def test_bad_input() -> None:
    with pytest.raises(ExecutableNotFound):
        await PtyProcess(["anycore-no-such-program"]).start()
    with pytest.raises(ValueError):
        PtyProcess(["cat"], dimensions=(0, 80))
    with pytest.raises(ValueError):
        PtyProcess(["cat"], max_buffer=0)
    async with open_pty(["cat"]) as term:
        with pytest.raises(TypeError):
            await term.expect(re.compile("text pattern"))  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await term.sendcontrol("1")
