"""multiprocessing: an authenticated listener/client adder server.

Classic: ``Listener(("localhost", 6000), authkey=b"secret")``, ``conn =
listener.accept()``, then ``conn.recv()`` / ``conn.send()`` in a loop; the
client is ``Client(address, authkey=b"secret")``.  One client at a time,
blocking.  Changed: ``anycore.Listener`` accepts in a loop and serves each
client in its own task; the HMAC handshake completes before anything is
unpickled; wire-compatible with the standard library's Client.

    python examples/classic/mp_listener_adder.py
"""

from __future__ import annotations

import os

import anyio

import anycore


async def serve(listener: anycore.Listener, clients: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(add_for, await listener.accept())


async def add_for(conn: anycore.Connection) -> None:
    async with conn:
        while True:
            try:
                a, b = await conn.recv()
            except EOFError:
                return
            await conn.send(a + b)


async def main() -> None:
    authkey = os.urandom(16)
    async with (
        anycore.Listener(("127.0.0.1", 0), authkey=authkey) as listener,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(serve, listener, 2)
        for name in ("first", "second"):
            async with anycore.Client(listener.address, authkey=authkey) as conn:
                await conn.send((2, 3) if name == "first" else (40, 2))
                print(f"{name} client got", await conn.recv())
    print("done")


if __name__ == "__main__":
    anycore.run(main)
