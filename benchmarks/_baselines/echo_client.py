"""Load generator for the echo benchmark (runs in its own process, on uvloop).

Each of --connections connections sends a --size byte message, waits for all of
it to come back, records the round-trip time and sends the next, for --seconds.
Prints one JSON line: messages, seconds, p50_ms, p99_ms, and its checks: bad
(echoed bytes that differ from what was sent, or more than was sent) and lost
(connections that ended before the client closed them).

Its limit: a Python client costs about as much CPU per message as a Python
server, so on a 2-core machine it saturates near the server's own rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvloop


class Client(asyncio.Protocol):
    def __init__(self, msg: bytes, latencies: list[float], state: dict[str, int]) -> None:
        self.msg = msg
        self.size = len(msg)
        self.latencies = latencies
        self.state = state
        self.got = 0
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        assert self.transport is not None
        self.got = 0
        self.sent_at = time.perf_counter()
        self.transport.write(self.msg)

    def data_received(self, data: bytes) -> None:
        got = self.got
        self.got = got + len(data)
        if data != self.msg[got : self.got]:  # not an echo of what was sent
            self.state["bad"] += 1
        if self.got >= self.size:
            self.latencies.append(time.perf_counter() - self.sent_at)
            if self.state["running"]:
                self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state["running"]:
            self.state["lost"] += 1


async def main(port: int, connections: int, size: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    msg = b"x" * size
    latencies: list[float] = []
    state = {"running": 1, "bad": 0, "lost": 0}
    clients = []
    for _ in range(connections):
        _, proto = await loop.create_connection(
            lambda: Client(msg, latencies, state), "127.0.0.1", port
        )
        clients.append(proto)
    # Warm up briefly, then measure.
    for c in clients:
        c.send()
    await asyncio.sleep(min(0.5, seconds / 4))
    latencies.clear()
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    done = len(latencies)
    state["running"] = 0
    lat = sorted(latencies[:done])
    for c in clients:
        assert c.transport is not None
        c.transport.close()
    print(
        json.dumps(
            {
                "messages": done,
                "seconds": elapsed,
                "p50_ms": lat[len(lat) // 2] * 1000 if lat else 0.0,
                "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else 0.0,
                "bad": state["bad"],
                "lost": state["lost"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    uvloop.run(main(a.port, a.connections, a.size, a.seconds))
