"""Framers: sans-IO parsing, switching framers mid-stream, and a framer of your own.

Three short demos, run in order by ``python examples/framing.py``:

1. ``parse_message``: a header line announces N raw bytes, then lines follow
   again - parsed with plain framer calls, no sockets.
2. ``UploadHandler``: the same protocol served over TCP; the handler switches
   framers with ``set_framer`` and no byte is lost at the switch.
3. ``TLVFramer``: a type-length-value framer written from scratch, checked with
   ``anycore.testing.check_framer`` (every split point, one byte at a time).
"""

from __future__ import annotations

import asyncio
import struct
import sys

import anycore
from anycore import FixedSizeFramer, Framer, FrameTooLarge, Handler, TerminatorFramer
from anycore.errors import IncompleteFrame, LocalProtocolError
from anycore.testing import check_framer

# -- 1. sans-IO: a header line, N raw bytes, then lines again ----------------------


def parse_message(reads: list[bytes]) -> list[tuple[str, bytes]]:
    """Parse ``SIZE n`` + n raw bytes + lines from reads cut anywhere."""
    events: list[tuple[str, bytes]] = []
    framer: Framer = TerminatorFramer(b"\r\n", max_frame_size=1024)
    for data in reads:
        framer.feed(data)
        while (frame := framer.next_frame()) is not None:
            if isinstance(framer, FixedSizeFramer):
                events.append(("body", frame))
                new: Framer = TerminatorFramer(b"\r\n", max_frame_size=1024)
            elif frame.startswith(b"SIZE "):
                events.append(("header", frame))
                new = FixedSizeFramer(int(frame[5:]))
            else:
                events.append(("line", frame))
                continue
            new.feed(framer.take_buffer())  # the switch: leftovers move over
            framer = new
    return events


# -- 2. the same protocol over TCP, switching with set_framer -------------------------


class UploadHandler(Handler):
    """``SIZE n`` then n bytes: answers ``got n bytes``; other lines are echoed."""

    max_frame_size = 1024

    def make_framer(self) -> Framer:
        return TerminatorFramer(b"\r\n", max_frame_size=self.max_frame_size)

    def frame_received(self, frame: bytes) -> None:
        if isinstance(self.framer, FixedSizeFramer):
            self.send(b"got %d bytes\r\n" % len(frame))
            self.set_framer(self.make_framer())
        elif frame.startswith(b"SIZE "):
            self.set_framer(FixedSizeFramer(int(frame[5:])))
        else:
            self.send(b"echo " + frame + b"\r\n")

    def frame_too_large(self, exc: FrameTooLarge) -> None:
        self.send(b"line too long\r\n")
        self.close()


async def upload_demo() -> list[bytes]:
    async with anycore.serve(UploadHandler, "tcp://127.0.0.1:0") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # One write holds the header, the body and a line: the switch happens
        # inside one read batch.
        writer.write(b"SIZE 5\r\nhellobye\r\n")
        replies = [await asyncio.wait_for(reader.readline(), 5) for _ in range(2)]
        writer.write(b"x" * 2000 + b"\r\n")
        replies.append(await asyncio.wait_for(reader.readline(), 5))
        writer.close()
        await writer.wait_closed()
        return replies


# -- 3. a framer of your own ------------------------------------------------------------


class TLVFramer(Framer):
    """Type-length-value records: 1 type byte, a ``!H`` length, the value.

    Frames are the whole record (type, length, value).  Written without the
    base class's buffer helpers: a bytearray with a read offset, compacted
    when the consumed part dominates, so the work stays linear.
    """

    def __init__(self, max_frame_size: int = 4096) -> None:
        super().__init__(max_frame_size)
        self._data = bytearray()
        self._start = 0
        self._ended = False

    def feed(self, data: bytes) -> None:
        if self._start > 4096 and self._start * 2 > len(self._data):
            del self._data[: self._start]  # compact: amortised O(1) per byte
            self._start = 0
        self._data += data

    def feed_eof(self) -> None:
        self._ended = True

    def next_frame(self) -> bytes | None:
        data, start = self._data, self._start
        if len(data) - start >= 3:
            (length,) = struct.unpack_from("!H", data, start + 1)
            if length > self.max_frame_size:
                raise FrameTooLarge(length, self.max_frame_size)
            end = start + 3 + length
            if end <= len(data):
                self._start = end
                return bytes(data[start:end])
        if self._ended and len(data) > start:
            rest = bytes(data[start:])
            self._start = len(data)
            raise IncompleteFrame(rest)
        return None

    def take_buffer(self) -> bytes:
        rest = bytes(self._data[self._start :])
        self._data.clear()
        self._start = 0
        return rest

    @property
    def buffered(self) -> int:
        return len(self._data) - self._start

    def encode(self, payload: bytes) -> bytes:
        # The payload is a whole record; check that it is one.
        if len(payload) < 3 or struct.unpack_from("!H", payload, 1)[0] != len(payload) - 3:
            raise LocalProtocolError("not a type-length-value record")
        return bytes(payload)


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


async def demo() -> None:
    reads = [b"SIZE 5\r", b"\nhel", b"lo", b"line one\r\nline two\r\n"]
    for kind, data in parse_message(reads):
        print(f"parsed {kind}: {data!r}")
    for reply in await upload_demo():
        print(f"server replied: {reply!r}")
    frames = check_framer(TLVFramer, [tlv(1, b"abc"), tlv(2, b""), tlv(3, b"\x00" * 40)])
    print(f"TLVFramer passed check_framer ({len(frames)} records, every split point)")
    print("done")


def main() -> int:
    anycore.run(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
