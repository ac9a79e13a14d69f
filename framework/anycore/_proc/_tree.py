"""Process trees that end as a whole: ``Process(kill_tree=True)`` (Linux).

A process-group kill misses whatever left the group: a grandchild that called
``setsid()`` (every daemon does), or one whose parent died so that it was
handed to init.  Linux lets a process declare itself a *child subreaper*
(``PR_SET_CHILD_SUBREAPER``): orphans anywhere below it are then reparented
to it instead of to init, so every descendant stays below it, whatever it
does with sessions and groups.

Doing that in the user's own process would hand it every orphan of every
child it has, anycore's or not, and their zombies with nobody waiting for
them.  So each tree gets a **keeper**: a small ``python -I -S`` process,
started in place of the program, that becomes the subreaper, forks and execs
the program (which gets ``PR_SET_PDEATHSIG`` against it), reaps everything
that is reparented to it, and, once the program has exited, ends what is
left of the tree: SIGTERM to every descendant, a grace period, SIGKILL until
none is left.  Then it exits with the program's own status (the same exit
code, or killed by the same signal), so the parent sees the program's exit.

The parent talks to it over two pipes: the keeper reports the program's pid
(or the errno of a failed exec) on one; on the other the parent writes
``K`` ("kill the tree now, no grace"), and its end of file means the parent
is gone (or the ``Process`` is closed): the tree is killed at once.  A
parent SIGKILLed or OOM-killed therefore takes the whole tree with it.

What it cannot do: a process that the keeper cannot signal (another user's,
after a setuid exec) survives, and so does everything if the keeper itself
is SIGKILLed first (the program gets SIGKILL from the kernel then, its
descendants do not).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys

from ..errors import ProcessError
from ._spawn import exec_error

__all__ = ["TREE_SUPPORTED", "KeeperLink", "keeper_argv", "tree_unsupported"]

TREE_SUPPORTED = sys.platform.startswith("linux")

# argv: "anycore-tree" report_fd control_fd group restore grace executable program-argv...
#   group: "s" (new session), "g<N>" (setpgid N; 0: own group), "-" (keeper's)
_KEEPER_SOURCE = r"""
import ctypes, errno, os, select, signal, sys, time
report, control = int(sys.argv[2]), int(sys.argv[3])
group, restore, grace = sys.argv[4], sys.argv[5] == "1", float(sys.argv[6])
executable, argv = sys.argv[7], sys.argv[8:]
parent = os.getppid()
me = os.getpid()
libc = ctypes.CDLL(None, use_errno=True)
os.set_inheritable(report, False)
os.set_inheritable(control, False)

def tell(line):
    os.write(report, line.encode())

if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    tell("E%d\n" % ctypes.get_errno())
    sys.exit(126)
# The keeper is driven by its pipe, not by signals sent to a group it shares
# with the parent (a terminal's Ctrl-C, say); the program gets them back.
DRIVEN = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
          signal.SIGUSR1, signal.SIGUSR2, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU]
ignored_before = {s for s in DRIVEN if signal.getsignal(s) == signal.SIG_IGN}
for s in DRIVEN:
    signal.signal(s, signal.SIG_IGN)
wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *a: None)
err_r, err_w = os.pipe2(os.O_CLOEXEC)
pid = os.fork()
if pid == 0:
    try:
        signal.set_wakeup_fd(-1)
        if group == "s":
            os.setsid()
        elif group != "-":
            os.setpgid(0, int(group[1:]))
        for s in DRIVEN:
            signal.signal(s, signal.SIG_IGN if s in ignored_before else signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if restore:
            for s in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(s, signal.SIG_DFL)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: dies with the keeper
        if os.getppid() != me:
            os._exit(137)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execv(executable, argv)
    except OSError as exc:
        os.write(err_w, b"%d" % (exc.errno or 0))
    finally:
        os._exit(127)
os.close(err_w)
failure = b""
while True:
    try:
        chunk = os.read(err_r, 32)
    except InterruptedError:
        continue
    if not chunk:
        break
    failure += chunk
os.close(err_r)
if failure:
    os.waitpid(pid, 0)
    tell("E%s\n" % failure.decode())
    sys.exit(127)
tell("P%d\n" % pid)
os.close(report)

def descendants():
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            if fields[0] != b"Z":
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [me]
    while todo:
        for child in parents.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found

def reap():
    global status
    while True:
        try:
            done, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if not done:
            return True
        if done == pid:
            status = st

def wait(timeout):
    ready = select.select([wake_r, control], [], [], timeout)[0]
    if wake_r in ready:
        try:
            os.read(wake_r, 4096)
        except BlockingIOError:
            pass
    return control in ready

def command():
    global grace
    try:
        data = os.read(control, 64)
    except BlockingIOError:
        return
    if not data or b"K" in data:
        grace = 0.0
        return True

def end_tree():
    deadline = time.monotonic() + grace
    give_up = deadline + 10.0  # what we may not signal (another uid) is left alone
    termed = set()
    while reap() and time.monotonic() < give_up:
        killing = grace <= 0 or time.monotonic() >= deadline
        for victim in descendants():
            if killing or victim not in termed:
                termed.add(victim)
                try:
                    os.kill(victim, signal.SIGKILL if killing else signal.SIGTERM)
                except OSError:
                    pass
        left = deadline - time.monotonic()
        if wait(0.05 if killing else max(0.0, min(0.05, left))):
            command()

status = None
os.set_blocking(control, False)
stop_now = False
while status is None:
    if wait(0.25) and command():
        stop_now = True
    if os.getppid() != parent:
        stop_now = True
        grace = 0.0
    reap()
    if stop_now and status is None:
        try:
            if group in ("s", "g0"):
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
end_tree()
if os.WIFEXITED(status):
    os._exit(os.WEXITSTATUS(status))
sig = os.WTERMSIG(status)
import resource
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
signal.signal(sig, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
os.kill(me, sig)
os._exit(128 + sig)
"""


def tree_unsupported() -> ProcessError:
    return ProcessError(
        f"kill_tree=True needs Linux (PR_SET_CHILD_SUBREAPER); this is {sys.platform}:"
        " use the process-group kill (the default) here"
    )


def keeper_argv(
    report_fd: int,
    control_fd: int,
    *,
    executable: str,
    argv: list[str],
    start_new_session: bool,
    process_group: int | None,
    restore_signals: bool,
    grace: float,
) -> list[str]:
    """The command line that runs ``argv`` under a keeper (see the module note)."""
    if start_new_session:
        group = "s"
    elif process_group is None:
        group = "-"
    else:
        group = f"g{process_group}"
    return [
        sys.executable, "-I", "-S", "-c", _KEEPER_SOURCE, "anycore-tree",
        str(report_fd), str(control_fd), group, "1" if restore_signals else "0",
        repr(float(grace)), executable, *argv,
    ]  # fmt: skip


class KeeperLink:
    """The parent's ends of the two pipes to one keeper."""

    def __init__(self) -> None:
        self.report_r, self.report_w = os.pipe2(os.O_CLOEXEC)
        self.control_r, self.control_w = os.pipe2(os.O_CLOEXEC)

    def child_fds(self) -> tuple[int, int]:
        return self.report_w, self.control_r

    def close_child_ends(self) -> None:
        for fd in (self.report_w, self.control_r):
            if fd >= 0:
                os.close(fd)
        self.report_w = self.control_r = -1

    async def program_pid(self, executable: str) -> int:
        """Wait for the keeper's report: the program's pid, or raise its exec error."""
        loop = asyncio.get_running_loop()
        data = bytearray()
        done: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                chunk = os.read(self.report_r, 64)
            except (BlockingIOError, InterruptedError):
                return
            data.extend(chunk)
            if (not chunk or b"\n" in data or len(data) > 64) and not done.done():
                done.set_result(None)

        os.set_blocking(self.report_r, False)
        loop.add_reader(self.report_r, readable)
        try:
            await done
        finally:
            loop.remove_reader(self.report_r)
            os.close(self.report_r)
            self.report_r = -1
        line = bytes(data).split(b"\n", 1)[0]
        if line[:1] == b"P" and line[1:].isdigit():
            return int(line[1:])
        if line[:1] == b"E" and line[1:].isdigit():
            code = int(line[1:])
            if code in (errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.ENOEXEC):
                raise exec_error(executable, code)
            raise OSError(code, os.strerror(code), executable)
        raise ProcessError(
            f"the kill_tree keeper of {executable!r} ended before starting it"
            f" (reported {bytes(data)!r})"
        )

    def kill_now(self) -> None:
        """Ask the keeper to SIGKILL the whole tree, without grace."""
        if self.control_w >= 0:
            try:
                os.write(self.control_w, b"K")
            except OSError:
                pass

    def close(self) -> None:
        """Our end of the control pipe closes: the keeper ends what is left, at once."""
        for fd in (self.report_r, self.control_w):
            if fd >= 0:
                os.close(fd)
        self.report_r = self.control_w = -1
        self.close_child_ends()

    def __del__(self) -> None:  # a Process dropped unclosed still frees its pipes
        try:
            self.close()
        except Exception:
            pass
