"""The RESP example: parser, commands, bad input, and the real redis-cli / redis-benchmark."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, strategies as st

import anycore

ROOT = Path(__file__).resolve().parent.parent


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("resp_kv", ROOT / "examples" / "resp_kv.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["resp_kv"] = module
    spec.loader.exec_module(module)
    return module


resp: Any = _load_example()


def parse_all(chunks: list[bytes], **limits: int) -> list[list[bytes]]:
    parser = resp.RespParser(**limits)
    out: list[list[bytes]] = []
    for chunk in chunks:
        parser.feed(chunk)
        while (cmd := parser.next_command()) is not None:
            out.append(cmd)
    assert parser.buffered == 0
    return out


# -- the parser -----------------------------------------------------------------------


def test_multibulk_and_inline_and_pipelining() -> None:
    data = (
        resp.encode_command("SET", "k", "v")
        + b"PING\r\n"
        + resp.encode_command("GET", "k")
        + b"  ECHO   spaced  \n"
        + b"\r\n"  # empty inline lines are skipped
        + b"*0\r\n"  # and so are empty multibulks
        + resp.encode_command(b"SET", b"bin\r\n\x00", b"")
    )
    assert parse_all([data]) == [
        [b"SET", b"k", b"v"],
        [b"PING"],
        [b"GET", b"k"],
        [b"ECHO", b"spaced"],
        [b"SET", b"bin\r\n\x00", b""],
    ]


def test_one_byte_at_a_time() -> None:
    data = resp.encode_command("SET", "key", "x" * 300) + b"PING\r\n" + resp.encode_command("GET")
    assert parse_all([bytes([b]) for b in data]) == [
        [b"SET", b"key", b"x" * 300],
        [b"PING"],
        [b"GET"],
    ]


def test_large_bulk_in_many_pieces_is_collected_once() -> None:
    big = os.urandom(300_000)
    data = resp.encode_command("SET", "k", big) + resp.encode_command("PING")
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    assert parse_all(pieces) == [[b"SET", b"k", big], [b"PING"]]


args_st = st.lists(st.binary(max_size=40), min_size=1, max_size=6)
inline_st = st.lists(
    st.text(alphabet="abcXYZ019-_", min_size=1, max_size=8).map(str.encode), min_size=1, max_size=4
)
command_st = st.one_of(
    args_st.map(lambda a: (a, resp.encode_command(*a))),
    inline_st.map(lambda a: (a, b" ".join(a) + b"\r\n")),
)


@given(st.lists(command_st, min_size=1, max_size=12), st.data())
def test_any_split_yields_the_same_commands(
    commands: list[tuple[list[bytes], bytes]], data: st.DataObject
) -> None:
    stream = b"".join(encoded for _, encoded in commands)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream) // 2 + 1)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert parse_all(chunks) == [args for args, _ in commands]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*2\r\n$3\r\nGET\r\n:5\r\n", "expected '$', got ':'"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$3\r\nGETxx", "not followed by CRLF"),
        (b"*1\r\n$99999999999\r\n", "invalid bulk length"),
        (b"*99999999999\r\n", "invalid multibulk length"),
        (b"*" + b"9" * 40, "invalid multibulk length"),
        (b"*1\r\n$" + b"9" * 40, "invalid bulk length"),
        (b"A" * 70_000, "too big inline request"),
        # redis's string2ll: digits only (Python's int() takes all of these).
        (b"*1\r\n$ 4\r\nPING\r\n", "invalid bulk length"),
        (b"*1\r\n$+4\r\nPING\r\n", "invalid bulk length"),
        (b"*1\r\n$4_0\r\n", "invalid bulk length"),
        (b"*1\r\n$04\r\nPING\r\n", "invalid bulk length"),
        (b"*1\r\n$\r\n", "invalid bulk length"),
        (b"* 1\r\n", "invalid multibulk length"),
        (b"*+1\r\n", "invalid multibulk length"),
        (b"*1_0\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b'SET "quoted value"\r\n', "quoted inline"),
    ],
)
def test_malformed_input(data: bytes, message: str) -> None:
    parser = resp.RespParser()
    parser.feed(data)
    with pytest.raises(resp.RespError, match=re.escape(message)):
        parser.next_command()
    assert isinstance(resp.RespError("x"), anycore.RemoteProtocolError)


def test_limits_are_configurable() -> None:
    with pytest.raises(resp.RespError):
        parse_all([resp.encode_command("SET", "k", "x" * 11)], max_bulk=10)
    with pytest.raises(resp.RespError):
        parse_all([resp.encode_command(*["a"] * 5)], max_args=4)
    with pytest.raises(resp.RespError):
        parse_all([b"PING " + b"x" * 20 + b"\r\n"], max_inline=10)
    assert parse_all([resp.encode_command("SET", "k", "x" * 10)], max_bulk=10)


def test_one_command_and_the_query_buffer_are_bounded() -> None:
    # Each argument counts its bytes plus 48: three of 400 pass 1000 only at
    # the third header, refused before its bytes arrive.
    parser = resp.RespParser(max_command=1000)
    parser.feed(b"*3\r\n$400\r\n" + b"a" * 400 + b"\r\n$400\r\n" + b"b" * 400 + b"\r\n")
    assert parser.next_command() is None
    parser.feed(b"$400\r\n")
    with pytest.raises(resp.RespError, match="command larger than the 1000 byte limit"):
        parser.next_command()
    # The same for a large bulk collected in pieces.
    parser = resp.RespParser(max_command=200_000)
    parser.feed(b"*2\r\n$100000\r\n" + b"a" * 1000)
    assert parser.next_command() is None
    parser.feed(b"a" * 99_000 + b"\r\n$100000\r\n")
    with pytest.raises(resp.RespError, match="byte limit"):
        parser.next_command()
    # Unparsed input beyond max_query_buffer.
    parser = resp.RespParser(max_query_buffer=1000)
    parser.feed(b"*2\r\n$500\r\n" + b"a" * 400)
    assert parser.next_command() is None
    with pytest.raises(resp.RespError, match="client query buffer limit"):
        parser.feed(b"a" * 700)
    assert parse_all([b"*-1\r\n*0\r\nPING\r\n"]) == [[b"PING"]]
    defaults = resp.RespParser()
    assert defaults.max_bulk == defaults.max_command == 64 * 1024 * 1024
    assert defaults.max_query_buffer == 128 * 1024 * 1024


# -- the commands ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def run(clock: FakeClock) -> Any:
    commands = resp.Commands(resp.Store(clock=clock, max_keys=5))

    def run(*args: str | bytes) -> bytes:
        return bytes(commands.execute([a if isinstance(a, bytes) else a.encode() for a in args]))

    return run


def test_commands(run: Any, clock: FakeClock) -> None:
    assert run("PING") == b"+PONG\r\n"
    assert run("ping", "hi") == b"$2\r\nhi\r\n"
    assert run("ECHO", "x y") == b"$3\r\nx y\r\n"
    assert run("GET", "k") == b"$-1\r\n"
    assert run("SET", "k", "v") == b"+OK\r\n"
    assert run("GET", "k") == b"$1\r\nv\r\n"
    assert run("SET", "k", "w", "NX") == b"$-1\r\n"
    assert run("SET", "n", "w", "XX") == b"$-1\r\n"
    assert run("SET", "k", "w", "XX") == b"+OK\r\n"
    assert run("EXISTS", "k", "n", "k") == b":2\r\n"
    assert run("INCR", "c") == b":1\r\n"
    assert run("INCR", "c") == b":2\r\n"
    assert run("INCR", "k") == b"-ERR value is not an integer or out of range\r\n"
    assert run("MGET", "k", "n", "c") == b"*3\r\n$1\r\nw\r\n$-1\r\n$1\r\n2\r\n"
    assert run("DEL", "k", "n", "c") == b":2\r\n"
    assert run("TTL", "k") == b":-2\r\n"
    assert run("CONFIG", "GET", "save") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert run("CONFIG", "GET", "maxmemory") == b"*0\r\n"
    assert run("COMMAND", "DOCS") == b"*0\r\n"
    assert run("NOPE", "a").startswith(b"-ERR unknown command 'NOPE'")
    assert run("GET").startswith(b"-ERR wrong number of arguments")
    assert run("SET", "k", "v", "BOGUS") == b"-ERR syntax error\r\n"


def test_expiry(run: Any, clock: FakeClock) -> None:
    assert run("SET", "a", "1", "EX", "10") == b"+OK\r\n"
    assert run("SET", "b", "1", "PX", "1500") == b"+OK\r\n"
    assert run("SET", "c", "1") == b"+OK\r\n"
    assert run("TTL", "a") == b":10\r\n"
    assert run("PTTL", "b") == b":1500\r\n"
    assert run("TTL", "c") == b":-1\r\n"
    assert run("EXPIRE", "c", "5") == b":1\r\n"
    assert run("EXPIRE", "missing", "5") == b":0\r\n"
    assert run("SET", "d", "1", "EX", "0") == b"-ERR invalid expire time in 'set' command\r\n"
    assert run("SET", "d", "1", "EX", "x") == b"-ERR value is not an integer or out of range\r\n"
    clock.now += 2
    assert run("GET", "b") == b"$-1\r\n"
    assert run("TTL", "a") == b":8\r\n"
    clock.now += 5
    assert run("EXISTS", "a", "c") == b":1\r\n"
    clock.now += 5
    assert run("GET", "a") == b"$-1\r\n"
    assert run("SET", "c", "2") == b"+OK\r\n"  # SET clears a TTL
    assert run("TTL", "c") == b":-1\r\n"


def test_store_is_bounded(run: Any) -> None:
    for i in range(5):
        assert run("SET", f"k{i}", "v") == b"+OK\r\n"
    assert run("SET", "k5", "v").startswith(b"-OOM")
    assert run("INCR", "k6").startswith(b"-OOM")
    assert run("SET", "k1", "again") == b"+OK\r\n"  # existing keys can be replaced


# -- the server: bad input ends only that connection ---------------------------------------


async def _reply(reader: asyncio.StreamReader) -> object:
    return await asyncio.wait_for(resp.read_reply(reader), 10)


@pytest.fixture
async def server() -> Any:
    commands = resp.Commands(resp.Store())
    async with anycore.serve(
        resp.handler_factory(commands), "tcp://127.0.0.1:0", write_buffer_limit=4 * 1024 * 1024
    ) as srv:
        yield srv


async def _open(srv: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", srv.port)


async def _assert_served(srv: Any) -> None:
    reader, writer = await _open(srv)
    writer.write(resp.encode_command("SET", "alive", "yes") + resp.encode_command("GET", "alive"))
    assert await _reply(reader) == "OK"
    assert await _reply(reader) == b"yes"
    writer.close()
    await writer.wait_closed()


async def _expect_closed(reader: asyncio.StreamReader) -> None:
    assert await asyncio.wait_for(reader.read(), 10) == b""


@pytest.mark.parametrize(
    "garbage",
    [b"*2\r\n$3\r\nGET\r\n+what\r\n", b"*x\r\n", b"*1\r\n$99999999999\r\n"],
    ids=["not-a-bulk", "bad-count", "oversized-bulk"],
)
async def test_malformed_request_ends_only_that_connection(
    server: Any, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    other_r, other_w = await _open(server)
    other_w.write(resp.encode_command("PING"))
    assert await _reply(other_r) == "PONG"

    reader, writer = await _open(server)
    writer.write(resp.encode_command("PING") + garbage)
    assert await _reply(reader) == "PONG"  # what came before the garbage is answered
    err = await _reply(reader)
    assert isinstance(err, RuntimeError)
    assert str(err).startswith("ERR Protocol error")
    await _expect_closed(reader)
    writer.close()
    assert re.search(r"connection \d+: malformed input from the peer: .*; closing it", caplog.text)
    assert server.statistics().errors == 1

    other_w.write(resp.encode_command("ECHO", "still here"))
    assert await _reply(other_r) == b"still here"
    other_w.close()
    await _assert_served(server)


async def test_peer_reset_mid_frame(server: Any) -> None:
    other_r, other_w = await _open(server)
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nonly part")
        for _ in range(200):  # let the server read the partial frame
            await asyncio.sleep(0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()  # with linger 0: a reset
    other_w.write(resp.encode_command("PING"))
    assert await _reply(other_r) == "PONG"
    other_w.close()
    await _assert_served(server)
    with anycore.fail_after(10):
        while server.statistics().connections:
            await asyncio.sleep(0.01)  # the OS delivers the reset: bounded poll


async def test_half_closed_client_gets_its_replies(server: Any) -> None:
    reader, writer = await _open(server)
    writer.write(resp.encode_command("SET", "h", "1") + resp.encode_command("INCR", "h"))
    writer.write_eof()
    assert await _reply(reader) == "OK"
    assert await _reply(reader) == 2
    await _expect_closed(reader)
    writer.close()


async def test_pipelined_gets_of_a_large_value_build_bounded_output(server: Any) -> None:
    """200 pipelined GETs of a 512 KiB value (5 KB of requests) to a client
    that does not read: the server stops running commands once its output
    passed write_high_water (before: every GET of the batch ran, 100 MiB
    built), serves everyone else, and answers every GET once the client reads."""
    setup_r, setup_w = await _open(server)
    setup_w.write(resp.encode_command("SET", "big", b"x" * 512 * 1024))
    assert await _reply(setup_r) == "OK"
    setup_w.close()

    reader, writer = await _open(server)
    writer.write(resp.encode_command("GET", "big") * 200)
    with anycore.fail_after(10):
        while not any(h.statistics().writing_paused for h in server.connections()):
            await asyncio.sleep(0.005)  # waiting on the OS's buffers: bounded poll
    (stats,) = [h.statistics() for h in server.connections() if h.statistics().writing_paused]
    # The kernel's loopback buffers take a few MiB; the rest was never built.
    assert stats.bytes_out < 16 * 512 * 1024
    assert stats.write_buffer_size < 2 * 512 * 1024
    await _assert_served(server)
    with anycore.fail_after(30):
        for _ in range(200):
            assert await resp.read_reply(reader) == b"x" * 512 * 1024
    assert server.statistics().errors == 0
    writer.close()
    await writer.wait_closed()


async def test_mget_reply_is_bounded() -> None:
    store = resp.Store()
    commands = resp.Commands(store, max_reply=1000)
    commands.execute([b"SET", b"v", b"x" * 400])
    assert commands.execute([b"MGET", b"v", b"v"]).startswith(b"*2\r\n")
    assert commands.execute([b"MGET", b"v", b"v", b"v"]) == (
        b"-ERR reply larger than 1000 bytes (max_reply)\r\n"
    )
    assert resp.Commands(store).max_reply == 64 * 1024 * 1024


async def test_quit(server: Any) -> None:
    reader, writer = await _open(server)
    writer.write(resp.encode_command("QUIT") + resp.encode_command("PING"))
    assert await _reply(reader) == "OK"
    await _expect_closed(reader)
    writer.close()


# -- the real redis-cli and redis-benchmark ------------------------------------------------


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{tool} is missing under CI=true (.ci/run installs redis-tools)")
        pytest.skip(f"{tool} not installed (apt-get install redis-tools)")
    return path


@pytest.fixture
def resp_server() -> Iterator[int]:
    """The example in serve mode, in its own process, on a free loopback port."""
    _require("redis-cli")  # skip (or fail under CI) before starting anything
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "resp_kv.py"), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        match = re.search(r"tcp://127\.0\.0\.1:(\d+)", line)
        assert match, f"no READY line: {line!r}"
        yield int(match.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err


def _cli(port: int, *args: str) -> str:
    out = subprocess.run(
        [_require("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout


@pytest.mark.needs_redis
def test_redis_cli(resp_server: int) -> None:
    port = resp_server
    assert _cli(port, "PING") == "PONG\n"
    assert _cli(port, "SET", "greeting", "hello world") == "OK\n"
    assert _cli(port, "GET", "greeting") == "hello world\n"
    assert _cli(port, "INCR", "n") == "1\n"
    assert _cli(port, "INCR", "n") == "2\n"
    assert _cli(port, "MGET", "greeting", "n", "missing") == "hello world\n2\n\n"
    assert _cli(port, "SET", "t", "x", "EX", "100") == "OK\n"
    assert _cli(port, "TTL", "t") == "100\n"
    assert _cli(port, "EXPIRE", "n", "50") == "1\n"
    assert _cli(port, "EXISTS", "greeting", "missing") == "1\n"
    assert _cli(port, "DEL", "greeting") == "1\n"
    assert _cli(port, "GET", "greeting") == "\n"
    assert "unknown command" in _cli(port, "NOSUCH")
    # Pipe mode: redis-cli --pipe sends a stream of commands and counts replies.
    data = b"".join(resp.encode_command("SET", f"k{i}", i) for i in range(500))
    piped = subprocess.run(
        [_require("redis-cli"), "-p", str(port), "--pipe"],
        input=data,
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert b"errors: 0, replies: 500" in piped.stdout
    assert _cli(port, "GET", "k499") == "499\n"


@pytest.mark.needs_redis
@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark(resp_server: int, pipeline: int) -> None:
    tool = _require("redis-benchmark")
    args = ["-h", "127.0.0.1", "-p", str(resp_server), "-t", "ping,set,get", "-n", "2000"]
    out = subprocess.run(
        [tool, *args, "-c", "10", "-P", str(pipeline), "--csv"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {
        line.split(",")[0].strip('"'): float(line.split(",")[1].strip('"'))
        for line in out.stdout.splitlines()[1:]
        if line.strip()
    }
    assert set(rows) == {"PING_INLINE", "PING_MBULK", "SET", "GET"}, out.stdout
    assert all(rps > 0 for rps in rows.values())
    assert "WARNING" not in out.stderr, out.stderr
    assert "Error" not in out.stdout + out.stderr


_fuzz_bytes = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [b"*", b"$", b"\r\n", b"*2\r\n", b"$3\r\n", b"$-1\r\n", b"GET", b"$ 4", b"$+4", b"$4_0"]
    ),
    st.builds(lambda n: b"$%d\r\n" % n, st.integers(-5, 1 << 40)),
    st.builds(lambda n: b"*%d\r\n" % n, st.integers(-5, 1 << 40)),
)


@given(st.lists(_fuzz_bytes, max_size=40))
def test_fuzzed_input_raises_only_resp_errors_and_stays_bounded(chunks: list[bytes]) -> None:
    parser = resp.RespParser(max_bulk=4096, max_command=8192, max_query_buffer=16384)
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (cmd := parser.next_command()) is not None:
                assert cmd
                assert all(isinstance(a, bytes) for a in cmd)
                assert sum(map(len, cmd)) <= 8192
            assert parser.buffered <= 16384 + 64
    except resp.RespError:
        pass
