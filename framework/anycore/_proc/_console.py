"""Console input without blocking the loop: lines, or single keys in cbreak mode.

Owns :func:`open_console` and :class:`Console`.  The classic answers block a
thread (``input()``, ``sys.stdin.readline``) or are Windows-only (msvcrt's
``kbhit`` / ``getch``).  Here the loop waits for the descriptor to become
readable (``anyio.wait_readable``, so asyncio, uvloop and trio alike) and
then reads what is there: a read on a readable tty or pipe returns at once,
so the descriptor's blocking mode is left alone (it is shared with the shell
and with every process on the terminal).  A regular file on stdin (``< file``)
cannot be polled; it is read in a worker thread, where a read never waits
for long.

Keys mode puts a terminal in cbreak mode (no line editing, no echo, signals
still delivered: Ctrl-C stays Ctrl-C) for the scope of the ``async with`` and
restores the previous settings on the way out, whatever ends the scope.  An
escape sequence that arrives in one read (an arrow key: ``"\\x1b[A"``) is one
key.

Rejected: a reader thread feeding a queue (a thread that cannot be
interrupted while it waits in ``read``, and leaks on cancellation),
``loop.connect_read_pipe`` (it sets O_NONBLOCK on the shared descriptor and
takes the fd over), and prompt_toolkit (a dependency for a line reader).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import stat
import sys
from collections.abc import AsyncIterator
from types import TracebackType
from typing import IO, Any

import anyio

from ..errors import ClosedError, FrameTooLarge

__all__ = ["Console", "open_console"]

_READ_SIZE = 65536


class Console:
    """Lines or keys from a terminal, pipe or file, read without blocking the loop.

    Use :func:`open_console`.  ``async for line in console`` yields lines
    without their line ending and stops at end of input; :meth:`readline`
    returns ``""`` at end of input (as a file does); :meth:`read_key` returns
    one key in keys mode.

    Attributes:
        fd: the file descriptor read.
        keys: whether the console is in keys (cbreak) mode.
        max_line: the longest line accepted (:class:`FrameTooLarge` beyond).
    """

    def __init__(
        self,
        fd: int,
        *,
        keys: bool = False,
        encoding: str = "utf-8",
        errors: str = "replace",
        max_line: int = 65536,
    ) -> None:
        self.fd = fd
        self.keys = keys
        self.max_line = max_line
        self._decoder = codecs.getincrementaldecoder(encoding)(errors)
        self._text = ""
        self._eof = False
        self._closed = False
        self._saved_mode: list[Any] | None = None
        self._pollable = not stat.S_ISREG(os.fstat(fd).st_mode)

    # -- terminal modes ---------------------------------------------------------

    def _enter_keys_mode(self) -> None:
        if not os.isatty(self.fd):
            return  # a pipe or file has no line discipline: keys are bytes as they come
        import termios
        import tty

        self._saved_mode = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)

    def _restore(self) -> None:
        saved, self._saved_mode = self._saved_mode, None
        if saved is not None:
            import termios

            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    # -- reading ----------------------------------------------------------------

    async def _fill(self) -> bool:
        """Read what is there into the text buffer; False at end of input."""
        if self._closed:
            raise ClosedError("the console is closed")
        if self._eof:
            return False
        if self._pollable:
            await anyio.wait_readable(self.fd)
            data = os.read(self.fd, _READ_SIZE)
        else:
            data = await anyio.to_thread.run_sync(os.read, self.fd, _READ_SIZE)
        if not data:
            self._eof = True
            self._text += self._decoder.decode(b"", final=True)
            return bool(self._text)
        self._text += self._decoder.decode(data)
        return True

    async def readline(self) -> str:
        """The next line without its line ending; ``""`` at end of input.

        A last line without a newline is returned as it is.

        Raises:
            FrameTooLarge: a line longer than ``max_line`` characters (the
                line is discarded up to its end; the console stays usable).
            ClosedError: the console was closed.
        """
        line = await self._next_line()
        return "" if line is None else line

    async def _next_line(self) -> str | None:
        while True:
            newline = self._text.find("\n")
            if newline >= 0:
                line, self._text = self._text[:newline], self._text[newline + 1 :]
                if len(line) > self.max_line:
                    raise FrameTooLarge(len(line), self.max_line)
                return line[:-1] if line.endswith("\r") else line
            if len(self._text) > self.max_line:
                size = len(self._text)
                await self._discard_line()
                raise FrameTooLarge(size, self.max_line)
            if not await self._fill():
                line, self._text = self._text, ""
                return line or None

    async def _discard_line(self) -> None:
        self._text = ""
        while await self._fill():
            newline = self._text.find("\n")
            if newline >= 0:
                self._text = self._text[newline + 1 :]
                return
            self._text = ""

    async def read_key(self) -> str:
        """The next key: one character, or an escape sequence read together.

        Returns ``""`` at end of input.
        """
        while not self._text:
            if not await self._fill():
                return ""
        text = self._text
        if text[0] == "\x1b" and len(text) > 1:
            end = _escape_end(text)
            key, self._text = text[:end], text[end:]
            return key
        key, self._text = text[0], text[1:]
        return key

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while (line := await self._next_line()) is not None:
            yield line

    # -- lifecycle --------------------------------------------------------------

    async def aclose(self) -> None:
        """Restore the terminal's mode; reading afterwards raises ClosedError."""
        self._closed = True
        self._restore()

    async def __aenter__(self) -> Console:
        if self.keys:
            self._enter_keys_mode()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _escape_end(text: str) -> int:
    # CSI (ESC [ ... final byte in @-~) and SS3 (ESC O x) sequences; anything
    # else after ESC is an Alt-modified key: ESC plus one character.
    if len(text) >= 2 and text[1] == "[":
        for i in range(2, len(text)):
            if "@" <= text[i] <= "~":
                return i + 1
        return len(text)
    if len(text) >= 3 and text[1] == "O":
        return 3
    return 2


def open_console(
    stream: IO[Any] | int | None = None,
    *,
    keys: bool = False,
    encoding: str | None = None,
    errors: str = "replace",
    max_line: int = 65536,
) -> Console:
    """Read the console (stdin by default) without blocking the loop.

    ``async with open_console() as console: async for line in console: ...``
    reads lines; ``open_console(keys=True)`` reads single keys with
    ``await console.read_key()``, the terminal in cbreak mode (no echo, no
    line editing; Ctrl-C still interrupts) until the block ends.

    Args:
        stream: a file object or descriptor to read (default: ``sys.stdin``).
        keys: cbreak mode and :meth:`Console.read_key`.
        encoding: the text encoding (default: the stream's, else UTF-8).
        errors: the decoding error policy (default ``"replace"``).
        max_line: the longest line accepted, in characters.

    Returns:
        An async context manager yielding the :class:`Console`.
    """
    if stream is None:
        stream = sys.stdin
    if isinstance(stream, int):
        fd = stream
    else:
        fd = stream.fileno()
        encoding = encoding or getattr(stream, "encoding", None)
    return Console(fd, keys=keys, encoding=encoding or "utf-8", errors=errors, max_line=max_line)
