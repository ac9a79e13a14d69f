"""anycore.logging's loop-native network handlers and the log receiver."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import logging.handlers
import os
import pickle
import re
import socket
import socketserver
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from _support import wait_until
from anycore.errors import RemoteProtocolError
from anycore.logging import (
    DatagramHandler,
    HTTPHandler,
    MemoryHandler,
    ReceiverStatistics,
    SMTPHandler,
    SocketHandler,
    SysLogHandler,
    loads_record,
    open_log_receiver,
)


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    lg = logging.getLogger(f"test.net.{request.node.name}")
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
        h.close()


@pytest.fixture
def short_tmp() -> Iterator[str]:
    # Unix socket paths must stay short (108 bytes).
    with tempfile.TemporaryDirectory(prefix="acl-") as d:
        yield d


# -- anycore -> the stdlib's receiver (the logging cookbook's, written here) ----------


class _CookbookHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            head = self.connection.recv(4)
            if len(head) < 4:
                return
            size = struct.unpack(">L", head)[0]
            data = b""
            while len(data) < size:
                chunk = self.connection.recv(size - len(data))
                if not chunk:
                    return
                data += chunk
            record = logging.makeLogRecord(pickle.loads(data))
            self.server.records.append(record)  # type: ignore[attr-defined]


class _CookbookServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CookbookHandler)
        self.records: list[logging.LogRecord] = []


@pytest.fixture
def cookbook_server() -> Iterator[_CookbookServer]:
    server = _CookbookServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_socket_handler_against_stdlib_receiver(
    logger: logging.Logger, cookbook_server: _CookbookServer
) -> None:
    host, port = cookbook_server.server_address[:2]
    handler = SocketHandler(str(host), int(port))
    logger.addHandler(handler)
    for i in range(500):
        logger.info("rec %d from %s", i, "anycore", extra={"conn": i})
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        logger.exception("boom")
    await wait_until(lambda: len(cookbook_server.records) == 501)
    got = cookbook_server.records
    assert [r.getMessage() for r in got[:500]] == [f"rec {i} from anycore" for i in range(500)]
    assert got[7].conn == 7  # type: ignore[attr-defined]
    assert got[-1].levelname == "ERROR"
    assert "ZeroDivisionError" in (got[-1].exc_text or "")
    await handler.aclose()


async def test_socket_handler_from_another_thread(
    logger: logging.Logger, cookbook_server: _CookbookServer
) -> None:
    host, port = cookbook_server.server_address[:2]
    handler = SocketHandler(str(host), int(port))
    await handler.start()  # bind to this loop
    logger.addHandler(handler)

    def other_thread() -> None:
        for i in range(100):
            logger.info("rec %d", i)

    await asyncio.to_thread(other_thread)
    await wait_until(lambda: len(cookbook_server.records) == 100)
    assert [r.getMessage() for r in cookbook_server.records] == [f"rec {i}" for i in range(100)]
    await handler.aclose()


# -- the stdlib's handlers -> anycore's receiver --------------------------------------


async def test_stdlib_socket_and_datagram_handlers_against_anycore_receiver() -> None:
    received: list[logging.LogRecord] = []
    async with open_log_receiver(udp=("127.0.0.1", 0), on_record=received.append) as rcv:
        host, port = rcv.addresses["tcp"]
        uhost, uport = rcv.addresses["udp"]
        lg = logging.getLogger("test.net.stdlib-senders")
        lg.propagate = False
        tcp = logging.handlers.SocketHandler(host, port)
        udp = logging.handlers.DatagramHandler(uhost, uport)

        def send() -> None:  # the stdlib handlers block: keep them off the loop
            lg.addHandler(tcp)
            for i in range(50):
                lg.warning("tcp %d", i)
            lg.removeHandler(tcp)
            lg.addHandler(udp)
            for i in range(5):
                lg.warning("udp %d", i)
            lg.removeHandler(udp)

        await asyncio.to_thread(send)
        await wait_until(lambda: len(received) == 55)
        tcp.close()
        udp.close()
    messages = [r.getMessage() for r in received]
    assert [m for m in messages if m.startswith("tcp")] == [f"tcp {i}" for i in range(50)]
    assert sorted(m for m in messages if m.startswith("udp")) == [f"udp {i}" for i in range(5)]
    assert all(r.name == "test.net.stdlib-senders" for r in received)


async def test_anycore_datagram_handler_to_receiver(logger: logging.Logger) -> None:
    received: list[logging.LogRecord] = []
    async with open_log_receiver(tcp=None, udp=("127.0.0.1", 0), on_record=received.append) as rcv:
        handler = DatagramHandler(*rcv.addresses["udp"])
        logger.addHandler(handler)
        for i in range(20):
            logger.info("dgram %d", i)
        await wait_until(lambda: len(received) == 20)
        stats = handler.statistics()
        assert (stats.sent, stats.dropped, stats.buffered) == (20, 0, 0)
        await handler.aclose()
    assert sorted(r.getMessage() for r in received) == sorted(f"dgram {i}" for i in range(20))


class _Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("echo pwned",))


async def test_receiver_refuses_pickled_globals() -> None:
    with pytest.raises(RemoteProtocolError):
        loads_record(pickle.dumps({"msg": _Evil()}))
    with pytest.raises(RemoteProtocolError):
        loads_record(pickle.dumps(["not", "a", "dict"]))
    received: list[logging.LogRecord] = []
    async with open_log_receiver(on_record=received.append) as rcv:
        reader, writer = await asyncio.open_connection(*rcv.addresses["tcp"])
        bad = pickle.dumps({"msg": _Evil()})
        good = pickle.dumps({"msg": "fine", "name": "x", "levelno": 20, "args": None})
        writer.write(struct.pack(">L", len(bad)) + bad + struct.pack(">L", len(good)) + good)
        await writer.drain()
        await wait_until(lambda: len(received) == 1)
        assert rcv.rejected == 1
        assert rcv.statistics() == ReceiverStatistics(received=1, rejected=1, connections=1)
        # A frame announcing more than the limit closes the connection.
        writer.write(struct.pack(">L", 1 << 30))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert received[0].getMessage() == "fine"


# -- dead sinks -----------------------------------------------------------------


async def test_dead_sink_stays_bounded_counts_drops_and_recovers(
    logger: logging.Logger, short_tmp: str
) -> None:
    path = os.path.join(short_tmp, "sink.sock")
    handler = SocketHandler(path, None, buffer_size=100, backoff_initial=0.01, backoff_max=0.05)
    logger.addHandler(handler)
    for i in range(1000):
        logger.info("rec %d", i)
    await asyncio.sleep(0.05)  # let it fail to connect a few times
    assert not handler.connected
    assert handler.buffered <= 100 + handler.max_batch
    assert handler.dropped >= 900 - handler.max_batch
    received: list[logging.LogRecord] = []
    async with open_log_receiver(tcp=None, unix=path, on_record=received.append):
        await wait_until(lambda: any(r.getMessage() == "rec 999" for r in received))
    messages = [r.getMessage() for r in received]
    notice = [m for m in messages if "log records dropped" in m]
    assert notice
    assert re.match(r"\d+ log records dropped by SocketHandler", notice[0])
    kept = [int(m.split()[1]) for m in messages if m.startswith("rec ")]
    assert kept == list(range(1000 - len(kept), 1000))  # the newest survive, in order
    assert len(kept) + handler.dropped == 1000
    await handler.aclose()


# -- syslog -----------------------------------------------------------------------

RFC5424 = re.compile(rb"<(\d+)>1 (\S+) (\S+) (\S+) (\d+|-) (\S+) - \xef\xbb\xbf(.*)", re.DOTALL)


class _UDPCollector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets.append(data)


@pytest.fixture
async def udp_collector() -> AsyncIterator[tuple[_UDPCollector, tuple[str, int]]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _UDPCollector, local_addr=("127.0.0.1", 0)
    )
    yield proto, transport.get_extra_info("sockname")[:2]
    transport.close()


async def test_syslog_udp_matches_the_stdlib_bytes(
    logger: logging.Logger, udp_collector: tuple[_UDPCollector, tuple[str, int]]
) -> None:
    proto, addr = udp_collector
    ours = SysLogHandler(addr, facility="local3")
    theirs = logging.handlers.SysLogHandler(addr, facility="local3")
    for h in (ours, theirs):
        h.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "disk %s", ("full",), None)
    ours.handle(record)
    await asyncio.to_thread(theirs.handle, record)
    await wait_until(lambda: len(proto.packets) == 2)
    assert proto.packets[0] == proto.packets[1]
    assert proto.packets[0] == f"<155>{logger.name}: disk full\x00".encode()  # local3*8+err
    theirs.close()
    await ours.aclose()


async def test_syslog_rfc5424_over_udp(
    logger: logging.Logger, udp_collector: tuple[_UDPCollector, tuple[str, int]]
) -> None:
    proto, addr = udp_collector
    handler = SysLogHandler(addr, rfc=5424, app_name="myapp", hostname="host1", msgid="ID7")
    logger.addHandler(handler)
    logger.warning("héllo %d", 5)
    await wait_until(lambda: len(proto.packets) == 1)
    m = RFC5424.fullmatch(proto.packets[0])
    assert m, proto.packets[0]
    pri, stamp, host, app, procid, msgid, msg = m.groups()
    assert int(pri) == 1 * 8 + 4  # user.warning
    parsed = datetime.datetime.fromisoformat(stamp.decode().replace("Z", "+00:00"))
    assert parsed.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.UTC) - parsed).total_seconds()) < 60
    assert (host, app, procid, msgid) == (b"host1", b"myapp", str(os.getpid()).encode(), b"ID7")
    assert msg.decode() == "héllo 5"  # no NUL: the datagram is the message
    await handler.aclose()


async def test_syslog_tcp_octet_counting(logger: logging.Logger) -> None:
    frames: list[bytes] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                length = await reader.readuntil(b" ")
            except asyncio.IncompleteReadError:
                break
            frames.append(await reader.readexactly(int(length[:-1])))
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    handler = SysLogHandler(("127.0.0.1", port), socktype=socket.SOCK_STREAM)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    for i in range(100):
        logger.info("line %d\nwith a newline", i)
    await wait_until(lambda: len(frames) == 100)
    assert frames[3] == b"<14>line 3\nwith a newline"  # RFC 3164 body, RFC 6587 framing
    await handler.aclose()
    await asyncio.wait_for(done.wait(), 10)
    done.clear()
    handler = SysLogHandler(("127.0.0.1", port), socktype=socket.SOCK_STREAM, rfc=5424)
    logger.removeHandler(logger.handlers[0])
    logger.addHandler(handler)
    logger.error("five four two four")
    await wait_until(lambda: len(frames) == 101)
    m = RFC5424.fullmatch(frames[-1])
    assert m, frames[-1]
    assert m.group(1) == b"11"  # user.err
    assert m.group(7) == b"five four two four"  # octet counting: no NUL
    await handler.aclose()
    await asyncio.wait_for(done.wait(), 10)
    server.close()
    await server.wait_closed()


async def test_syslog_unix_datagram_socket(logger: logging.Logger, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "log")  # like /dev/log
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        handler = SysLogHandler(path, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.critical("unix %s", "ok")
        data = await asyncio.to_thread(sock.recv, 4096)
        assert data == b"<26>unix ok\x00"  # daemon(3)*8 + crit(2)
        await handler.aclose()
    finally:
        sock.close()


async def test_syslog_unix_stream_socket(logger: logging.Logger, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "slog")
    chunks: list[bytes] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks.append(await reader.read())
        writer.close()
        done.set()

    server = await asyncio.start_unix_server(serve, path)
    handler = SysLogHandler(path, socktype=socket.SOCK_STREAM)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.error("a")
    logger.error("b")
    await handler.aflush(5)
    await handler.aclose()
    await asyncio.wait_for(done.wait(), 10)
    assert chunks[0] == b"<11>a\x00<11>b\x00"
    server.close()
    await server.wait_closed()


# -- HTTP -------------------------------------------------------------------------


async def test_http_handler_batches_json_and_retries_5xx(logger: logging.Logger) -> None:
    bodies: list[list[dict[str, Any]]] = []
    requests = 0
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            lines = head.decode().split("\r\n")
            assert lines[0] == "POST /ingest HTTP/1.1"
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            assert headers["Content-Type"] == "application/json"
            body = await reader.readexactly(int(headers["Content-Length"]))
            requests += 1
            if requests == 1:  # the first answer is a failure: must be retried
                writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
            else:
                bodies.append(json.loads(body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    handler = HTTPHandler(f"127.0.0.1:{port}", "/ingest", max_batch=50, backoff_initial=0.01)
    logger.addHandler(handler)
    for i in range(300):
        logger.info("http %d", i, extra={"user": f"u{i}"})
    await wait_until(lambda: sum(len(b) for b in bodies) == 300)
    records = [r for b in bodies for r in b]
    assert [r["message"] for r in records] == [f"http {i}" for i in range(300)]
    assert records[5]["user"] == "u5"
    assert records[5]["levelname"] == "INFO"
    assert max(len(b) for b in bodies) <= 50
    assert requests >= 7
    await handler.aclose()
    await asyncio.wait_for(done.wait(), 10)
    server.close()
    await server.wait_closed()


# -- SMTP (a small fake server) ---------------------------------------------------


async def test_smtp_handler_sends_from_a_thread(logger: logging.Logger) -> None:
    messages: list[bytes] = []
    sessions: list[asyncio.Event] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ended = asyncio.Event()
        sessions.append(ended)
        writer.write(b"220 fake ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250 fake\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                data = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    data += chunk
                messages.append(data)
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()
        ended.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    handler = SMTPHandler(("127.0.0.1", port), "app@example.org", ["ops@example.org"], "alert")
    logger.addHandler(handler)
    logger.error("mail %d", 1)
    logger.error("mail %d", 2)
    assert await handler.aflush(10)
    assert len(messages) == 2
    assert b"Subject: alert" in messages[0]
    assert b"mail 1" in messages[0]
    await handler.aclose()
    for ended in sessions:
        await asyncio.wait_for(ended.wait(), 10)
    server.close()
    await server.wait_closed()


# -- memory -----------------------------------------------------------------------


def test_memory_handler_is_bounded_without_target(logger: logging.Logger) -> None:
    mem = MemoryHandler(10)
    logger.addHandler(mem)
    for i in range(1000):
        logger.info("m %d", i)
    assert len(mem.buffer) <= 10
    assert mem.dropped == 990
    target = logging.handlers.BufferingHandler(10_000)
    mem.setTarget(target)
    logger.error("flush now")
    assert [r.getMessage() for r in target.buffer][-1] == "flush now"
    assert next(r.getMessage() for r in target.buffer) == "m 990"


def test_network_handler_under_the_runtime(cookbook_server: _CookbookServer) -> None:
    import anycore

    host, port = cookbook_server.server_address[:2]
    handler = SocketHandler(str(host), int(port))
    lg = logging.getLogger("test.net.runtime")
    lg.setLevel(logging.INFO)
    lg.propagate = False
    lg.addHandler(handler)

    async def main() -> None:
        for i in range(200):
            lg.info("rt %d", i)

    try:
        anycore.run(main)  # the LOGS step sends the buffer and stops the sender task
        assert handler.buffered == 0
        assert handler.sent == 200
    finally:
        lg.removeHandler(handler)
        handler.close()
    deadline = time.monotonic() + 10
    while len(cookbook_server.records) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)  # the receiver is another thread; poll with a deadline
    assert [r.getMessage() for r in cookbook_server.records] == [f"rt {i}" for i in range(200)]


async def test_forked_child_drops_the_parents_connection(
    logger: logging.Logger, cookbook_server: _CookbookServer
) -> None:
    host, port = cookbook_server.server_address[:2]
    handler = SocketHandler(str(host), int(port))
    logger.addHandler(handler)
    logger.info("before fork")
    await wait_until(lambda: len(cookbook_server.records) == 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child: no loop here; close() sends synchronously
        try:
            logger.info("from the child")
            handler.close()
            os._exit(0 if handler.buffered == 0 and handler.dropped == 0 else 1)
        except BaseException:
            os._exit(2)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    logger.info("parent still connected")
    await wait_until(lambda: len(cookbook_server.records) == 3)
    assert {r.getMessage() for r in cookbook_server.records} == {
        "before fork",
        "from the child",
        "parent still connected",
    }
    assert handler.connected
    await handler.aclose()


async def test_http_handler_over_tls_with_basic_auth(logger: logging.Logger) -> None:
    import base64
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    seen: list[tuple[str, list[dict[str, Any]]]] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line)
            body = await reader.readexactly(int(headers["Content-Length"]))
            seen.append((headers.get("Authorization", ""), json.loads(body)))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    handler = HTTPHandler(
        f"localhost:{port}",
        "/logs",
        secure=True,
        credentials=("ann", "s3cret"),
        context=client_ctx,
    )
    logger.addHandler(handler)
    logger.warning("over tls")
    await wait_until(lambda: len(seen) == 1)
    auth, records = seen[0]
    assert auth == "Basic " + base64.b64encode(b"ann:s3cret").decode()
    assert records[0]["message"] == "over tls"
    await handler.aclose()
    await asyncio.wait_for(done.wait(), 10)
    server.close()
    await server.wait_closed()
