"""The queue and actor examples run and say what they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=45, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_queues_demo() -> None:
    out = _run("examples/queues_demo.py")
    assert "thread -> 3 tasks: 200 lines, 1400 words" in out
    assert "put after close raises QueueClosed" in out
    assert "priority order: coffee, fix outage, write report, answer mail" in out
    assert "child process squared 0..9: sum 285, exit code 0" in out
    assert "done in" in out


def test_actor_demo() -> None:
    out = _run("examples/actor_demo.py")
    assert "balance after deposits: 550" in out
    assert "after withdrawing 120: 430" in out
    assert "refused: balance 430 < 10000" in out
    assert "final balance 435; handled 82, failed 1" in out
    assert out.rstrip().endswith("done")
