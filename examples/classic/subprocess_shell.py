"""subprocess: run a shell command.

Classic: ``subprocess.call("echo Hello from the shell; ls /", shell=True)``
blocks the thread (the loop) until the shell exits.  Changed: ``await
anycore.call(...)``: the loop keeps running; cancellation or a timeout kills
the shell's whole process group and reaps it.

    python examples/classic/subprocess_shell.py
"""

from __future__ import annotations

import anycore


async def main() -> None:
    status = await anycore.call("echo Hello from the shell; test -d /", shell=True)
    print("exit status", status)


if __name__ == "__main__":
    anycore.run(main)
