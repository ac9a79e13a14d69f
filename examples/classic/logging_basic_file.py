"""logging: basic configuration to a file (level name, time, message) at INFO.

Classic: ``logging.basicConfig(filename=..., format=..., level=logging.INFO)``
with the stdlib FileHandler, which writes on the calling thread - the event
loop, in an async program.  Changed: the same basicConfig with anycore's
FileHandler (written once per loop iteration, lossless, flushed by the
runtime at exit).

    python examples/classic/logging_basic_file.py [DIRECTORY]
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import anycore
from anycore.logging import FileHandler

FORMAT = "%(levelname)s %(asctime)s %(message)s"


async def main() -> None:
    logging.debug("This message should not go to the log file")
    logging.info("So should this")  # (INFO is the level: this one is kept)
    logging.warning("And this, too")
    logging.error("And non-ASCII stuff, too, like \u00d8resund and Malm\u00f6")


if __name__ == "__main__":
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    path = directory / "example.log"
    logging.basicConfig(
        handlers=[FileHandler(path, encoding="utf-8")], format=FORMAT, level=logging.INFO
    )
    anycore.run(main)  # the runtime's shutdown flushes the handler
    print(path.read_text(encoding="utf-8"), end="")
