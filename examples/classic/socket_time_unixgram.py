"""sockets: the time server over a Unix datagram socket.

Classic: ``s = socket.socket(AF_UNIX, SOCK_DGRAM); s.bind("/tmp/time.sock")``
and a ``recvfrom`` / ``sendto`` loop; the client must bind a path of its own
to get an answer, and someone has to remove both socket files afterwards.
Changed: ``anycore.serve_datagram(..., "unixgram:///path")`` - the same
DatagramHandler as for UDP; the endpoint binds a private path for replies,
and both files are removed when their blocks end.

    python examples/classic/socket_time_unixgram.py
"""

from __future__ import annotations

import os
import tempfile
import time

import anycore


class TimeServer(anycore.DatagramHandler):
    max_datagram_size = 512

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.sendto(time.ctime().encode(), addr)


def removed(path: str) -> bool:
    return not os.path.exists(path)


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "time.sock")
        async with (
            anycore.serve_datagram(TimeServer, f"unixgram://{path}") as server,
            anycore.open_datagram_endpoint(f"unixgram://{path}") as ep,
        ):
            print("serving on", server.endpoints[0].scheme + "://.../time.sock")
            ep.send(b"?")
            with anycore.fail_after(5):
                data, _addr = await ep.receive()
            print("the time is", data.decode())
        print("socket file removed:", removed(path))


if __name__ == "__main__":
    anycore.run(main)
