"""Callables run as supervised programs (imported by the child processes)."""

from __future__ import annotations

import os
import sys
import time


def report_and_sleep() -> None:
    """Write to both streams what the supervisor set up, then wait to be stopped."""
    print("to stderr", file=sys.stderr)
    print("READY", os.environ.get("ANYCORE_PROGRAM"), os.environ["GREETING"], os.getcwd())
    time.sleep(120)


def notify_ready_and_sleep() -> None:
    """Report readiness over NOTIFY_SOCKET (systemd's protocol), then wait."""
    from anycore._systemd import sd_notify

    if not sd_notify("READY=1"):
        raise SystemExit("NOTIFY_SOCKET is not set")
    time.sleep(120)


def fail() -> None:
    """Raise: the supervisor logs the child's traceback."""
    raise ValueError("callable program failed")
