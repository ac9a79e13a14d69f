"""Short runs of the atheris harnesses of fuzz/ (issue 19).

Each harness (one per parser that reads untrusted bytes: the framers, the
RESP example's parser, the log-record receiver, the messaging handshake)
runs in a subprocess for a bounded number of inputs, from its seed corpus,
and must exit 0: no crash, no broken bound, no memory amplification.  The
long runs are ``make fuzz``; tests/test_fuzz.py holds the hypothesis tests
and the regression tests of what the harnesses found.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "atheris", reason="atheris is not installed (its wheels are for Linux x86_64 only)"
)

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
HARNESSES = sorted(FUZZ.glob("fuzz_*.py"))
RUNS = 2000
SECONDS = 8  # whichever comes first: the log receiver's inputs are slow ones


def test_every_target_has_a_harness() -> None:
    names = {h.stem for h in HARNESSES}
    assert names >= {"fuzz_framers", "fuzz_resp", "fuzz_log_receiver", "fuzz_handshake"}


@pytest.mark.slow
@pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.stem)
def test_harness_runs_clean(harness: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    env = dict(os.environ)
    env.pop("ANYCORE_FUZZ_KNOWN", None)  # known bugs are the xfails of test_fuzz.py
    proc = subprocess.run(
        [
            sys.executable,
            str(harness),
            f"-atheris_runs={RUNS}",
            f"-max_total_time={SECONDS}",
            "-timeout=10",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
            "-seed=1",
            str(corpus),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0, f"{crashes}\n{proc.stderr[-4000:]}"
    assert not crashes
    # It fuzzed: the seeds were written, loaded, and runs were made.
    assert any(corpus.iterdir())
    assert "INITED" in proc.stderr
    assert "Done " in proc.stderr, proc.stderr[-2000:]
