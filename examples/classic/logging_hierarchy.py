"""logging: a logger hierarchy app / app.net / app.net.client.

Classic: child loggers propagate their records to the parent's handlers;
a child may have a level below its parent's (``app`` at WARNING, while
``app.net.client`` logs DEBUG) because levels are checked on the logger
where a record is created, and handlers on the way up see it anyway.
Changed: only the handler (anycore's StreamHandler) and the async caller.

    python examples/classic/logging_hierarchy.py
"""

from __future__ import annotations

import logging
import sys

import anycore
from anycore.logging import StreamHandler

app = logging.getLogger("app")
net = logging.getLogger("app.net")
client = logging.getLogger("app.net.client")


async def main() -> None:
    app.info("app info: below app's WARNING, dropped")
    app.warning("app warning")
    net.info("net info: app.net inherits WARNING, dropped")
    client.debug("client debug: its own level is DEBUG")
    client.info("client info")


if __name__ == "__main__":
    handler = StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(name)-15s %(levelname)-7s %(message)s"))
    app.addHandler(handler)  # one handler at the top: children propagate to it
    app.setLevel(logging.WARNING)
    client.setLevel(logging.DEBUG)
    anycore.run(main)
