# The parent's ends of a child's pipes, driven by the loop, and communicate()'s engine.
#
# Pipes are driven with ``loop.add_reader`` / ``add_writer`` on the raw fds rather than
# ``connect_read_pipe`` transports: the reader needs exact control over when it stops
# reading (backpressure to the child: a bounded buffer, reading paused while it is
# full, so the child blocks on its full pipe), and a transport plus a protocol plus a
# StreamReader is three objects and two copies per chunk.  Both loops implement
# add_reader on pipes.  Lines are cut with an offset into one bytearray (O(n) over the
# stream, no ``del buf[:n]`` per line) and the newline search resumes where it
# stopped.  Over-long lines raise FrameTooLarge (the rest of that line is skipped, so
# the stream stays usable) or, with ``split_long_lines=True``, arrive in pieces.
#
# Used by _subprocess (Process), _pipeline and _pty.
from __future__ import annotations

import asyncio
import codecs
import io
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import anyio

from ..errors import (
    BrokenError,
    BusyError,
    ClosedError,
    FrameTooLarge,
    OutputLimitExceeded,
    TimeoutExpired,
)
from ._spawn import ProcessStatus

__all__ = ["ProcessReader", "ProcessWriter", "TextProcessReader"]

_READ_SIZE = 256 * 1024
DEFAULT_LIMIT = 64 * 1024  # bytes held per pipe before reading pauses
DEFAULT_MAX_LINE = 1024 * 1024
DEFAULT_MAX_OUTPUT = 256 * 1024 * 1024  # capture limit per stream (run / communicate)


# -- pipe streams --------------------------------------------------------------------


class ProcessReader:
    """The parent's end of a child's stdout or stderr pipe (bytes).

    Iterate it for lines (``async for line in proc.stdout``), call
    :meth:`receive` / :meth:`chunks` for chunks as they arrive, :meth:`read` for a
    bounded amount.  At most ``limit`` bytes are held; while the buffer is full the
    pipe is not read, so a child writing faster than the caller reads blocks.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        name: str,
        *,
        limit: int = DEFAULT_LIMIT,
        max_line_length: int = DEFAULT_MAX_LINE,
        split_long_lines: bool = False,
    ) -> None:
        self._loop = loop
        self._fd = fd
        self.name = name
        self._limit = limit
        self.max_line_length = max_line_length
        self.split_long_lines = split_long_lines
        self._buf = bytearray()
        self._start = 0  # consumed prefix of _buf
        self._scan = 0  # where the newline search resumes
        self._skipping = False  # discarding the rest of an over-long line
        self._eof = False
        self._closed = False
        self._paused = False
        self._want_more = False  # a readline needs more than `limit` bytes
        self._waiter: asyncio.Future[None] | None = None
        self.bytes_read = 0
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._on_readable)

    # -- loop side ----------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.bytes_read += len(data)
            buf = self._buf
            if self._start and self._start >= len(buf) >> 1:
                del buf[: self._start]
                self._scan -= self._start
                self._start = 0
            buf += data
            held = len(buf) - self._start
            if held >= self._limit and (not self._want_more or held > self.max_line_length):
                self._pause()
        else:
            self._eof = True
            self._loop.remove_reader(self._fd)
        self._wake()

    def _pause(self) -> None:
        if not self._paused and not self._eof:
            self._paused = True
            self._loop.remove_reader(self._fd)

    def _maybe_resume(self) -> None:
        if self._paused and not self._closed:
            held = len(self._buf) - self._start
            if held < self._limit or (self._want_more and held <= self.max_line_length):
                self._paused = False
                self._loop.add_reader(self._fd, self._on_readable)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    async def _wait(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.name} is closed")
        if self._waiter is not None:
            raise BusyError("read")
        self._maybe_resume()
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._closed:
            raise ClosedError(f"{self.name} is closed")

    def _take(self, n: int) -> bytes:
        start = self._start
        data = bytes(self._buf[start : start + n])
        self._start = start + n
        if self._start >= len(self._buf):
            self._buf.clear()
            self._start = self._scan = 0
        elif self._scan < self._start:
            self._scan = self._start
        self._maybe_resume()
        return data

    # -- public ---------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received from the child and not yet consumed."""
        return len(self._buf) - self._start

    @property
    def at_eof(self) -> bool:
        """True once the pipe reached EOF and every buffered byte was consumed."""
        return self._eof and self.buffered == 0

    def fileno(self) -> int:
        """The parent's descriptor (-1 once closed)."""
        return -1 if self._closed else self._fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return the next chunk (at most ``max_bytes``) as soon as there is one.

        Raises:
            anyio.EndOfStream: the child closed the pipe and everything was read.
            ClosedError: the stream was closed on this side.
        """
        while self._start == len(self._buf):
            if self._eof:
                raise anyio.EndOfStream
            await self._wait()
        return self._take(min(max_bytes, len(self._buf) - self._start))

    async def chunks(self, max_bytes: int = 65536) -> AsyncIterator[bytes]:
        """Iterate chunks until EOF."""
        while True:
            try:
                yield await self.receive(max_bytes)
            except anyio.EndOfStream:
                return

    async def read(self, n: int = -1, *, limit: int = DEFAULT_MAX_OUTPUT) -> bytes:
        """Read ``n`` bytes (fewer at EOF), or everything until EOF when ``n < 0``.

        Raises:
            OutputLimitExceeded: ``n < 0`` and the output grew past ``limit``.
        """
        out = bytearray()
        if n >= 0:
            while len(out) < n:
                try:
                    out += await self.receive(n - len(out))
                except anyio.EndOfStream:
                    break
            return bytes(out)
        while True:
            try:
                out += await self.receive(_READ_SIZE)
            except anyio.EndOfStream:
                return bytes(out)
            if len(out) > limit:
                raise OutputLimitExceeded(self.name, limit)

    async def readline(self) -> bytes:
        """Return the next line including its ``\\n`` (the last one may lack it).

        Returns ``b""`` at EOF.

        Raises:
            FrameTooLarge: the line is longer than ``max_line_length`` and
                ``split_long_lines`` is off; the rest of that line is skipped, so
                the next call returns the following line.
        """
        limit = self.max_line_length
        while True:
            buf = self._buf
            i = buf.find(b"\n", self._scan)
            if self._skipping:
                if i < 0:
                    self._buf.clear()
                    self._start = self._scan = 0
                    if self._eof:
                        self._skipping = False
                        return b""
                    await self._wait()
                    continue
                self._take(i + 1 - self._start)
                self._skipping = False
                continue
            if i >= 0 and i - self._start <= limit:
                self._want_more = False
                return self._take(i + 1 - self._start)
            held = len(buf) - self._start
            if held > limit or i >= 0:  # i >= 0 here: the line is too long
                self._want_more = False
                if self.split_long_lines:
                    return self._take(limit)
                self._skipping = True
                size = held if i < 0 else i - self._start
                self._take(min(held, limit))
                raise FrameTooLarge(size, limit)
            if self._eof:
                self._want_more = False
                return self._take(held) if held else b""
            self._scan = len(buf)
            self._want_more = True
            await self._wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        while line := await self.readline():
            yield line

    def close(self) -> None:
        """Stop reading and close the parent's end (idempotent)."""
        if not self._closed:
            self._closed = True
            if not self._eof and not self._paused:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._wake()

    async def aclose(self) -> None:
        """Same as :meth:`close`."""
        self.close()


class TextProcessReader:
    """A child's output pipe decoded to ``str`` with universal newlines.

    Same API as :class:`ProcessReader`; line lengths count characters.
    """

    def __init__(self, raw: ProcessReader, encoding: str, errors: str) -> None:
        self.raw = raw
        self.name = raw.name
        self._decoder = io.IncrementalNewlineDecoder(
            codecs.getincrementaldecoder(encoding)(errors), translate=True
        )
        self._text = ""
        self._scan = 0
        self._eof = False
        self._skipping = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await self.raw.receive(_READ_SIZE)
        except anyio.EndOfStream:
            self._text += self._decoder.decode(b"", final=True)
            self._eof = True
            return True
        self._text += self._decoder.decode(chunk)
        return True

    async def receive(self, max_chars: int = 65536) -> str:
        """Return the next decoded text (at most ``max_chars``).

        Raises:
            anyio.EndOfStream: everything was read.
        """
        while not self._text:
            if not await self._fill():
                raise anyio.EndOfStream
        out, self._text = self._text[:max_chars], self._text[max_chars:]
        self._scan = 0
        return out

    async def chunks(self, max_chars: int = 65536) -> AsyncIterator[str]:
        """Iterate decoded chunks until EOF."""
        while True:
            try:
                yield await self.receive(max_chars)
            except anyio.EndOfStream:
                return

    async def read(self, n: int = -1, *, limit: int = DEFAULT_MAX_OUTPUT) -> str:
        """Read ``n`` characters, or everything until EOF (bounded by ``limit``)."""
        while (n < 0 or len(self._text) < n) and await self._fill():
            if n < 0 and len(self._text) > limit:
                raise OutputLimitExceeded(self.name, limit)
        if n < 0:
            n = len(self._text)
        out, self._text = self._text[:n], self._text[n:]
        self._scan = 0
        return out

    async def readline(self) -> str:
        """Next line with its ``"\\n"``; ``""`` at EOF. See :meth:`ProcessReader.readline`."""
        limit = self.raw.max_line_length
        while True:
            i = self._text.find("\n", self._scan)
            if self._skipping:
                if i < 0:
                    self._text, self._scan = "", 0
                    if not await self._fill():
                        self._skipping = False
                        return ""
                    continue
                self._text, self._scan, self._skipping = self._text[i + 1 :], 0, False
                continue
            if i >= 0 and i <= limit:
                line, self._text, self._scan = self._text[: i + 1], self._text[i + 1 :], 0
                return line
            if len(self._text) > limit or i >= 0:
                if self.raw.split_long_lines:
                    line, self._text, self._scan = self._text[:limit], self._text[limit:], 0
                    return line
                size = len(self._text) if i < 0 else i
                self._text, self._scan, self._skipping = self._text[limit:], 0, True
                raise FrameTooLarge(size, limit)
            self._scan = len(self._text)
            if not await self._fill():
                line, self._text, self._scan = self._text, "", 0
                return line

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while line := await self.readline():
            yield line

    def fileno(self) -> int:
        """The parent's descriptor (-1 once closed)."""
        return self.raw.fileno()

    def close(self) -> None:
        """Close the underlying pipe."""
        self.raw.close()

    async def aclose(self) -> None:
        """Same as :meth:`close`."""
        self.raw.close()


class ProcessWriter:
    """The parent's end of a child's stdin pipe.

    :meth:`write` returns once every byte is in the pipe, so nothing is buffered
    here: a child that stops reading makes the writer wait (backpressure).
    In text mode :meth:`write` also takes ``str`` (encoded with the process's
    encoding).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        encoding: str | None = None,
        errors: str = "strict",
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._encoding = encoding
        self._errors = errors
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self.bytes_written = 0
        os.set_blocking(fd, False)

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._fd)
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    async def write(self, data: bytes | bytearray | memoryview | str) -> None:
        """Write all of ``data``, waiting while the pipe is full.

        Raises:
            BrokenError: the child closed its end (exited, or closed stdin).
            ClosedError: this end was closed.
            BusyError: another task is writing.
        """
        if isinstance(data, str):
            if self._encoding is None:
                raise TypeError("this stdin takes bytes (open the process with text=True)")
            data = data.encode(self._encoding, self._errors)
        view = memoryview(data).cast("B")
        while view:
            if self._closed:
                raise ClosedError("stdin is closed")
            if self._waiter is not None:
                raise BusyError("writ")
            try:
                n = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise BrokenError("the child closed its stdin") from exc
            self.bytes_written += n
            view = view[n:]
            if view:
                self._waiter = self._loop.create_future()
                self._loop.add_writer(self._fd, self._on_writable)
                try:
                    await self._waiter
                finally:
                    if self._waiter is not None:
                        self._waiter = None
                        if not self._closed:
                            self._loop.remove_writer(self._fd)

    send = write

    async def drain(self) -> None:
        """No-op kept for asyncio.StreamWriter parity: write() already waited."""

    def fileno(self) -> int:
        """The parent's descriptor (-1 once closed)."""
        return -1 if self._closed else self._fd

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._closed

    def close(self) -> None:
        """Close the pipe: the child sees EOF on its stdin (idempotent)."""
        if not self._closed:
            self._closed = True
            if self._waiter is not None:
                self._loop.remove_writer(self._fd)
                w, self._waiter = self._waiter, None
                if not w.done():
                    w.set_exception(ClosedError("stdin is closed"))
            os.close(self._fd)

    async def aclose(self) -> None:
        """Same as :meth:`close`."""
        self.close()

    send_eof = aclose


# -- communicate's engine (shared with pipelines) ---------------------------------------
#
# Process and Pipeline both own stdin / stdout / stderr pipes, one communicate() task
# and two capture buffers; they differ only in which exits end the exchange and what
# is killed when a grandchild keeps a pipe open.  The engine below is written once
# against _PipeOwner; each class keeps only its state check and its docstring.


class _PipeOwner(Protocol):
    """What communicate() needs from a process or a pipeline."""

    @property
    def args(self) -> Any: ...
    @property
    def stdin(self) -> ProcessWriter | None: ...
    @property
    def stdout(self) -> ProcessReader | TextProcessReader | None: ...
    @property
    def stderr(self) -> ProcessReader | TextProcessReader | None: ...
    @property
    def drain_timeout(self) -> float: ...

    _comm: asyncio.Task[tuple[Any, Any]] | None
    _captured: list[bytearray]
    _encoding: str | None  # None: bytes mode
    _errors: str

    def _exit_futures(self) -> list[asyncio.Future[ProcessStatus]]: ...
    def _kill_leftovers(self) -> None: ...
    async def wait(self, timeout: float | None = None) -> int: ...
    async def aclose(self) -> None: ...


async def _communicate(
    owner: _PipeOwner, input: bytes | str | None, timeout: float | None, max_output: int
) -> tuple[Any, Any]:
    """communicate() once the owner is known to run: one shared task, so a call
    that timed out is resumed by the next one."""
    if owner._comm is None:
        if input is not None and not owner.stdin:
            raise ValueError("input given but stdin is not a PIPE")
        owner._comm = asyncio.ensure_future(_collect(owner, input, max_output))
    elif input is not None:
        raise ValueError("input can only be given on the first communicate() call")
    comm = owner._comm
    if timeout is None:
        return await asyncio.shield(comm)
    await asyncio.wait({comm}, timeout=timeout)
    if not comm.done():
        out, err = _decoded_capture(owner)
        raise TimeoutExpired(owner.args, timeout, out, err)
    return comm.result()


def _decoded_capture(owner: _PipeOwner) -> tuple[Any, Any]:
    """What was captured so far, as communicate() returns it."""
    return _decode_capture(
        owner._captured, (owner.stdout, owner.stderr), owner._encoding, owner._errors
    )


async def _collect(owner: _PipeOwner, input: bytes | str | None, limit: int) -> tuple[Any, Any]:
    readers = [
        (_raw(stream), owner._captured[i])
        for i, stream in enumerate((owner.stdout, owner.stderr))
        if stream
    ]
    await _serve_pipes(
        owner.stdin, input, readers, limit, owner._exit_futures(), owner.drain_timeout,
        owner._kill_leftovers,
    )  # fmt: skip
    return _decoded_capture(owner)


async def _run_to_end(
    owner: _PipeOwner, input: bytes | str | None, timeout: float | None, max_output: int
) -> tuple[Any, Any]:
    """run()'s body inside the owner's scope: communicate (only wait when nothing is
    piped), then wait for every exit.  On timeout everything is stopped and the
    TimeoutExpired carries what was read by then."""
    if not (owner.stdin or owner.stdout or owner.stderr):
        await owner.wait(timeout)  # the hot path: no pipes, no tasks
        return None, None
    try:
        out, err = await _communicate(owner, input, timeout, max_output)
    except TimeoutExpired:
        # Kill the group, give the pumps a bounded drain, report what we got.
        await owner.aclose()
        out, err = _decoded_capture(owner)
        raise TimeoutExpired(owner.args, timeout or 0.0, out, err) from None
    await owner.wait()
    return out, err


def _raw(stream: ProcessReader | TextProcessReader) -> ProcessReader:
    return stream.raw if isinstance(stream, TextProcessReader) else stream


def _decode_capture(
    buffers: Sequence[bytearray],
    streams: Sequence[object | None],
    encoding: str | None,
    errors: str,
) -> tuple[Any, Any]:
    results: list[Any] = []
    for buf, stream in zip(buffers, streams, strict=True):
        if not stream:
            results.append(None)
        elif encoding is None:
            results.append(bytes(buf))
        else:
            text = bytes(buf).decode(encoding, errors)
            results.append(text.replace("\r\n", "\n").replace("\r", "\n"))
    return results[0], results[1]


async def _feed(stdin: ProcessWriter, data: bytes | str | None) -> None:
    try:
        if data:
            await stdin.write(data)
    except (BrokenError, ClosedError):
        pass  # the child stopped reading: what it did not take is dropped, as in Popen
    finally:
        stdin.close()


async def _pump(reader: ProcessReader, sink: bytearray, limit: int) -> None:
    while True:
        try:
            sink += await reader.receive(_READ_SIZE)
        except (anyio.EndOfStream, ClosedError):
            return
        if len(sink) > limit:
            raise OutputLimitExceeded(reader.name, limit)


async def _serve_pipes(
    stdin: ProcessWriter | None,
    input: bytes | str | None,
    readers: Sequence[tuple[ProcessReader, bytearray]],
    limit: int,
    exits: Sequence[asyncio.Future[ProcessStatus]],
    drain_timeout: float,
    kill_leftovers: Callable[[], None],
) -> None:
    """Feed stdin and collect outputs concurrently until every pipe closed and
    every process in ``exits`` exited.  Once all exited, open pipes (held by a
    grandchild) get ``drain_timeout``, then the group is killed, then another
    ``drain_timeout``; what was read by then is the output."""
    tasks: set[asyncio.Future[Any]] = set()
    if stdin:
        tasks.add(asyncio.ensure_future(_feed(stdin, input)))
    for reader, sink in readers:
        tasks.add(asyncio.ensure_future(_pump(reader, sink, limit)))
    try:
        pending = set(tasks)
        running: set[asyncio.Future[Any]] = {f for f in exits if not f.done()}
        while pending and running:
            done, _ = await asyncio.wait(pending | running, return_when=asyncio.FIRST_COMPLETED)
            for t in done & tasks:
                exc = t.exception()
                if exc is not None:
                    raise exc
            pending -= done
            running -= done
        if pending:
            # Every process exited but a pipe is still open: a grandchild holds it.
            _, pending = await asyncio.wait(pending, timeout=drain_timeout)
            if pending:
                kill_leftovers()
                _, pending = await asyncio.wait(pending, timeout=drain_timeout)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if running:
            await asyncio.wait(running)
    finally:
        for t in tasks:
            t.cancel()
