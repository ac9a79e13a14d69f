"""anycore.Process and friends: the Popen surface, errors, statuses, streaming.

Lifecycle guarantees (orphans, zombies, cancellation, runtime) are in
test_subprocess_lifecycle.py.  Every async test runs on asyncio and on uvloop.
"""

from __future__ import annotations

import os
import pwd
import signal
import sys
from pathlib import Path

import anyio
import pytest

import anycore
from _support import alive, io_field, wchan
from anycore import (
    DEVNULL,
    PIPE,
    STDOUT,
    CalledProcessError,
    ExecutableNotFound,
    FrameTooLarge,
    NotExecutable,
    OutputLimitExceeded,
    Process,
    ProcessStatus,
    TimeoutExpired,
    call,
    check_call,
    check_output,
    open_process,
    run_process,
)

PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", code]


# -- running and capturing ------------------------------------------------------------


async def test_run_captures_output_and_decodes_status() -> None:
    result = await run_process(
        py("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"),
        capture_output=True,
    )
    assert result.returncode == 3
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.status is not None
    assert result.status.exit_code == 3
    assert result.status.exited
    assert not result.status.signaled
    assert str(result.status) == "exited with code 3"
    with pytest.raises(CalledProcessError) as info:
        result.check_returncode()
    assert info.value.returncode == 3
    assert info.value.stderr == b"err\n"


async def test_shell_string_and_shell_list() -> None:
    result = await run_process("echo $((6 * 7)) | tr 4 X", shell=True, capture_output=True)
    assert result.stdout == b"X2\n"
    # A list with shell=True: the first item is the script, the rest its $0, $1...
    result = await run_process(['echo "$0-$1"', "zero", "one"], shell=True, capture_output=True)
    assert result.stdout == b"zero-one\n"


async def test_executable_replaces_the_program() -> None:
    result = await run_process(
        ["custom-argv0", "-c", "import sys; print(sys.argv[0] if False else 'ran')"],
        executable=PY,
        capture_output=True,
    )
    assert result.stdout == b"ran\n"


async def test_text_mode_with_universal_newlines_and_encoding() -> None:
    code = "import sys; sys.stdout.buffer.write('a\\r\\nb\\rc\\n\\u00e9'.encode('latin-1'))"
    result = await run_process(py(code), capture_output=True, encoding="latin-1")
    assert result.stdout == "a\nb\nc\n\u00e9"
    result = await run_process(["cat"], input="h\u00e9llo\n", capture_output=True, text=True)
    assert result.stdout == "h\u00e9llo\n"
    assert result.stderr == ""


async def test_redirects_devnull_file_fd_and_merge(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with open(target, "wb") as f:
        rc = await call(py("print('to file')"), stdout=f, stdin=DEVNULL)
    assert rc == 0
    assert target.read_bytes() == b"to file\n"
    fd = os.open(target, os.O_WRONLY | os.O_APPEND)
    try:
        await check_call(py("print('by fd')"), stdout=fd)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"to file\nby fd\n"
    # stdin from DEVNULL reads EOF at once.
    assert await check_output(py("import sys; print(repr(sys.stdin.read()))"), stdin=DEVNULL) == (
        b"''\n"
    )
    # Merged: order kept because both go to one pipe.
    code = (
        "import sys\n"
        "for i in range(3):\n"
        "    (sys.stdout if i % 2 == 0 else sys.stderr).write(f'{i}\\n')\n"
        "    sys.stdout.flush(); sys.stderr.flush()"
    )
    result = await run_process(py(code), stdout=PIPE, stderr=STDOUT)
    assert result.stdout == b"0\n1\n2\n"
    assert result.stderr is None


async def test_cwd_env_umask(tmp_path: Path) -> None:
    code = "import os; print(os.getcwd()); print(os.environ['ANY_X']); print(oct(os.umask(0)))"
    out = await check_output(py(code), cwd=tmp_path, env={"ANY_X": "42"}, umask=0o027)
    cwd, value, mask = out.decode().split()
    assert Path(cwd).resolve() == tmp_path.resolve()
    assert value == "42"
    assert mask == "0o27"


async def test_close_fds_and_pass_fds() -> None:
    r, w = os.pipe()
    try:
        os.set_inheritable(w, True)  # would leak into children without close_fds
        probe = py(
            f"import os\ntry:\n    os.fstat({w}); print('open')\nexcept OSError: print('closed')"
        )
        assert await check_output(probe) == b"closed\n"  # close_fds=True by default
        assert await check_output(probe, close_fds=False) == b"open\n"
        os.set_inheritable(w, False)
        assert await check_output(probe, pass_fds=[w]) == b"open\n"
        await check_call(py(f"import os; os.write({w}, b'hi')"), pass_fds=[w])
        assert os.read(r, 10) == b"hi"
    finally:
        os.close(r)
        os.close(w)


async def test_process_group_session_defaults() -> None:
    code = "import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"
    pid, pgid, _ = map(int, (await check_output(py(code))).split())
    assert pgid == pid  # own group by default
    pid, pgid, _ = map(int, (await check_output(py(code), process_group=None)).split())
    assert pgid == os.getpgid(0)
    pid, pgid, sid = map(int, (await check_output(py(code), start_new_session=True)).split())
    assert pgid == pid == sid


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
async def test_user_group_extra_groups() -> None:
    nobody = pwd.getpwnam("nobody")
    out = await check_output(
        ["sh", "-c", "id -u; id -g; id -G"], user="nobody", group=nobody.pw_gid, extra_groups=[0]
    )
    uid, gid, groups = out.decode().splitlines()
    assert int(uid) == nobody.pw_uid
    assert int(gid) == nobody.pw_gid
    assert sorted(map(int, groups.split())) == sorted({nobody.pw_gid, 0})


# -- bad input --------------------------------------------------------------------------


async def test_missing_executable_names_it(tmp_path: Path) -> None:
    with pytest.raises(ExecutableNotFound) as info:
        await run_process(["anycore-no-such-program"])
    assert info.value.executable == "anycore-no-such-program"
    assert str(info.value) == "executable not found: 'anycore-no-such-program'"
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ExecutableNotFound):
        await run_process([str(tmp_path / "missing")])
    plain = tmp_path / "not-executable"
    plain.write_text("echo hi\n")
    plain.chmod(0o644)
    for kwargs in ({}, {"cwd": tmp_path}):  # posix_spawn and fork_exec paths
        with pytest.raises(NotExecutable) as noexec:
            await run_process([str(plain)], **kwargs)
        assert isinstance(noexec.value, PermissionError)
        assert str(noexec.value).startswith(f"not executable: {str(plain)!r}")
        assert "chmod +x" in str(noexec.value)
    # Found on PATH but not executable: the same, not "not found".
    with pytest.raises(NotExecutable):
        await run_process(["not-executable"], env={"PATH": str(tmp_path)})
    # The fork path (cwd is set) reports the same error.
    with pytest.raises(ExecutableNotFound):
        await run_process(["anycore-no-such-program"], cwd=tmp_path)
    proc = Process(["anycore-no-such-program"])
    with pytest.raises(ExecutableNotFound):
        await proc.start()
    assert proc.pid == -1


async def test_a_stream_that_is_not_a_pipe_says_so() -> None:
    async with Process(["true"]) as proc:
        assert not proc.stdout  # falsy, as None was
        with pytest.raises(
            anycore.RuntimeStateError,
            match=r"^proc\.stdout is not a pipe: start the process with stdout=PIPE to read it$",
        ):
            async for _ in proc.stdout:  # type: ignore[union-attr]
                pass
        with pytest.raises(anycore.RuntimeStateError, match="stdin=PIPE to write to it"):
            await proc.stdin.write(b"x")  # type: ignore[union-attr]
        assert not hasattr(proc.stderr, "readline")
        assert await proc.wait() == 0
    later = Process(["true"], stdout=PIPE)
    with pytest.raises(anycore.RuntimeStateError, match="a pipe once the process is started"):
        await later.stdout.readline()  # type: ignore[union-attr]


async def test_a_command_string_without_shell_hints_at_a_list() -> None:
    with pytest.raises(ExecutableNotFound) as info:
        await run_process("ls -l")
    assert str(info.value) == (
        "executable not found: 'ls -l' "
        "(a string is one program name: pass a list, ['ls', '-l'], or shell=True)"
    )
    assert (await run_process("ls -l /", shell=True, stdout=DEVNULL)).returncode == 0


async def test_exec_format_error_is_reported(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF-not-really")
    junk.chmod(0o755)
    with pytest.raises(OSError) as info:
        await run_process([str(junk)])
    assert info.value.errno == 8  # ENOEXEC


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"args": []}, ValueError),
        ({"args": ["echo", "a\0b"]}, ValueError),
        ({"args": ["echo"], "env": {"A=B": "x"}}, ValueError),
        ({"args": ["echo"], "env": {"A": "x\0"}}, ValueError),
        ({"args": ["echo"], "stdin": "bad"}, TypeError),
        ({"args": ["echo"], "stdout": STDOUT}, ValueError),
        ({"args": ["echo"], "stdout": -7}, ValueError),
        ({"args": ["echo"], "stdin": True}, TypeError),
        ({"args": ["echo"], "cwd": "/anycore/no/such/dir"}, FileNotFoundError),
        ({"args": ["echo"], "cwd": "/etc/hostname"}, NotADirectoryError),
        ({"args": ["echo"], "process_group": -1}, ValueError),
        ({"args": ["echo"], "umask": 0o1000}, ValueError),
        ({"args": ["echo"], "user": "anycore-no-such-user"}, ValueError),
        ({"args": ["echo"], "group": "anycore-no-such-group"}, ValueError),
        ({"args": ["echo"], "pass_fds": [-1]}, ValueError),
        ({"args": ["echo"], "limit": 0}, ValueError),
        ({"args": [object()]}, TypeError),
    ],
)
def test_invalid_arguments_fail_before_spawning(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        Process(**kwargs)  # type: ignore[arg-type]


async def test_run_rejects_conflicting_arguments() -> None:
    with pytest.raises(ValueError, match="capture_output"):
        await run_process(["true"], capture_output=True, stdout=PIPE)
    with pytest.raises(ValueError, match="input"):
        await run_process(["cat"], input=b"x", stdin=DEVNULL)
    with pytest.raises(ValueError, match="stdout"):
        await check_output(["true"], stdout=DEVNULL)


async def test_capture_limit() -> None:
    with pytest.raises(OutputLimitExceeded) as info:
        await run_process(
            py("import sys; sys.stdout.write('x' * 300_000)"), capture_output=True, max_output=1000
        )
    assert info.value.stream == "stdout"
    assert info.value.limit == 1000


# -- results and checks -------------------------------------------------------------------


async def test_call_check_call_check_output() -> None:
    assert await call(["sh", "-c", "exit 5"]) == 5
    assert await check_call(["true"]) == 0
    with pytest.raises(CalledProcessError) as info:
        await check_call(["sh", "-c", "exit 4"])
    assert info.value.returncode == 4
    assert await check_output(["echo", "hi"]) == b"hi\n"
    with pytest.raises(CalledProcessError) as info2:
        await check_output(["sh", "-c", "echo partial; echo oops >&2; exit 2"], stderr=PIPE)
    assert info2.value.output == b"partial\n"
    assert info2.value.stdout == b"partial\n"
    assert info2.value.stderr == b"oops\n"
    assert "non-zero exit status 2" in str(info2.value)


# -- timeouts -------------------------------------------------------------------------------


async def test_run_timeout_kills_and_carries_partial_output() -> None:
    # The shell prints at once (well inside the timeout); the group ignores SIGTERM,
    # so the timeout path goes all the way to SIGKILL.
    script = "trap '' TERM; echo partial; echo oops >&2; sleep 1000"
    with pytest.raises(TimeoutExpired) as info:
        await run_process(["sh", "-c", script], capture_output=True, timeout=1.0, grace_period=0.2)
    assert info.value.output == b"partial\n"
    assert info.value.stdout == b"partial\n"
    assert info.value.stderr == b"oops\n"
    assert info.value.timeout == 1.0
    assert isinstance(info.value, TimeoutError)


async def test_run_timeout_without_pipes() -> None:
    with pytest.raises(TimeoutExpired):
        await run_process(["sleep", "1000"], timeout=0.1)


async def test_wait_timeout_leaves_the_child_running() -> None:
    async with open_process(["sleep", "1000"]) as proc:
        with pytest.raises(TimeoutExpired):
            await proc.wait(timeout=0.05)
        assert proc.poll() is None
        assert proc.returncode is None
        proc.terminate()
        assert await proc.wait() == -signal.SIGTERM
        assert proc.status == ProcessStatus(proc.pid, None, signal.SIGTERM, False)
        assert str(proc.status) == "killed by SIGTERM"


async def test_communicate_timeout_then_resume() -> None:
    code = (
        "import signal, sys\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
        "print('first', flush=True)\n"
        "signal.sigwait({signal.SIGUSR1})\n"
        "print('second')"
    )
    async with Process(py(code), stdout=PIPE) as proc:
        output = b""
        with anyio.fail_after(20):
            while b"first\n" not in output:
                with pytest.raises(TimeoutExpired) as info:
                    await proc.communicate(timeout=0.05)
                assert isinstance(info.value.output, bytes)
                output = info.value.output
        assert output == b"first\n"
        proc.send_signal(signal.SIGUSR1)
        out, err = await proc.communicate()
        assert out == b"first\nsecond\n"
        assert err is None


# -- signals and statuses ----------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1, signal.SIGHUP])
async def test_signals_are_delivered_and_decoded(sig: int) -> None:
    async with Process(py("import sys, time; print('READY', flush=True); time.sleep(1000)"),
                       stdout=PIPE) as proc:  # fmt: skip
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"READY\n"
        proc.send_signal(sig)
        assert await proc.wait() == -sig
    assert proc.status is not None
    assert proc.status.signal == sig
    assert proc.status.signal_name == signal.Signals(sig).name
    assert not proc.status.exited
    assert proc.returncode == -sig


async def test_signal_handler_in_child_runs() -> None:
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGUSR2, lambda *a: sys.exit(7))\n"
        "print('READY', flush=True)\n"
        "signal.pause()"
    )
    async with Process(py(code), stdout=PIPE) as proc:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"READY\n"
        proc.send_signal(signal.SIGUSR2)
        assert await proc.wait() == 7


async def test_group_signals_reach_grandchildren() -> None:
    script = "sleep 1000 & echo $!; wait"
    async with Process(["sh", "-c", script], stdout=PIPE) as proc:
        assert proc.stdout is not None
        grandchild = int(await proc.stdout.readline())
        assert os.getpgid(grandchild) == proc.pid
        proc.kill(group=True)
        assert await proc.wait() == -signal.SIGKILL
        with anyio.fail_after(5):
            while alive(grandchild):
                await anyio.sleep(0.01)  # polling OS state, bounded
    with pytest.raises(ValueError, match="process group"):
        async with Process(["true"], process_group=None) as shared:
            shared.kill(group=True)


def _core_dumps_possible(cwd: Path) -> str | None:
    """None when a core dump will land in cwd, else the reason it will not."""
    try:
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        return "no /proc/sys/kernel/core_pattern"
    if pattern.startswith("|"):
        handler = pattern[1:].split()[0]
        if not os.path.exists(handler):
            return f"cores are piped to {handler!r}, which is absent"
        return None
    if not pattern:
        return "core_pattern is empty"
    return None


async def test_core_dump_decoded(tmp_path: Path) -> None:
    # RLIMIT_CORE is raised by the child itself (no preexec_fn): the shell's ulimit.
    script = 'ulimit -c "$(ulimit -H -c)" 2>/dev/null; ulimit -c; kill -SEGV $$'
    async with Process(["sh", "-c", script], cwd=tmp_path, stdout=PIPE) as proc:
        out, _ = await proc.communicate()
    status = proc.status
    assert status is not None
    assert status.signal == signal.SIGSEGV
    assert proc.returncode == -signal.SIGSEGV
    limit = out.strip()
    reason = _core_dumps_possible(tmp_path)
    if limit == b"0":
        reason = "the hard RLIMIT_CORE is 0"
    if reason is not None:
        pytest.skip(f"core_dumped not checked: {reason}")
    assert status.core_dumped
    assert str(status) == "killed by SIGSEGV (core dumped)"


def test_status_decoding_matches_os_macros() -> None:
    exited = ProcessStatus.from_wait_status(1, 3 << 8)
    assert (exited.exit_code, exited.signal, exited.returncode) == (3, None, 3)
    killed = ProcessStatus.from_wait_status(1, signal.SIGKILL)
    assert (killed.exit_code, killed.signal, killed.core_dumped) == (None, 9, False)
    assert killed.returncode == -9
    dumped = ProcessStatus.from_wait_status(1, signal.SIGSEGV | 0x80)
    assert dumped.core_dumped
    assert dumped.signal == signal.SIGSEGV
    assert ProcessStatus(1, 0, None).success
    with pytest.raises(AttributeError):
        dumped.signal = 1  # type: ignore[misc]


# -- communicate ----------------------------------------------------------------------------


async def test_communicate_50_mb_each_way_through_cat() -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    data = block * 50
    async with Process(["cat"], stdin=PIPE, stdout=PIPE) as proc:
        out, err = await proc.communicate(data)
    assert err is None
    assert len(out) == len(data)
    assert out == data
    assert proc.returncode == 0


async def test_communicate_stdout_and_stderr_large_together() -> None:
    code = (
        "import sys\n"
        "for i in range(200):\n"
        "    sys.stdout.write('o' * 50_000); sys.stderr.write('e' * 50_000)"
    )
    result = await run_process(py(code), capture_output=True)
    assert result.stdout == b"o" * 10_000_000
    assert result.stderr == b"e" * 10_000_000


async def test_communicate_when_child_ignores_input() -> None:
    result = await run_process(["true"], input=b"x" * 5_000_000, capture_output=True)
    assert result.returncode == 0


# -- streaming ---------------------------------------------------------------------------------


async def test_streaming_lines_while_writing_stdin() -> None:
    code = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)"
    async with Process(py(code), stdin=PIPE, stdout=PIPE) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        for word in (b"alpha", b"beta", b"gamma"):
            await proc.stdin.write(word + b"\n")
            assert await proc.stdout.readline() == word.upper() + b"\n"
        proc.stdin.close()
        assert await proc.stdout.readline() == b""
        assert await proc.wait() == 0


async def test_async_iteration_of_stdout_and_stderr_separately() -> None:
    code = (
        "import sys\n"
        "for i in range(1000):\n"
        "    print('out', i)\n"
        "    print('err', i, file=sys.stderr)"
    )
    async with Process(py(code), stdout=PIPE, stderr=PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        collected: dict[str, list[bytes]] = {"out": [], "err": []}

        async def drain(
            name: str, stream: anycore.ProcessReader | anycore.TextProcessReader
        ) -> None:
            async for line in stream:
                assert isinstance(line, bytes)
                collected[name].append(line)

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, "out", proc.stdout)
            tg.start_soon(drain, "err", proc.stderr)
        assert await proc.wait() == 0
    assert collected["out"] == [f"out {i}\n".encode() for i in range(1000)]
    assert collected["err"] == [f"err {i}\n".encode() for i in range(1000)]


async def test_chunks_and_text_lines() -> None:
    code = "import sys; sys.stdout.write('x' * 1_000_000)"
    async with Process(py(code), stdout=PIPE) as proc:
        assert proc.stdout is not None
        total = 0
        async for chunk in proc.stdout.chunks(10_000):
            assert 0 < len(chunk) <= 10_000
            total += len(chunk)
        assert total == 1_000_000
    async with Process(py("print('a\\r\\nb'); print('\u00e9')"), stdout=PIPE, text=True) as proc:
        assert proc.stdout is not None
        lines = [line async for line in proc.stdout]
        assert lines == ["a\n", "b\n", "\u00e9\n"]


async def test_last_line_without_newline_and_read_n() -> None:
    async with Process(["printf", "one\\ntwo"], stdout=PIPE) as proc:
        assert proc.stdout is not None
        assert await proc.stdout.read(2) == b"on"
        assert await proc.stdout.readline() == b"e\n"
        assert await proc.stdout.readline() == b"two"
        assert await proc.stdout.readline() == b""
        with pytest.raises(anyio.EndOfStream):
            await proc.stdout.receive()


async def test_over_long_line_raises_then_stream_recovers() -> None:
    code = "print('x' * 5000); print('ok'); print('y' * 150); print('end')"
    async with Process(py(code), stdout=PIPE, max_line_length=100) as proc:
        assert proc.stdout is not None
        with pytest.raises(FrameTooLarge) as info:
            await proc.stdout.readline()
        assert info.value.limit == 100
        assert await proc.stdout.readline() == b"ok\n"
        with pytest.raises(FrameTooLarge):
            await proc.stdout.readline()
        assert await proc.stdout.readline() == b"end\n"
        assert await proc.stdout.readline() == b""


async def test_over_long_line_delivered_in_pieces() -> None:
    code = "print('x' * 250); print('ok')"
    async with Process(py(code), stdout=PIPE, max_line_length=100, split_long_lines=True) as proc:
        assert proc.stdout is not None
        pieces = [line async for line in proc.stdout]
    assert pieces == [b"x" * 100, b"x" * 100, b"x" * 50 + b"\n", b"ok\n"]


async def test_over_long_line_text_mode() -> None:
    code = "print('\u00e9' * 300); print('ok')"
    async with Process(py(code), stdout=PIPE, text=True, max_line_length=100) as proc:
        assert proc.stdout is not None
        with pytest.raises(FrameTooLarge):
            await proc.stdout.readline()
        assert await proc.stdout.readline() == "ok\n"


async def test_backpressure_reaches_the_child() -> None:
    # The child tries to write 64 MiB; we read one chunk and stop.  It must block
    # in write() on a full pipe while our buffer stays at its limit.
    code = "import sys\nb = b'z' * 4096\nfor _ in range(16384):\n    sys.stdout.buffer.write(b)"
    limit = 32 * 1024
    async with Process(py(code), stdout=PIPE, limit=limit) as proc:
        assert isinstance(proc.stdout, anycore.ProcessReader)
        await proc.stdout.receive(100)
        with anyio.fail_after(20):
            while not wchan(proc.pid).endswith("pipe_write"):
                await anyio.sleep(0.01)  # polling OS state, bounded
        written = io_field(proc.pid, "wchar")
        assert proc.stdout.buffered <= limit + 256 * 1024
        assert written < 4 * 1024 * 1024
        # It resumes as soon as we read again.
        got = 0
        while got < 1_000_000:
            got += len(await proc.stdout.receive())
        assert io_field(proc.pid, "wchar") > written


async def test_stdin_write_after_child_exit_is_broken() -> None:
    async with Process(["true"], stdin=PIPE) as proc:
        await proc.wait()
        assert proc.stdin is not None
        with pytest.raises(anycore.BrokenError):
            await proc.stdin.write(b"x" * 10_000_000)  # more than any pipe holds


def test_needs_an_asyncio_loop() -> None:
    import trio

    async def main() -> None:
        with pytest.raises(anycore.BackendNotSupported, match="needs asyncio") as info:
            await Process(["true"]).start()
        assert "anyio.run_process()" in str(info.value)

    trio.run(main)


async def test_wrong_state_raises_runtime_state_error() -> None:
    proc = Process(["true"])
    with pytest.raises(anycore.RuntimeStateError, match="not started"):
        await proc.wait()
    with pytest.raises(anycore.RuntimeStateError, match="not started"):
        await proc.communicate()
    async with proc:
        with pytest.raises(anycore.RuntimeStateError, match="already started"):
            await proc.start()
        assert await proc.wait() == 0
    # Still a RuntimeError, for code written against subprocess-style checks.
    assert issubclass(anycore.RuntimeStateError, RuntimeError)


@pytest.mark.parametrize(
    ("returncode", "words"),
    [
        (0, "exited with code 0"),
        (3, "exited with code 3"),
        (-9, "killed by SIGKILL"),
        (-99, "killed by signal 99"),
    ],
)
def test_every_facility_says_how_a_process_ended_the_same_way(returncode: int, words: str) -> None:
    from anycore.errors import WorkerCrashed, describe_returncode

    assert describe_returncode(returncode) == words
    assert str(WorkerCrashed(123, returncode)) == f"worker process 123 died ({words})"
