"""A client process of the load test: opens N connections and holds them.

Usage: python _load_client.py PORT N
Raises its soft RLIMIT_NOFILE, connects N sockets, prints ``connected N``,
waits for a line on stdin, then sends one request on every connection, reads
every answer, and prints ``answered K``.
"""

from __future__ import annotations

import asyncio
import resource
import sys


async def main(port: int, count: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for start in range(0, count, 250):
        batch = [asyncio.open_connection("127.0.0.1", port) for _ in range(min(250, count - start))]
        conns.extend(await asyncio.gather(*batch))
    print(f"connected {len(conns)}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)

    async def ask(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        request = b"request %d\r\n" % i
        writer.write(request)
        return await reader.readline() == request

    answers = await asyncio.wait_for(
        asyncio.gather(*(ask(i, r, w) for i, (r, w) in enumerate(conns))), 120
    )
    print(f"answered {sum(answers)}", flush=True)
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
