"""The ordered phases of a runtime's shutdown, the vocabulary every facility shares.

A leaf module (it imports nothing of anycore) so that a layer which only
registers a shutdown step - logging - names its phase without loading the
runtime.
"""

from __future__ import annotations

import enum

__all__ = ["Phase"]


class Phase(enum.IntEnum):
    """The ordered phases of shutdown.

    Steps of one phase run concurrently; phases run one after another.
    ``MAIN`` and ``TASKS`` are the runtime's own: main is cancelled, then the
    background tasks.
    """

    STOP_ACCEPTING = 10
    DRAIN = 20
    MAIN = 30
    PROCESSES = 40
    POOLS = 50
    TASKS = 60
    LOGS = 70
