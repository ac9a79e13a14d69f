"""An authenticated adder server over Listener / Client (multiprocessing's example).

    python examples/messaging_adder.py

The server listens on a loopback port with an authkey and serves every
client in its own task (``Listener.serve``: the handshake runs in that task
too, so a slow client holds up nobody): each message is a pair of numbers,
each answer their sum, until the client hangs up.  Then three clients talk
to it:

1. anycore's async ``Client`` with the right key;
2. the standard library's blocking ``multiprocessing.connection.Client`` (in a
   thread): the two are wire-compatible, handshake included;
3. a client with the wrong key, refused on both sides before anything it
   sent is decoded - the server carries on serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from functools import partial
from multiprocessing import connection as mp_connection

import anyio

from anycore import AuthenticationError, Client, Connection, Listener, PeerClosed


class Tally:
    """How many clients the server has finished with, and a wake-up at a count."""

    def __init__(self, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.reached = anyio.Event()

    def one_more(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.reached.set()


async def add_for(conn: Connection, served: Tally) -> None:
    """One authenticated client: sums until it hangs up (serve() then closes it)."""
    while True:
        try:
            a, b = await conn.recv()
        except PeerClosed:
            served.one_more()
            return
        await conn.send(a + b)


def stdlib_client(address: tuple[str, int], authkey: bytes) -> list[int]:
    """Runs in a thread: the standard library's blocking client."""
    with mp_connection.Client(address, authkey=authkey) as conn:
        answers = []
        for pair in [(100, 23), (-1, 1)]:
            conn.send(pair)
            answers.append(conn.recv())
        return answers


async def main() -> None:
    # serve() logs the clients it refuses; show those lines here.
    logging.basicConfig(level=logging.WARNING, format="server: %(message)s", stream=sys.stdout)
    authkey = os.urandom(16)
    served = Tally(expected=2)
    async with Listener(("127.0.0.1", 0), authkey=authkey) as listener:
        address = listener.address
        assert isinstance(address, tuple)
        print(f"adder listening on {address[0]}:{address[1]}")
        async with anyio.create_task_group() as tg:
            await tg.start(listener.serve, partial(add_for, served=served))

            async with Client(address, authkey=authkey) as conn:
                for a, b in [(1, 2), (20, 22), (0.5, 0.25)]:
                    await conn.send((a, b))
                    print(f"anycore client: {a} + {b} = {await conn.recv()}")

            answers = await anyio.to_thread.run_sync(stdlib_client, address, authkey)
            print(f"stdlib client: {answers}")

            try:
                await Client(address, authkey=b"not the key")
            except AuthenticationError as exc:
                print(f"wrong key: {exc}")

            with anyio.fail_after(10):  # the server saw both good clients leave
                await served.reached.wait()
            tg.cancel_scope.cancel()
    print(f"server served {served.count} client(s)")
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
