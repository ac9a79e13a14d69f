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
    from anycore._supervise._systemd import sd_notify

    if not sd_notify("READY=1"):
        raise SystemExit("NOTIFY_SOCKET is not set")
    time.sleep(120)


def fail() -> None:
    """Raise: the supervisor logs the child's traceback."""
    raise ValueError("callable program failed")


FORGED = (
    '{"ok": true, "result": [{"name": "\\u001b[31mFORGED", "state": "running", "pid": 1,'
    ' "uptime": 1, "restarts": 0, "description": "\\u001b]0;owned\\u0007"}]}\n'
)


def squat(path: str, uid: int, chown: bool) -> None:
    """Listen on ``path`` as user ``uid`` (dropped to after binding; a root test
    simulates another local user) and answer anything with a forged status reply.

    ``chown``: give the socket file to ``uid`` too (else it stays root's).
    Prints each request it receives, so a test can tell nothing was sent.
    """
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    if chown:
        os.chown(path, uid, uid)
    os.setgid(uid)
    os.setuid(uid)
    sock.listen()  # SO_PEERCRED reports the credentials at listen()
    print("listening", flush=True)
    for _ in range(20):
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(5)
            try:
                data = conn.recv(4096)
                conn.sendall(FORGED.encode())
            except OSError:
                data = b""
            print("request", repr(data), flush=True)


def connect_as(path: str, uid: int) -> None:
    """Connect to ``path`` as user ``uid``, send ``status`` and print the reply."""
    import socket

    os.setgid(uid)
    os.setuid(uid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        data = b""
        try:
            sock.sendall(b"status\n")
            for _ in range(100):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:  # refused: closed before or while we wrote
            pass
    print("reply", repr(data), flush=True)


def record_signals() -> None:
    """Print each of SIGHUP / SIGUSR1 / SIGUSR2 as it arrives, for a supervisor test."""
    import signal

    def report(number: int, _frame: object) -> None:
        print("got", signal.Signals(number).name, flush=True)

    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, report)
    for i in range(3):
        print("line", i, flush=True)
    print("READY", flush=True)
    for _ in range(1200):  # two minutes at most
        time.sleep(0.1)
