"""logging: one logger with a file handler and a stderr handler, propagation off.

Classic: ``logger.addHandler(FileHandler(...))`` at DEBUG and a
``StreamHandler()`` at ERROR, ``logger.propagate = False`` so that the root's
handlers do not see the records twice.  Changed: anycore's FileHandler and
StreamHandler (same arguments), which never block the loop.

    python examples/classic/logging_two_handlers.py [DIRECTORY]
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import anycore
from anycore.logging import FileHandler, StreamHandler

log = logging.getLogger("spam")


async def main() -> None:
    log.debug("debug message")
    log.info("info message")
    log.warning("warn message")
    log.error("error message")
    log.critical("critical message")


if __name__ == "__main__":
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    path = directory / "spam.log"
    log.setLevel(logging.DEBUG)
    log.propagate = False
    to_file = FileHandler(path)
    to_file.setLevel(logging.DEBUG)
    to_stderr = StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.ERROR)
    formatter = logging.Formatter("%(name)s - %(levelname)s - %(message)s")
    for handler in (to_file, to_stderr):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    logging.getLogger().addHandler(StreamHandler(sys.stdout))  # sees nothing: propagate off
    anycore.run(main)
    print(f"--- {path.name}:")
    print(path.read_text(), end="")
