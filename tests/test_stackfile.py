"""Stack files: Procfile lines and the TOML form; every error names its line."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from anycore import StackFileError, load_stack
from anycore._supervise._stackfile import parse_procfile, parse_stack_toml


def test_procfile_lines_comments_blanks() -> None:
    stack = parse_procfile("# a stack\n\nweb: python -m http.server 8000\n  worker :  run it \n")
    assert [p.name for p in stack.programs] == ["web", "worker"]
    assert stack.programs[0].command == "python -m http.server 8000"
    assert stack.programs[1].command == "run it"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("web: ok\nthis is not a program\n", 2, "expected 'name: command'"),
        ("web: ok\n\n# c\nbad name: x\n", 4, "expected 'name: command'"),
        ("web: ok\nworker:\n", 2, "program 'worker' has no command"),
        ("web: a\nweb: b\n", 2, "duplicate program 'web' (first on line 1)"),
    ],
)
def test_procfile_errors_carry_line_numbers(text: str, line: int, message: str) -> None:
    with pytest.raises(StackFileError) as info:
        parse_procfile(text, "Procfile")
    assert info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"Procfile:{line}: ")


def test_procfile_without_programs() -> None:
    with pytest.raises(StackFileError, match="no programs"):
        parse_procfile("# nothing\n")


def test_toml_every_option(tmp_path: Path) -> None:
    path = tmp_path / "stack.toml"
    path.write_text(
        """
[supervisor]
control_socket = "run/ctl.sock"

[programs.db]
command = ["redis-server", "--port", "7777"]
ready_port = 7777
stop_signal = "INT"
grace_period = 3

[programs.web]
server = "examples.echo:EchoHandler"
binds = ["tcp://127.0.0.1:7001"]
depends_on = ["db"]
restart = "on-failure"
backoff_initial = 0.1
backoff_max = 2
backoff_jitter = 0.2
max_restarts = 3
restart_window = 30
ready_timeout = 5
numprocs = 2
env = { MODE = "test", N = 3 }
cwd = "sub"
hint = "nc 127.0.0.1 7001"

[programs.log]
command = "tail -f /dev/null"
ready_line = "^started"
ready_delay = 0.5
capture_output = false
"""
    )
    stack = load_stack(path)
    assert stack.control_socket == str(tmp_path / "run" / "ctl.sock")
    db, web, log = stack.programs
    assert db.command == ("redis-server", "--port", "7777")
    assert db.stop_signal == signal.SIGINT
    assert db.grace_period == 3.0
    assert db.ready_port == 7777
    assert web.server == "examples.echo:EchoHandler"
    assert web.binds == ("tcp://127.0.0.1:7001",)
    assert web.depends_on == ("db",)
    assert web.restart == "on-failure"
    assert web.numprocs == 2
    assert dict(web.env) == {"MODE": "test", "N": "3"}
    assert web.cwd == str(tmp_path / "sub")
    assert web.hint == "nc 127.0.0.1 7001"
    assert web.instance_names() == ["web:0", "web:1"]
    assert log.ready_line == "^started"
    assert log.capture_output is False


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[programs.a]\ncommand = "x"\nrestrat = "always"\n', 3, "unknown option 'restrat'"),
        ('[programs.a]\ncommand = "x"\n\n[programs.b]\nnumprocs = "2"\ncommand = "y"\n', 5,
         "numprocs must be an integer"),
        ('[programs.a]\ncommand = "x"\nstop_signal = "SIGNOPE"\n', 3, "unknown signal"),
        ('[programs.a]\ncommand = 5\n', 2, "command must be a string"),
        ('[programs.a]\ncommand = "x"\nrestart = "sometimes"\n', 1, "restart must be one of"),
        ('[programs.a]\nnumprocs = 2\n', 1, "program 'a' has no command"),
        ('[programs.a]\ncommand = = "x"\n', 2, "invalid TOML"),
        ('[programs.a]\ncommand = "x"\n[extra]\nk = 1\n', 3, "unknown table 'extra'"),
        ('[supervisor]\nsocket = "x"\n[programs.a]\ncommand = "x"\n', 2,
         "unknown [supervisor] option 'socket'"),
        ('[programs.a]\ncommand = "x"\nready_line = "("\n', 1, "bad ready_line regex"),
    ],
)  # fmt: skip
def test_toml_errors_carry_line_numbers(text: str, line: int, message: str) -> None:
    with pytest.raises(StackFileError) as info:
        parse_stack_toml(text, "stack.toml")
    assert message in str(info.value)
    assert info.value.line == line, str(info.value)


def test_toml_dependency_errors() -> None:
    with pytest.raises(StackFileError, match="unknown program 'nope'"):
        parse_stack_toml('[programs.a]\ncommand = "x"\ndepends_on = ["nope"]\n')
    with pytest.raises(StackFileError, match="dependency cycle: a -> b -> a"):
        parse_stack_toml(
            '[programs.a]\ncommand = "x"\ndepends_on = ["b"]\n'
            '[programs.b]\ncommand = "y"\ndepends_on = ["a"]\n'
        )
    with pytest.raises(StackFileError, match="no programs defined"):
        parse_stack_toml("[supervisor]\n")


def test_load_stack_picks_the_form_and_reports_missing_files(tmp_path: Path) -> None:
    proc = tmp_path / "Procfile"
    proc.write_text("a: true\n")
    assert load_stack(proc).programs[0].command == "true"
    with pytest.raises(StackFileError, match="cannot read the stack file") as info:
        load_stack(tmp_path / "missing.toml")
    assert info.value.line is None


def test_the_example_stack_parses() -> None:
    root = Path(__file__).resolve().parent.parent
    stack = load_stack(root / "examples" / "stack.toml")
    names = [p.name for p in stack.programs]
    assert names == ["echo", "chat", "time-tcp", "time-udp", "kv"]
    assert all(p.server and p.binds and p.hint for p in stack.programs)


def test_forward_signals_key() -> None:
    text = '[supervisor]\nforward_signals = ["SIGHUP", "usr2", 10]\n[programs.a]\ncommand = "x"\n'
    stack = parse_stack_toml(text)
    assert stack.forward_signals == (signal.SIGHUP, signal.SIGUSR2, signal.SIGUSR1)
    assert parse_stack_toml('[programs.a]\ncommand = "x"\n').forward_signals == ()
    for bad, message in (('"SIGHUP"', "must be a list"), ('["SIGNOPE"]', "unknown signal")):
        with pytest.raises(StackFileError, match=message) as info:
            parse_stack_toml(
                f'[supervisor]\nforward_signals = {bad}\n[programs.a]\ncommand = "x"\n'
            )
        assert info.value.line == 2


def test_env_file_forms_and_errors(tmp_path: Path) -> None:
    from anycore._supervise._stackfile import load_env_file, with_env

    env = tmp_path / ".env"
    env.write_text(
        "# comment\n\nA=1\nexport B = two words # note\nC='lit $x # not a comment'\n"
        'D="line\\nnext \\"q\\""\nE=\n'
    )
    assert load_env_file(env) == {
        "A": "1",
        "B": "two words",
        "C": "lit $x # not a comment",
        "D": 'line\nnext "q"',
        "E": "",
    }
    for text, line in (("A=1\nnope\n", 2), ("A='open\n", 1), ("1A=x\n", 1)):
        env.write_text(text)
        with pytest.raises(StackFileError, match="expected KEY=VALUE") as info:
            load_env_file(env)
        assert info.value.line == line
    env.write_text("x" * (1024 * 1024 + 1))
    with pytest.raises(StackFileError, match="over 1 MiB"):
        load_env_file(env)
    stack = parse_stack_toml('[programs.a]\ncommand = "x"\nenv = { A = "mine" }\n')
    [p] = with_env(stack, {"A": "dotenv", "B": "dotenv"}).programs
    assert dict(p.env) == {"A": "mine", "B": "dotenv"}
