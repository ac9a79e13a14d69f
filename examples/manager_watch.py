"""A manager holding a dict and an event that a watcher process waits on.

    python examples/manager_watch.py

A ``SyncManager`` runs its server in a child process and holds two shared
objects: a dict of job results and an Event.  A watcher - another child
process that got the two proxies as arguments - waits on the event without
blocking anything (the wait is awaited in the manager's server), then reads
the dict and reports what it saw.  Meanwhile the parent fills the dict and,
when it is complete, sets the event.  At the end the manager shuts its
server down and every process is reaped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from anycore import ChildProcess, SyncManager


async def watcher(done: Any, results: Any) -> str:
    """Runs in a child process: wait for the event, then read the shared dict."""
    async with done, results:  # unpickled proxies open their own connections
        if not await done.wait(30):
            return "timed out"
        items = sorted(await results.items())
        total = sum(value for _, value in items)
        return f"watcher saw {len(items)} results, total {total}: {items}"


async def main() -> None:
    async with SyncManager() as manager:
        print(f"manager server at {manager.address!r}")
        results = await manager.dict()
        done = await manager.Event()
        async with ChildProcess(watcher, done, results, daemon=False) as child:
            for job in ["alpha", "beta", "gamma"]:
                await results.setitem(job, len(job))
                print(f"parent stored {job} = {len(job)}")
            await done.set()
            print(await child.result(timeout=30))
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
