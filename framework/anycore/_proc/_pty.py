# Programs on a pseudo-terminal, driven expect-style.
#
# What this module owns: ``PtyProcess`` / ``open_pty``: start a program whose stdin,
# stdout and stderr are the slave side of a fresh pty and which has that pty as its
# controlling terminal (so ``getpass``, ``ssh``, ``sudo`` and line editors that open
# /dev/tty work), then ``expect`` patterns in its output and ``send`` it input.
#
# Spawning: ``os.openpty()`` in the parent; the child is started with posix_spawn in a
# new session (``setsid``) and *opens the slave by path* as its fd 0 (dup2'ed to 1 and
# 2).  A session leader without a controlling terminal that opens a tty acquires it -
# the same effect as ``ioctl(TIOCSCTTY)`` in a forked child, without running Python
# between fork and exec (forking a threaded program is unsafe; ``pty.fork`` does it).
# posix_spawn cannot chdir on 3.11, so ``cwd`` is applied by ``/bin/sh -c 'cd ... &&
# exec "$@"'`` in front of the program.
#
# The lifecycle (SIGTERM to the session's process group, grace, SIGKILL, reap,
# runtime registration, limiter) is Process's: PtyProcess is a Process whose pipes
# are one master fd.  Output is kept in a buffer of at most ``max_buffer`` bytes; when
# more arrives than the caller consumes, the oldest bytes are dropped (counted in
# ``discarded``), like pexpect's search window: a chatty program never blocks and
# memory stays bounded.
#
# Rejected: pexpect (blocking, fork-based), ``pty.spawn`` (blocks, copies to our tty).
from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import re
import struct
import termios
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from ..errors import BusyError, ClosedError, TimeoutExpired
from ._spawn import ExitWatcher, resolve_executable, spawn
from ._subprocess import Args, Process, StrOrBytesPath

__all__ = ["PtyProcess", "open_pty"]

Pattern = bytes | str | re.Pattern[bytes]


class PtyProcess(Process):
    """A program running on a pseudo-terminal; an async context manager.

    Everything :class:`~anycore.Process` offers about the child (``pid``,
    ``wait``, ``status``, ``terminate``, ``kill``, the exit guarantees) plus
    :meth:`expect`, :meth:`send`, :meth:`sendline`, :meth:`read`.

    Args:
        args: the program and its arguments (or a shell command with ``shell=True``).
        env, cwd, executable, shell: as for Process.
        dimensions: the terminal's (rows, columns).
        echo: whether the terminal echoes input back (turn off to read only
            the program's own output).
        max_buffer: most bytes of output held; older ones are dropped.
        timeout: the default timeout of :meth:`expect`, seconds.
        encoding: used by :meth:`send` for ``str`` data (default UTF-8).
        grace_period, limiter, die_with_parent: as for Process.

    Raises:
        ValueError, TypeError: invalid arguments (nothing spawned).
    """

    def __init__(
        self,
        args: Args,
        *,
        env: Mapping[str, str] | None = None,
        cwd: StrOrBytesPath | None = None,
        executable: StrOrBytesPath | None = None,
        shell: bool = False,
        dimensions: tuple[int, int] = (24, 80),
        echo: bool = True,
        max_buffer: int = 1024 * 1024,
        timeout: float = 30.0,
        encoding: str = "utf-8",
        grace_period: float = 5.0,
        limiter: anyio.CapacityLimiter | None = None,
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(
            args,
            env=env,
            cwd=cwd,
            executable=executable,
            shell=shell,
            start_new_session=True,
            grace_period=grace_period,
            limiter=limiter,
            die_with_parent=die_with_parent,
        )
        rows, cols = dimensions
        if not (0 < rows < 65536 and 0 < cols < 65536):
            raise ValueError(f"invalid terminal dimensions {dimensions!r}")
        if max_buffer <= 0:
            raise ValueError("max_buffer must be positive")
        self.dimensions = (rows, cols)
        self.echo = echo
        self.max_buffer = max_buffer
        self.timeout = timeout
        self.encoding = encoding
        self._master = -1
        self._buf = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._reading = False
        self.discarded = 0
        self.before = b""
        self.after = b""
        self.match: re.Match[bytes] | None = None
        self.match_index = -1

    # -- spawning -----------------------------------------------------------------------

    def _spawn(self, loop: asyncio.AbstractEventLoop) -> None:
        argv = list(self._argv)
        executable = resolve_executable(self._executable, self._env)
        if self._cwd is not None:
            argv = ["/bin/sh", "-c", 'cd -- "$0" && exec "$@"', self._cwd, executable, *argv[1:]]
            executable = "/bin/sh"
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *self.dimensions, 0, 0))
            if not self.echo:
                attrs = termios.tcgetattr(slave)
                attrs[3] &= ~termios.ECHO
                termios.tcsetattr(slave, termios.TCSANOW, attrs)
            pid = spawn(
                argv,
                executable,
                env=self._env,
                ctty=os.ttyname(slave),
                close_fds=True,
                start_new_session=True,
                die_with_parent=self._die_with_parent,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # the child has its own; ours would hide the EOF
        self.pid = pid
        self._master = master
        self._exit = loop.create_future()
        self._watcher = ExitWatcher(loop, pid, self._on_exit)
        os.set_blocking(master, False)
        self._loop = loop
        self._resume()

    # -- reading --------------------------------------------------------------------------

    def _resume(self) -> None:
        if not self._reading and not self._eof and self._master >= 0:
            self._reading = True
            self._loop.add_reader(self._master, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: every slave fd closed - the program is gone
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            data = b""
        if data:
            self._buf += data
            excess = len(self._buf) - self.max_buffer
            if excess > 0:
                del self._buf[:excess]
                self.discarded += excess
        else:
            self._eof = True
            self._reading = False
            self._loop.remove_reader(self._master)
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait_data(self) -> None:
        if self._master < 0:
            raise ClosedError("the pty is closed")
        if self._waiter is not None:
            raise BusyError("read")
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    @property
    def buffered(self) -> int:
        """Bytes of output received and not yet consumed."""
        return len(self._buf)

    @property
    def at_eof(self) -> bool:
        """True once the terminal closed (the program and its children are gone)."""
        return self._eof

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Return buffered output (at most ``max_bytes``), waiting for some if empty.

        Raises:
            anyio.EndOfStream: the terminal closed and everything was read.
        """
        while not self._buf:
            if self._eof:
                raise anyio.EndOfStream
            await self._wait_data()
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        return data

    async def expect(
        self, pattern: Pattern | Sequence[Pattern], timeout: float | None = None
    ) -> re.Match[bytes]:
        """Wait until the output matches ``pattern``; consume it through the match.

        ``pattern`` is bytes or str (matched literally), a compiled bytes regex,
        or a list of those (the earliest match in the output wins;
        :attr:`match_index` tells which).  The output before the match is left
        in :attr:`before`, the matched text in :attr:`after`.

        Returns:
            the :class:`re.Match`.

        Raises:
            TimeoutExpired: no match within ``timeout`` (default: the process's);
                ``output`` holds what was received.
            anyio.EndOfStream: the program ended first; :attr:`before` holds the
                remaining output.
        """
        pats = [pattern] if isinstance(pattern, (bytes, str, re.Pattern)) else list(pattern)
        compiled = [self._compile(p) for p in pats]
        if not compiled:
            raise ValueError("expect() needs at least one pattern")
        limit = self.timeout if timeout is None else timeout
        with anyio.move_on_after(limit) as scope:
            while True:
                best: tuple[int, int, re.Match[bytes]] | None = None
                data = bytes(self._buf)  # a Match must not see the buffer change later
                for i, regex in enumerate(compiled):
                    m = regex.search(data)
                    if m is not None and (best is None or m.start() < best[2].start()):
                        best = (m.start(), i, m)
                if best is not None:
                    _, index, m = best
                    self.before = data[: m.start()]
                    self.after = m.group(0)
                    self.match, self.match_index = m, index
                    del self._buf[: m.end()]
                    return m
                if self._eof:
                    self.before = bytes(self._buf)
                    self._buf.clear()
                    raise anyio.EndOfStream
                await self._wait_data()
        assert scope.cancel_called
        raise TimeoutExpired(self.args, limit, bytes(self._buf))

    async def expect_eof(self, timeout: float | None = None) -> bytes:
        """Wait for the terminal to close; return the output not yet consumed.

        Raises:
            TimeoutExpired: still open after ``timeout``.
        """
        limit = self.timeout if timeout is None else timeout
        with anyio.move_on_after(limit):
            while not self._eof:
                await self._wait_data()
            data = bytes(self._buf)
            self._buf.clear()
            return data
        raise TimeoutExpired(self.args, limit, bytes(self._buf))

    def _compile(self, pattern: Pattern) -> re.Pattern[bytes]:
        if isinstance(pattern, re.Pattern):
            if not isinstance(pattern.pattern, bytes):
                raise TypeError("regex patterns must be bytes patterns (re.compile(rb'...'))")
            return pattern
        if isinstance(pattern, str):
            pattern = pattern.encode(self.encoding)
        if not isinstance(pattern, bytes):
            raise TypeError(f"cannot expect {type(pattern).__name__}")
        return re.compile(re.escape(pattern))

    # -- writing -----------------------------------------------------------------------------

    async def send(self, data: bytes | str) -> None:
        """Type ``data`` into the terminal (waits while the terminal's input is full).

        Raises:
            ClosedError: the pty was closed.
            BrokenError-like OSError: the program is gone.
        """
        if isinstance(data, str):
            data = data.encode(self.encoding)
        view = memoryview(data)
        while view:
            if self._master < 0:
                raise ClosedError("the pty is closed")
            try:
                n = os.write(self._master, view)
            except (BlockingIOError, InterruptedError):
                n = 0
            view = view[n:]
            if view:
                fut = self._write_waiter = self._loop.create_future()
                self._loop.add_writer(self._master, fut.set_result, None)
                try:
                    await fut
                finally:
                    self._write_waiter = None
                    if self._master >= 0:
                        self._loop.remove_writer(self._master)

    async def sendline(self, line: bytes | str = b"") -> None:
        """Send ``line`` followed by a newline (Enter)."""
        if isinstance(line, str):
            line = line.encode(self.encoding)
        await self.send(line + b"\n")

    async def sendcontrol(self, char: str) -> None:
        """Send a control character: ``sendcontrol("c")`` is Ctrl-C."""
        code = ord(char.lower()) - ord("a") + 1
        if not 1 <= code <= 26:
            raise ValueError(f"no control character for {char!r}")
        await self.send(bytes([code]))

    async def sendeof(self) -> None:
        """Send the terminal's EOF character (Ctrl-D at the start of a line)."""
        eof = termios.tcgetattr(self._master)[6][termios.VEOF]
        await self.send(eof if isinstance(eof, bytes) else bytes([eof]))

    def setwinsize(self, rows: int, cols: int) -> None:
        """Resize the terminal (the program gets SIGWINCH)."""
        fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.dimensions = (rows, cols)

    # -- closing ------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self._master >= 0:
            fd, self._master = self._master, -1
            if self._reading:
                self._loop.remove_reader(fd)
                self._reading = False
            if self._write_waiter is not None:
                self._loop.remove_writer(fd)
            os.close(fd)
            for w in (self._waiter, self._write_waiter):
                if w is not None and not w.done():
                    w.set_exception(ClosedError("the pty is closed"))
        super()._finish()

    def __repr__(self) -> str:
        return f"<PtyProcess pid={self.pid} args={self.args!r} status={self.status}>"


def open_pty(args: Args, **kwargs: Any) -> PtyProcess:
    """``async with open_pty(["python3", "-c", ...]) as term``: a :class:`PtyProcess`.

    Takes the same arguments as :class:`PtyProcess`.
    """
    return PtyProcess(args, **kwargs)
