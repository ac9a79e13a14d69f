"""TLS: ssl contexts and cert files, mutual TLS, handshake timeout, STARTTLS."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from anycore import LineHandler, connect, serve
from anycore.errors import ConnectError


@dataclass
class Pki:
    ca: trustme.CA
    server: ssl.SSLContext
    client: ssl.SSLContext
    ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    ca_file = tmp_path / "ca.pem"
    cert_file = tmp_path / "cert.pem"
    key_file = tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return Pki(ca, server, client, ca_file, cert_file, key_file)


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        tls = b"tls" if self.get_extra_info("ssl_object") is not None else b"plain"
        self.send_line(line + b":" + tls)


class Collector(LineHandler):
    def __init__(self) -> None:
        self.lines: asyncio.Queue[bytes] = asyncio.Queue(10)

    async def line_received(self, line: bytes) -> None:
        await self.lines.put(line)


async def ask(h: Collector, line: bytes) -> bytes:
    h.send_line(line)
    return await asyncio.wait_for(h.lines.get(), 5)


async def test_tls_with_an_ssl_context(pki: Pki) -> None:
    async with serve(Echo, "tls://127.0.0.1:0", ssl=pki.server) as server:
        h = await connect(
            f"tls://127.0.0.1:{server.port}", Collector, ssl=pki.client, server_hostname="localhost"
        )
        assert await ask(h, b"hello") == b"hello:tls"
        h.close()
        await h.wait_closed()


async def test_tls_endpoint_with_cert_files(pki: Pki) -> None:
    ep = f"tls://127.0.0.1:0?cert={pki.cert_file}&key={pki.key_file}"
    async with serve(Echo, ep) as server:
        assert server.endpoints[0].option("cert") == str(pki.cert_file)
        h = await connect(f"tls://localhost:{server.port}?ca={pki.ca_file}", Collector)
        assert await ask(h, b"files") == b"files:tls"
        h.close()
        await h.wait_closed()


async def test_untrusted_server_certificate_is_a_connect_error(pki: Pki) -> None:
    async with serve(Echo, "tls://127.0.0.1:0", ssl=pki.server) as server:
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            # The system trust store does not know the test CA.
            await connect(f"tls://localhost:{server.port}", Collector, retries=3)


async def test_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    pki.server.verify_mode = ssl.CERT_REQUIRED
    pki.ca.configure_trust(pki.server)
    seen: list[object] = []

    class WhoAreYou(LineHandler):
        def line_received(self, line: bytes) -> None:
            cert = self.get_extra_info("peercert")
            seen.append(cert)
            self.send_line(b"hello " + line)

    async with serve(WhoAreYou, "tls://127.0.0.1:0", ssl=pki.server) as server:
        # Without a client certificate the server ends the session.
        try:
            anon = await connect(
                f"tls://127.0.0.1:{server.port}",
                Collector,
                ssl=pki.client,
                server_hostname="localhost",
            )
        except ConnectError:
            pass
        else:
            anon.send_line(b"anon")
            await asyncio.wait_for(anon.wait_closed(), 5)
            assert anon.lines.empty()
        # With one it is served, and the handler sees who it is.
        client_cert = pki.ca.issue_cert("client@example.org")
        client_cert.configure_cert(pki.client)
        h = await connect(
            f"tls://127.0.0.1:{server.port}", Collector, ssl=pki.client, server_hostname="localhost"
        )
        assert await ask(h, b"me") == b"hello me"
        assert seen
        assert seen[-1]
        h.close()
        await h.wait_closed()


async def test_mutual_tls_from_endpoint_options(pki: Pki, tmp_path: Path) -> None:
    ep = f"tls://127.0.0.1:0?cert={pki.cert_file}&key={pki.key_file}&ca={pki.ca_file}"
    async with serve(Echo, ep) as server:
        client_cert = pki.ca.issue_cert("client")
        chain = tmp_path / "client.pem"
        client_cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
        h = await connect(f"tls://localhost:{server.port}?ca={pki.ca_file}&cert={chain}", Collector)
        assert await ask(h, b"m") == b"m:tls"
        h.close()
        await h.wait_closed()


async def test_handshake_timeout_closes_silent_clients(pki: Pki) -> None:
    async with serve(Echo, "tls://127.0.0.1:0", ssl=pki.server, handshake_timeout=0.3) as server:
        r, w = await asyncio.open_connection("127.0.0.1", server.port)  # never says hello
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        # The plain-text client does not stop the server from serving TLS.
        h = await connect(
            f"tls://127.0.0.1:{server.port}", Collector, ssl=pki.client, server_hostname="localhost"
        )
        assert await ask(h, b"ok") == b"ok:tls"
        h.close()
        await h.wait_closed()
        assert server.statistics().errors >= 1


async def test_tls_endpoint_without_certificate_is_refused() -> None:
    from anycore.errors import EndpointError

    with pytest.raises(EndpointError, match="cert"):
        async with serve(Echo, "tls://127.0.0.1:0"):
            pass


async def test_start_tls_upgrades_a_plain_connection(pki: Pki) -> None:
    class StartTlsServer(LineHandler):
        async def line_received(self, line: bytes) -> None:
            if line == b"STARTTLS":
                self.send_line(b"GO")
                await self.start_tls(pki.server, handshake_timeout=5)
            else:
                tls = b"tls" if self.get_extra_info("ssl_object") is not None else b"plain"
                self.send_line(line + b":" + tls)

    class StartTlsClient(Collector):
        async def line_received(self, line: bytes) -> None:
            if line == b"GO":
                await self.start_tls(pki.client, server_hostname="localhost")
                await self.lines.put(b"upgraded")
            else:
                await self.lines.put(line)

    async with serve(StartTlsServer, "tcp://127.0.0.1:0") as server:
        h = await connect(f"tcp://127.0.0.1:{server.port}", StartTlsClient)
        assert await ask(h, b"before") == b"before:plain"
        assert await ask(h, b"STARTTLS") == b"upgraded"
        assert h.get_extra_info("ssl_object") is not None
        assert await ask(h, b"after") == b"after:tls"
        h.close()
        await h.wait_closed()
