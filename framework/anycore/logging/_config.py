"""Logging configuration from a dict, an ini file or TOML.

Thin, on purpose: the stdlib's ``dictConfig`` and ``fileConfig`` already
resolve handler classes by dotted name, so ``"anycore.logging.FileHandler"``
works in both once ``anycore.logging`` resolves its names lazily (it does).
This module adds TOML (``tomllib``, read into the dictConfig schema), makes
``version: 1`` optional, and accepts ``"anycore.logging.structured_formatter"``
as a formatter factory so file-based setups get the structlog pipeline.
Rejected: a configuration schema of our own (one more thing to learn; the
stdlib's is documented and known).
"""

from __future__ import annotations

import logging.config
import os
import tomllib
from collections.abc import Mapping
from typing import IO, Any

from ..errors import LoggingConfigError

__all__ = ["dict_config", "file_config", "toml_config"]


def dict_config(config: Mapping[str, Any]) -> None:
    """:func:`logging.config.dictConfig`, with ``version`` defaulting to 1.

    Handler classes may be anycore's (``"class": "anycore.logging.RotatingFileHandler"``,
    with extra keys such as ``queue_size``); the formatter factory
    ``"()": "anycore.logging.structured_formatter"`` (with ``format``) renders
    through the structlog pipeline.

    Args:
        config: a dictConfig schema.

    Raises:
        ValueError: the stdlib rejected the configuration.
    """
    cfg = dict(config)
    cfg.setdefault("version", 1)
    logging.config.dictConfig(cfg)


def file_config(
    fname: str | os.PathLike[str] | IO[str],
    defaults: Mapping[str, str] | None = None,
    disable_existing_loggers: bool = True,
    encoding: str | None = None,
) -> None:
    """:func:`logging.config.fileConfig` (ini format); anycore classes by name.

    Example handler section::

        [handler_file]
        class=anycore.logging.FileHandler
        args=('app.log', 'a')
        kwargs={'queue_size': 50000}
    """
    logging.config.fileConfig(
        fname,
        defaults=dict(defaults) if defaults is not None else None,
        disable_existing_loggers=disable_existing_loggers,
        encoding=encoding,
    )


def toml_config(
    source: str | os.PathLike[str] | Mapping[str, Any], *, key: str | None = None
) -> None:
    """Configure logging from TOML holding a dictConfig schema.

    Args:
        source: a path to a ``.toml`` file, or an already parsed mapping.
        key: dotted path of the table holding the schema, e.g.
            ``"tool.anycore.logging"`` in a pyproject.toml; default: the
            ``logging`` table when there is one, else the whole document.

    Raises:
        LoggingConfigError: the file is not valid TOML, or ``key`` names no
            table (the message names the file).
        ValueError: the stdlib rejected the configuration.
    """
    where = "the mapping"
    if isinstance(source, Mapping):
        doc: Mapping[str, Any] = source
    else:
        where = os.fspath(source)
        with open(source, "rb") as fh:
            try:
                doc = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise LoggingConfigError(f"{where}: not valid TOML: {exc}") from None
    if key is not None:
        seen: list[str] = []
        for part in key.split("."):
            seen.append(part)
            value = doc.get(part) if isinstance(doc, Mapping) else None
            if not isinstance(value, Mapping):
                tables = ", ".join(sorted(k for k, v in doc.items() if isinstance(v, Mapping)))
                raise LoggingConfigError(
                    f"{where}: no table [{'.'.join(seen)}] (key={key!r}); "
                    f"tables here: {tables or 'none'}"
                )
            doc = value
    elif "logging" in doc and isinstance(doc["logging"], Mapping):
        doc = doc["logging"]
    dict_config(_rename_factories(doc))


def _rename_factories(value: Any) -> Any:
    # TOML keys cannot be "()" without quoting; accept factory = "..." too.
    if isinstance(value, Mapping):
        out = {k: _rename_factories(v) for k, v in value.items()}
        if "factory" in out and "()" not in out and "class" not in out:
            out["()"] = out.pop("factory")
        return out
    if isinstance(value, list):
        return [_rename_factories(v) for v in value]
    return value
