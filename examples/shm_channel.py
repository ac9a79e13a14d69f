"""A shared-memory channel sending arrays between two processes.

    python examples/shm_channel.py

The parent sends batches of float samples to a child through one
``ShmChannel`` and gets each batch's statistics back through a second one:
the arrays are copied through shared memory, never pickled, and the parent's
event loop keeps running while it waits (a ticker task counts on).  Closing
the outbound channel ends the child's loop (it sees ``PeerClosed``); a
``SharedValue`` under its process-shared lock counts the samples the child
processed.  Everything is unlinked from /dev/shm when the scopes end.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import time

from anycore import ChildProcess, PeerClosed, SharedValue, ShmChannel

BATCH = 250_000  # floats per message: 2 MB


def summarise(inbound: ShmChannel, outbound: ShmChannel, processed: SharedValue) -> int:
    """The child: receive batches, send back (count, mean, min, max) as 4 doubles."""
    batches = 0
    samples = array.array("d", bytes(8 * BATCH))  # received into, again and again
    while True:
        try:
            nbytes = inbound.sync_recv_into(samples)
        except PeerClosed:
            break
        n = nbytes // samples.itemsize
        view = memoryview(samples)[:n]
        total = math.fsum(view)
        outbound.sync_send(array.array("d", [n, total / n, min(view), max(view)]))
        with processed.lock:
            processed.value += n
        batches += 1
    outbound.close()
    return batches


async def main() -> None:
    started = time.perf_counter()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async with (
        ShmChannel(8 * BATCH) as to_child,
        ShmChannel(8 * 4) as from_child,
        SharedValue("q", 0) as processed,
        ChildProcess(summarise, to_child, from_child, processed) as child,
    ):
        tick_task = asyncio.create_task(ticker())
        for k in range(4):
            batch = array.array("d", (math.sin(i / 1000.0) + k for i in range(BATCH)))
            await to_child.send(batch)
            count, mean, low, high = (await from_child.recv()).tolist()
            print(
                f"batch {k}: {int(count):,} samples, mean {mean:.3f}, range {low:.3f}..{high:.3f}"
            )
        to_child.close()  # the child sees PeerClosed after the last batch
        try:
            await from_child.recv()
        except PeerClosed:
            print("child closed its channel")
        batches = await child.result()
        tick_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick_task
        print(f"child processed {batches} batches, {processed.value:,} samples")
        print(f"the loop ticked {ticks} times while waiting" if ticks else "the loop never ticked")
    print(f"done in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    asyncio.run(main())
