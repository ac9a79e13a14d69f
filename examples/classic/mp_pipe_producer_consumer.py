"""multiprocessing: producer and consumer over a pipe, unused ends closed, end of data.

Classic: ``reader, writer = Pipe(duplex=False)``; the consumer process
closes its copy of the writing end (else it would never see EOF), reads
until ``EOFError``; the producer sends, then closes.  Changed: the same
discipline with ``anycore.Pipe``: the parent awaits its sends, the end of
data is ``PeerClosed`` (an EOFError), and every end is an async context
manager.

    python examples/classic/mp_pipe_producer_consumer.py
"""

from __future__ import annotations

import anycore


async def consumer(reader: anycore.Connection, writer: anycore.Connection) -> list[str]:
    writer.close()  # our copy of the writing end: close it, or EOF never comes
    got = []
    async with reader:
        while True:
            try:
                got.append(await reader.recv())
            except EOFError:  # anycore.PeerClosed: every writer closed
                return got


async def main() -> None:
    reader, writer = anycore.Pipe(duplex=False)
    async with anycore.ChildProcess(consumer, reader, writer) as child:
        reader.close()  # the child has its own copy: close the unused end here
        async with writer:
            for word in ("spam", "eggs", "ham"):
                await writer.send(word)
        print("consumer received:", await child.result(timeout=30))


if __name__ == "__main__":
    anycore.run(main)
