"""The portable driver: the same Handler classes on anyio byte streams, on the
trio backend (sync tests calling trio.run) and on asyncio with portable=True."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import trio
import trustme

from anycore import FixedSizeHandler, Handler, LineHandler, connect, serve
from anycore._net._framing import FixedSizeFramer
from anycore._net._handler import connection_context
from anycore.errors import ConnectError


def on_trio(fn: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        with anyio.fail_after(30):
            await fn()

    trio.run(main)


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


class AsyncEcho(LineHandler):
    async def line_received(self, line: bytes) -> None:
        await anyio.sleep(0)
        self.send_line(line)


async def readline(stream: anyio.abc.ByteStream, buf: bytearray) -> bytes:
    while b"\n" not in buf:
        chunk = await stream.receive()
        buf += chunk
    i = buf.index(b"\n") + 1
    line = bytes(buf[:i])
    del buf[:i]
    return line


async def read_all(stream: anyio.abc.ByteStream) -> bytes:
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return data


async def echo_works(port: int) -> None:
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(b"ping\r\n")
        assert await readline(s, bytearray()) == b"ping\r\n"


@pytest.mark.parametrize("cls", [Echo, AsyncEcho])
def test_trio_pipelined_lines_in_order(cls: type[LineHandler]) -> None:
    async def main() -> None:
        async with serve(cls, "tcp://127.0.0.1:0") as server:
            assert server.port != 0
            async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
                lines = [b"n%d\r\n" % i for i in range(300)]
                await s.send(b"".join(lines))
                buf = bytearray()
                assert [await readline(s, buf) for _ in lines] == lines
            stats = server.statistics()
            assert stats.total_connections == 1

    on_trio(main)


def test_trio_framer_switch_mid_stream() -> None:
    class Switching(LineHandler):
        async def frame_received(self, frame: bytes) -> None:
            if isinstance(self.framer, FixedSizeFramer):
                self.send_line(b"blob:" + frame.replace(b"\r\n", b"|"))
                self.set_framer(self.make_framer())
            elif frame.startswith(b"BLOB "):
                self.set_framer(FixedSizeFramer(int(frame[5:])))
            else:
                self.send_line(b"line:" + frame)

    async def main() -> None:
        async with serve(Switching, "tcp://127.0.0.1:0") as server:
            s = await anyio.connect_tcp("127.0.0.1", server.port)
            await s.send(b"one\r\nBLOB 8\r\nab\r\ncd\r\ntwo\r\n")
            buf = bytearray()
            got = [await readline(s, buf) for _ in range(3)]
            assert got == [b"line:one\r\n", b"blob:ab|cd|\r\n", b"line:two\r\n"]
            await s.aclose()

    on_trio(main)


def test_trio_bad_input_ends_only_that_connection() -> None:
    class Small(Echo):
        max_line_length = 100

    class Picky(Echo):
        def line_received(self, line: bytes) -> None:
            if line == b"boom":
                raise ValueError("boom")
            self.send_line(line)

    async def main() -> None:
        async with serve(Small, "tcp://127.0.0.1:0") as server:
            async with await anyio.connect_tcp("127.0.0.1", server.port) as bad:
                await bad.send(b"x" * 1000)
                assert await read_all(bad) == b""
            await echo_works(server.port)
            assert server.statistics().errors == 1
        async with serve(Picky, "tcp://127.0.0.1:0") as server:
            async with await anyio.connect_tcp("127.0.0.1", server.port) as bad:
                await bad.send(b"fine\r\nboom\r\nlost\r\n")
                assert await read_all(bad) == b"fine\r\n"
            await echo_works(server.port)
            assert server.statistics().errors == 1

    on_trio(main)


def test_trio_half_close_gets_replies_then_incomplete_frame_is_closed() -> None:
    async def main() -> None:
        for cls in (Echo, AsyncEcho):
            async with serve(cls, "tcp://127.0.0.1:0") as server:
                async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
                    await s.send(b"a\r\nb\r\npartial")
                    await s.send_eof()
                    assert await read_all(s) == b"a\r\nb\r\n"
                await echo_works(server.port)

    on_trio(main)


def test_trio_reset_cancels_the_async_handler_then_lost_once() -> None:
    events: list[str] = []

    async def main() -> None:
        started = anyio.Event()
        lost = anyio.Event()

        class Stuck(LineHandler):
            async def line_received(self, line: bytes) -> None:
                started.set()
                try:
                    await anyio.sleep_forever()
                except anyio.get_cancelled_exc_class():
                    events.append("cancelled")
                    raise

            def connection_lost(self, exc: BaseException | None) -> None:
                events.append("lost")
                lost.set()

        async with serve(Stuck, "tcp://127.0.0.1:0") as server:
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", server.port))
            await sock.send(b"hang\r\n")
            await started.wait()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            await lost.wait()

    on_trio(main)
    assert events == ["cancelled", "lost"]


def test_trio_graceful_close_waits_for_the_running_handler() -> None:
    async def main() -> None:
        started = anyio.Event()
        release = anyio.Event()

        class Slow(LineHandler):
            async def line_received(self, line: bytes) -> None:
                started.set()
                await release.wait()
                self.send_line(b"done")

        async def release_when_closing() -> None:
            for _ in range(10_000):
                if not server.is_serving():
                    break
                await anyio.sleep(0)
            release.set()

        server = serve(Slow, "tcp://127.0.0.1:0")
        async with anyio.create_task_group() as tg:
            await server.start()
            s = await anyio.connect_tcp("127.0.0.1", server.port)
            await s.send(b"job\r\n")
            await started.wait()
            tg.start_soon(release_when_closing)
            await server.aclose()  # waits for the handler, then closes
            assert release.is_set()
            assert await read_all(s) == b"done\r\n"
            await s.aclose()
        assert not server.is_serving()
        assert server.statistics().connections == 0

    on_trio(main)


def test_trio_max_connections_refuse() -> None:
    class Greeter(Echo):
        def connection_made(self) -> None:
            self.send_line(b"hi")

    async def main() -> None:
        async with serve(Greeter, "tcp://127.0.0.1:0", max_connections=1) as server:
            first = await anyio.connect_tcp("127.0.0.1", server.port)
            assert await readline(first, bytearray()) == b"hi\r\n"
            second = await anyio.connect_tcp("127.0.0.1", server.port)
            assert await read_all(second) == b""
            assert server.statistics().refused == 1
            await second.aclose()
            await first.aclose()

    on_trio(main)


def test_trio_connect_and_context() -> None:
    seen: list[Any] = []

    class Ctx(Echo):
        def line_received(self, line: bytes) -> None:
            seen.append(connection_context.get())
            self.send_line(line)

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[bytes](10)

        class Client(LineHandler):
            async def line_received(self, line: bytes) -> None:
                await send.send(line)

        async with serve(Ctx, "tcp://127.0.0.1:0") as server:
            h = await connect(f"tcp://127.0.0.1:{server.port}", Client)
            h.send_line(b"over trio")
            with anyio.fail_after(5):
                assert await receive.receive() == b"over trio"
            h.close()
            await h.wait_closed()
            with pytest.raises(ConnectError):
                await connect("tcp://127.0.0.1:1", Client, retries=1, backoff=0.01)
        send.close()
        receive.close()

    on_trio(main)
    assert seen
    assert seen[0]["peer"].startswith("127.0.0.1:")


def test_trio_tls(tmp_path: Any) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    class TlsEcho(LineHandler):
        def line_received(self, line: bytes) -> None:
            tls = self.get_extra_info("ssl_object") is not None
            self.send_line(line + (b":tls" if tls else b":plain"))

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[bytes](10)

        class Client(LineHandler):
            async def line_received(self, line: bytes) -> None:
                await send.send(line)

        async with serve(TlsEcho, "tls://127.0.0.1:0", ssl=server_ctx) as server:
            h = await connect(
                f"tls://127.0.0.1:{server.port}",
                Client,
                ssl=client_ctx,
                server_hostname="localhost",
            )
            h.send_line(b"secret")
            with anyio.fail_after(5):
                assert await receive.receive() == b"secret:tls"
            h.close()
            await h.wait_closed()
        send.close()
        receive.close()

    on_trio(main)


def test_trio_fixed_size_records_and_backpressure() -> None:
    class Records(FixedSizeHandler):
        record_size = 4
        max_queued_frames = 2

        async def frame_received(self, frame: bytes) -> None:
            await anyio.sleep(0)
            self.send(frame[::-1])

    async def main() -> None:
        async with serve(Records, "tcp://127.0.0.1:0") as server:
            async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
                payload = b"abcd" * 5000
                async with anyio.create_task_group() as tg:
                    tg.start_soon(s.send, payload)
                    got = b""
                    while len(got) < len(payload):
                        got += await s.receive()
                assert got == b"dcba" * 5000
            handlers: list[Handler] = server.connections()
            assert handlers == [] or handlers[0].statistics().queued_frames <= 2

    on_trio(main)


async def test_portable_driver_on_asyncio() -> None:
    async with serve(AsyncEcho, "tcp://127.0.0.1:0", portable=True) as server:
        assert server.is_serving()
        async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
            await s.send(b"x\r\ny\r\n")
            buf = bytearray()
            assert await readline(s, buf) == b"x\r\n"
            assert await readline(s, buf) == b"y\r\n"
        h = await connect(f"tcp://127.0.0.1:{server.port}", Echo, portable=True)
        assert h.transport is None
        h.close()
        await h.wait_closed()


# -- backend detection without sniffio ---------------------------------------------


def test_current_backend_names_the_running_library() -> None:
    from anycore._core._backend import current_backend, running_on_asyncio

    async def on_trio_task() -> tuple[str, bool]:
        return current_backend(), running_on_asyncio()

    assert trio.run(on_trio_task) == ("trio", False)
    assert anyio.run(on_trio_task, backend="asyncio") == ("asyncio", True)
    with pytest.raises(RuntimeError):
        current_backend()  # no loop at all


def test_serve_and_connect_work_without_sniffio() -> None:
    """sniffio is not a runtime dependency: with its import blocked (so trio, which
    needs it, is absent too) serve() and connect() pick the asyncio path."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['sniffio'] = None\n"  # any 'import sniffio' now fails
        "import anyio\n"
        "from anycore import LineHandler, connect, serve\n"
        "class Echo(LineHandler):\n"
        "    def line_received(self, line):\n"
        "        self.send_line(line)\n"
        "class Client(LineHandler):\n"
        "    def connection_made(self):\n"
        "        self.got = anyio.Event()\n"
        "    def line_received(self, line):\n"
        "        self.line = line\n"
        "        self.got.set()\n"
        "async def main():\n"
        "    with anyio.fail_after(20):\n"
        "        async with serve(Echo, 'tcp://127.0.0.1:0') as server:\n"
        "            client = await connect(server.endpoints[0], Client)\n"
        "            client.send_line(b'hi')\n"
        "            await client.got.wait()\n"
        "            client.close()\n"
        "            assert client.line == b'hi'\n"
        "anyio.run(main, backend='asyncio')\n"
        "print('OK')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"


# -- scopes: entered and left in the same task (issue 11) ----------------------


async def serve_forever_stopped_from_outside(portable: bool | None) -> list[str]:
    """serve_forever() ended by move_on_after, then by a task-group cancel,
    with a client connected; every scope must unwind cleanly."""
    lost: list[str] = []

    class Tracked(Echo):
        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append("lost")

    with anyio.move_on_after(0.5) as timeout:
        async with serve(Tracked, "tcp://127.0.0.1:0", portable=portable) as server:
            port = server.endpoints[0].port
            assert port is not None
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                await client.send(b"hi\n")
                assert await readline(client, bytearray()) == b"hi\n"
                await server.serve_forever()
    assert timeout.cancelled_caught

    started = anyio.Event()

    async def run_server() -> None:
        async with serve(Tracked, "tcp://127.0.0.1:0", portable=portable) as server:
            started.set()
            await server.serve_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_server)
        await started.wait()
        tg.cancel_scope.cancel()
    return lost


def test_trio_serve_forever_cancelled_by_move_on_after_and_task_group() -> None:
    # Failed with trio's "Cancel scope stack corrupted": the engine's task group
    # was entered in start() and left by hand in aclose(), inside another scope.
    lost: list[str] = []

    async def main() -> None:
        lost.extend(await serve_forever_stopped_from_outside(None))

    anyio.run(main, backend="trio")
    assert lost == ["lost"]


@pytest.mark.parametrize("portable", [True, False])
def test_asyncio_through_anyio_serve_forever_cancelled(portable: bool) -> None:
    lost: list[str] = []

    async def main() -> None:
        lost.extend(await serve_forever_stopped_from_outside(portable))

    anyio.run(main, backend="asyncio")
    assert lost == ["lost"]


def test_trio_server_closed_by_aclose_from_another_task() -> None:
    async def main() -> None:
        server = serve(Echo, "tcp://127.0.0.1:0", drain_timeout=60)
        await server.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve_forever)
            await echo_works(server.endpoints[0].port or 0)
            # Not the task that started it, while serve_forever's own aclose
            # runs too: both must see the connection end (no drain deadline).
            with anyio.fail_after(10):
                await server.aclose()
        assert not server.is_serving()

    on_trio(main)
