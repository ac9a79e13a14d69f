"""serve(): endpoints, limits, idle timeout, graceful close, statistics, EMFILE,
the runtime's shutdown phases.  Real loopback sockets, asyncio and uvloop."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from anycore import Endpoint, Handler, LineHandler, Server, parse_endpoint, serve
from anycore._core._runtime import open_runtime
from anycore.errors import EndpointError


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


class Greeter(Echo):
    def connection_made(self) -> None:
        self.send_line(b"hi")


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg: bytes) -> None:
    writer.write(msg + b"\r\n")
    assert await asyncio.wait_for(reader.readline(), 5) == msg + b"\r\n"


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- endpoints ----------------------------------------------------------------------


def test_parse_endpoint_forms() -> None:
    assert parse_endpoint("tcp://127.0.0.1:80") == Endpoint("tcp", host="127.0.0.1", port=80)
    assert parse_endpoint("tcp://[::1]:0") == Endpoint("tcp", host="::1", port=0)
    assert parse_endpoint("unix:///tmp/x.sock") == Endpoint("unix", path="/tmp/x.sock")
    assert parse_endpoint("udp://localhost:53").scheme == "udp"
    ep = parse_endpoint("tls://example.org:443?cert=c.pem&key=k.pem&ca=ca.pem&verify=required")
    assert ep.is_tls
    assert ep.option("cert") == "c.pem"
    assert ep.option("verify") == "required"
    assert str(parse_endpoint("tcp://[::1]:5")) == "tcp://[::1]:5"
    assert parse_endpoint(ep) is ep


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1:80", "missing scheme"),
        ("http://127.0.0.1:80", "unknown scheme"),
        ("tcp://127.0.0.1", "missing port"),
        ("tcp://:80", "missing host"),
        ("tcp://::1:80", "brackets"),
        ("tcp://127.0.0.1:99999", r"port 99999 is out of range \(0-65535\)$"),
        ("tcp://127.0.0.1:http", "the port 'http' is not a number$"),
        ("tcp://[::1:80", r"malformed address \(IPv6 addresses go in brackets"),
        ("tcp://127.0.0.1:80?cert=x", "take no options"),
        ("tls://127.0.0.1:80?bogus=1", "unknown tls option"),
        ("tls://127.0.0.1:80?verify=maybe", "verify must be"),
        ("tcp://127.0.0.1:80/path", "unexpected path"),
        ("unix://", "missing socket path"),
    ],
)
def test_bad_endpoints_raise_a_clear_error(text: str, why: str) -> None:
    with pytest.raises(EndpointError, match=why):
        parse_endpoint(text)


def test_serve_rejects_datagram_endpoints_and_empty_lists() -> None:
    with pytest.raises(EndpointError, match="serve_datagram"):
        serve(Echo, "udp://127.0.0.1:0")
    with pytest.raises(EndpointError):
        serve(Echo)


async def test_several_endpoints_port_zero_and_unix(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    async with serve(Echo, "tcp://127.0.0.1:0", f"unix://{path}") as server:
        tcp, unix = server.endpoints
        assert unix.path == path
        assert tcp.port != 0
        assert str(tcp) == f"tcp://127.0.0.1:{tcp.port}"
        assert server.addresses == [("127.0.0.1", tcp.port), path]
        r, w = await asyncio.open_connection("127.0.0.1", tcp.port)
        await roundtrip(r, w, b"tcp")
        ru, wu = await asyncio.open_unix_connection(path)
        await roundtrip(ru, wu, b"unix")
        assert server.statistics().connections == 2
        assert len(server.connections()) == 2
        await close(w)
        await close(wu)
    assert not os.path.exists(path)


async def test_stale_unix_socket_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # leaves the file behind, like a crashed server
    async with serve(Echo, f"unix://{path}"):
        r, w = await asyncio.open_unix_connection(path)
        await roundtrip(r, w, b"fresh")
        await close(w)


@pytest.mark.skipif(not ipv6_loopback(), reason="::1 is not available")
async def test_ipv6_loopback() -> None:
    async with serve(Echo, "tcp://[::1]:0") as server:
        assert server.endpoints[0].host == "::1"
        r, w = await asyncio.open_connection("::1", server.port)
        await roundtrip(r, w, b"six")
        await close(w)


async def test_bind_failure_releases_earlier_endpoints() -> None:
    async with serve(Echo, "tcp://127.0.0.1:0") as first:
        port = first.port
        other = serve(Echo, "tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}")
        with pytest.raises(OSError):
            await other.start()
        assert other.endpoints == []


async def test_reuse_port_lets_two_servers_share_a_port() -> None:
    async with serve(Echo, "tcp://127.0.0.1:0", reuse_port=True) as a:
        b = serve(Echo, f"tcp://127.0.0.1:{a.port}", reuse_port=True)
        async with b:
            assert a.port == b.port


# -- limits ---------------------------------------------------------------------------


async def refused(port: int) -> bool:
    """Whether a new connection is reset (or closed) without a greeting."""
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionResetError:
        return True
    try:
        return await asyncio.wait_for(r.read(), 5) == b""
    except ConnectionResetError:
        return True
    finally:
        await close(w)


async def test_max_connections_refuses_the_excess() -> None:
    async with serve(Greeter, "tcp://127.0.0.1:0", max_connections=2) as server:
        clients = []
        for _ in range(2):
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            assert await asyncio.wait_for(r.readline(), 5) == b"hi\r\n"
            clients.append((r, w))
        assert await refused(server.port)
        assert server.statistics().refused == 1
        await close(clients[0][1])
        await asyncio.wait_for(server.connections()[0].wait_closed(), 5)
        r4, w4 = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(r4.readline(), 5) == b"hi\r\n"
        await close(w4)
        await close(clients[1][1])


async def test_max_connections_hold_keeps_the_excess_waiting() -> None:
    async with serve(Greeter, "tcp://127.0.0.1:0", max_connections=1, on_limit="hold") as server:
        r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(r1.readline(), 5) == b"hi\r\n"
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        # A round trip on the first connection lets the loop run its callbacks;
        # the second connection is still in the kernel backlog.
        await roundtrip(r1, w1, b"busy")
        await roundtrip(r1, w1, b"busy")
        assert server.statistics().total_connections == 1
        assert server.statistics().refused == 0
        await close(w1)
        assert await asyncio.wait_for(r2.readline(), 5) == b"hi\r\n"
        await roundtrip(r2, w2, b"served")
        await close(w2)


async def test_idle_timeout_closes_quiet_connections_only() -> None:
    async with serve(Echo, "tcp://127.0.0.1:0", idle_timeout=0.3) as server:
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        start = time.monotonic()
        assert await asyncio.wait_for(r.read(), 5) == b""
        assert time.monotonic() - start >= 0.25
        await close(w)
        # A busy connection outlives the timeout.
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        start = time.monotonic()
        while time.monotonic() - start < 0.6:
            await roundtrip(r, w, b"busy")
            await asyncio.sleep(0.05)
        assert not r.at_eof()
        await close(w)


# -- graceful close ---------------------------------------------------------------------


async def test_graceful_close_lets_running_handlers_finish() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    class Slow(LineHandler):
        async def line_received(self, line: bytes) -> None:
            started.set()
            await release.wait()
            self.send_line(b"done " + line)

    server = serve(Slow, "tcp://127.0.0.1:0")
    await server.start()
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", server.port)
    w.write(b"job\r\n")
    await asyncio.wait_for(started.wait(), 5)
    closing = asyncio.create_task(server.aclose(timeout=10))
    # The idle connection is closed at once; new connections are refused.
    assert await asyncio.wait_for(idle_r.read(), 5) == b""
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)
    assert not closing.done()
    release.set()
    assert await asyncio.wait_for(r.readline(), 5) == b"done job\r\n"
    assert await asyncio.wait_for(r.read(), 5) == b""
    await asyncio.wait_for(closing, 5)
    assert server.statistics().connections == 0
    await close(w)
    await close(idle_w)


async def test_drain_deadline_aborts_stuck_handlers() -> None:
    events: list[str] = []
    started = asyncio.Event()

    class Stuck(LineHandler):
        async def line_received(self, line: bytes) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

        def connection_lost(self, exc: BaseException | None) -> None:
            events.append("lost")

    server = serve(Stuck, "tcp://127.0.0.1:0")
    await server.start()
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    w.write(b"x\r\n")
    await asyncio.wait_for(started.wait(), 5)
    start = time.monotonic()
    await asyncio.wait_for(server.aclose(timeout=0.2), 5)
    assert time.monotonic() - start < 4
    assert events == ["cancelled", "lost"]
    assert await asyncio.wait_for(r.read(), 5) == b""
    await close(w)


async def test_serve_forever_is_cancelled_gracefully() -> None:
    server = serve(Echo, "tcp://127.0.0.1:0")
    await server.start()  # bound and accepting: the port is known
    task = asyncio.create_task(server.serve_forever())
    assert server.is_serving()
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    await roundtrip(r, w, b"forever")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not server.is_serving()
    assert await asyncio.wait_for(r.read(), 5) == b""
    await close(w)


async def test_runtime_shutdown_stops_accepting_then_drains() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    class Slow(LineHandler):
        async def line_received(self, line: bytes) -> None:
            started.set()
            await release.wait()
            self.send_line(b"finished")

    async with open_runtime(handle_signals=False, drain_timeout=10) as rt:
        server = serve(Slow, "tcp://127.0.0.1:0")
        await server.start()
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"go\r\n")
        await asyncio.wait_for(started.wait(), 5)
        shutdown = rt.shutdown("test")
        for _ in range(100):
            if not server.is_serving():
                break
            await asyncio.sleep(0)
        assert not server.is_serving()
        release.set()
        assert await asyncio.wait_for(r.readline(), 5) == b"finished\r\n"
        assert await asyncio.wait_for(r.read(), 5) == b""
        await close(w)
        await shutdown
    assert server.statistics().connections == 0


async def test_statistics_count_bytes_frames_and_totals() -> None:
    async with serve(Echo, "tcp://127.0.0.1:0") as server:
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            await roundtrip(r, w, b"12345")
            await close(w)
        for h in server.connections():
            await h.wait_closed()
        stats = server.statistics()
    assert stats.total_connections == 3
    assert stats.connections == 0
    assert stats.bytes_in == stats.bytes_out == 21
    assert stats.frames == 3
    assert stats.errors == 0
    with pytest.raises(AttributeError):
        stats.connections = 5  # type: ignore[misc]


def test_server_type_is_exported() -> None:
    assert isinstance(serve(Echo, "tcp://127.0.0.1:0"), Server)
    assert issubclass(Echo, Handler)


# -- running out of file descriptors ----------------------------------------------------

_EMFILE_CHILD = textwrap.dedent(
    """
    import asyncio, os, resource, sys
    import anycore

    class Echo(anycore.LineHandler):
        def line_received(self, line):
            self.send_line(line)

    async def main():
        async with anycore.serve(Echo, "tcp://127.0.0.1:0") as server:
            used = len(os.listdir("/proc/self/fd"))
            # Room for only a few connections beyond what is open now.
            resource.setrlimit(resource.RLIMIT_NOFILE, (used + 3, used + 3))
            print("READY", server.port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            print("STATS", server.statistics().accept_errors, flush=True)

    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_accept_loop_survives_running_out_of_file_descriptors(loop_name: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_CHILD, loop_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        ready = proc.stdout.readline().split()
        assert ready[0] == "READY", proc.stderr.read() if proc.stderr else ""
        port = int(ready[1])
        # More clients than the server has descriptors for.
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
        # The early ones are served; the rest wait in the backlog.
        socks[0].sendall(b"one\r\n")
        assert socks[0].recv(100) == b"one\r\n"
        # Free descriptors: the server resumes accepting and serves the rest.
        for s in socks[:4]:
            s.close()
        for s in socks[4:]:
            s.sendall(b"later\r\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(100)
                assert chunk, "connection closed instead of served"
                data += chunk
            assert data == b"later\r\n"
        proc.stdin.write("\n")
        proc.stdin.flush()
        stats = proc.stdout.readline().split()
        assert stats[0] == "STATS"
        assert int(stats[1]) >= 1  # it did run out, and survived
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            err = proc.stderr.read()
            proc.stderr.close()
            assert "Traceback" not in err, err
        if proc.stdin:
            proc.stdin.close()


async def test_serve_forever_reports_started_to_a_task_group() -> None:
    import anyio

    async with anyio.create_task_group() as tg:
        server = await tg.start(serve(Echo, "tcp://127.0.0.1:0").serve_forever)
        assert isinstance(server, Server)
        assert server.is_serving()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await roundtrip(reader, writer, b"started")
        await close(writer)
        tg.cancel_scope.cancel()
    assert not server.is_serving()


def test_task_status_and_handler_context_manager_on_trio() -> None:
    import anyio

    import anycore

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            server = await tg.start(serve(Echo, "tcp://127.0.0.1:0").serve_forever)
            async with await anycore.connect(f"tcp://127.0.0.1:{server.port}", Echo) as client:
                assert not client.is_closing()
            assert client.is_closing()
            tg.cancel_scope.cancel()
        assert not server.is_serving()

    anyio.run(main, backend="trio")
