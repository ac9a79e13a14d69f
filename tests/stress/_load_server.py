"""The server of the 10,000-connection load test: one line in, the line out.

Usage: python _load_server.py asyncio|uvloop
Prints ``port N`` once listening, then serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import resource
import sys

from anycore import LineHandler, serve


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


async def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 10_512), hard))
    async with serve(Echo, "tcp://127.0.0.1:0", backlog=4096) as server:
        print(f"port {server.port}", flush=True)
        loop = asyncio.get_running_loop()
        # Until the test closes our stdin (a thread waits on the blocking read).
        await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    if sys.argv[1] == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
