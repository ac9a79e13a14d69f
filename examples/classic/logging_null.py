"""logging: a null logger that swallows everything when logging is off.

Classic: a library adds ``logging.NullHandler()`` to its top logger so that
an application that configures no logging sees nothing (and no "No handlers
could be found" warning), while one that does sees everything.  Changed:
nothing - NullHandler is the right tool on anycore too; this shows both
sides of the switch.

    python examples/classic/logging_null.py [on|off]
"""

from __future__ import annotations

import logging
import sys

import anycore
from anycore.logging import StreamHandler

library_log = logging.getLogger("mylib")
library_log.addHandler(logging.NullHandler())  # what the library ships


async def library_call() -> str:
    library_log.warning("mylib: something the application may want to know")
    return "result"


async def main() -> None:
    print("library returned", await library_call())


if __name__ == "__main__":
    if sys.argv[1:] == ["on"]:  # the application turns logging on
        handler = StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(handler)
    anycore.run(main)
