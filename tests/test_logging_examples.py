"""The logging examples run: their bounded self-demos and the receiver's serve mode."""

from __future__ import annotations

import ast
import logging
import logging.handlers
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_logging_demo() -> None:
    out = run_example("logging_demo.py")
    assert "receiver got: ['remote record 0', 'remote record 1', 'remote record 2']" in out
    assert re.search(r"info +demo +'connection opened' \{'conn_id': 1, 'peer'", out)
    assert re.search(r"info +demo\.db +'query SELECT 1 took 3 ms' \{'conn_id': 1", out)
    assert "event loop blocked for" in out
    assert out.rstrip().endswith("done")


def test_log_receiver_demo() -> None:
    out = run_example("log_receiver.py")
    assert "stdlib.sender WARNING hello from SocketHandler" in out
    assert "stdlib.sender WARNING hello from DatagramHandler" in out
    assert "anycore.sender INFO hello from anycore's SocketHandler" in out
    assert "refusing to load global os.system" in out
    assert "records received: 3, refused: 1" in out
    assert out.rstrip().endswith("done")


SERVE_ARGS = ["serve", "--tcp-port", "0", "--udp-port", "0"]


def test_log_receiver_serve_mode_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "log_receiver.py"), *SERVE_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        addresses = ast.literal_eval(line[len("listening on ") :])
        handler = logging.handlers.SocketHandler(*addresses["tcp"])
        lg = logging.getLogger("test.examples.sender")
        lg.propagate = False
        lg.addHandler(handler)
        lg.error("over the wire")
        lg.removeHandler(handler)
        handler.close()
        assert proc.stdout.readline().strip() == "test.examples.sender ERROR over the wire"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_logging_config_demo() -> None:
    out = run_example("logging_config.py")
    assert "dict: info app.db connected to db1" in out
    assert "dict: info app ready" in out
    assert "toml: WARNING app: configured from pyproject.toml" in out
    assert out.rstrip().endswith("done")
