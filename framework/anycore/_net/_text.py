"""The text layer for line protocols: io.TextIOWrapper semantics, sans-IO.

This module owns :class:`TextCodec` (bytes <-> str lines with an encoding, an
errors policy and a newline mode, exactly as :class:`io.TextIOWrapper` reads
and writes them) and :class:`TextLineHandler`, the handler that delivers
``str`` lines.

How it works: lines are cut at the *byte* level by the framers of
``_framing`` (:class:`UniversalNewlineFramer` for ``newline=None`` and ``""``,
:class:`TerminatorFramer` for ``"\\n"``, ``"\\r"`` and ``"\\r\\n"``), with their
line ending kept; each line is then decoded on its own and its ending is
translated or removed.  A multi-byte character split across reads never
reaches the decoder in pieces, because the framer hands over whole lines.  The
byte limit (``max_line_length``) is enforced before anything is decoded, and a
handler can switch to a byte framer mid-stream without losing a byte.

Rejected: decoding the whole stream first and splitting the ``str`` (what
TextIOWrapper itself does).  It is faithful for every encoding, but a byte
framer can then no longer take over mid-stream (decoded text cannot be turned
back into the exact bytes under lossy error handlers), limits count
characters instead of bytes, and one bad byte fails a whole read batch
instead of the line it is in.  The price of cutting bytes: the encoding must
be ASCII-compatible for line endings (``\\r`` and ``\\n`` are the bytes 13 and
10 and never occur inside another character): UTF-8, ASCII, Latin-1, the
cp125x and ISO-8859 families, Shift-JIS, GB18030 ... but not UTF-16/32, which
are refused with a clear error.

Decoding: for stateless encodings (UTF-8, ASCII, single-byte charmaps) each
line is decoded with ``bytes.decode`` (the fastest path; a line ending always
ends any broken sequence, so this equals stream decoding); other encodings use
one incremental decoder for the whole stream, so stateful encodings (ISO-2022,
a UTF-8 BOM) keep their state across lines.
"""

from __future__ import annotations

import codecs
import inspect
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from ._framing import DEFAULT_MAX_LINE_LENGTH, Framer, TerminatorFramer, UniversalNewlineFramer
from ._handler import Handler, _MaybeAwaitable

__all__ = ["TextCodec", "TextLineHandler"]

_NEWLINES = (None, "", "\n", "\r", "\r\n")
_STATELESS = {"utf-8", "ascii", "iso8859-1", "latin-1"}


def _is_stateless(info: codecs.CodecInfo) -> bool:
    if info.name in _STATELESS:
        return True
    # Single-byte charmap codecs (cp1252, iso8859-15, koi8-r ...) keep no state.
    module = sys.modules.get(getattr(info.incrementaldecoder, "__module__", ""), None)
    return getattr(module, "decoding_table", None) is not None


def _check_ascii_compatible(encoding: str) -> None:
    encoder = codecs.getincrementalencoder(encoding)()
    encoder.encode("a")  # a BOM, if any, comes out here
    if encoder.encode("\r\n") != b"\r\n" or encoder.encode("\n") != b"\n":
        raise ValueError(
            f"encoding {encoding!r} does not encode line endings as the bytes CR and LF; "
            "line protocols need an ASCII-compatible encoding (utf-8, latin-1, ...)"
        )


class TextCodec:
    """Decode lines from bytes and encode lines to bytes, like io.TextIOWrapper.

    Use it standalone (``feed`` / ``next_line`` / ``feed_eof``, sans-IO), or let
    a handler cut lines with :meth:`make_framer` and decode them with
    :meth:`decode_frame`.

    Args:
        encoding: any ASCII-compatible codec name.
        errors: the error policy for decoding and encoding (``"strict"``,
            ``"replace"``, ``"surrogateescape"``, ``"backslashreplace"`` ...).
        newline: as for :func:`open`: ``None`` (universal newlines; endings
            translated to ``"\\n"``), ``""`` (universal newlines, untranslated),
            or ``"\\n"``, ``"\\r"``, ``"\\r\\n"`` (only that ending; on output
            ``"\\n"`` is translated to it).
        max_line_length: the longest line in bytes, without its ending.
        keepends: return lines with their (possibly translated) ending, as
            :meth:`io.TextIOBase.readline` does; by default it is removed.

    Attributes:
        decode_frame: ``decode_frame(frame) -> str | None`` decodes one frame
            of :meth:`make_framer`'s framer (a line with its ending) into a
            line, with the ending removed (or translated, with ``keepends``).
            A frame without an ending is the last of the stream and is decoded
            as final; it gives None when it decodes to no text at all (a lone
            BOM).  Raises ``UnicodeDecodeError`` under ``errors="strict"``.

    Raises:
        LookupError: unknown encoding or error handler.
        ValueError: bad ``newline`` or an encoding that is not ASCII-compatible.
    """

    decode_frame: Callable[[bytes], str | None]

    __slots__ = (
        "_decode",
        "_decode_final",
        "_encode",
        "_framer",
        "_mode",
        "_translate_out",
        "decode_frame",
        "encoding",
        "errors",
        "keepends",
        "max_line_length",
        "newline",
    )

    def __init__(
        self,
        encoding: str = "utf-8",
        errors: str = "strict",
        newline: str | None = None,
        *,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        keepends: bool = False,
    ) -> None:
        if newline not in _NEWLINES:
            raise ValueError(f"illegal newline value: {newline!r}")
        info = codecs.lookup(encoding)
        codecs.lookup_error(errors)
        _check_ascii_compatible(encoding)
        self.encoding = encoding
        self.errors = errors
        self.newline = newline
        self.max_line_length = max_line_length
        self.keepends = keepends
        # 0: universal + translate, 1: universal untranslated, 2: one ending.
        self._mode = 0 if newline is None else 1 if newline == "" else 2
        self._translate_out = newline if newline in ("\r", "\r\n") else None
        self._decode: Callable[[bytes], str]
        self._decode_final: Callable[[bytes], str]
        self._encode: Callable[[str], bytes]
        if _is_stateless(info):
            name = info.name

            def decode(data: bytes) -> str:
                return data.decode(name, errors)

            def encode(text: str) -> bytes:
                return text.encode(name, errors)

            self._decode = decode
            self._decode_final = decode
            self._encode = encode
        else:
            decoder = codecs.getincrementaldecoder(encoding)(errors)
            self._decode = decoder.decode
            self._decode_final = lambda data: decoder.decode(data, True)
            self._encode = codecs.getincrementalencoder(encoding)(errors).encode
        self.decode_frame = self._make_line_decoder()
        self._framer = self.make_framer()

    def make_framer(self) -> Framer:
        """Return a new byte framer cutting lines for this codec (endings kept).

        Returns:
            A framer whose frames :meth:`decode_frame` turns into lines.
        """
        if self._mode == 2:
            assert self.newline is not None
            return TerminatorFramer(
                self.newline.encode("ascii"),
                max_frame_size=self.max_line_length,
                keepends=True,
                eof_terminates=True,
            )
        return UniversalNewlineFramer(self.max_line_length, keepends=True)

    def _make_line_decoder(self) -> Callable[[bytes], str | None]:
        """Build the per-frame decoder for this configuration (no per-call branching)."""
        decode, decode_final = self._decode, self._decode_final
        keepends = self.keepends

        def final(frame: bytes) -> str | None:
            # Only the last frame of a stream lacks a line ending.
            return decode_final(frame) or None

        if self._mode == 2:
            assert self.newline is not None
            nl = self.newline.encode("ascii")
            n = len(nl)

            def one_ending(frame: bytes) -> str | None:
                if frame.endswith(nl):
                    return decode(frame) if keepends else decode(frame)[:-n]
                return final(frame)

            return one_ending
        translate = self._mode == 0

        def universal(frame: bytes) -> str | None:
            last = frame[-1:]
            if last == b"\n" or last == b"\r":
                # A universal frame holds exactly one line ending, at its end.
                if not keepends:
                    return decode(frame).rstrip("\r\n")
                if translate:
                    return decode(frame).rstrip("\r\n") + "\n"
                return decode(frame)
            return final(frame)

        return universal

    # -- standalone (sans-IO) use -------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append received bytes (see :meth:`next_line`)."""
        self._framer.feed(data)

    def feed_eof(self) -> None:
        """Mark the end of the stream: the last unterminated line becomes a line."""
        self._framer.feed_eof()

    def next_line(self) -> str | None:
        """Return the next complete line, or None when more bytes are needed.

        Raises:
            FrameTooLarge: a line is longer than ``max_line_length`` bytes.
            UnicodeDecodeError: invalid bytes under ``errors="strict"``.
        """
        while (frame := self._framer.next_frame()) is not None:
            line = self.decode_frame(frame)
            if line is not None:
                return line
        return None

    def decode(self, data: bytes, final: bool = False) -> list[str]:
        """Feed ``data`` and return every line completed by it.

        Args:
            data: received bytes.
            final: the stream ends after ``data`` (the rest is the last line).

        Returns:
            The complete lines, in order.
        """
        if data:
            self._framer.feed(data)
        if final:
            self._framer.feed_eof()
        lines = []
        next_line = self.next_line
        while (line := next_line()) is not None:
            lines.append(line)
        return lines

    def take_buffer(self) -> bytes:
        """Remove and return the bytes of the unfinished line (to switch framers)."""
        return self._framer.take_buffer()

    # -- output --------------------------------------------------------------------

    def encode(self, text: str) -> bytes:
        """Encode text as :meth:`io.TextIOWrapper.write` would.

        ``"\\n"`` is translated to ``newline`` when that is ``"\\r"`` or
        ``"\\r\\n"``; otherwise it is written as ``"\\n"``.

        Raises:
            UnicodeEncodeError: unencodable text under ``errors="strict"``.
        """
        nl = self._translate_out
        if nl is not None and "\n" in text:
            text = text.replace("\n", nl)
        return self._encode(text)

    def encode_line(self, line: str) -> bytes:
        """Encode ``line`` followed by a line ending (``encode(line + "\\n")``)."""
        return self.encode(line + "\n")


class TextLineHandler(Handler):
    """Lines of text: override :meth:`line_received` (``str``), call :meth:`send_line`.

    Lines are decoded with io.TextIOWrapper semantics (see :class:`TextCodec`);
    ``line_received`` may be ``async def``.  It is a sibling of
    :class:`~anycore.LineHandler` (whose lines are ``bytes``), not a subclass,
    so that ``line_received(self, line: str)`` type-checks.

    Attributes:
        encoding: the text encoding (ASCII-compatible).
        errors: the error policy (``"strict"``: a bad byte raises
            ``UnicodeDecodeError``, which ends the connection with a logged
            error; ``"replace"`` substitutes U+FFFD).
        newline: ``None`` (universal), ``""``, ``"\\n"``, ``"\\r"`` or ``"\\r\\n"``;
            :meth:`send_line` ends lines with ``"\\n"`` translated by it.
        keepends: deliver lines with their ending.
        max_line_length: the longest line accepted, in bytes, without its
            ending (:class:`~anycore.FrameTooLarge` beyond it).
    """

    encoding: ClassVar[str] = "utf-8"
    errors: ClassVar[str] = "strict"
    newline: ClassVar[str | None] = None
    keepends: ClassVar[bool] = False
    max_line_length: ClassVar[int] = DEFAULT_MAX_LINE_LENGTH

    _text_codec: TextCodec | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # An async line_received needs an async frame_received for the driver to
        # await it (the driver decides per class, from frame_received).
        if "frame_received" not in cls.__dict__ and inspect.iscoroutinefunction(cls.line_received):
            cls.frame_received = TextLineHandler._frame_received_async  # type: ignore[method-assign]

    @property
    def text_codec(self) -> TextCodec:
        """This connection's :class:`TextCodec` (created on first use)."""
        codec = self._text_codec
        if codec is None:
            codec = self._text_codec = TextCodec(
                self.encoding,
                self.errors,
                self.newline,
                max_line_length=self.max_line_length,
                keepends=self.keepends,
            )
        return codec

    def make_framer(self) -> Framer:
        """Return the byte framer cutting lines for :attr:`text_codec`."""
        return self.text_codec.make_framer()

    def frame_received(self, frame: bytes) -> _MaybeAwaitable:
        """Decode the line and call :meth:`line_received` (not meant to be overridden)."""
        line = self.text_codec.decode_frame(frame)
        return None if line is None else self.line_received(line)

    async def _frame_received_async(self, frame: bytes) -> None:
        line = self.text_codec.decode_frame(frame)
        if line is not None:
            await self.line_received(line)  # type: ignore[misc]

    def line_received(self, line: str) -> _MaybeAwaitable:
        """Called once per line (may be ``async def``).

        Args:
            line: the decoded line, without its ending unless ``keepends``.
        """
        return None

    def send_line(self, line: str) -> None:
        """Encode and send ``line`` followed by a line ending.

        Args:
            line: the text of the line; ``"\\n"`` inside it starts a new line.
        """
        self.send(self.text_codec.encode_line(line))

    def send_text(self, text: str) -> None:
        """Encode and send ``text`` as is (``"\\n"`` translated per ``newline``)."""
        self.send(self.text_codec.encode(text))
