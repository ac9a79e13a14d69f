"""logging: one central logging configuration module, imported once.

Classic: ``import logconf`` at the top of every module of the program; the
first import configures logging, later imports are no-ops.  Changed: the
configuration module calls ``anycore.logging.configure``; the modules log
through stdlib loggers or structlog, alike.

    python examples/classic/logging_central.py
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import anycore
from anycore.logging import get_logger

sys.path.insert(0, str(Path(__file__).resolve().parent))
importlib.import_module("logconf")  # as ``import logconf``: configures logging


async def main() -> None:
    importlib.import_module("logconf")  # a second import: nothing happens
    logging.getLogger("app.db").info("stdlib logger: connected")
    get_logger("app.web").info("structlog logger", route="/")


if __name__ == "__main__":
    anycore.run(main)
