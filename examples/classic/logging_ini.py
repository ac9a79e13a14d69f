"""logging: the same configuration from an ini file (``fileConfig``).

Classic: ``logging.config.fileConfig("logging.ini", defaults={...})`` with
the stdlib's handler classes.  Changed: the ini names anycore's classes
(``class=anycore.logging.FileHandler``: same ``args``), loaded with
``anycore.logging.file_config``, which takes the same arguments.

    python examples/classic/logging_ini.py [DIRECTORY]
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import anycore
from anycore.logging import file_config

log = logging.getLogger("app")


async def main() -> None:
    log.debug("debug: only in the file")
    log.info("info: in the file and on the console")
    logging.getLogger("other").info("other info: below the root's WARNING")
    logging.getLogger("other").warning("other warning: console only")


if __name__ == "__main__":
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    logfile = directory / "app.log"
    here = Path(__file__).resolve().parent
    file_config(here / "logging.ini", defaults={"logfile": str(logfile)})
    anycore.run(main)
    print(f"--- {logfile.name}:")
    print(logfile.read_text(), end="")
