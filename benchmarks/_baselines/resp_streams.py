"""Baseline: the RESP server written the usual way with asyncio streams (on uvloop).

Same parser semantics and command table as examples/resp_kv.py, but shaped as
stream code is usually written: ``readline`` / ``readexactly`` per request, then
``write`` + ``await drain()`` per reply.

    python benchmarks/_baselines/resp_streams.py --port 0   # prints READY tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import uvloop

from resp_kv import OK, Commands, Store, error


def make_handler(commands: Commands):  # type: ignore[no-untyped-def]
    execute = commands.execute

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line[:1] == b"*":
                    args = []
                    for _ in range(int(line[1:-2])):
                        header = await reader.readline()
                        if header[:1] != b"$":
                            raise ValueError("expected '$'")
                        data = await reader.readexactly(int(header[1:-2]) + 2)
                        args.append(data[:-2])
                else:
                    args = line.split()
                    if not args:
                        continue
                if args[0] in (b"QUIT", b"quit"):
                    writer.write(OK)
                    break
                writer.write(execute(args))
                await writer.drain()
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.write(error(f"ERR Protocol error: {exc}"))
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(make_handler(Commands(Store())), host, port, backlog=1024)
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
