"""The pending buffer of anycore's buffered log handlers.

Owns :class:`Pending`: one FIFO of prepared items (bytes, str, or an e-mail
message), bounded in items *and* bytes, under one lock held for a few
bytecodes: append (or refuse), take everything, take up to a byte or an item
count, give taken items back at the head, and make room by dropping the
oldest.  Who writes what was taken, and when, is the engine's business
(:mod:`._engine`); so are the overflow policy and the drop counts, which
the engine reports with :class:`HandlerStatistics` (kept here, beside the
buffer it mostly describes).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["HandlerStatistics", "Pending", "item_size"]


def item_size(item: Any) -> int:
    """The bytes ``item`` counts for against the byte bound."""
    try:
        return len(item)
    except TypeError:
        return 512  # not bytes-like (an e-mail message): a nominal size


class Pending:
    """Items waiting to be written, at most ``max_items`` and ``max_bytes``."""

    __slots__ = ("items", "lock", "max_bytes", "max_items", "size")

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.items: list[Any] = []
        self.size = 0  # bytes waiting
        self.lock = threading.Lock()

    def append(self, item: Any, size: int) -> int:
        """Append ``item``; the bytes now waiting, or -1 when it does not fit."""
        with self.lock:
            if self.size + size > self.max_bytes or len(self.items) >= self.max_items:
                return -1
            self.items.append(item)
            self.size += size
            return self.size

    def take(self) -> list[Any]:
        """Everything waiting."""
        with self.lock:
            batch = self.items
            if batch:
                self.items = []
                self.size = 0
            return batch

    def take_upto(self, limit: int) -> list[Any]:
        """The oldest items, about ``limit`` bytes (at least one item)."""
        with self.lock:
            items = self.items
            if self.size <= limit:
                if items:
                    self.items = []
                    self.size = 0
                return items
            size = 0
            cut = 0
            for item in items:
                size += item_size(item)
                cut += 1
                if size >= limit:
                    break
            batch = items[:cut]
            del items[:cut]
            self.size -= size
            return batch

    def take_items(self, count: int) -> list[Any]:
        """The oldest ``count`` items at most."""
        with self.lock:
            items = self.items
            if len(items) <= count:
                self.items = []
                self.size = 0
                return items
            batch = items[:count]
            del items[:count]
            self.size -= sum(map(item_size, batch))
            return batch

    def give_back(self, batch: list[Any]) -> None:
        """Put items taken but not written back at the head."""
        with self.lock:
            self.items[:0] = batch
            self.size += sum(map(item_size, batch))

    def drop_oldest_for(self, item: Any, size: int) -> int:
        """Drop the oldest items until ``item`` fits, then append it.

        Returns how many items were dropped (``item`` itself counts when it
        is larger than the whole buffer).
        """
        with self.lock:
            items = self.items
            dropped = 0
            while dropped < len(items) and (
                self.size + size > self.max_bytes or len(items) - dropped >= self.max_items
            ):
                self.size -= item_size(items[dropped])
                dropped += 1
            del items[:dropped]
            if self.size + size <= self.max_bytes:
                items.append(item)
                self.size += size
            else:
                dropped += 1
            return dropped


@dataclass(frozen=True, slots=True)
class HandlerStatistics:
    """A snapshot of a file or stream handler, from ``handler.statistics()``.

    Attributes:
        written: records written so far.
        dropped: records dropped by a lossy overflow policy or lost to a
            failing sink.
        queued: records waiting to be written now.
        queued_bytes: bytes waiting to be written now.
        threaded: whether the writer thread does the writing now (the sink
            was measured slow).
    """

    written: int
    dropped: int
    queued: int
    queued_bytes: int
    threaded: bool
