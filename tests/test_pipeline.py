"""Pipelines: stages wired with OS pipes, checked against /bin/sh running the same."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from anycore import (
    PIPE,
    CalledProcessError,
    Command,
    ExecutableNotFound,
    Pipeline,
    TimeoutExpired,
    cmd,
    pipeline,
)

PY = sys.executable


def shell(line: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["/bin/sh", "-c", line], capture_output=True, check=False)


@pytest.mark.parametrize(
    ("stages", "line"),
    [
        ([["ls", "-l", "/usr/bin"], ["wc", "-l"]], "ls -l /usr/bin | wc -l"),
        (
            [["printf", "b\\na\\nc\\nb\\n"], ["sort"], ["uniq", "-c"], ["tr", "a-z", "A-Z"]],
            "printf 'b\\na\\nc\\nb\\n' | sort | uniq -c | tr a-z A-Z",
        ),
        (
            [["seq", "1", "100000"], ["grep", "7"], ["tail", "-n", "3"]],
            "seq 1 100000 | grep 7 | tail -n 3",
        ),
    ],
)
async def test_pipeline_matches_the_shell(stages: list[list[str]], line: str) -> None:
    result = await pipeline(*stages).run(capture_output=True)
    expected = shell(line)
    assert result.stdout == expected.stdout
    assert result.returncode == expected.returncode == 0
    assert len(result.statuses) == len(stages)
    assert all(s.exit_code == 0 for s in result.statuses)


async def test_or_operator_builds_pipelines() -> None:
    p = cmd("printf", "x\\ny\\n") | cmd("tr", "x", "z") | ["sort", "-r"]
    assert isinstance(p, Pipeline)
    assert [c.args for c in p.commands] == [
        ["printf", "x\\ny\\n"],
        ["tr", "x", "z"],
        ["sort", "-r"],
    ]
    result = await p.run(capture_output=True)
    assert result.stdout == b"z\ny\n"
    p2 = ["echo", "hi"] | Command(["cat"])
    assert (await p2.run(capture_output=True)).stdout == b"hi\n"


async def test_status_of_every_stage_and_pipefail() -> None:
    stages = (["sh", "-c", "echo a; exit 3"], ["sh", "-c", "cat; exit 0"])
    result = await pipeline(*stages).run(capture_output=True)
    assert result.returncode == 0
    assert [s.exit_code for s in result.statuses] == [3, 0]
    result = await pipeline(*stages, pipefail=True).run(capture_output=True)
    assert result.returncode == 3
    if shutil.which("bash"):  # bash's rule, for comparison
        bash = ["bash", "-c", "set -o pipefail; (echo a; exit 3) | (cat; exit 0)"]
        assert subprocess.run(bash, capture_output=True, check=False).returncode == 3
    with pytest.raises(CalledProcessError) as info:
        await pipeline(*stages, pipefail=True).run(capture_output=True, check=True)
    assert info.value.returncode == 3
    assert info.value.output == b"a\n"


async def test_sigpipe_ends_an_upstream_stage_like_the_shell() -> None:
    # `yes` must die of SIGPIPE when `head` exits (children get default SIGPIPE).
    with anyio.fail_after(20):
        result = await pipeline(["yes"], ["head", "-n", "3"]).run(capture_output=True)
    assert result.stdout == b"y\ny\ny\n"
    assert result.statuses[0].signal == signal.SIGPIPE
    assert result.returncode == 0
    assert shell("yes | head -n 3").stdout == result.stdout


async def test_stages_are_connected_by_os_pipes_not_python() -> None:
    async with pipeline(["sleep", "1000"], ["cat"], ["sleep", "1000"]) as p:
        first, middle, last = (q.pid for q in p.processes)
        out_of_first = os.readlink(f"/proc/{first}/fd/1")
        assert out_of_first.startswith("pipe:")
        assert os.readlink(f"/proc/{middle}/fd/0") == out_of_first
        assert os.readlink(f"/proc/{middle}/fd/1") == os.readlink(f"/proc/{last}/fd/0")
        ours = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if _readlink_ok(fd)}  # fmt: skip
        assert out_of_first not in ours  # we hold no end of the inner pipes
        # One process group for the whole pipeline, led by the first stage.
        assert {os.getpgid(pid) for pid in (first, middle, last)} == {first}


def _readlink_ok(fd: str) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return True


async def test_communicate_with_input_and_shared_stderr() -> None:
    tag = (
        "import sys; d = sys.stdin.buffer.read(); print('{0}', len(d), file=sys.stderr); "
        "sys.stdout.buffer.write(d.upper())"
    )
    async with pipeline(
        [PY, "-c", tag.format("one")],
        [PY, "-c", tag.format("two")],
        stdin=PIPE,
        stdout=PIPE,
        stderr=PIPE,
    ) as p:
        out, err = await p.communicate(b"abc" * 1000)
    assert out == b"ABC" * 1000
    assert sorted(err.splitlines()) == [b"one 3000", b"two 3000"]
    assert p.returncodes == (0, 0)


async def test_twenty_megabytes_through_cat_cat() -> None:
    data = os.urandom(1 << 20) * 20
    result = await pipeline(["cat"], ["cat"]).run(data, capture_output=True)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


async def test_text_mode_pipeline() -> None:
    result = await Pipeline([["cat"], ["tr", "a", "b"]], text=True).run(
        "a\u00e9a\r\n", capture_output=True
    )
    assert result.stdout == "b\u00e9b\n"


async def test_streaming_the_last_stage() -> None:
    async with pipeline(["seq", "1", "5000"], ["grep", "5$"], stdout=PIPE) as p:
        assert p.stdout is not None
        lines = [line async for line in p.stdout]
        assert await p.wait() == 0
    assert lines == [f"{i}\n".encode() for i in range(1, 5001) if i % 10 == 5]


async def test_timeout_and_cancellation_stop_every_stage() -> None:
    with pytest.raises(TimeoutExpired):
        await pipeline(["sleep", "1000"], ["sleep", "1000"]).run(timeout=0.2)
    with anyio.CancelScope() as scope:
        async with pipeline(["sleep", "1000"], ["cat"], grace_period=0.2) as p:
            pids = [q.pid for q in p.processes]
            scope.cancel()
            await anyio.sleep_forever()
    assert all(s is not None and s.signaled for s in p.statuses)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()  # reaped


async def test_missing_program_in_any_stage_spawns_nothing() -> None:
    p = pipeline(["sleep", "1000"], ["anycore-no-such-program"])
    with pytest.raises(ExecutableNotFound) as info:
        await p.start()
    assert info.value.executable == "anycore-no-such-program"
    assert p.processes == []


def test_bad_stage_options_fail_at_construction() -> None:
    with pytest.raises(ValueError):
        pipeline()
    with pytest.raises(TypeError):
        Command(["cat"], stdin=PIPE)
    with pytest.raises(ValueError):
        Command(["cat"], stderr=PIPE)
    with pytest.raises(ValueError):
        pipeline(["cat"], ["a\0b"])


async def test_wrong_state_raises_runtime_state_error() -> None:
    from anycore import RuntimeStateError

    p = pipeline(["true"], ["true"])
    with pytest.raises(RuntimeStateError, match="not started"):
        await p.wait()
    with pytest.raises(RuntimeStateError, match="not running"):
        await p.communicate()
    async with p:
        with pytest.raises(RuntimeStateError, match="already started"):
            await p.start()
        with pytest.raises(RuntimeStateError, match="already started"):
            await p.run()
        with pytest.raises(RuntimeStateError, match="cannot extend"):
            p | ["cat"]
        assert await p.wait() == 0
