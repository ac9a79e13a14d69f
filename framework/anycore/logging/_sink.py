"""Non-blocking file and stream handlers: the stdlib's, on anycore's engine.

Owns :class:`FileHandler`, :class:`RotatingFileHandler`,
:class:`TimedRotatingFileHandler`, :class:`WatchedFileHandler` and
:class:`StreamHandler`.  Each subclasses the stdlib class of the same name, so
``isinstance`` checks, ``namer``/``rotator`` and the rotation arithmetic keep
their stdlib meaning, and dictConfig/fileConfig arguments are the stdlib's;
the buffering, the overflow policy and the choice of who writes are the
engine's (:mod:`._engine`).  What a flavour adds: how its sink is opened,
written (``_write_batch``, rotation between two records) and flushed, and
whether the loop may write it itself (``_default_access`` / ``_fileno``).
"""

from __future__ import annotations

import io
import locale
import logging
import logging.handlers
import os
import stat
import time
from typing import IO, Any

from ._engine import Overflow, ThreadedHandler

__all__ = [
    "FileHandler",
    "Overflow",
    "RotatingFileHandler",
    "StreamHandler",
    "ThreadedHandler",
    "TimedRotatingFileHandler",
    "WatchedFileHandler",
]


# -- files ----------------------------------------------------------------------


_SINK_OPTIONS = (
    "queue_size",
    "max_bytes",
    "max_batch",
    "overflow",
    "slow_write",
    "slow_hold",
    "close_timeout",
)


def _sink_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = {name: kwargs.pop(name) for name in _SINK_OPTIONS if name in kwargs}
    if "block" in kwargs:
        raise TypeError(
            "block= was replaced by overflow=: 'block' (the default, lossless), "
            "'drop_oldest' or 'drop_newest'"
        )
    if kwargs:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return options


class _FileSink(ThreadedHandler):
    """Shared by the file handlers: an unbuffered binary file owned by the writer."""

    baseFilename: str
    mode: str
    encoding: str | None
    errors: str | None
    terminator: str
    _file: io.FileIO | None = None
    _size = 0
    _regular = True

    def _setup_file(self, delay: bool) -> None:
        encoding = self.encoding
        if encoding is None or encoding == "locale":  # io.text_encoding()'s marker
            encoding = locale.getpreferredencoding(False)
        self._encoding = encoding
        self._errors = self.errors or "strict"
        self._file = None
        if not delay:
            self._open_file()

    def _open_file(self) -> io.FileIO:
        mode = self.mode.replace("b", "").replace("t", "")
        fh = io.FileIO(self.baseFilename, mode if mode != "a+" else "a+")
        self._file = fh
        self._access_mode = None  # a reopened path may be another kind of file
        st = os.fstat(fh.fileno())
        self._size = st.st_size if "a" in mode else 0
        self._regular = stat.S_ISREG(st.st_mode)
        # A second open in "w" mode would truncate what the first wrote.
        if "w" in self.mode:
            self.mode = "a"
        return fh

    _accepts_text = True  # configure()'s structlog fast path may hand us lines

    def _default_access(self) -> Any:
        return "direct"  # not opened yet (delay=True): decided at the first write

    def _fileno(self) -> int | None:
        fh = self._file
        return None if fh is None else fh.fileno()

    def _prepare(self, record: logging.LogRecord) -> bytes:
        return (self.format(record) + self.terminator).encode(self._encoding, self._errors)

    def _prepare_text(self, text: str) -> bytes:
        return (text + self.terminator).encode(self._encoding, self._errors)

    def _write_bytes(self, data: bytes) -> None:
        fh = self._file or self._open_file()
        view = memoryview(data)
        while view:
            n = fh.write(view)
            if n is None:  # pragma: no cover - only non-blocking files
                continue
            view = view[n:]
        self._size += len(data)

    def _write_batch(self, batch: list[Any]) -> None:
        self._write_bytes(b"".join(batch))

    def _close_sink(self) -> None:
        fh, self._file = self._file, None
        if fh is not None:
            fh.close()


class FileHandler(_FileSink, logging.FileHandler):
    """Non-blocking :class:`logging.FileHandler` (same arguments).

    Extra keyword arguments: ``queue_size``, ``max_bytes``, ``max_batch``,
    ``overflow``, ``slow_write``, ``slow_hold``, ``close_timeout`` (see
    :class:`ThreadedHandler`).
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        **options: Any,
    ) -> None:
        opts = _sink_options(options)
        logging.FileHandler.__init__(self, filename, mode, encoding, True, errors)
        self._init_sink(**opts)
        self._setup_file(delay)


class RotatingFileHandler(_FileSink, logging.handlers.RotatingFileHandler):
    """Non-blocking :class:`logging.handlers.RotatingFileHandler` (rotates by size).

    The writer thread checks the size before each record, as the stdlib does,
    and rotates between two records, so no record is split or lost.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        maxBytes: int = 0,
        backupCount: int = 0,
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        **options: Any,
    ) -> None:
        opts = _sink_options(options)
        logging.handlers.RotatingFileHandler.__init__(
            self, filename, mode, maxBytes, backupCount, encoding, True, errors
        )
        self._init_sink(**opts)
        self._setup_file(delay)

    def _write_batch(self, batch: list[Any]) -> None:
        limit = self.maxBytes
        if self._file is None:
            self._open_file()
        if limit <= 0 or not self._regular:  # the stdlib never rotates /dev/null & co
            self._write_bytes(b"".join(batch))
            return
        start = 0
        size = self._size
        for i, item in enumerate(batch):
            n = len(item)
            if size + n >= limit and size > 0:
                if i > start:
                    self._write_bytes(b"".join(batch[start:i]))
                self._rollover()
                start = i
                size = 0
            size += n
        if start < len(batch):
            self._write_bytes(b"".join(batch[start:]))

    def _rollover(self) -> None:
        self._close_sink()
        self.doRollover()  # the stdlib's renames; our stream stays closed (delay)
        self._open_file()


class TimedRotatingFileHandler(_FileSink, logging.handlers.TimedRotatingFileHandler):
    """Non-blocking :class:`logging.handlers.TimedRotatingFileHandler`.

    The writer checks the clock once per batch (a batch is written within
    milliseconds of its records being logged).
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        when: str = "h",
        interval: int = 1,
        backupCount: int = 0,
        encoding: str | None = None,
        delay: bool = False,
        utc: bool = False,
        atTime: Any = None,
        errors: str | None = None,
        **options: Any,
    ) -> None:
        opts = _sink_options(options)
        logging.handlers.TimedRotatingFileHandler.__init__(
            self, filename, when, interval, backupCount, encoding, True, utc, atTime, errors
        )
        self._init_sink(**opts)
        self._setup_file(delay)

    def _write_batch(self, batch: list[Any]) -> None:
        if int(time.time()) >= self.rolloverAt:
            if os.path.exists(self.baseFilename) and not os.path.isfile(self.baseFilename):
                self.rolloverAt = self.computeRollover(int(time.time()))
            else:
                self._close_sink()
                self.doRollover()
                self._open_file()
        self._write_bytes(b"".join(batch))


class WatchedFileHandler(_FileSink, logging.handlers.WatchedFileHandler):
    """Non-blocking :class:`logging.handlers.WatchedFileHandler`.

    Reopens the file when it was moved or deleted (logrotate); the check (one
    ``stat``) runs once per batch in the writer instead of once per record.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        **options: Any,
    ) -> None:
        opts = _sink_options(options)
        logging.handlers.WatchedFileHandler.__init__(self, filename, mode, encoding, True, errors)
        self._init_sink(**opts)
        self._ident: tuple[int, int] | None = None
        self._setup_file(delay)

    def _open_file(self) -> io.FileIO:
        fh = super()._open_file()
        st = os.fstat(fh.fileno())
        self._ident = (st.st_dev, st.st_ino)
        return fh

    def _write_batch(self, batch: list[Any]) -> None:
        if self._file is not None:
            try:
                st = os.stat(self.baseFilename)
                moved = (st.st_dev, st.st_ino) != self._ident
            except FileNotFoundError:
                moved = True
            if moved:
                self._close_sink()
        self._write_bytes(b"".join(batch))


# -- streams --------------------------------------------------------------------


class StreamHandler(ThreadedHandler, logging.StreamHandler):  # type: ignore[type-arg]
    """Non-blocking :class:`logging.StreamHandler` (``sys.stderr`` by default).

    The writer writes each batch with one ``write`` and flushes the stream.
    """

    def __init__(self, stream: IO[str] | None = None, **options: Any) -> None:
        opts = _sink_options(options)
        logging.StreamHandler.__init__(self, stream)
        self._init_sink(**opts)

    _accepts_text = True

    def _default_access(self) -> Any:
        return "direct"  # an in-memory stream (no file descriptor)

    def _fileno(self) -> int | None:
        try:
            return int(self.stream.fileno())
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            return None

    def _prepare(self, record: logging.LogRecord) -> str:
        return self.format(record) + self.terminator

    def _prepare_text(self, text: str) -> str:
        return text + self.terminator

    def _write_batch(self, batch: list[Any]) -> None:
        self.stream.write("".join(batch))

    def _writer_flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()

    def setStream(self, stream: IO[str]) -> IO[str] | None:
        """Switch streams after the queue drained (stdlib semantics)."""
        if stream is self.stream:
            return None
        self.wait_flushed()
        old: IO[str] = self.stream
        self.stream = stream
        self._access_mode = None
        return old
