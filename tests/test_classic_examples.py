"""Every classic example in examples/classic runs and does what its header says."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLASSIC = ROOT / "examples" / "classic"

# file -> (extra arguments, patterns the output must match, in order)
EXPECTED: dict[str, tuple[list[str], list[str]]] = {
    "logging_basic_file.py": (
        [],
        [
            r"INFO \S+ \S+ So should this",
            r"WARNING \S+ \S+ And this, too",
            r"ERROR .* \u00d8resund and Malm\u00f6",
        ],
    ),
    "logging_filter.py": ([], [r"^useful: useful work done$"]),
    "logging_hierarchy.py": (
        [],
        [
            r"app +WARNING app warning",
            r"app\.net\.client +DEBUG +client debug",
            r"app\.net\.client +INFO +client info",
        ],
    ),
    "logging_two_handlers.py": (
        [],
        [r"--- spam\.log:", r"spam - DEBUG - debug message", r"spam - CRITICAL - critical"],
    ),
    "logging_critical_filter.py": (
        [],
        [r"INFO starting", r"CRITICAL the database is gone"],
    ),
    "logging_context.py": (
        [],
        [
            r"192\.168\.0\.1 +fbloggs +protocol problem: connection reset",
            r"10\.0\.0\.7 +ann +via the adapter",
            r"127\.0\.0\.1 +bob +request \d handled",
        ],
    ),
    "logging_central.py": (
        [],
        [r"logconf: configured 1 handler", r"stdlib logger: connected", r"route=/"],
    ),
    "logging_ini.py": (
        [],
        [
            r"INFO app: info: in the file and on the console",
            r"WARNING other: other warning: console only",
            r"--- app\.log:",
            r"DEBUG app: debug: only in the file",
        ],
    ),
    "logging_null.py": ([], [r"library returned result"]),
    "mmap_file.py": (
        [],
        [
            r"first word: Hello",
            r"after the slice assignment: Hello there!",
            r"on disk: Hello there!",
        ],
    ),
    "subprocess_shell.py": ([], [r"Hello from the shell", r"exit status 0"]),
    "subprocess_silent.py": ([], [r"exit status 0", r"a failing ls, silently: exit status 2"]),
    "subprocess_capture.py": ([], [r"captured: \w+", r"failed with 3, output so far 'partial'"]),
    "subprocess_wc.py": ([], [r"wc counted 3 lines, 6 words, 28 characters"]),
    "subprocess_pipeline.py": (
        [str(CLASSIC)],
        [
            rf"ls -l {re.escape(str(CLASSIC))} \| wc -l -> \d+",
            r"statuses: exited with code 0, exited",
        ],
    ),
    "signal_connect_timeout.py": ([], [r"no answer within 0\.3 s", r": connected"]),
    "coroutines_round_robin.py": (
        [],
        [r"-- generators", r"Blastoff!", r"-- coroutines", r"T-minus 3", r"Blastoff!"],
    ),
    "threading_clock.py": (
        ["3"],
        [r"class clock tick 2", r"main is done", r"function clock stopped cleanly"],
    ),
    "threading_timer.py": (
        [],
        [r"hello, world \(from the timer\)", r"second timer cancelled", r"timers done"],
    ),
    "threading_lock.py": ([], [r"with the lock: balance 100$"]),
    "threading_rlock.py": ([], [r"inventory: \{'apple': 2, 'pear': 1, 'plum': 1\}"]),
    "threading_semaphores.py": ([], [r"produced 0", r"consumed 0", r"consumed 4"]),
    "threading_condition.py": (
        [],
        [r"event: 1000 items produced, 1 wake-up\(s\) seen", r"condition: 1000 of 1000 items"],
    ),
    "threading_stoppable.py": (
        [],
        [
            r"suspended at step (\d+); still \1 after 50 ms",
            r"resumed: step \d+",
            r"terminated: True",
        ],
    ),
    "threading_worker_queue.py": (
        [],
        [r"joined: \['ALPHA', 'BETA', 'GAMMA'\]", r"queue closed and drained", r"DELTA"],
    ),
    "mp_clock_function.py": (
        [],
        [r"clock child \d+ started", r"The time is \d\d:\d\d:\d\d", r"exit code -15"],
    ),
    "mp_clock_subclass.py": (
        [],
        [
            r"clock child \d+ started",
            r"The time is \d\d:\d\d:\d\d",
            r"ticked 3 times",
            r"exit code 0",
        ],
    ),
    "mp_joinable_queue.py": ([], [r"all items processed: \[0, 1, 4, 9, 16, 25, 36, 49, 64, 81\]"]),
    "mp_several_consumers.py": ([], [r"3 consumers handled 30 tasks: True"]),
    "mp_queue_close.py": (
        [],
        [
            r"with a sentinel: \[0, 1, 2, 3, 4\]",
            r"with close\(\): \[0, 1, 2, 3, 4\]",
            r"QueueClosed",
        ],
    ),
    "mp_pipe_producer_consumer.py": ([], [r"consumer received: \['spam', 'eggs', 'ham'\]"]),
    "mp_pipe_adder.py": ([], [r"20 \+ 22 = 42", r"answered 3 requests"]),
    "mp_pool_digest.py": ([], [r"[0-9a-f]{16}\.\.\.  dir\d/file\d\.bin", r"6 files digested"]),
    "mp_shm_floats.py": (
        ["20000", "5"],
        [r"5 round trips of 20,000 floats", r"the channel took [\d.]+x the pipe's time"],
    ),
    "mp_manager_watch.py": ([], [r"watcher saw \{'a': 1, 'b': 2, 'c': 3\}"]),
    "mp_custom_manager.py": ([], [r"vector \[3\.0, 4\.0\] norm 5\.0", r"refused: .*not exposed"]),
    "mp_listener_adder.py": ([], [r"first client got 5", r"second client got 42"]),
    "optparse_options.py": (
        [
            "-v",
            "-o",
            "out.txt",
            "-d",
            "2",
            "-m",
            "fast",
            "-p",
            "3",
            "4",
            "--quiet",
            "--workers",
            "3",
        ],
        [
            r"verbose = True",
            r"output = 'out.txt'",
            r"debug = 2",
            r"mode = 'fast'",
            r"point = \[3, 4\]",
            r"noise = 0",
            r"workers = 3",
        ],
    ),
    "socket_time_tcp.py": ([], [r"the time is \w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}"] * 2),
    "socket_time_unixgram.py": (
        [],
        [r"serving on unixgram://", r"the time is \w{3} \w{3}", r"socket file removed: True"],
    ),
    "socket_time_udp.py": ([], [r"the time is \w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}"]),
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_every_classic_example_is_tested() -> None:
    files = {p.name for p in CLASSIC.glob("*.py")} - {"__init__.py", "logconf.py"}
    assert files - {"console_chat.py"} == set(EXPECTED), files ^ set(EXPECTED)


def _matches_in_order(output: str, patterns: list[str]) -> None:
    pos = 0
    for pattern in patterns:
        match = re.compile(pattern, re.MULTILINE).search(output, pos)
        assert match, f"{pattern!r} not found after position {pos} in:\n{output}"
        pos = match.end()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_classic_example(name: str, tmp_path: Path) -> None:
    args, patterns = EXPECTED[name]
    if name in {
        "logging_basic_file.py",
        "logging_two_handlers.py",
        "logging_ini.py",
        "mmap_file.py",
    }:
        args = [str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(CLASSIC / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _matches_in_order(proc.stdout + proc.stderr, patterns)


def test_logging_null_swallows_without_a_handler_and_shows_with_one() -> None:
    script = str(CLASSIC / "logging_null.py")
    off = subprocess.run(
        [sys.executable, script, "off"], capture_output=True, text=True, timeout=60
    )
    on = subprocess.run([sys.executable, script, "on"], capture_output=True, text=True, timeout=60)
    assert "mylib" not in off.stdout + off.stderr
    assert "mylib WARNING mylib: something" in on.stdout


def test_two_handlers_send_only_errors_to_stderr(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(CLASSIC / "logging_two_handlers.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stderr.splitlines() == [
        "spam - ERROR - error message",
        "spam - CRITICAL - critical message",
    ]
    assert "debug message" not in proc.stdout.split("--- spam.log:")[0]  # propagate off


def test_optparse_defaults_and_a_rejected_choice() -> None:
    script = str(CLASSIC / "optparse_options.py")
    defaults = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=60, check=True
    )
    for line in ("verbose = False", "mode = 'slow'", "point = [0, 0]", "noise = 1"):
        assert line in defaults.stdout
    bad = subprocess.run([sys.executable, script, "-m", "warp"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "invalid choice: 'warp' (choose from 'slow', 'fast', 'ludicrous')" in bad.stderr
    assert bad.stdout == ""


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 20.0) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} never came: {out!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {marker!r}: {out!r}"
            out += chunk
    return out


def test_console_chat_reads_the_console_while_messages_arrive() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(CLASSIC / "console_chat.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    assert proc.stdin is not None
    try:
        _read_until(proc, b"What is your nickname?")
        proc.stdin.write(b"ann\n")
        proc.stdin.flush()
        _read_until(proc, b"Hello ann! Here: bot.")
        proc.stdin.write(b"hello everyone\n")
        proc.stdin.flush()
        # The bot's answer arrives while the console task waits for input.
        _read_until(proc, b"<bot> I heard: <ann> hello everyone")
        proc.stdin.write(b"/quit\n")
        proc.stdin.flush()
        _read_until(proc, b"Bye!")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        assert proc.stdout is not None
        proc.stdout.close()
