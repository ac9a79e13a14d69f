"""multiprocessing: a manager holding a shared dict and an event a watcher waits on.

Classic: ``with Manager() as m: d = m.dict(); e = m.Event()``; a watcher
``Process`` blocks in ``e.wait()`` then reads ``d``; the main process fills
the dict and sets the event.  Changed: ``anycore.SyncManager`` - proxies are
awaited (``await d.setitem(k, v)``, ``await e.wait(timeout)``), so neither
loop blocks; the server process and the watcher are owned by their blocks.

    python examples/classic/mp_manager_watch.py
"""

from __future__ import annotations

from typing import Any

import anycore


async def watcher(event: Any, shared: Any) -> str:
    async with event, shared:  # unpickled proxies: their own connections
        if not await event.wait(30):
            return "timed out"
        return f"watcher saw {dict(sorted(await shared.items()))}"


async def main() -> None:
    async with anycore.SyncManager() as manager:
        shared = await manager.dict()
        event = await manager.Event()
        async with anycore.ChildProcess(watcher, event, shared) as child:
            for key, value in [("a", 1), ("b", 2), ("c", 3)]:
                await shared.setitem(key, value)
            await event.set()
            print(await child.result(timeout=30))


if __name__ == "__main__":
    anycore.run(main)
