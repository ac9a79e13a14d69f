"""Tests for anycore's Pipe / Connection / Listener / Client / wait_connections.

Real sockets, pipes and processes throughout; the standard library's
multiprocessing.connection runs on the other end (in a thread or a child) for
the wire-compatibility tests.
"""

from __future__ import annotations

import array
import contextlib
import multiprocessing
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any

import anyio
import pytest

from anycore import ChildProcess
from anycore._messaging._connection import (
    Client,
    Connection,
    JsonCodec,
    Listener,
    Pipe,
    _create_response,
    wait_connections,
)
from anycore.errors import (
    AuthenticationError,
    BrokenError,
    BufferTooShort,
    ClosedError,
    FrameTooLarge,
    IncompleteFrame,
    InsecureListener,
    PeerClosed,
    RemoteProtocolError,
    UndecodableMessage,
)

sys.path.insert(0, str(Path(__file__).parent))
import _messaging_children as children

KEY = b"sesame"


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@contextlib.contextmanager
def no_fd_leak() -> Iterator[None]:
    """No socket or pipe fd opened inside the block is left open after it."""
    before = open_fds()
    yield
    leaked = {fd for fd in open_fds() - before if _exists(fd)}
    kinds = {os.readlink(f"/proc/self/fd/{fd}").split(":")[0] for fd in leaked}
    assert not kinds & {"socket", "pipe"}, f"leaked fds: {kinds}"


def _exists(fd: int) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return True


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "unpickled"


# -- Pipe and Connection -------------------------------------------------------------


async def test_pipe_objects_bytes_and_buffers_both_ways() -> None:
    a, b = Pipe()
    with no_fd_leak():
        await _objects_bytes_and_buffers(a, b)


async def _objects_bytes_and_buffers(a: Connection, b: Connection) -> None:
    async with a, b:
        await a.send({"n": 1, "t": (1, 2)})
        assert await b.recv() == {"n": 1, "t": (1, 2)}
        await b.send_bytes(b"hello world", 6, 5)
        assert await a.recv_bytes() == b"world"
        await a.send_bytes(array.array("i", [1, 2, 3]))
        out = array.array("i", [0, 0, 0, 0])
        assert await b.recv_bytes_into(out, 4) == 12
        assert out.tolist() == [0, 1, 2, 3]
        await a.send_bytes(b"")
        assert await b.recv_bytes() == b""
        await a.send_bytes(b"too long for it")
        small = bytearray(4)
        with pytest.raises(BufferTooShort) as info:
            await b.recv_bytes_into(small)
        assert info.value.args[0] == b"too long for it"
        with pytest.raises(ValueError):
            await a.send_bytes(b"abc", 2, 5)


async def test_large_messages_in_both_directions_at_once() -> None:
    a, b = Pipe()
    big = os.urandom(3 << 20)
    async with a, b, anyio.create_task_group() as tg:
        tg.start_soon(a.send_bytes, big)
        tg.start_soon(b.send_bytes, big[::-1])
        assert await b.recv_bytes() == big
        assert await a.recv_bytes() == big[::-1]


async def test_simplex_pipe_has_a_reader_and_a_writer() -> None:
    r, w = Pipe(duplex=False)
    async with r, w:
        assert (r.readable, r.writable, w.readable, w.writable) == (True, False, False, True)
        await w.send([1, 2])
        assert await r.recv() == [1, 2]
        with pytest.raises(ClosedError):
            await r.send(1)
        with pytest.raises(ClosedError):
            await w.recv()
        w.close()
        with pytest.raises(PeerClosed):
            await r.recv()


async def test_peer_close_is_eof_then_broken_on_send() -> None:
    a, b = Pipe()
    async with a:
        await b.send("last")
        b.close()
        assert await a.recv() == "last"
        with pytest.raises(PeerClosed) as info:
            await a.recv()
        assert isinstance(info.value, EOFError)
        assert isinstance(info.value, anyio.EndOfStream)
        assert await a.poll()  # EOF counts as readable, as in multiprocessing
        with pytest.raises(BrokenError):
            await fill_until_broken(a)
    with pytest.raises(ClosedError):
        await a.recv()
    with pytest.raises(ClosedError):
        a.fileno()


async def fill_until_broken(conn: Connection) -> None:
    for _ in range(100):  # the first writes may still land in the socket buffer
        await conn.send_bytes(b"x" * 65536)


async def test_close_wakes_a_waiting_receiver() -> None:
    a, b = Pipe()
    got: list[BaseException] = []

    async def receive() -> None:
        try:
            await a.recv()
        except ClosedError as exc:
            got.append(exc)

    async with b, anyio.create_task_group() as tg:
        tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        a.close()
    assert len(got) == 1


async def test_poll_looks_waits_and_times_out() -> None:
    a, b = Pipe()
    async with a, b:
        assert not await a.poll()
        assert not await a.poll(0.05)
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.send, 1)
            assert await a.poll(None)
        assert await a.poll()
        assert await a.recv() == 1
        assert not await a.poll()


async def test_wait_connections_returns_the_ready_ones() -> None:
    a1, b1 = Pipe()
    a2, b2 = Pipe()
    async with a1, b1, a2, b2:
        assert await wait_connections([a1, a2], timeout=0.05) == []
        async with anyio.create_task_group() as tg:
            tg.start_soon(b2.send, "x")
            assert await wait_connections([a1, a2]) == [a2]
        # A recv in another task and wait_connections share the fd's reader.
        async with anyio.create_task_group() as tg:
            tg.start_soon(a1.recv)
            await anyio.wait_all_tasks_blocked()
            ready = await wait_connections([a1, a2], timeout=1)
            assert ready == [a2]
            await b1.send("y")
        r, w = os.pipe()
        try:
            os.write(w, b"!")
            assert await wait_connections([a1, r], timeout=1) == [r]
        finally:
            os.close(r)
            os.close(w)


async def test_wait_connections_sees_a_pending_client_on_a_listener() -> None:
    async with Listener() as listener:
        assert await wait_connections([listener], timeout=0.05) == []
        with socket.create_connection(tcp(listener)):
            assert await wait_connections([listener], timeout=5) == [listener]
            async with await listener.accept():
                pass


async def test_message_over_the_limit_is_refused_before_allocation() -> None:
    mine, raw = socket.socketpair()
    conn = Connection(mine.detach(), max_message_size=1 << 20)
    with raw, conn:
        # A 1 TiB announcement: allocating it would raise MemoryError; reading
        # it would hang.  It must be refused at once.
        raw.sendall(struct.pack("!i", -1) + struct.pack("!Q", 1 << 40))
        with pytest.raises(FrameTooLarge) as info:
            await conn.recv_bytes()
        assert info.value.size == 1 << 40
        assert conn.closed
    a, b = Pipe()
    async with a, b:
        await a.send_bytes(b"x" * 100)
        with pytest.raises(FrameTooLarge):
            await b.recv_bytes(maxlength=10)


async def test_extended_length_header_and_torn_or_negative_frames() -> None:
    mine, raw = socket.socketpair()
    conn = Connection(mine.detach())
    with raw, conn:
        raw.sendall(struct.pack("!i", -1) + struct.pack("!Q", 5) + b"hello")
        assert await conn.recv_bytes() == b"hello"
        raw.sendall(struct.pack("!i", -7))
        with pytest.raises(RemoteProtocolError):
            await conn.recv_bytes()
        assert conn.closed
    mine, raw = socket.socketpair()
    conn = Connection(mine.detach())
    with conn:
        raw.sendall(struct.pack("!i", 10) + b"abc")
        raw.close()
        with pytest.raises(IncompleteFrame):
            await conn.recv_bytes()


async def test_garbage_body_is_a_clear_error_and_framing_survives() -> None:
    a, b = Pipe()
    async with a, b:
        await a.send_bytes(b"\x80\x05not a pickle")
        with pytest.raises(UndecodableMessage):
            await b.recv()
        await a.send("fine")
        assert await b.recv() == "fine"


async def test_cancelled_recv_keeps_the_half_read_message() -> None:
    mine, raw = socket.socketpair()
    conn = Connection(mine.detach())
    body = os.urandom(1 << 20)
    frame = struct.pack("!i", len(body)) + body
    with raw, conn:
        raw.setblocking(False)
        sent = raw.send(frame[: len(frame) // 2])
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.recv_bytes)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        raw.setblocking(True)
        async with anyio.create_task_group() as tg:
            rest = frame[sent:]
            tg.start_soon(anyio.to_thread.run_sync, lambda: raw.sendall(rest))
            assert await conn.recv_bytes() == body


async def test_send_cancelled_mid_message_breaks_the_connection() -> None:
    a, b = Pipe()
    async with a, b:
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.send_bytes, b"x" * (32 << 20))  # far beyond the socket buffer
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        with pytest.raises(BrokenError, match="half-way"):
            await a.send("more")


async def test_codecs_json_and_msgpack() -> None:
    for codec in ("json", "msgpack", JsonCodec()):
        a, b = Pipe(codec=codec)
        async with a, b:
            await a.send({"a": [1, 2.5, "x", None]})
            assert await b.recv() == {"a": [1, 2.5, "x", None]}
    with pytest.raises(ValueError, match="unknown codec"):
        Pipe(codec="yaml")  # type: ignore[arg-type]


async def test_connection_handed_to_a_child_process() -> None:
    await _hand_to_child()  # starts the forkserver and multiprocessing's fd sharer
    with no_fd_leak():
        await _hand_to_child()


async def _hand_to_child() -> None:
    mine, theirs = Pipe()
    async with mine, ChildProcess(children.echo_until_eof, theirs, daemon=False) as child:
        theirs.close()
        for item in [1, "two", {"three": 3}, b"\x00" * 100_000]:
            await mine.send(item)
            assert await mine.recv() == item
        mine.close()
        assert await child.result(timeout=20) == 4


async def test_connection_handed_to_multiprocessing_and_stdlib_connection() -> None:
    mine, theirs = Pipe()
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=children.stdlib_echo_bytes, args=(theirs,))
    async with mine:
        proc.start()
        theirs.close()
        await mine.send_bytes(b"abc")
        assert await mine.recv_bytes() == b"cba"
        big = os.urandom(1 << 20)
        await mine.send_bytes(big)
        assert await mine.recv_bytes() == big[::-1]
    await anyio.to_thread.run_sync(proc.join, 20)
    assert proc.exitcode == 0


# -- wire compatibility with multiprocessing.connection ------------------------------


@pytest.fixture(params=["tcp", "unix"])
def address(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "tcp":
        yield ("127.0.0.1", 0)
    else:
        with tempfile.TemporaryDirectory() as d:
            yield os.path.join(d, "l.sock")


@pytest.mark.parametrize("authkey", [None, KEY], ids=["open", "authkey"])
async def test_stdlib_client_to_anycore_listener(address: Any, authkey: bytes | None) -> None:
    async with Listener(address, authkey=authkey) as listener:

        def stdlib_side() -> Any:
            with mpc.Client(listener.address, authkey=authkey) as c:
                c.send(("hello", 1))
                c.send_bytes(b"x" * 100_000)
                return c.recv()

        async with anyio.create_task_group() as tg:
            result: list[Any] = []

            async def run_client() -> None:
                result.append(await anyio.to_thread.run_sync(stdlib_side))

            tg.start_soon(run_client)
            async with await listener.accept() as conn:
                assert await conn.recv() == ("hello", 1)
                assert await conn.recv_bytes() == b"x" * 100_000
                await conn.send({"ok": True})
        assert result == [{"ok": True}]
    if isinstance(address, str):
        assert not os.path.exists(address)  # the socket file is removed


@pytest.mark.parametrize("authkey", [None, KEY], ids=["open", "authkey"])
async def test_anycore_client_to_stdlib_listener(address: Any, authkey: bytes | None) -> None:
    with mpc.Listener(address, authkey=authkey) as listener:

        def stdlib_side() -> None:
            with listener.accept() as c:
                c.send(c.recv() * 2)
                c.send_bytes(c.recv_bytes()[::-1])

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, stdlib_side)
            async with Client(listener.address, authkey=authkey) as conn:
                await conn.send(21)
                assert await conn.recv() == 42
                await conn.send_bytes(b"abc" * 10_000)
                assert await conn.recv_bytes() == (b"abc" * 10_000)[::-1]


async def test_anycore_both_sides_use_the_modern_sha256_handshake() -> None:
    assert _create_response(KEY, b"{sha256}" + b"r" * 40).startswith(b"{sha256}")
    assert len(_create_response(KEY, b"r" * 20)) == 16  # a legacy challenge: raw md5
    async with Listener(authkey=KEY) as listener, anyio.create_task_group() as tg:

        async def client() -> None:
            async with Client(listener.address, authkey=KEY) as c:
                await c.send("hi")

        tg.start_soon(client)
        async with await listener.accept() as conn:
            assert await conn.recv() == "hi"


# -- authentication failures and bad input -------------------------------------------


def tcp(listener: Listener) -> tuple[str, int]:
    address = listener.address
    assert isinstance(address, tuple)
    return address


async def accept_outcome(listener: Listener) -> Any:
    try:
        conn = await listener.accept()
    except Exception as exc:
        return exc
    return conn


async def test_wrong_authkey_fails_on_both_sides() -> None:
    async with Listener(authkey=KEY) as listener:
        outcome: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def server() -> None:
                outcome.append(await accept_outcome(listener))

            tg.start_soon(server)
            with pytest.raises(AuthenticationError):
                await Client(listener.address, authkey=b"wrong")
        assert isinstance(outcome[0], AuthenticationError)

        # ... and the stdlib client with a wrong key also fails on both sides.
        def stdlib_side() -> None:
            mpc.Client(listener.address, authkey=b"wrong")

        async with anyio.create_task_group() as tg:
            tg.start_soon(server)
            with pytest.raises(multiprocessing.AuthenticationError):
                await anyio.to_thread.run_sync(stdlib_side)
        assert isinstance(outcome[1], AuthenticationError)


async def test_nothing_is_unpickled_before_authentication(marker: Path) -> None:
    payload = pickle.dumps(children.Marker(str(marker)))
    pickle.loads(payload)  # the marker works ...
    assert marker.exists()
    marker.unlink()
    async with Listener(authkey=KEY) as listener:
        # An attacker that answers the challenge with a pickle.
        with socket.create_connection(tcp(listener)) as raw:
            raw.sendall(struct.pack("!i", len(payload)) + payload)
            with pytest.raises(AuthenticationError):
                await listener.accept()
        # A malicious server that sends a pickle instead of a challenge.
        evil = socket.create_server(("127.0.0.1", 0))
        with evil:
            async with anyio.create_task_group() as tg:

                def serve_pickle() -> None:
                    s, _ = evil.accept()
                    with s:
                        s.sendall(struct.pack("!i", len(payload)) + payload)
                        s.recv(1)  # until the client hangs up

                tg.start_soon(anyio.to_thread.run_sync, serve_pickle)
                with pytest.raises(AuthenticationError):
                    await Client(evil.getsockname(), authkey=KEY)
    assert not marker.exists()  # ... and nothing unpickled it


async def test_garbage_closes_that_connection_and_the_listener_keeps_serving() -> None:
    async with Listener(authkey=KEY, handshake_timeout=5) as listener:
        with socket.create_connection(tcp(listener)) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(AuthenticationError, match="handshake message"):
                await listener.accept()
            assert raw.recv(1 << 16)  # it got the challenge ...
            assert raw.recv(1) == b""  # ... and then it was disconnected
        async with anyio.create_task_group() as tg:

            async def good_client() -> None:
                async with Client(listener.address, authkey=KEY) as c:
                    await c.send("still serving")

            tg.start_soon(good_client)
            async with await listener.accept() as conn:
                assert await conn.recv() == "still serving"


async def test_a_silent_peer_times_out_in_the_handshake() -> None:
    async with Listener(authkey=KEY, handshake_timeout=0.2) as listener:
        with (
            socket.create_connection(tcp(listener)),
            pytest.raises(AuthenticationError, match="did not finish"),
        ):
            await listener.accept()


async def test_non_loopback_listener_needs_an_authkey() -> None:
    with pytest.raises(InsecureListener, match="authkey"):
        Listener(("0.0.0.0", 0))
    with pytest.raises(InsecureListener, match="pickle"):
        Listener(("0.0.0.0", 0), allow_unauthenticated=True)
    async with Listener(("0.0.0.0", 0), allow_unauthenticated=True, codec="json"):
        pass
    async with Listener(("0.0.0.0", 0), authkey=KEY):
        pass
    async with Listener(("localhost", 0)):
        pass
    with pytest.raises(TypeError):
        Listener(authkey="text")  # type: ignore[arg-type]


async def test_json_listener_and_client() -> None:
    with no_fd_leak():
        await _json_pair()


async def _json_pair() -> None:
    async with Listener(codec="json", authkey=KEY) as listener, anyio.create_task_group() as tg:

        async def client() -> None:
            async with Client(listener.address, authkey=KEY, codec="json") as c:
                await c.send({"q": [1, 2]})
                assert await c.recv() == 3

        tg.start_soon(client)
        async with await listener.accept() as conn:
            msg = await conn.recv()
            await conn.send(sum(msg["q"]))
    with pytest.raises(ClosedError):
        await listener.accept()


# -- the example -------------------------------------------------------------------


def test_messaging_adder_example() -> None:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / "messaging_adder.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "anycore client: 20 + 22 = 42" in out
    assert "stdlib client: [123, 0]" in out
    assert "wrong key: digest sent was rejected" in out
    assert "refused a peer: digest received was wrong" in out
    assert out.rstrip().endswith("server served 2 client(s)\ndone")


async def test_default_unix_listener_lives_in_a_private_directory() -> None:
    async with Listener(family="AF_UNIX") as listener:
        path = listener.address
        assert isinstance(path, str)
        directory = os.path.dirname(path)
        assert os.stat(directory).st_mode & 0o077 == 0  # only we can reach it
        async with anyio.create_task_group() as tg:

            async def client() -> None:
                async with Client(path) as c:
                    await c.send("over unix")

            tg.start_soon(client)
            async with await listener.accept() as conn:
                assert await conn.recv() == "over unix"
    assert not os.path.exists(directory)


async def test_poll_and_wait_work_on_fd_numbers_past_1024() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 2100:
        pytest.skip(f"RLIMIT_NOFILE is {soft}")
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 2050)
    a.close()
    conn = Connection(high)
    with conn, b:
        assert not await conn.poll()  # select() would fail (or lie) on fd 2050
        b.sendall(struct.pack("!i", 2) + b"hi")
        assert await conn.poll(5)
        assert await wait_connections([conn], timeout=5) == [conn]
        assert await conn.recv_bytes() == b"hi"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 4096, 70_000])
async def test_frames_arriving_in_any_split(chunk: int) -> None:
    messages = [b"", b"a", b"hello" * 10, b"tail"]
    if chunk >= 4096:  # a body past the 64 KiB read chunk, piece by piece
        messages.insert(3, os.urandom(100_000))
    wire = b"".join(struct.pack("!i", len(m)) + m for m in messages)
    wire += struct.pack("!i", -1) + struct.pack("!Q", 3) + b"ext"  # the extended header
    mine, raw = socket.socketpair()
    conn = Connection(mine.detach())

    async def trickle() -> None:
        for i in range(0, len(wire), chunk):
            raw.sendall(wire[i : i + chunk])  # fits the socket buffer: never blocks
            await anyio.lowlevel.checkpoint()  # the reader sees each piece alone

    with raw, conn:
        async with anyio.create_task_group() as tg:
            tg.start_soon(trickle)
            got = [await conn.recv_bytes() for _ in range(len(messages) + 1)]
    assert got == [*messages, b"ext"]


async def test_abstract_unix_address_and_bytes_path(tmp_path: Path) -> None:
    for address in ("\0anycore-test-" + os.urandom(4).hex(), os.fsencode(tmp_path / "b.sock")):
        async with Listener(address) as listener, anyio.create_task_group() as tg:

            async def client() -> None:
                async with Client(listener.address) as c:
                    await c.send(1)

            tg.start_soon(client)
            async with await listener.accept() as conn:
                assert await conn.recv() == 1
    assert not (tmp_path / "b.sock").exists()


async def test_concurrent_senders_and_receivers_take_turns() -> None:
    a, b = Pipe()
    big = os.urandom(300_000)  # longer than the socket buffer: senders must queue
    got: list[bytes] = []
    async with a, b:

        async def sender(i: int) -> None:
            await a.send_bytes(bytes([i]) + big)

        async def receiver() -> None:
            got.append(await b.recv_bytes())

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(receiver)
            for i in range(8):
                tg.start_soon(sender, i)
    assert sorted(m[0] for m in got) == list(range(8))
    assert all(m[1:] == big for m in got)


async def test_a_sender_cancelled_while_waiting_for_its_turn_gives_it_up() -> None:
    a, b = Pipe()
    async with a, b, anyio.create_task_group() as tg:
        tg.start_soon(a.send_bytes, b"x" * (8 << 20))  # holds the turn: nobody reads yet
        async with anyio.create_task_group() as waiting:
            waiting.start_soon(a.send, "never sent")
            await anyio.wait_all_tasks_blocked()
            waiting.cancel_scope.cancel()
        assert len(await b.recv_bytes()) == 8 << 20  # the first send completes ...
        await a.send("after")  # ... and the turn is free again
        assert await b.recv() == "after"


async def test_listener_serve_handshakes_each_peer_in_its_own_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[Any] = []

    async def handler(conn: Connection) -> None:
        msg = await conn.recv()
        if msg == "boom":
            raise RuntimeError("handler bug")
        handled.append(msg)
        await conn.send(msg * 2)

    async with Listener(authkey=KEY) as listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, handler)
        with socket.create_connection(tcp(listener)), anyio.fail_after(8):  # a silent peer ...
            async with Client(listener.address, authkey=KEY) as c:  # ... holds up nobody
                await c.send(21)
                assert await c.recv() == 42
            with pytest.raises(AuthenticationError):
                await Client(listener.address, authkey=b"wrong")
            async with Client(listener.address, authkey=KEY) as c:
                await c.send("boom")
                with pytest.raises(EOFError):  # the failing handler's connection closes
                    await c.recv()
            async with Client(listener.address, authkey=KEY) as c:  # still serving
                await c.send(1)
                assert await c.recv() == 2
        tg.cancel_scope.cancel()
    assert handled == [21, 1]
    messages = [r.getMessage() for r in caplog.records]
    assert any("refused a peer" in m for m in messages)
    assert any("the handler failed" in m for m in messages)
