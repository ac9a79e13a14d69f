"""anycore's standard options on a user's parser, and the connection-limit
options of ``anycore run`` (and their stack-file keys)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

import anycore
from anycore import Program, StackFileError
from anycore._proc._subprocess import PIPE, STDOUT, Process, run_process
from anycore._supervise._stackfile import parse_stack_toml

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
CLI = [PY, "-m", "anycore"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "framework")}


def test_standard_options_on_a_users_parser_and_group() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=1)
    assert anycore.add_standard_options(parser, workers=True) is parser
    args = parser.parse_args(["--loop", "asyncio", "--log-level", "debug", "--workers", "3"])
    assert (args.loop, args.log_level, args.log_format, args.workers) == (
        "asyncio",
        "DEBUG",
        "console",
        3,
    )
    defaults = parser.parse_args([])
    assert (defaults.loop, defaults.log_level, defaults.workers) == ("auto", "INFO", 1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "0"])
    only_loop = argparse.ArgumentParser()
    anycore.add_standard_options(only_loop.add_argument_group("runtime"), log=False)
    args = only_loop.parse_args(["--loop", "uvloop"])
    assert not hasattr(args, "log_level")
    assert not hasattr(args, "workers")
    assert anycore.apply_standard_options(args) == {"loop": "uvloop"}
    assert anycore.apply_standard_options(argparse.Namespace()) == {}


async def test_the_standard_options_example() -> None:
    example = str(ROOT / "examples" / "standard_options.py")
    args = [PY, example, "--loop", "asyncio", "--log-level", "debug", "--workers", "2"]
    out = await run_process([*args, "--jobs", "5"], stdout=PIPE, stderr=PIPE, env=ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines() == ["loop=asyncio workers=2 level=DEBUG",
                                                "squares 0 1 4 9 16"]  # fmt: skip
    assert "debug logging is on" in out.stderr.decode()
    bad = await run_process([PY, example, "--workers", "0"], stdout=PIPE, stderr=PIPE, env=ENV,
                            timeout=60)  # fmt: skip
    assert bad.returncode == 2
    assert "--workers: must be at least 1, not 0" in bad.stderr.decode()


async def test_run_idle_timeout_closes_an_idle_connection() -> None:
    args = [*CLI, "run", "examples.echo:EchoHandler", "--bind", "tcp://127.0.0.1:0"]
    args += ["--idle-timeout", "0.3", "--max-connections", "5", "--on-limit", "refuse"]
    async with Process(args, stdout=PIPE, stderr=STDOUT, cwd=ROOT, env=ENV) as proc:
        assert proc.stdout is not None
        line = ""
        with anyio.fail_after(30):
            while "anycore: pid" not in line:
                raw = await proc.stdout.readline()
                assert raw, "exited before serving"
                line = raw.decode() if isinstance(raw, bytes) else raw
        port = int(line.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            with anyio.fail_after(10):  # closed by the server, long before this
                assert await reader.read() == b""
        finally:
            writer.close()
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait(30) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["examples.time_server:TimeDatagramHandler", "--bind", "udp://127.0.0.1:0",
         "--idle-timeout", "1"],
        ["examples.echo:EchoHandler", "--bind", "tcp://127.0.0.1:0", "--idle-timeout", "0"],
        ["examples.echo:EchoHandler", "--bind", "tcp://127.0.0.1:0", "--on-limit", "drop"],
    ],
)  # fmt: skip
async def test_run_limit_options_usage_errors(args: list[str]) -> None:
    out = await run_process([*CLI, "run", *args], stdout=PIPE, stderr=PIPE, cwd=ROOT, env=ENV,
                            timeout=30)  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" not in out.stderr.decode()


def test_stack_file_limit_keys() -> None:
    stack = parse_stack_toml(
        '[programs.kv]\nserver = "examples.resp_kv:RespHandler"\nbinds = ["tcp://127.0.0.1:0"]\n'
        'max_connections = 400\nidle_timeout = 30\non_limit = "shed"\nframe_deadline = 5\n'
        "min_receive_rate = 100\n"
    )
    argv = stack.programs[0].argv()
    assert isinstance(argv, list)
    text = " ".join(argv)
    for option in ("--max-connections 400", "--idle-timeout 30.0", "--on-limit shed",
                   "--frame-deadline 5.0", "--min-receive-rate 100.0"):  # fmt: skip
        assert option in text
    with pytest.raises(StackFileError, match="apply to server programs") as info:
        parse_stack_toml('[programs.a]\ncommand = "x"\nidle_timeout = 3\n')
    assert info.value.line == 1
    with pytest.raises(ValueError, match="on_limit must be"):
        Program("a", server="m:H", on_limit="drop")  # type: ignore[arg-type]


async def test_examples_work_from_an_installed_wheel(tmp_path: Path) -> None:
    wheel_builder = pytest.importorskip("hatchling.builders.wheel")
    import zipfile

    [wheel] = wheel_builder.WheelBuilder(str(ROOT)).build(
        directory=str(tmp_path / "dist"), versions=["standard"]
    )
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    assert not [n for n in names if "__pycache__" in n]
    elsewhere = tmp_path / "elsewhere"  # no ./examples here
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = await run_process([*CLI, "examples"], stdout=PIPE, stderr=PIPE, cwd=elsewhere, env=env,
                            timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert f"Examples installed with anycore, in {site / 'anycore' / '_examples'}" in text
    command = "anycore run anycore._examples.echo:EchoHandler --bind tcp://127.0.0.1:PORT"
    assert command in text
    # And the command it shows runs.
    args = [*CLI, *command.split()[1:-1], "tcp://127.0.0.1:0"]
    async with Process(args, stdout=PIPE, stderr=STDOUT, cwd=elsewhere, env=env) as proc:
        assert proc.stdout is not None
        line = ""
        with anyio.fail_after(30):
            while "serving on" not in line:
                raw = await proc.stdout.readline()
                assert raw, "exited before serving"
                line = raw.decode() if isinstance(raw, bytes) else raw
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait(30) == 0
