"""threading: the event misuse the chapter warns about, and the condition it recommends.

Classic: a producer ``set()``s an Event for each item and the consumer
``wait()``s then ``clear()``s it - but two items produced before the consumer
runs make one ``set`` (an Event is not a counter), and a ``clear`` after a
late ``set`` loses the wake-up.  The recommended form: a Condition around
the shared list, ``wait_for(lambda: items)`` in the consumer, ``notify()``
in the producer.  Changed: the producer is a plain thread and the consumer a
task, so the condition must be safe across both: ``ThreadSafeCondition``
(tasks ``await cond.wait_for(...)``, threads ``with cond: cond.notify()``).

    python examples/classic/threading_condition.py
"""

from __future__ import annotations

import threading

import anycore

ITEMS = 1000


def produce_with_event(event: threading.Event, items: list[int]) -> None:
    for i in range(ITEMS):
        items.append(i)
        event.set()  # an Event is a flag, not a count


async def event_misuse() -> int:
    event, items = threading.Event(), list[int]()
    wakeups = 0
    thread = threading.Thread(target=produce_with_event, args=(event, items))
    thread.start()
    thread.join()  # the producer ran ahead: every set() but one was wasted
    while event.is_set():
        event.clear()
        wakeups += 1
    return wakeups


def produce_with_condition(cond: anycore.ThreadSafeCondition, items: list[int]) -> None:
    for i in range(ITEMS):
        with cond:
            items.append(i)
            cond.notify()


async def condition_done_right() -> int:
    cond, items = anycore.ThreadSafeCondition(), list[int]()
    thread = threading.Thread(target=produce_with_condition, args=(cond, items))
    thread.start()
    consumed = 0
    async with cond:
        while consumed < ITEMS:
            await cond.wait_for(lambda: items)  # the state, not a flag, decides
            consumed += len(items)
            items.clear()
    thread.join()
    return consumed


async def main() -> None:
    print(f"event: {ITEMS} items produced, {await event_misuse()} wake-up(s) seen")
    print(f"condition: {await condition_done_right()} of {ITEMS} items consumed")


if __name__ == "__main__":
    anycore.run(main)
