# systemd's two small protocols, written out: readiness notification and socket
# activation.
#
# What this module owns: ``sd_notify`` (one datagram to $NOTIFY_SOCKET, e.g.
# ``READY=1``), and ``listen_fds`` (the sockets systemd passed as fds 3.. when
# $LISTEN_PID is this process).  The supervisor uses the same notify protocol to
# learn that a child is ready, so ``anycore run`` under ``anycore supervise`` and
# under systemd behaves the same.  Rejected: depending on python-systemd / sdnotify
# (a C extension or a package for ~20 lines of socket code).
from __future__ import annotations

import os
import socket

__all__ = ["listen_fds", "sd_notify"]

SD_LISTEN_FDS_START = 3


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``.

    An address starting with ``@`` is in the abstract namespace.  Never raises
    for a missing or dead socket: notification is best effort, as in systemd.

    Returns:
        Whether a notification was sent.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """The sockets passed by systemd socket activation (``LISTEN_FDS``).

    Only when ``$LISTEN_PID`` names this process; the descriptors start at 3.
    They are made non-inheritable; with ``unset_environment`` the variables are
    removed so children do not take them for their own.

    Returns:
        The sockets (family and type as the kernel reports them), possibly none.
    """
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if unset_environment:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if not count or pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        return []
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
    return socks
