"""Unix datagram sockets: unixgram:///path servers and endpoints."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import pytest

import anycore
from anycore import EndpointError


class Echo(anycore.DatagramHandler):
    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.sendto(b"echo:" + data, addr)


async def test_a_unixgram_server_answers_an_endpoint_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    async with anycore.serve_datagram(Echo, f"unixgram://{path}") as server:
        assert [str(e) for e in server.endpoints] == [f"unixgram://{path}"]
        async with anycore.open_datagram_endpoint(f"unixgram://{path}") as ep:
            for word in (b"one", b"two"):
                ep.send(word)
                with anyio.fail_after(10):
                    data, addr = await ep.receive()
                assert data == b"echo:" + word
                assert addr == (str(path),)
            client_path = ep.local_address[0]
            assert os.path.exists(client_path)
        assert not os.path.exists(client_path)  # the endpoint's own socket is gone
        assert server.statistics().datagrams_received == 2
    assert not path.exists()


async def test_a_plain_socket_client_talks_to_the_server(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    me = tmp_path / "me.sock"
    async with anycore.serve_datagram(Echo, f"unixgram://{path}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(me))
            sock.settimeout(10)
            sock.sendto(b"hello", str(path))
            data = await anyio.to_thread.run_sync(sock.recv, 100)
    assert data == b"echo:hello"


async def test_a_stale_socket_file_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody is bound to it
    async with anycore.serve_datagram(Echo, f"unixgram://{path}"):
        with pytest.raises(OSError, match="in use"):
            async with anycore.serve_datagram(Echo, f"unixgram://{path}"):
                pass
    regular = tmp_path / "regular"
    regular.write_text("not a socket")
    with pytest.raises(EndpointError, match="not a socket"):
        async with anycore.serve_datagram(Echo, f"unixgram://{regular}"):
            pass
    assert regular.read_text() == "not a socket"


def test_unixgram_on_trio(tmp_path: Path) -> None:
    path = tmp_path / "trio.sock"

    async def main() -> bytes:
        async with (
            anycore.serve_datagram(Echo, f"unixgram://{path}"),
            anycore.open_datagram_endpoint(f"unixgram://{path}") as ep,
        ):
            ep.send(b"trio")
            with anyio.fail_after(10):
                data, _addr = await ep.receive()
            return data

    assert anyio.run(main, backend="trio") == b"echo:trio"


def test_the_endpoint_string() -> None:
    ep = anycore.parse_endpoint("unixgram:///run/app.sock")
    assert (ep.scheme, ep.path, ep.is_stream) == ("unixgram", "/run/app.sock", False)
    assert str(ep) == "unixgram:///run/app.sock"
    with pytest.raises(EndpointError, match="missing socket path"):
        anycore.parse_endpoint("unixgram://")
