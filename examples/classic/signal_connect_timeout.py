"""signal: a network connect with a timeout, once done with an alarm.

Classic: ``signal.signal(SIGALRM, handler)`` raising an exception,
``signal.alarm(5)`` before a blocking ``socket.connect`` and ``alarm(0)``
after - process-wide, main-thread only, one alarm at a time.  Changed: a
deadline on the connect itself (``anycore.fail_after``): scoped, any number
at once, in any task.

    python examples/classic/signal_connect_timeout.py
"""

from __future__ import annotations

import asyncio
import socket

import anycore


async def connect_with_deadline(host: str, port: int, seconds: float) -> str:
    try:
        with anycore.fail_after(seconds):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"{host}:{port}: no answer within {seconds} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror}"
    writer.close()
    await writer.wait_closed()
    return f"{host}:{port}: connected"


async def main() -> None:
    # A listening socket that never accepts, with a full backlog, makes the
    # next connect hang - the case the alarm was for.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(8):  # fill the accept backlog
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        try:
            print(await connect_with_deadline("127.0.0.1", port, 0.3))
        finally:
            for s in fillers:
                s.close()
    async with anycore.serve(anycore.RawHandler, "tcp://127.0.0.1:0") as server:
        print(await connect_with_deadline("127.0.0.1", server.port, 5))


if __name__ == "__main__":
    anycore.run(main)
