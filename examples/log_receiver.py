"""A log receiver for the stdlib's SocketHandler / DatagramHandler format.

Listens on TCP and UDP (loopback unless told otherwise), unpickles each
record with a restricted unpickler that builds plain dicts only (a pickle
naming any class or function is refused, so a client cannot run code here),
and hands it to the local logging setup - here, printed to stdout.

Self-demo (bounded: free ports, the stdlib's and anycore's senders, exit)::

    python examples/log_receiver.py

Serve until Ctrl-C / SIGTERM::

    python examples/log_receiver.py serve --tcp-port 9020 --udp-port 9021

and point a stdlib ``logging.handlers.SocketHandler("127.0.0.1", 9020)`` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import struct
import sys

import anycore
from anycore.logging import SocketHandler, StreamHandler, open_log_receiver


def setup_output() -> StreamHandler:
    """Print received records (and this process's own warnings) to stdout."""
    handler = StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


async def serve(host: str, tcp_port: int, udp_port: int) -> None:
    async with open_log_receiver(tcp=(host, tcp_port), udp=(host, udp_port)) as receiver:
        print("listening on", receiver.addresses, flush=True)
        await asyncio.Event().wait()  # until the runtime's shutdown cancels us


async def demo(output: StreamHandler) -> None:
    # The senders below live in this process too: hand received records
    # straight to the output handler rather than to the (sending) loggers.
    enough = asyncio.Event()

    def on_record(record: logging.LogRecord) -> None:
        output.handle(record)
        if record.getMessage().startswith("hello from anycore"):
            enough.set()

    async with open_log_receiver(udp=("127.0.0.1", 0), on_record=on_record) as receiver:
        tcp_host, tcp_port = receiver.addresses["tcp"]
        udp_host, udp_port = receiver.addresses["udp"]

        # The stdlib's senders block on I/O: run them off the loop.
        def stdlib_senders() -> None:
            lg = logging.getLogger("stdlib.sender")
            lg.propagate = False
            for handler in (
                logging.handlers.SocketHandler(tcp_host, tcp_port),
                logging.handlers.DatagramHandler(udp_host, udp_port),
            ):
                lg.addHandler(handler)
                lg.warning("hello from %s", type(handler).__name__)
                lg.removeHandler(handler)
                handler.close()

        await asyncio.to_thread(stdlib_senders)

        # anycore's sender runs on the loop.
        sender = SocketHandler(tcp_host, tcp_port)
        lg = logging.getLogger("anycore.sender")
        lg.propagate = False
        lg.addHandler(sender)
        lg.info("hello from anycore's SocketHandler")
        await sender.aflush()
        await sender.aclose()

        # A hostile client: a pickle that would call os.system when loaded.
        reader, writer = await asyncio.open_connection(tcp_host, tcp_port)
        evil = b"cos\nsystem\n(S'echo pwned'\ntR."
        writer.write(struct.pack(">L", len(evil)) + evil)
        await writer.drain()

        await asyncio.wait_for(enough.wait(), 10)
        # The receiver reads the frame before it sees our EOF and closes:
        # once read() returns b"", the frame was refused.
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
    await output.aflush()
    print(f"records received: {receiver.received}, refused: {receiver.rejected}")
    print("done")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    srv = sub.add_parser("serve", help="serve until interrupted")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--tcp-port", type=int, default=logging.handlers.DEFAULT_TCP_LOGGING_PORT)
    srv.add_argument("--udp-port", type=int, default=logging.handlers.DEFAULT_UDP_LOGGING_PORT)
    args = parser.parse_args(argv)
    output = setup_output()
    logging.getLogger("anycore.runtime").setLevel(logging.WARNING)  # keep it quiet
    if args.mode == "serve":
        try:
            anycore.run(serve, args.host, args.tcp_port, args.udp_port)
        except anycore.GracefulExit:
            pass
    else:
        anycore.run(demo, output)


if __name__ == "__main__":
    main()
