"""Baseline: the RESP server as a bare uvloop asyncio.Protocol (the ceiling for Python).

It runs exactly the parser and command table of examples/resp_kv.py, with the
lean loop anycore's handler layer is measured against: per read batch, feed the
parser, execute every complete command, write the replies once.

    python benchmarks/_baselines/resp_raw.py --port 0   # prints READY tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import uvloop

from resp_kv import OK, Commands, RespError, RespParser, Store, error


class RawResp(asyncio.Protocol):
    def __init__(self, commands: Commands) -> None:
        self.execute = commands.execute
        self.parser = RespParser()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        parser.feed(data)
        execute = self.execute
        out: list[bytes] = []
        transport = self.transport
        assert transport is not None
        try:
            while (args := parser.next_command()) is not None:
                if args[0] in (b"QUIT", b"quit"):
                    out.append(OK)
                    transport.write(b"".join(out))
                    transport.close()
                    return
                out.append(execute(args))
        except RespError as exc:
            out.append(error(f"ERR Protocol error: {exc}"))
            transport.write(b"".join(out))
            transport.close()
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    commands = Commands(Store())
    server = await loop.create_server(lambda: RawResp(commands), host, port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"READY tcp://{host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    uvloop.run(main(a.host, a.port))
