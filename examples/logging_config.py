"""Configuring anycore's handlers from a dict and from TOML.

Self-demo (bounded; writes into a temporary directory and exits)::

    python examples/logging_config.py

The stdlib's dictConfig schema names anycore's handlers by class; the
``anycore.logging.structured_formatter`` factory renders through the same
structlog pipeline as ``configure()``.  The same schema can live in TOML, for
instance under ``[tool.anycore.logging]`` in a pyproject.toml.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from anycore.logging import dict_config, flush_all, get_logger, toml_config

TOML = """
[tool.anycore.logging]
disable_existing_loggers = false

[tool.anycore.logging.formatters.plain]
format = "%(levelname)s %(name)s: %(message)s"

[tool.anycore.logging.handlers.file]
class = "anycore.logging.TimedRotatingFileHandler"
filename = "{path}"
when = "midnight"
backupCount = 7
formatter = "plain"

[tool.anycore.logging.root]
level = "INFO"
handlers = ["file"]
"""


def from_dict(path: Path) -> None:
    dict_config(
        {
            "formatters": {"s": {"()": "anycore.logging.structured_formatter", "format": "json"}},
            "handlers": {
                "file": {
                    "class": "anycore.logging.RotatingFileHandler",
                    "filename": str(path),
                    "maxBytes": 10_000_000,
                    "backupCount": 5,
                    "queue_size": 50_000,
                    "formatter": "s",
                }
            },
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
    )


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="anycore-logging-config-"))

    json_log = workdir / "dict.log"
    from_dict(json_log)
    logging.getLogger("app.db").info("connected to %s", "db1")
    get_logger("app").info("ready", port=8080)
    flush_all()
    for line in json_log.read_text().splitlines():
        record = json.loads(line)
        print("dict:", record["level"], record["logger"], record["event"])

    text_log = workdir / "toml.log"
    pyproject = workdir / "pyproject.toml"
    pyproject.write_text(TOML.format(path=text_log))
    toml_config(pyproject, key="tool.anycore.logging")
    logging.getLogger("app").warning("configured from %s", pyproject.name)
    flush_all()
    print("toml:", text_log.read_text().strip())
    print("done")


if __name__ == "__main__":
    main()
