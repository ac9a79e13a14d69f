"""Sans-IO framers: bytes in, frames out.

A framer owns the receive buffer of one byte stream and nothing else.  It never
touches a socket, a loop or a task, so one framer class serves TCP, TLS, Unix
sockets and subprocess pipes, and tests drive it with plain bytes.  The driver
(``_handler.py``) calls ``feed(batch)`` once per read and then ``next_frame()``
until it returns None: one framer call and one handler call per frame.

Buffering (the part that decides speed and memory)
--------------------------------------------------
* A batch that arrives while nothing is pending is kept as the ``bytes`` object
  it came in (no copy); frames are slices of it (one copy, the frame itself).
* When a partial frame is pending and a batch at least as large arrives, the
  two are joined into a new ``bytes``: the copy is paid for by the new batch.
* When a partial frame is pending and a *smaller* batch arrives (a large frame
  trickling in), pending bytes move into a ``bytearray`` accumulator that grows
  in amortised O(1) per byte; it is turned back into ``bytes`` once, when a
  frame in it is complete.  The fast path never sees the accumulator (the
  ``bytes`` buffer is empty meanwhile, so the fast path falls through).
* Searches resume where the last one stopped (``_scan``), so a terminator is
  looked for over every byte a bounded number of times.  Work is counted in
  ``bytes_scanned`` / ``bytes_copied`` at no cost on the fast path: scanning
  progress is booked lazily from the scan cursor.

Rejected: a ``bytearray`` with ``del buf[:n]`` per frame (a frame then costs
two copies, and deleting a prefix is not free); ``bytes`` concatenation per
feed (quadratic when a large frame arrives one byte at a time); a list of
chunks joined on demand (cheap appends, but terminators straddling chunks make
scanning fiddly and slow for the common case of many small frames per batch).

Errors: a frame past ``max_frame_size`` raises :class:`FrameTooLarge` as soon
as the partial frame proves it (the announced length of a length prefix, or
more bytes than the limit without a terminator); malformed input raises
:class:`RemoteProtocolError`; end of stream inside a frame raises
:class:`IncompleteFrame`.  A framer that raised a protocol error is broken: it
drops its buffer and raises the same error again on every later call, until
``take_buffer()`` resets it (the driver does that when a ``frame_too_large``
hook chooses to keep the connection).
"""

from __future__ import annotations

import struct
from collections import deque

from ..errors import (
    FrameTooLarge,
    IncompleteFrame,
    LocalProtocolError,
    RemoteProtocolError,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_LINE_LENGTH",
    "Framer",
    "TerminatorFramer",
    "UniversalNewlineFramer",
    "FixedSizeFramer",
    "LengthPrefixFramer",
    "NetstringFramer",
    "RawFramer",
]

#: Default limit for line-like framers (asyncio's StreamReader uses the same).
DEFAULT_MAX_LINE_LENGTH = 64 * 1024
#: Default limit for length-prefixed and netstring frames.
DEFAULT_MAX_FRAME_SIZE = 1024 * 1024

_CR = 13
_LF = 10
_COMMA = 44


class Framer:
    """Base class of framers: turns a byte stream into frames, without I/O.

    Subclasses implement :meth:`next_frame` and :meth:`encode`; the buffer
    handling (:meth:`feed`, :meth:`take_buffer`, :attr:`buffered`) is shared.
    A subclass of your own may use the helpers or override everything; check
    it with :func:`anycore.testing.check_framer`.

    Attributes:
        max_frame_size: the largest frame (payload, without delimiters or
            headers) accepted; beyond it :class:`~anycore.FrameTooLarge`.
        bytes_copied: bytes copied while managing the buffer (joining a
            pending partial frame with new data, growing the accumulator).
            The one copy that produces each frame is not counted.
    """

    __slots__ = (
        "_acc",
        "_buf",
        "_eof",
        "_failed",
        "_origin",
        "_pos",
        "_scan",
        "_scanned",
        "bytes_copied",
        "max_frame_size",
    )

    def __init__(self, max_frame_size: int) -> None:
        if max_frame_size < 0:
            raise ValueError(f"max_frame_size must be >= 0, not {max_frame_size}")
        self.max_frame_size = max_frame_size
        self._buf = b""
        self._pos = 0
        self._acc: bytearray | None = None
        self._scan = 0
        self._origin = 0
        self._scanned = 0
        self._eof = False
        self._failed: RemoteProtocolError | None = None
        self.bytes_copied = 0

    # -- the driver's interface ------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append received bytes.

        Args:
            data: the bytes of one read (any bytes-like object; it is copied
                when it is not ``bytes``, so the caller may reuse its buffer).

        Raises:
            ClosedError: after :meth:`feed_eof`.
            RemoteProtocolError: the framer already failed (the same error).
        """
        if self._eof or self._failed is not None:
            self._refuse_feed()
        acc = self._acc
        if acc is not None:
            acc += data
            self.bytes_copied += len(data)
            return
        buf = self._buf
        pos = self._pos
        left = len(buf) - pos
        if not left:
            self._buf = data if type(data) is bytes else bytes(data)
        elif left <= len(data):
            self._buf = buf[pos:] + data
            self.bytes_copied += 2 * left + len(data)
        else:
            self._acc = acc = bytearray(memoryview(buf)[pos:])
            acc += data
            self._buf = b""
            self.bytes_copied += left + len(data)
        self._pos = 0
        if pos:
            self._rebase(pos)

    def next_frame(self) -> bytes | None:
        """Return the next complete frame, or None when more bytes are needed.

        After :meth:`feed_eof`, returns the remaining frames, then what the
        framer allows as a final frame, then None.

        Raises:
            FrameTooLarge: a frame is (or announced itself) larger than
                :attr:`max_frame_size`.
            RemoteProtocolError: the stream does not follow the format.
            IncompleteFrame: the stream ended inside a frame.
        """
        raise NotImplementedError

    def next_frames(self) -> list[bytes]:
        """Return complete frames in bulk, in order (an optional fast path).

        The frames returned are exactly the ones :meth:`next_frame` would
        return next, one after the other; the list may hold fewer than are
        buffered, down to none (the default: framers without a bulk path).
        It never raises: frames after a bad one, the unterminated rest and the
        end of stream are left to :meth:`next_frame`, so callers call it until
        it returns None afterwards.

        Returns:
            The frames, possibly an empty list.
        """
        return []

    def feed_eof(self) -> None:
        """Mark the end of the stream; :meth:`next_frame` then drains the rest."""
        self._eof = True

    def take_buffer(self) -> bytes:
        """Remove and return the bytes not yet consumed as frames.

        Used when switching framers mid-stream: ``new.feed(old.take_buffer())``,
        and to discard a refused frame.  The framer is empty afterwards and
        usable again, even after a protocol error (parsing then resumes at
        whatever bytes come next).

        Returns:
            The unconsumed bytes, possibly empty.
        """
        acc = self._acc
        data = bytes(acc) if acc is not None else self._buf[self._pos :]
        self._scanned += self._scan - self._origin
        self._buf = b""
        self._pos = self._scan = self._origin = 0
        self._acc = None
        self._failed = None
        self._reset_state()
        return data

    def encode(self, payload: bytes) -> bytes:
        """Return the bytes that carry ``payload`` as one frame.

        Raises:
            LocalProtocolError: the payload cannot be sent as one frame.
        """
        raise NotImplementedError

    @property
    def buffered(self) -> int:
        """The number of received bytes held, not yet returned as frames."""
        acc = self._acc
        return len(acc) if acc is not None else len(self._buf) - self._pos

    @property
    def eof(self) -> bool:
        """True once :meth:`feed_eof` was called."""
        return self._eof

    @property
    def bytes_scanned(self) -> int:
        """Bytes examined while looking for frame boundaries (for O(n) checks)."""
        return self._scanned + self._scan - self._origin

    # -- helpers for subclasses ---------------------------------------------------

    def _rebase(self, shift: int) -> None:
        """The pending bytes moved ``shift`` bytes to the left; fix indices."""
        self._scanned += self._scan - self._origin
        scan = self._scan - shift
        self._scan = self._origin = scan if scan > 0 else 0

    def _reset_state(self) -> None:
        """Forget per-frame parsing state (after take_buffer)."""

    def _promote(self) -> None:
        """Turn the accumulator back into the bytes buffer (indices unchanged)."""
        acc = self._acc
        assert acc is not None
        self._acc = None
        self._buf = bytes(acc)
        self._pos = 0
        self.bytes_copied += len(acc)

    def _pending(self) -> tuple[bytes | bytearray, int]:
        acc = self._acc
        if acc is not None:
            return acc, 0
        return self._buf, self._pos

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        """Drop the buffer, remember ``exc`` and return it for raising."""
        self._scanned += self._scan - self._origin
        self._buf = b""
        self._acc = None
        self._pos = self._scan = self._origin = 0
        self._failed = exc
        return exc

    def _eof_leftover(self) -> bytes:
        """Remove the pending bytes at end of stream and return them."""
        data, pos = self._pending()
        rest = bytes(data[pos:])
        self._scanned += self._scan - self._origin
        self._buf = b""
        self._acc = None
        self._pos = self._scan = self._origin = 0
        self._reset_state()
        return rest

    def _refuse_feed(self) -> None:
        if self._failed is not None:
            raise self._failed
        # Imported here: ClosedError is anyio's ClosedResourceError too, and
        # looking it up imports anyio, which the sans-IO layer must not load.
        from ..errors import ClosedError

        raise ClosedError("feed() after feed_eof()")


class TerminatorFramer(Framer):
    """Frames delimited by a terminator byte string (lines, by default CRLF).

    Args:
        terminator: the delimiter, any non-empty byte string.
        max_frame_size: the longest frame accepted, not counting the terminator.
        keepends: return frames with their terminator.
        eof_terminates: at end of stream, return an unterminated rest as a
            final frame instead of raising :class:`IncompleteFrame`.
    """

    __slots__ = ("_keep", "_term", "_tlen", "eof_terminates", "terminator")

    def __init__(
        self,
        terminator: bytes = b"\r\n",
        max_frame_size: int = DEFAULT_MAX_LINE_LENGTH,
        *,
        keepends: bool = False,
        eof_terminates: bool = False,
    ) -> None:
        super().__init__(max_frame_size)
        terminator = bytes(terminator)
        if not terminator:
            raise ValueError("the terminator must not be empty")
        self.terminator = terminator
        self._term = terminator
        self._tlen = len(terminator)
        self._keep = self._tlen if keepends else 0
        self.eof_terminates = eof_terminates

    @property
    def keepends(self) -> bool:
        """Whether frames are returned with their terminator."""
        return self._keep != 0

    def next_frame(self) -> bytes | None:
        """See :meth:`Framer.next_frame`."""
        buf = self._buf
        i = buf.find(self._term, self._scan)
        if i >= 0:
            pos = self._pos
            if i - pos <= self.max_frame_size:
                self._pos = self._scan = i + self._tlen
                return buf[pos : i + self._keep]
        return self._next_slow()

    def next_frames(self) -> list[bytes]:
        """Every complete frame of the bytes buffer, split at once (see
        :meth:`Framer.next_frames`): one ``bytes.split`` instead of a search
        and a slice per frame.  Frames are cut left to right exactly as
        :meth:`next_frame` cuts them; the list stops before the first frame
        over the limit, which :meth:`next_frame` then reports.  Frames kept
        with their ends (``keepends``) and large frames built in the
        accumulator take the frame-by-frame path.
        """
        buf = self._buf
        scan = self._scan
        term = self._term
        i = buf.find(term, scan)  # b"" while the accumulator or a failure holds
        if i < 0 or self._keep:
            return []
        pos = self._pos
        region = buf[pos:] if pos else buf
        frames = region.split(term)
        tail = frames.pop()  # after the last terminator: the next frame's start
        # Work booked: the search up to i, then the split over the region (the
        # part before ``scan`` again: paid for by the batch that was joined to it).
        self._scanned += self._scan - self._origin + i - scan + len(region)
        self.bytes_copied += len(tail) + (len(region) if pos else 0)
        end = len(buf) - len(tail)
        limit = self.max_frame_size
        if end - pos > limit and max(map(len, frames)) > limit:
            k = next(j for j, f in enumerate(frames) if len(f) > limit)
            del frames[k:]
            end = pos + sum(map(len, frames)) + k * self._tlen
        if end == len(buf):
            # All consumed: drop the read's bytes (kept, the small objects of
            # many idle connections pin the heap pages of big reads).
            self._buf = b""
            end = 0
        self._pos = self._scan = self._origin = end
        return frames

    def _next_slow(self) -> bytes | None:
        if self._failed is not None:
            raise self._failed
        if self._pos == len(self._buf) and self._acc is None:
            # Nothing pending (after a batch that ended with a terminator).
            self._scanned += self._scan - self._origin
            self._scan = self._origin = self._pos
            return None
        data, pos = self._pending()
        term, tlen, limit = self._term, self._tlen, self.max_frame_size
        scan = self._scan
        self._scanned += scan - self._origin
        i = data.find(term, scan)
        if i >= 0:
            self._scanned += i + tlen - scan
            self._origin = scan
            if i - pos > limit:
                raise self._fail(FrameTooLarge(i - pos, limit))
            # A complete frame in the accumulator: back to the bytes buffer.
            if self._acc is not None:
                self._promote()
            self._pos = self._scan = self._origin = i + tlen
            return self._buf[pos : i + self._keep]
        end = len(data)
        self._scanned += end - scan
        # Resume at the first tail position that could start a terminator (a
        # partial match), so small feeds do not rescan len(terminator) bytes.
        resume = max(scan, end - tlen + 1, pos)
        first = term[:1]
        while resume < end:
            q = data.find(first, resume)
            if q < 0:
                self._scanned += end - resume
                resume = end
                break
            self._scanned += q + 1 - resume
            if term.startswith(data[q:end]):
                resume = q
                break
            resume = q + 1
        self._scan = self._origin = resume
        size = end - pos
        if size - tlen + 1 > limit:
            raise self._fail(FrameTooLarge(size, limit))
        if self._eof and size:
            rest = self._eof_leftover()
            if not self.eof_terminates:
                raise IncompleteFrame(rest)
            if size > limit:
                raise self._fail(FrameTooLarge(size, limit))
            return rest
        return None

    def encode(self, payload: bytes) -> bytes:
        """Return ``payload`` followed by the terminator.

        With ``keepends=True`` a payload that already ends with the terminator
        is returned unchanged, so ``encode`` stays the inverse of parsing.

        Raises:
            LocalProtocolError: the payload contains the terminator or is
                larger than :attr:`max_frame_size`.
        """
        if self._keep and payload.endswith(self._term):
            payload = payload[: -self._tlen]
        if self._term in payload:
            raise LocalProtocolError("the payload contains the terminator")
        if len(payload) > self.max_frame_size:
            raise LocalProtocolError(
                f"payload of {len(payload)} bytes exceeds max_frame_size {self.max_frame_size}"
            )
        return payload + self._term


class UniversalNewlineFramer(Framer):
    """Lines ended by ``\\n``, ``\\r\\n`` or ``\\r`` (universal newlines).

    A ``\\r`` at the very end of the received bytes is held back until the
    next byte shows whether a ``\\n`` follows (so a ``\\r\\n`` split between
    two reads is one line ending, not two).  At end of stream it ends the
    line; an unterminated last line is returned as a final frame, as a text
    file would.

    Args:
        max_frame_size: the longest line accepted, without its line ending.
        keepends: return lines with their line ending as received.
        newline: the line ending :meth:`encode` appends.
    """

    __slots__ = ("_cr", "_cr_from", "_keepends", "_lf", "_lf_from", "newline")

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_LINE_LENGTH,
        *,
        keepends: bool = False,
        newline: bytes = b"\n",
    ) -> None:
        super().__init__(max_frame_size)
        if newline not in (b"\n", b"\r\n", b"\r"):
            raise ValueError(f"newline must be b'\\n', b'\\r\\n' or b'\\r', not {newline!r}")
        self.newline = newline
        self._keepends = keepends
        # Next known \n / \r at or after the read offset (-1: none known), and
        # where the search for each resumes.
        self._lf = self._cr = -1
        self._lf_from = self._cr_from = 0

    @property
    def keepends(self) -> bool:
        """Whether lines are returned with their line ending."""
        return self._keepends

    def next_frame(self) -> bytes | None:
        """See :meth:`Framer.next_frame`."""
        acc = self._acc
        data: bytes | bytearray = self._buf if acc is None else acc
        pos = self._pos
        lf = self._lf
        if lf < pos:
            start = self._lf_from if self._lf_from > pos else pos
            lf = data.find(b"\n", start)
            self._lf_from = end = len(data) if lf < 0 else lf + 1
            self._scanned += end - start
            self._lf = lf
        cr = self._cr
        if cr < pos:
            start = self._cr_from if self._cr_from > pos else pos
            cr = data.find(b"\r", start)
            self._cr_from = end = len(data) if cr < 0 else cr + 1
            self._scanned += end - start
            self._cr = cr
        if cr < 0 or 0 <= lf < cr:
            if lf < 0:
                return self._no_line(data, pos)
            cut = lf
            end = lf + 1
        else:
            end = cr + 1
            if end == len(data):
                if not self._eof:
                    return self._no_line(data, pos)
            elif lf == end:
                end += 1
            cut = cr
        if cut - pos > self.max_frame_size:
            raise self._fail(FrameTooLarge(cut - pos, self.max_frame_size))
        if acc is not None:
            self._promote()
        self._pos = end
        return self._buf[pos : end if self._keepends else cut]

    def _no_line(self, data: bytes | bytearray, pos: int) -> bytes | None:
        if self._failed is not None:
            raise self._failed
        size = len(data) - pos
        if size - (1 if size and data[-1] == _CR else 0) > self.max_frame_size:
            raise self._fail(FrameTooLarge(size, self.max_frame_size))
        if self._eof and size:
            return self._eof_leftover()
        return None

    def _rebase(self, shift: int) -> None:
        super()._rebase(shift)
        self._lf = self._lf - shift if self._lf >= shift else -1
        self._cr = self._cr - shift if self._cr >= shift else -1
        self._lf_from = self._lf_from - shift if self._lf_from > shift else 0
        self._cr_from = self._cr_from - shift if self._cr_from > shift else 0

    def _reset_state(self) -> None:
        self._lf = self._cr = -1
        self._lf_from = self._cr_from = 0

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self._reset_state()
        return super()._fail(exc)

    def encode(self, payload: bytes) -> bytes:
        """Return ``payload`` followed by :attr:`newline`.

        With ``keepends=True`` a payload that already ends with a line ending
        is returned unchanged, so ``encode`` stays the inverse of parsing.

        Raises:
            LocalProtocolError: the payload contains ``\\r`` or ``\\n``, or is
                larger than :attr:`max_frame_size`.
        """
        ending = self.newline
        if self._keepends and payload[-1:] in (b"\n", b"\r"):
            ending = b"\r\n" if payload.endswith(b"\r\n") else payload[-1:]
            payload = payload[: -len(ending)]
        if b"\n" in payload or b"\r" in payload:
            raise LocalProtocolError("the payload contains a line ending")
        if len(payload) > self.max_frame_size:
            raise LocalProtocolError(
                f"payload of {len(payload)} bytes exceeds max_frame_size {self.max_frame_size}"
            )
        return payload + ending


class FixedSizeFramer(Framer):
    """Records of exactly ``size`` bytes.

    Args:
        size: the record size (also :attr:`max_frame_size`).
    """

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"size must be > 0, not {size}")
        super().__init__(size)
        self.size = size

    def next_frame(self) -> bytes | None:
        """See :meth:`Framer.next_frame`."""
        buf = self._buf
        pos = self._pos
        end = pos + self.size
        if end <= len(buf):
            self._pos = end
            return buf[pos:end]
        if self._failed is not None:
            raise self._failed
        acc = self._acc
        if acc is not None and len(acc) >= self.size:
            self._promote()
            return self.next_frame()
        if self._eof and self.buffered:
            raise IncompleteFrame(self._eof_leftover())
        return None

    def encode(self, payload: bytes) -> bytes:
        """Return ``payload`` unchanged after checking its size.

        Raises:
            LocalProtocolError: the payload is not exactly :attr:`size` bytes.
        """
        if len(payload) != self.size:
            raise LocalProtocolError(f"record of {len(payload)} bytes, expected {self.size}")
        return bytes(payload)


_INT_CODES = "bBhHiIlLqQ"


class LengthPrefixFramer(Framer):
    """Frames preceded by their length as a binary integer.

    Args:
        fmt: a :mod:`struct` format of one integer: ``"!H"``, ``"!I"``,
            ``"!Q"``, ``"<I"``, ``">H"``, ``"B"`` ... (the byte order
            character is recommended; without it the native order is used).
        max_frame_size: the largest payload accepted.  A header announcing
            more raises :class:`FrameTooLarge` as soon as it is read.

    Raises:
        ValueError: ``fmt`` is not a single integer format.
    """

    __slots__ = ("_hsize", "_max_len", "_pack", "_unpack_from", "fmt")

    def __init__(self, fmt: str = "!I", max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size)
        code = fmt.lstrip("@=<>!")
        if len(code) != 1 or code not in _INT_CODES or len(fmt) - len(code) > 1:
            raise ValueError(f"fmt must be one struct integer code like '!I', not {fmt!r}")
        st = struct.Struct(fmt)
        self.fmt = fmt
        self._hsize = st.size
        self._pack = st.pack
        self._unpack_from = st.unpack_from
        bits = 8 * st.size - (1 if code.islower() else 0)
        self._max_len = (1 << bits) - 1

    @property
    def header_size(self) -> int:
        """The size of the length header in bytes."""
        return self._hsize

    def next_frame(self) -> bytes | None:
        """See :meth:`Framer.next_frame`."""
        buf = self._buf
        pos = self._pos
        start = pos + self._hsize
        if start <= len(buf):
            n = self._unpack_from(buf, pos)[0]
            end = start + n
            if end <= len(buf) and 0 <= n <= self.max_frame_size:
                self._pos = end
                return buf[start:end]
        return self._next_slow()

    def _next_slow(self) -> bytes | None:
        if self._failed is not None:
            raise self._failed
        data, pos = self._pending()
        avail = len(data) - pos
        if avail >= self._hsize:
            n = self._unpack_from(data, pos)[0]
            if n < 0:
                raise self._fail(RemoteProtocolError(f"negative frame length {n}"))
            if n > self.max_frame_size:
                raise self._fail(FrameTooLarge(n, self.max_frame_size))
            if self._acc is not None and avail >= self._hsize + n:
                self._promote()
                return self.next_frame()
        if self._eof and avail:
            raise IncompleteFrame(self._eof_leftover())
        return None

    def encode(self, payload: bytes) -> bytes:
        """Return the length header followed by ``payload``.

        Raises:
            LocalProtocolError: the payload is larger than the header can
                express or than :attr:`max_frame_size`.
        """
        n = len(payload)
        if n > self._max_len or n > self.max_frame_size:
            raise LocalProtocolError(
                f"payload of {n} bytes exceeds the limit of "
                f"{min(self._max_len, self.max_frame_size)} bytes for {self.fmt!r} frames"
            )
        return self._pack(n) + payload


class NetstringFramer(Framer):
    """Netstrings: ``b"5:hello,"`` (D. J. Bernstein's format).

    The length is decimal ASCII without leading zeros (``"0"`` alone is
    allowed).  Anything else is malformed and raises
    :class:`RemoteProtocolError`.

    Args:
        max_frame_size: the largest payload accepted; a longer announced
            length raises :class:`FrameTooLarge` as soon as it is read.
    """

    __slots__ = ("_hlen", "_maxdigits", "_nlen")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size)
        self._maxdigits = len(str(max_frame_size))
        self._nlen = -1  # payload length once the header was read, else -1
        self._hlen = 0  # header length ("123:" is 4) once read

    def next_frame(self) -> bytes | None:
        """See :meth:`Framer.next_frame`."""
        n = self._nlen
        if n >= 0:
            buf = self._buf
            start = self._pos + self._hlen
            end = start + n
            if end < len(buf) and buf[end] == _COMMA:
                self._pos = end + 1
                self._nlen = -1
                return buf[start:end]
        return self._next_slow()

    def _next_slow(self) -> bytes | None:
        if self._failed is not None:
            raise self._failed
        data, pos = self._pending()
        avail = len(data) - pos
        if self._nlen < 0 and avail:
            window = pos + self._maxdigits + 1
            colon = data.find(b":", pos, window)
            self._scanned += min(avail, window - pos)
            digits = bytes(data[pos : colon if colon >= 0 else window])
            if (digits and not digits.isdigit()) or (colon >= 0 and not digits):
                raise self._fail(RemoteProtocolError(f"malformed netstring length {digits!r}"))
            if len(digits) > 1 and digits[0] == 48:
                raise self._fail(RemoteProtocolError("netstring length with a leading zero"))
            if colon < 0:
                if len(digits) > self._maxdigits:
                    raise self._fail(FrameTooLarge(int(digits), self.max_frame_size))
                if self._eof:
                    raise IncompleteFrame(self._eof_leftover())
                return None
            n = int(digits)
            if n > self.max_frame_size:
                raise self._fail(FrameTooLarge(n, self.max_frame_size))
            self._nlen = n
            self._hlen = colon - pos + 1
        n = self._nlen
        if n >= 0:
            end = pos + self._hlen + n
            if end < len(data):
                if data[end] != _COMMA:
                    raise self._fail(RemoteProtocolError("netstring not ended by ','"))
                if self._acc is not None:
                    self._promote()
                return self.next_frame()
        if self._eof and avail:
            raise IncompleteFrame(self._eof_leftover())
        return None

    def _reset_state(self) -> None:
        self._nlen = -1
        self._hlen = 0

    def encode(self, payload: bytes) -> bytes:
        """Return ``payload`` as a netstring.

        Raises:
            LocalProtocolError: the payload is larger than :attr:`max_frame_size`.
        """
        if len(payload) > self.max_frame_size:
            raise LocalProtocolError(
                f"payload of {len(payload)} bytes exceeds max_frame_size {self.max_frame_size}"
            )
        return b"%d:%s," % (len(payload), payload)


class RawFramer(Framer):
    """Every received chunk is a frame (split into pieces of ``max_chunk``).

    Frame boundaries follow the reads, so only the concatenation of the frames
    is meaningful.  Nothing is ever left over at end of stream.

    The chunk queue is created on first use: the stream drivers hand a chunk
    that fits straight to the handler while the framer is empty, so most
    connections never need it (an idle connection stays small).

    Args:
        max_chunk: the largest frame returned; longer chunks are split.
    """

    __slots__ = ("_chunks", "_size")

    def __init__(self, max_chunk: int = 256 * 1024) -> None:
        if max_chunk <= 0:
            raise ValueError(f"max_chunk must be > 0, not {max_chunk}")
        super().__init__(max_chunk)
        self._chunks: deque[bytes] | None = None
        self._size = 0

    @property
    def max_chunk(self) -> int:
        """The largest frame returned."""
        return self.max_frame_size

    def passes_through(self, data: bytes) -> bool:
        """Whether ``data`` would come out of :meth:`next_frame` unchanged as
        the only frame (the framer is empty and ``data`` fits in one chunk).

        Drivers use it to skip the framer: ``feed(data)`` then ``next_frame()``
        would return ``data`` itself.

        Args:
            data: the bytes of one read.

        Returns:
            True when the framer can be skipped for ``data``.
        """
        return not self._size and 0 < len(data) <= self.max_frame_size and not self._eof

    def feed(self, data: bytes) -> None:
        """See :meth:`Framer.feed`."""
        if self._eof:
            self._refuse_feed()
        n = len(data)
        if not n:
            return
        if type(data) is not bytes:
            data = bytes(data)
        chunks = self._chunks
        if chunks is None:
            self._chunks = chunks = deque()
        limit = self.max_frame_size
        if n <= limit:
            chunks.append(data)
        else:
            view = memoryview(data)
            chunks.extend(bytes(view[i : i + limit]) for i in range(0, n, limit))
            self.bytes_copied += n
        self._size += n

    def next_frame(self) -> bytes | None:
        """See :meth:`Framer.next_frame`."""
        chunks = self._chunks
        if chunks:
            chunk = chunks.popleft()
            self._size -= len(chunk)
            return chunk
        return None

    def next_frames(self) -> list[bytes]:
        """See :meth:`Framer.next_frames`: every chunk held."""
        chunks = self._chunks
        if not chunks:
            return []
        frames = list(chunks)
        chunks.clear()
        self._size = 0
        return frames

    def take_buffer(self) -> bytes:
        """See :meth:`Framer.take_buffer`."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = b"".join(chunks)
        chunks.clear()
        self._size = 0
        return data

    @property
    def buffered(self) -> int:
        """See :meth:`Framer.buffered`."""
        return self._size

    def encode(self, payload: bytes) -> bytes:
        """Return ``payload`` unchanged (raw streams have no framing)."""
        return bytes(payload)
