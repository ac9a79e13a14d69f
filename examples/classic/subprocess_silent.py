"""subprocess: run a command silently, its output discarded.

Classic: ``subprocess.call(["ls", "-l"], stdout=subprocess.DEVNULL,
stderr=subprocess.DEVNULL)``.  Changed: the same redirections on ``await
anycore.call``; only the exit status comes back.

    python examples/classic/subprocess_silent.py
"""

from __future__ import annotations

import anycore
from anycore import DEVNULL


async def main() -> None:
    status = await anycore.call(["ls", "-l", "/"], stdout=DEVNULL, stderr=DEVNULL)
    print("ls printed nothing here; exit status", status)
    status = await anycore.call(["ls", "/no/such/dir"], stdout=DEVNULL, stderr=DEVNULL)
    print("a failing ls, silently: exit status", status)


if __name__ == "__main__":
    anycore.run(main)
