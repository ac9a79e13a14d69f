"""Console input without blocking the loop: an interactive chat client.

Classic: on Windows, ``msvcrt.kbhit()`` polled in a loop between socket
reads (``getch`` for the key), or a reader thread per input; elsewhere a
``select`` loop over stdin and the socket.  Changed: ``anycore.open_console``
reads stdin lines on the loop while the connection's handler prints what
arrives - two concurrent tasks, no thread, no polling.

    python examples/classic/console_chat.py                  # self-demo room with a bot
    python examples/classic/console_chat.py tcp://HOST:PORT  # join a running examples/chat.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import anycore

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for examples.chat

from examples.chat import ChatHandler


class Printer(anycore.TextLineHandler):
    """Our side of the connection: print every line the room sends."""

    def line_received(self, line: str) -> None:
        print(line, flush=True)


class Bot(anycore.TextLineHandler):
    """The self-demo's other member: answers what it hears."""

    def connection_made(self) -> None:
        self.send_line("bot")  # its nickname

    def line_received(self, line: str) -> None:
        if line.startswith("<"):
            self.send_line(f"I heard: {line}")


async def chat(endpoint: str) -> None:
    client = await anycore.connect(endpoint, Printer)
    async with client, anycore.open_console() as console:
        async for line in console:  # the loop keeps printing the room meanwhile
            client.send_line(line)
            if line == "/quit":
                break
        with anycore.move_on_after(5):
            await client.wait_closed()


async def main() -> None:
    if len(sys.argv) > 1:
        await chat(sys.argv[1])
        return
    async with anycore.serve(ChatHandler, "tcp://127.0.0.1:0") as server:
        endpoint = f"tcp://127.0.0.1:{server.port}"
        bot = await anycore.connect(endpoint, Bot)
        async with bot:
            print(f"chat room on {endpoint}; type a nickname, then lines; /quit leaves", flush=True)
            await chat(endpoint)


if __name__ == "__main__":
    anycore.run(main)
