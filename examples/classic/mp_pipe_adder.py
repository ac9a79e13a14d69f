"""multiprocessing: a request/response adder server over a duplex pipe.

Classic: ``parent, child = Pipe()``; the server process loops ``a, b =
conn.recv(); conn.send(a + b)`` until EOF; the client sends pairs and
receives sums.  Changed: ``anycore.Pipe()`` ends are async (the server is a
coroutine in the child; the parent's loop is free while it waits).

    python examples/classic/mp_pipe_adder.py
"""

from __future__ import annotations

import anycore


async def adder(conn: anycore.Connection) -> int:
    served = 0
    async with conn:
        while True:
            try:
                a, b = await conn.recv()
            except EOFError:
                return served
            await conn.send(a + b)
            served += 1


async def main() -> None:
    mine, theirs = anycore.Pipe()
    async with anycore.ChildProcess(adder, theirs) as server:
        theirs.close()
        async with mine:
            for a, b in [(1, 2), (20, 22), (0.5, 0.25)]:
                await mine.send((a, b))
                print(f"{a} + {b} = {await mine.recv()}")
        print("the server answered", await server.result(timeout=30), "requests")


if __name__ == "__main__":
    anycore.run(main)
