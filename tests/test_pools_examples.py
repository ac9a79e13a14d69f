"""The pool and child-process examples run and say what they should."""

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


def test_pool_digest_self_demo() -> None:
    out = _run("examples/pool_digest.py")
    assert "hashed 30 files in worker processes" in out
    assert "digests match hashlib" in out
    assert out.rstrip().endswith("done")


def test_pool_digest_on_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc")
    out = _run("examples/pool_digest.py", str(tmp_path))
    sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert out.strip() == f"{sha_abc}  {tmp_path / 'a.txt'}"


def test_child_process_demo() -> None:
    out = _run("examples/child_process.py")
    assert "fib(90) = 2880067194370816120" in out
    assert "child raised ValueError" in out
    assert "daemon child stopped at scope end: exit code -15" in out
    assert "its exit-flush hook wrote: flushed on exit" in out
    assert out.rstrip().endswith("done")
