"""sockets: the TCP time server and its client.

Classic: ``s = socket.socket(); s.bind(("", 8037)); s.listen(5)``, then
``while True: c, addr = s.accept(); c.send(time.ctime().encode()); c.close()``
- one client at a time, the loop blocked in ``accept``; the client
``connect``s and ``recv``s until the server closes.  Changed: a Handler
class answers each connection as it is made; ``anycore.serve`` accepts
concurrently, with limits and a graceful drain; the client is
``anycore.connect`` with a deadline.

    python examples/classic/socket_time_tcp.py
"""

from __future__ import annotations

import time

import anycore


class TimeServer(anycore.Handler):
    def connection_made(self) -> None:
        self.send(time.ctime().encode() + b"\r\n")
        self.close()


class TimeClient(anycore.RawHandler):
    def __init__(self) -> None:
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data[:1024]


async def main() -> None:
    async with anycore.serve(TimeServer, "tcp://127.0.0.1:0") as server:
        for _ in range(2):
            with anycore.fail_after(5):
                client = await anycore.connect(f"tcp://127.0.0.1:{server.port}", TimeClient)
                await client.wait_closed()
            print("the time is", client.received.decode().strip())


if __name__ == "__main__":
    anycore.run(main)
