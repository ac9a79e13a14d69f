"""sockets: the time server over UDP.

Classic: ``s = socket.socket(AF_INET, SOCK_DGRAM); s.bind(...)``, then
``while True: data, addr = s.recvfrom(1024); s.sendto(time.ctime().encode(),
addr)``; the client ``sendto``s an empty datagram and ``recvfrom``s the
answer (and hangs for ever if either datagram is lost).  Changed: a
DatagramHandler per socket; the client retries under a deadline.

    python examples/classic/socket_time_udp.py
"""

from __future__ import annotations

import time

import anycore


class TimeServer(anycore.DatagramHandler):
    max_datagram_size = 512

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.sendto(time.ctime().encode(), addr)


async def ask(endpoint: str) -> str:
    async with anycore.open_datagram_endpoint(endpoint) as ep:
        for _attempt in range(3):
            ep.send(b"?")  # (some loops cannot send an empty datagram)
            with anycore.move_on_after(1.0):
                data, _addr = await ep.receive()
                return data.decode()
    raise TimeoutError(f"no answer from {endpoint}")


async def main() -> None:
    async with anycore.serve_datagram(TimeServer, "udp://127.0.0.1:0") as server:
        print("the time is", await ask(str(server.endpoints[0])))


if __name__ == "__main__":
    anycore.run(main)
