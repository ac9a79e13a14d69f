"""examples/subprocess_demo.py runs to completion on both loops and says what it did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_subprocess_demo(loop: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "subprocess_demo.py"), "--loop", loop],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = done.stdout
    assert "uname says Linux (exited with code 0)" in out
    assert "most frequent word: 'the' x3" in out
    assert "false | cat with pipefail -> 1" in out
    assert "child said: tick 0\nchild said: tick 1\nchild said: tick 2\n" in out
    assert "finished cleanly" in out
    assert "timed out after 0.5s; output so far: b'started\\n'" in out
    assert "pty program answered: length 6" in out
    assert out.rstrip().endswith("done")
