"""The log receiver against hostile peers: small inputs must not buy big memory or a hang.

Records from the network are untrusted.  Each case sends a few hundred bytes
over a real TCP connection and checks that the receiver refuses (or bounds)
it and goes on serving the next, honest, record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from typing import Any

import anyio
import pytest

from anycore.errors import RemoteProtocolError
from anycore.logging import open_log_receiver
from anycore.logging._records import MAX_MESSAGE_SIZE, loads_record, safe_message


def _frame(d: dict[str, Any]) -> bytes:
    data = pickle.dumps(d, 2)
    return struct.pack(">L", len(data)) + data


def _record(msg: Any, args: Any = None, name: str = "hostile") -> dict[str, Any]:
    return {"name": name, "msg": msg, "args": args, "levelno": logging.WARNING}


def _self_nesting(levels: int) -> list[Any]:
    x: list[Any] = []
    for _ in range(levels):
        x = [x, x]
    return x


async def _send_then_honest(frames: list[bytes]) -> tuple[list[logging.LogRecord], int]:
    received: list[logging.LogRecord] = []
    got_honest = asyncio.Event()

    def on_record(record: logging.LogRecord) -> None:
        received.append(record)
        if record.getMessage() == "honest":
            got_honest.set()

    async with open_log_receiver(on_record=on_record) as rcv:
        host, port = rcv.addresses["tcp"]
        _reader, writer = await asyncio.open_connection(host, port)
        for frame in frames:
            writer.write(frame)
        writer.write(_frame(_record("honest")))
        await writer.drain()
        with anyio.fail_after(20):
            await got_honest.wait()
        writer.close()
        await writer.wait_closed()
        return received, rcv.rejected


async def test_a_self_nesting_list_is_refused_without_a_hang() -> None:
    frame = _frame(_record(_self_nesting(40)))
    assert len(frame) < 1_000  # a few hundred bytes: the attack's whole price
    received, rejected = await _send_then_honest([frame])
    assert rejected == 1
    assert [r.getMessage() for r in received] == ["honest"]


async def test_a_deep_structure_is_refused_without_recursion_errors() -> None:
    # 100,000 nested lists, built opcode by opcode (pickle.dumps would recurse).
    n = 100_000
    deep = b"\x80\x02}(X\x03\x00\x00\x00msg" + b"]" * (n + 1) + b"a" * n
    deep += b"X\x04\x00\x00\x00nameX\x01\x00\x00\x00xu."
    assert len(deep) < 250_000
    with pytest.raises(RemoteProtocolError, match="nested deeper"):
        loads_record(deep)
    with pytest.raises(RemoteProtocolError):
        loads_record(deep)
    received, rejected = await _send_then_honest([struct.pack(">L", len(deep)) + deep])
    assert rejected == 1
    assert [r.getMessage() for r in received] == ["honest"]


async def test_a_huge_width_is_not_formatted() -> None:
    frame = _frame(_record("%0200000000d", (1,)))
    received, rejected = await _send_then_honest([frame])
    assert rejected == 0
    message = received[0].getMessage()
    assert len(message) < 100
    assert message.startswith("%0200000000d")


async def test_a_long_message_is_cut() -> None:
    frame = _frame(_record("%s", ("z" * 500_000,)))
    received, _ = await _send_then_honest([frame])
    assert MAX_MESSAGE_SIZE <= len(received[0].getMessage()) < MAX_MESSAGE_SIZE + 100


def test_safe_message_keeps_the_stdlib_meaning_for_honest_records() -> None:
    assert safe_message("%d items for %s", (3, "ann")) == "3 items for ann"
    assert safe_message("%(n)05d", {"n": 7}) == "00007"
    assert safe_message("no args", None) == "no args"
    assert safe_message("%d", ("not a number",)) == "%d ('not a number',)"
    assert safe_message("%*d", (5, 1)) == "%*d (5, 1)"


def test_a_global_in_the_pickle_is_still_refused(tmp_path: Any) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    with pytest.raises(RemoteProtocolError, match="refusing to load global"):
        loads_record(pickle.dumps({"msg": Evil()}))
    assert not marker.exists()


_RECEIVER = textwrap.dedent(
    """
    import asyncio, logging, sys
    from anycore.logging import open_log_receiver

    def peak_rss_kib():
        # VmHWM belongs to this image (ru_maxrss would include the forked parent's).
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])

    async def main():
        got = asyncio.Event()
        def on_record(record):
            record.getMessage()
            if record.msg == "honest":
                got.set()
        async with open_log_receiver(on_record=on_record) as rcv:
            print(rcv.addresses["tcp"][1], flush=True)
            await asyncio.wait_for(got.wait(), 30)
        print("RSS", peak_rss_kib(), flush=True)

    asyncio.run(main())
    """
)


def test_the_width_attack_costs_the_receiver_no_memory() -> None:
    # In a process of its own, so that its peak RSS is the receiver's alone.
    proc = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(_frame(_record("%0200000000d", (1,))))
            sock.sendall(_frame(_record("honest")))
            out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rss_kib = int(out.split("RSS")[1])
    assert rss_kib < 200 * 1024  # the attack asked for ~200 MB of message
