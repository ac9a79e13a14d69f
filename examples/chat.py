"""The classic async_chat chat server, on anycore: nicknames, broadcast, /quit.

Each connection first picks a nickname, then every line it sends goes to
everybody else in the room as ``<nick> line``.  Commands: ``/who`` lists the
room, ``/nick NEW`` renames, ``/me ACTION`` emotes, ``/quit`` leaves.
:class:`ChatHandler` is a :class:`~anycore.TextLineHandler` (str lines, any
newline convention); a member that stops reading is cut off by the server's
write-buffer limit instead of making the server buffer without bound.

Self-demo (a free loopback port, two scripted users, exit)::

    python examples/chat.py

Serve until Ctrl-C / SIGTERM, then join with several terminals::

    python examples/chat.py serve --port 7001
    nc 127.0.0.1 7001

With the anycore command: ``anycore run examples.chat:ChatHandler --bind tcp://127.0.0.1:7001``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import anycore
from anycore import TextLineHandler


class ChatRoom:
    """Who is connected, by nickname."""

    max_nick = 32

    def __init__(self) -> None:
        self.members: dict[str, ChatHandler] = {}

    def check_nick(self, nick: str) -> str | None:
        """Return why ``nick`` cannot be used, or None."""
        if not nick or len(nick) > self.max_nick or not nick.isprintable() or " " in nick:
            return f"a nickname is 1-{self.max_nick} printable characters without spaces"
        if nick in self.members:
            return f"{nick} is taken"
        return None

    def broadcast(self, line: str, *, exclude: ChatHandler | None = None) -> None:
        for member in list(self.members.values()):
            if member is not exclude and not member.is_closing():
                member.send_line(line)


_default_room = ChatRoom()


class ChatHandler(TextLineHandler):
    """One chat connection.

    Args:
        room: the room to join (default: the process-wide room).
    """

    max_line_length = 1024

    def __init__(self, room: ChatRoom | None = None) -> None:
        self.room = room or _default_room
        self.nick: str | None = None

    def connection_made(self) -> None:
        self.send_line("Welcome to the anycore chat. What is your nickname?")

    def line_received(self, line: str) -> None:
        line = line.strip()
        if self.nick is None:
            self._choose_nick(line)
        elif line.startswith("/"):
            self._command(line)
        elif line:
            self.room.broadcast(f"<{self.nick}> {line}", exclude=self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.nick is not None and self.room.members.get(self.nick) is self:
            del self.room.members[self.nick]
            self.room.broadcast(f"* {self.nick} has left")

    def _choose_nick(self, nick: str) -> None:
        problem = self.room.check_nick(nick)
        if problem is not None:
            self.send_line(f"Sorry, {problem}. Try another nickname:")
            return
        others = sorted(self.room.members)
        self.nick = nick
        self.room.members[nick] = self
        here = ", ".join(others) if others else "nobody else yet"
        self.send_line(f"Hello {nick}! Here: {here}. Commands: /who /nick NEW /me ACTION /quit")
        self.room.broadcast(f"* {nick} has joined", exclude=self)

    def _command(self, line: str) -> None:
        assert self.nick is not None
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name == "/quit":
            self.send_line("Bye!")
            self.close()
        elif name == "/who":
            self.send_line("Here: " + ", ".join(sorted(self.room.members)))
        elif name == "/me" and rest:
            self.room.broadcast(f"* {self.nick} {rest}", exclude=self)
        elif name == "/nick":
            problem = self.room.check_nick(rest)
            if problem is not None:
                self.send_line(f"Sorry, {problem}.")
                return
            old, self.nick = self.nick, rest
            del self.room.members[old]
            self.room.members[rest] = self
            self.room.broadcast(f"* {old} is now known as {rest}")
        else:
            self.send_line(f"Unknown command {name}; try /who /nick /me /quit")


class ChatClient(TextLineHandler):
    """A scripted user: lines from the server go to a bounded queue."""

    def __init__(self) -> None:
        self.lines: asyncio.Queue[str] = asyncio.Queue(100)

    async def line_received(self, line: str) -> None:
        await self.lines.put(line)

    async def expect(self, text: str, timeout: float = 5.0) -> str:
        """Wait for a line containing ``text`` (lines before it are skipped)."""
        with anycore.fail_after(timeout):
            while True:
                line = await self.lines.get()
                if text in line:
                    return line


async def demo() -> None:
    room = ChatRoom()
    async with anycore.serve(lambda: ChatHandler(room), "tcp://127.0.0.1:0") as server:
        endpoint = str(server.endpoints[0])
        print(f"chat server on {endpoint}")
        alice = await anycore.connect(endpoint, ChatClient)
        bob = await anycore.connect(endpoint, ChatClient)
        await alice.expect("nickname?")
        alice.send_line("alice")
        print("alice sees:", await alice.expect("Hello alice"))
        await bob.expect("nickname?")
        bob.send_line("alice")
        print("bob sees:  ", await bob.expect("taken"))
        bob.send_line("bob")
        print("bob sees:  ", await bob.expect("Hello bob"))
        print("alice sees:", await alice.expect("bob has joined"))
        alice.send_line("hi bob!")
        print("bob sees:  ", await bob.expect("<alice>"))
        bob.send_line("/me waves")
        print("alice sees:", await alice.expect("waves"))
        bob.send_line("/who")
        print("bob sees:  ", await bob.expect("Here:"))
        bob.send_line("/quit")
        print("bob sees:  ", await bob.expect("Bye!"))
        await bob.wait_closed()
        print("alice sees:", await alice.expect("bob has left"))
        alice.close()
        await alice.wait_closed()
    print("done")


async def serve_forever(host: str, port: int) -> None:
    async with anycore.serve(ChatHandler, f"tcp://{host}:{port}") as server:
        print(f"chat server on {server.endpoints[0]}", flush=True)
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the classic chat server, on anycore")
    sub = parser.add_subparsers(dest="mode")
    s = sub.add_parser("serve", help="serve until interrupted")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7001)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        try:
            anycore.run(serve_forever, args.host, args.port)
        except anycore.GracefulExit:
            pass
    else:
        anycore.run(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
