"""asynchat compatibility: classic async_chat subclasses on AsyncChat, over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from hypothesis import given, strategies as st

from anycore import AsyncChat, Handler, serve, simple_producer
from anycore._net._connection_base import _Connection

# -- a classic HTTP-ish request handler, in the shape of asynchat's docs example --
# Only the base class differs from code written for asynchat.async_chat.


class http_request_handler(AsyncChat):
    def __init__(self, sock: Any, addr: Any, sessions: dict[str, int], log: list[str]) -> None:
        AsyncChat.__init__(self, sock=sock)
        self.addr = addr
        self.sessions = sessions
        self.ibuffer: list[bytes] = []
        self.obuffer = b""
        self.set_terminator(b"\r\n\r\n")
        self.reading_headers = True
        self.handling = False
        self.cgi_data: bytes | None = None
        self.log = log  # type: ignore[assignment, method-assign]
        self.op = b""
        self.path = b""
        self.headers: dict[bytes, bytes] = {}

    def collect_incoming_data(self, data: bytes) -> None:
        """Buffer the data"""
        self.ibuffer.append(data)

    def found_terminator(self) -> None:
        if self.reading_headers:
            self.reading_headers = False
            self.parse_headers(b"".join(self.ibuffer))
            self.ibuffer = []
            if self.op.upper() == b"POST":
                clen = self.headers.get(b"content-length", b"0")
                self.set_terminator(int(clen))
            else:
                self.handling = True
                self.set_terminator(None)
                self.handle_request()
        elif not self.handling:
            self.set_terminator(None)  # browsers sometimes over-send
            self.cgi_data = b"".join(self.ibuffer)
            self.handling = True
            self.ibuffer = []
            self.handle_request()

    def parse_headers(self, data: bytes) -> None:
        request, *lines = data.split(b"\r\n")
        self.op, self.path, _ = request.split(b" ", 2)
        for line in lines:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()

    def handle_request(self) -> None:
        self.sessions[self.path.decode()] = self.sessions.get(self.path.decode(), 0) + 1
        self.log.append(f"{self.op.decode()} {self.path.decode()}")  # type: ignore[attr-defined]
        if self.op == b"POST":
            body = (self.cgi_data or b"")[::-1]
            self.push(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            self.push(body)
        else:
            size = int(self.path.rsplit(b"/", 1)[-1] or b"0")
            self.push(b"HTTP/1.0 200 OK\r\n\r\n")
            self.push_with_producer(simple_producer(b"0123456789" * (size // 10), 4096))
        self.close_when_done()


async def http_exchange(port: int, request: bytes, chunk: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(0, len(request), chunk):
        writer.write(request[i : i + chunk])
        await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    writer.close()
    await writer.wait_closed()
    return data


@pytest.mark.parametrize("chunk", [1, 3, 1000])
async def test_classic_http_handler_post_and_get(chunk: int) -> None:
    sessions: dict[str, int] = {}
    log: list[str] = []
    async with serve(
        lambda: http_request_handler(None, None, sessions, log), "tcp://127.0.0.1:0"
    ) as server:
        post = b"POST /echo HTTP/1.0\r\nContent-Length: 11\r\n\r\nhello world"
        reply = await http_exchange(server.port, post, chunk)
        assert reply == b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\ndlrow olleh"
        reply = await http_exchange(server.port, b"GET /big/200000 HTTP/1.0\r\n\r\n", chunk)
        assert reply == b"HTTP/1.0 200 OK\r\n\r\n" + b"0123456789" * 20000
    assert sessions == {"/echo": 1, "/big/200000": 1}
    assert log == ["POST /echo", "GET /big/200000"]


# -- the classic chat server: nicknames and broadcast ----------------------------


class ChatRoom:
    def __init__(self) -> None:
        self.members: list[chat_handler] = []

    def broadcast(self, line: bytes, sender: chat_handler | None) -> None:
        for member in self.members:
            if member is not sender:
                member.push(line + b"\r\n")


class chat_handler(AsyncChat):
    def __init__(self, room: ChatRoom, sock: Any = None) -> None:
        AsyncChat.__init__(self, sock)
        self.room = room
        self.nick: bytes | None = None
        self.closed = 0
        self.set_terminator(b"\r\n")
        self.buffer: list[bytes] = []

    def collect_incoming_data(self, data: bytes) -> None:
        self.buffer.append(data)

    def found_terminator(self) -> None:
        line = b"".join(self.buffer)
        self.buffer = []
        if self.nick is None:
            self.nick = line
            self.room.members.append(self)
            self.room.broadcast(b"* " + line + b" joined", self)
            self.push(b"welcome " + line + b"\r\n")
        elif line == b"/quit":
            self.push(b"bye\r\n")
            self.close_when_done()
        else:
            self.room.broadcast(self.nick + b": " + line, self)

    def handle_close(self) -> None:
        self.closed += 1
        if self in self.room.members:
            self.room.members.remove(self)
            self.room.broadcast(b"* " + (self.nick or b"?") + b" left", None)
        self.close()


async def test_classic_chat_server() -> None:
    room = ChatRoom()
    made: list[chat_handler] = []

    def factory() -> chat_handler:
        made.append(chat_handler(room))
        return made[-1]

    async with serve(factory, "tcp://127.0.0.1:0") as server:
        ra, wa = await asyncio.open_connection("127.0.0.1", server.port)
        rb, wb = await asyncio.open_connection("127.0.0.1", server.port)

        async def line(r: asyncio.StreamReader) -> bytes:
            return await asyncio.wait_for(r.readline(), 5)

        wa.write(b"alice\r\n")
        assert await line(ra) == b"welcome alice\r\n"
        wb.write(b"bo")
        wb.write(b"b\r")
        await wb.drain()
        wb.write(b"\n")
        assert await line(rb) == b"welcome bob\r\n"
        assert await line(ra) == b"* bob joined\r\n"
        wa.write(b"hi bob\r\nhow are you\r\n")
        assert await line(rb) == b"alice: hi bob\r\n"
        assert await line(rb) == b"alice: how are you\r\n"
        wb.write(b"/quit\r\n")
        assert await line(rb) == b"bye\r\n"
        assert await asyncio.wait_for(rb.read(), 5) == b""  # closed when done
        assert await line(ra) == b"* bob left\r\n"
        wa.close()
        await wa.wait_closed()
        wb.close()
        await wb.wait_closed()
        for h in made:
            await asyncio.wait_for(h.wait_closed(), 5)
    assert [h.closed for h in made] == [1, 1]  # handle_close ran once each
    assert room.members == []


# -- producers: pulled with flow control -----------------------------------------


class CountingProducer:
    def __init__(self, total: int, piece: int) -> None:
        self.left = total
        self.piece = piece
        self.calls = 0

    def more(self) -> bytes:
        self.calls += 1
        n = min(self.piece, self.left)
        self.left -= n
        return b"p" * n


class Streamer(AsyncChat):
    producers: ClassVar[list[CountingProducer]] = []
    calls_right_after_push: ClassVar[list[int]] = []

    def connection_made(self) -> None:
        super().connection_made()
        producer = CountingProducer(8 * 1024 * 1024, 16 * 1024)
        self.producers.append(producer)
        self.push_with_producer(producer)
        self.calls_right_after_push.append(producer.calls)
        self.close_when_done()

    def collect_incoming_data(self, data: bytes) -> None:
        pass

    def found_terminator(self) -> None:
        pass


async def test_producer_is_pulled_as_the_peer_reads() -> None:
    Streamer.producers = []
    Streamer.calls_right_after_push = []
    async with serve(Streamer, "tcp://127.0.0.1:0") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        total = 0
        while chunk := await asyncio.wait_for(reader.read(1 << 16), 10):
            total += len(chunk)
        writer.close()
        await writer.wait_closed()
    assert total == 8 * 1024 * 1024
    # The first pull stops at write_high_water bytes, not at the producer's end.
    high = Handler.write_high_water
    assert Streamer.calls_right_after_push == [high // (16 * 1024)]
    assert Streamer.producers[0].left == 0


# -- the terminator logic at every split (no sockets) ------------------------------


class _FakeConnection(_Connection):
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closing = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Recorder(AsyncChat):
    """Records units: switches terminator kinds as a protocol would."""

    def __init__(self) -> None:
        super().__init__()
        self.units: list[tuple[object, bytes]] = []
        self.data: list[bytes] = []
        self.set_terminator(b"<END>")

    def collect_incoming_data(self, data: bytes) -> None:
        assert data  # asynchat never hands over empty data here
        self.data.append(data)

    def found_terminator(self) -> None:
        unit = b"".join(self.data)
        self.data = []
        self.units.append((self.get_terminator(), unit))
        if unit.startswith(b"N="):
            self.set_terminator(int(unit[2:]))
        elif unit == b"LINES":
            self.set_terminator(b"\n")
        elif unit == b"REST":
            self.set_terminator(None)
        elif self.get_terminator() == 0:  # a byte count was reached
            self.set_terminator(b"<END>")


STREAM = b"a<E<END>N=5<END>12345<ENDX<END>LINES<END>x\ny\n<END>\nREST\ntail<END>more"


def run_recorder(pieces: list[bytes]) -> tuple[list[tuple[object, bytes]], bytes]:
    handler = Recorder()
    handler._conn = _FakeConnection()
    for piece in pieces:
        handler.frame_received(piece)
    return handler.units, b"".join(handler.data)


def test_terminator_logic_is_independent_of_splits() -> None:
    whole = run_recorder([STREAM])
    assert whole == (
        [
            (b"<END>", b"a<E"),
            (b"<END>", b"N=5"),
            (0, b"12345"),
            (b"<END>", b"<ENDX"),
            (b"<END>", b"LINES"),
            (b"\n", b"x"),
            (b"\n", b"y"),
            (b"\n", b"<END>"),
            (b"\n", b"REST"),
        ],
        b"tail<END>more",
    )
    for k in range(len(STREAM) + 1):
        assert run_recorder([STREAM[:k], STREAM[k:]]) == whole, k
    assert run_recorder([bytes([b]) for b in STREAM]) == whole


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=8))
def test_terminator_logic_any_chunking(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces, last = [], 0
    for p in points:
        pieces.append(STREAM[last:p])
        last = p
    pieces.append(STREAM[last:])
    assert run_recorder(pieces) == run_recorder([STREAM])


def test_set_terminator_rules_and_discard() -> None:
    chat = Recorder()
    with pytest.raises(ValueError):
        chat.set_terminator(-1)
    with pytest.raises(TypeError):
        chat.set_terminator("\r\n")
    chat.use_encoding = 1  # type: ignore[misc]
    chat.set_terminator("\r\n")
    assert chat.get_terminator() == b"\r\n"
    chat.ac_in_buffer = b"\r"
    chat.incoming.append(b"x")
    chat.discard_buffers()
    assert (chat.ac_in_buffer, chat.incoming, list(chat.producer_fifo)) == (b"", [], [])
    with pytest.raises(TypeError):
        AsyncChat(sock=object())
    with pytest.raises(TypeError):
        chat.push("text")  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        AsyncChat().found_terminator()


def test_simple_producer() -> None:
    p = simple_producer(b"abcdefg", 3)
    assert [p.more() for _ in range(4)] == [b"abc", b"def", b"g", b""]


# -- the example runs ------------------------------------------------------------


def test_asynchat_compat_example_self_demo() -> None:
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "asynchat_compat.py"
    proc = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "POST reply: dlrow olleh\n" in proc.stdout
    assert "GET reply body bytes: 100000\n" in proc.stdout
    assert proc.stdout.rstrip().endswith("done")


# -- the portable path: the same classes on the trio backend ----------------------


async def _trio_read_all(stream: Any) -> bytes:
    import anyio

    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return data


def test_classic_handlers_on_trio() -> None:
    import anyio
    import trio

    sessions: dict[str, int] = {}
    log: list[str] = []
    Streamer.producers = []
    Streamer.calls_right_after_push = []

    async def main() -> None:
        with anyio.fail_after(30):
            async with serve(
                lambda: http_request_handler(None, None, sessions, log), "tcp://127.0.0.1:0"
            ) as server:
                async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
                    await s.send(b"POST /t HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
                    reply = await _trio_read_all(s)
                assert reply == b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\ncba"
            async with (
                serve(Streamer, "tcp://127.0.0.1:0") as server,
                await anyio.connect_tcp("127.0.0.1", server.port) as s,
            ):
                assert len(await _trio_read_all(s)) == 8 * 1024 * 1024

    trio.run(main)
    assert log == ["POST /t"]
    assert Streamer.producers[0].left == 0


# -- the client side: handle_connect through anycore.connect ------------------------


class _Echo(AsyncChat):
    def __init__(self) -> None:
        super().__init__()
        self.set_terminator(b"\n")
        self.buf: list[bytes] = []

    def collect_incoming_data(self, data: bytes) -> None:
        self.buf.append(data)

    def found_terminator(self) -> None:
        self.push(b"echo:" + b"".join(self.buf) + b"\n")
        self.buf = []


class _Client(AsyncChat):
    def __init__(self) -> None:
        super().__init__()
        self.set_terminator(b"\n")
        self.replies: list[bytes] = []
        self.buf: list[bytes] = []
        self.connected_calls = 0
        self.done = asyncio.Event()

    def handle_connect(self) -> None:
        self.connected_calls += 1
        self.push(b"one\ntwo\n")

    def collect_incoming_data(self, data: bytes) -> None:
        self.buf.append(data)

    def found_terminator(self) -> None:
        self.replies.append(b"".join(self.buf))
        self.buf = []
        if len(self.replies) == 2:
            self.close_when_done()

    def handle_close(self) -> None:
        self.done.set()
        self.close()


async def test_client_side_handle_connect() -> None:
    from anycore import connect

    async with serve(_Echo, "tcp://127.0.0.1:0") as server:
        client = await connect(f"tcp://127.0.0.1:{server.port}", _Client)
        await asyncio.wait_for(client.done.wait(), 5)
        await asyncio.wait_for(client.wait_closed(), 5)
    assert client.connected_calls == 1
    assert client.replies == [b"echo:one", b"echo:two"]
    assert client.addr is not None
    assert not client.connected
