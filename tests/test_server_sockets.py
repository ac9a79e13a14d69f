"""serve(..., sockets=[...]): already-bound listening sockets (``--fd``, systemd
socket activation, a unix socket bound by the ``--workers`` parent) served beside
the endpoints.  Real loopback sockets, asyncio and uvloop."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from anycore import Endpoint, LineHandler, serve
from anycore.errors import EndpointError, LoopUnavailable


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg: bytes) -> None:
    try:
        writer.write(msg + b"\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == msg + b"\r\n"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def bound_tcp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound, not listening: the server listens
    return sock


async def test_a_bound_socket_alone_is_served_and_closed_with_the_server() -> None:
    sock = bound_tcp()
    port = sock.getsockname()[1]
    async with serve(Echo, sockets=[sock]) as server:
        assert server.endpoints == [Endpoint("tcp", host="127.0.0.1", port=port)]
        await echo_once(*await asyncio.open_connection("127.0.0.1", port), b"inherited")
    assert sock.fileno() == -1  # the server took it over and closed it


async def test_sockets_beside_endpoints_and_the_unix_file_is_left(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    async with serve(Echo, "tcp://127.0.0.1:0", sockets=[unix]) as server:
        tcp_ep, unix_ep = server.endpoints
        assert unix_ep == Endpoint("unix", path=path)
        assert tcp_ep.port
        await echo_once(*await asyncio.open_connection("127.0.0.1", tcp_ep.port), b"tcp")
        await echo_once(*await asyncio.open_unix_connection(path), b"unix")
    assert unix.fileno() == -1
    # Whoever bound the socket owns its file: the server does not unlink it.
    assert Path(path).is_socket()


def test_a_datagram_socket_is_refused_before_anything_starts() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        pytest.raises(EndpointError, match="not a stream socket"),
    ):
        serve(Echo, sockets=[udp])
    with pytest.raises(EndpointError, match="at least one endpoint or socket"):
        serve(Echo)


async def test_the_portable_engine_refuses_sockets_and_closes_them() -> None:
    sock = bound_tcp()
    with pytest.raises(LoopUnavailable, match="asyncio engine"):
        async with serve(Echo, sockets=[sock], portable=True):
            pass  # pragma: no cover - never entered
    assert sock.fileno() == -1


async def test_a_failed_start_does_not_leak_the_sockets() -> None:
    taken = bound_tcp()
    taken.listen(1)
    sock = bound_tcp()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            async with serve(Echo, f"tcp://127.0.0.1:{port}", sockets=[sock]):
                pass  # pragma: no cover - never entered
        assert sock.fileno() == -1
    finally:
        taken.close()
