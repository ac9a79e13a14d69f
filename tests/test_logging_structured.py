"""configure(), context binding, config files, child forwarding, loop-lag monitor."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import anycore.logging as alog
from anycore.logging import (
    FileHandler,
    bind_context,
    child_logging_config,
    child_logging_env,
    configure,
    dict_config,
    file_config,
    get_logger,
    install_child_forwarding,
    monitor_loop_lag,
    toml_config,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in saved_handlers:
            root.removeHandler(h)
            h.close()
    for h in saved_handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(saved_level)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def test_one_pipeline_for_structlog_and_stdlib(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    (handler,) = configure("INFO", "json", file=path, loggers={"noisy": "WARNING"})
    slog = get_logger("app")
    std = logging.getLogger("app.db")
    with bind_context(conn_id=7, peer="127.0.0.1:5000"):
        structlog.contextvars.bind_contextvars(request="r1")
        slog.info("hello", user="ann")
        slog.debug("not shown")
        std.warning("query took %d ms", 12, extra={"table": "t"})
        get_logger("noisy").info("not shown either")
        get_logger("noisy").warning("shown")
    slog.info("outside")
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        slog.exception("failed")
    assert isinstance(handler, FileHandler)
    assert await handler.aflush(10)
    lines = json_lines(path)
    assert [x["event"] for x in lines] == [
        "hello",
        "query took 12 ms",
        "shown",
        "outside",
        "failed",
    ]
    hello, query, shown, outside, failed = lines
    for rec in (hello, query, shown):
        assert (rec["conn_id"], rec["peer"], rec["request"]) == (7, "127.0.0.1:5000", "r1")
        assert rec["timestamp"].endswith("Z")
    assert (hello["user"], hello["level"], hello["logger"]) == ("ann", "info", "app")
    assert (query["table"], query["level"], query["logger"]) == ("t", "warning", "app.db")
    assert "conn_id" not in outside
    assert "ZeroDivisionError" in failed["exception"]


async def test_stdlib_filters_and_foreign_handlers_still_apply(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    configure("DEBUG", "json", file=path)
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    lg = logging.getLogger("filtered")
    lg.addFilter(lambda r: "secret" not in str(r.msg))
    collector = Collect()
    logging.getLogger("collected").addHandler(collector)
    try:
        get_logger("filtered").info("public")
        get_logger("filtered").info("secret stuff")
        get_logger("collected").info("both", n=1)
    finally:
        logging.getLogger("collected").removeHandler(collector)
        lg.filters.clear()
    await alog.aflush_all()
    events = [x["event"] for x in json_lines(path)]
    assert events == ["public", "both"]
    assert len(seen) == 1  # the foreign handler got the structlog event too


async def test_console_format_and_disabled_levels_are_cheap(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    processed: list[str] = []

    def spy(logger: Any, name: str, event_dict: Any) -> Any:
        processed.append(event_dict["event"])
        return event_dict

    configure("WARNING", "console", file=path, processors=[spy])
    log = get_logger("cheap")
    for i in range(1000):
        log.debug("x", i=i)  # rejected before any processor runs
    log.warning("visible", k="v")
    assert processed == ["visible"]
    await alog.aflush_all()
    text = path.read_text()
    assert "visible" in text
    assert "k=v" in text
    assert " x " not in text


def test_dict_config_with_anycore_classes(tmp_path: Path) -> None:
    path = tmp_path / "d.log"
    dict_config(
        {
            "formatters": {"s": {"()": "anycore.logging.structured_formatter", "format": "json"}},
            "handlers": {
                "file": {
                    "class": "anycore.logging.RotatingFileHandler",
                    "filename": str(path),
                    "maxBytes": 1_000_000,
                    "backupCount": 2,
                    "queue_size": 5000,
                    "formatter": "s",
                }
            },
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
    )
    handler = logging.getLogger().handlers[-1]
    assert isinstance(handler, alog.RotatingFileHandler)
    assert handler.queue_size == 5000
    logging.getLogger("cfg").info("from %s", "dictConfig")
    get_logger("cfg").info("from structlog")
    assert handler.wait_flushed(10)
    assert [x["event"] for x in json_lines(path)] == ["from dictConfig", "from structlog"]


def test_file_config_ini(tmp_path: Path) -> None:
    path = tmp_path / "i.log"
    ini = tmp_path / "logging.ini"
    ini.write_text(
        textwrap.dedent(
            f"""
            [loggers]
            keys=root

            [handlers]
            keys=file

            [formatters]
            keys=plain

            [logger_root]
            level=INFO
            handlers=file

            [handler_file]
            class=anycore.logging.FileHandler
            args=({str(path)!r}, 'a')
            kwargs={{'queue_size': 1234}}
            formatter=plain

            [formatter_plain]
            format=%(levelname)s %(message)s
            """
        )
    )
    file_config(ini, disable_existing_loggers=False)
    handler = logging.getLogger().handlers[-1]
    assert isinstance(handler, alog.FileHandler)
    assert handler.queue_size == 1234
    logging.getLogger("ini").warning("hello ini")
    assert handler.wait_flushed(10)
    assert path.read_text() == "WARNING hello ini\n"


def test_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    toml = tmp_path / "pyproject.toml"
    toml.write_text(
        textwrap.dedent(
            f"""
            [tool.anycore.logging]
            disable_existing_loggers = false
            [tool.anycore.logging.formatters.plain]
            format = "%(name)s|%(message)s"
            [tool.anycore.logging.handlers.file]
            class = "anycore.logging.FileHandler"
            filename = {json.dumps(str(path))}
            formatter = "plain"
            [tool.anycore.logging.root]
            level = "DEBUG"
            handlers = ["file"]
            """
        )
    )
    toml_config(toml, key="tool.anycore.logging")
    handler = logging.getLogger().handlers[-1]
    logging.getLogger("toml").debug("hello toml")
    assert handler.wait_flushed(10)
    assert path.read_text() == "toml|hello toml\n"


# -- child processes ---------------------------------------------------------------


def _child_main(cfg: dict[str, Any], n: int) -> None:
    import anycore.logging as alog_child

    alog_child.install_child_forwarding(cfg)
    log = logging.getLogger("child.worker")
    with alog_child.bind_context(worker=3):
        for i in range(n):
            log.info("child rec %d", i)
    # multiprocessing ends the child with os._exit: the exit hooks must flush.


def test_records_from_multiprocessing_children_reach_parent_handlers(tmp_path: Path) -> None:
    path = tmp_path / "parent.log"
    handler = FileHandler(path)
    handler.setFormatter(logging.Formatter("%(process)d %(name)s %(worker)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    cfg = child_logging_config()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child_main, args=(cfg, 2000)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    alog.flush_all(10)  # reads what the children sent, then flushes
    lines = path.read_text().splitlines()
    pids = {str(p.pid) for p in procs}
    for pid in pids:
        mine = [line.split()[-1] for line in lines if line.startswith(pid + " ")]
        assert mine == [str(i) for i in range(2000)]
    assert all(" child.worker 3 child rec " in line for line in lines)


def test_subprocess_child_forwards_through_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.log"
    handler = FileHandler(path)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    env = {**os.environ, **child_logging_env("INFO")}
    code = textwrap.dedent(
        """
        import logging
        from anycore.logging import install_child_forwarding, get_logger, configure
        install_child_forwarding()
        for i in range(100):
            logging.getLogger("sub").info("sub %d", i)
        """
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30, cwd=ROOT)
    alog.flush_all(10)
    assert path.read_text().splitlines() == [f"sub sub {i}" for i in range(100)]


def test_install_child_forwarding_without_config_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANYCORE_LOG_FORWARD", raising=False)
    assert install_child_forwarding() is None


# -- loop-lag monitor --------------------------------------------------------------


def _block_the_loop() -> None:
    time.sleep(0.3)


async def test_lag_monitor_reports_a_blocking_call_with_its_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="anycore.loop")
    async with monitor_loop_lag(0.1, capture_stack=True) as monitor:
        await asyncio.sleep(0.05)
        _block_the_loop()
        await asyncio.sleep(0.1)
    stats = monitor.statistics()
    assert stats.over_threshold >= 1
    assert stats.max_lag >= 0.15
    assert stats.last_stack is not None
    assert "_block_the_loop" in stats.last_stack
    messages = [r.getMessage() for r in caplog.records if r.name == "anycore.loop"]
    assert any("event loop blocked for" in m and "_block_the_loop" in m for m in messages)


async def test_lag_monitor_quiet_when_the_loop_is_responsive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="anycore.loop")
    async with monitor_loop_lag(0.5, interval=0.01) as monitor:
        for _ in range(10):
            await asyncio.sleep(0.01)
    assert monitor.statistics().over_threshold == 0
    assert monitor.statistics().beats >= 3
    assert not [r for r in caplog.records if r.name == "anycore.loop"]


def test_import_anycore_does_not_import_structlog() -> None:
    code = (
        "import sys, anycore; from anycore.logging import bind_context, FileHandler;"
        " print('structlog' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _structlog_child(cfg: dict[str, Any]) -> None:
    import anycore.logging as alog_child

    alog_child.install_child_forwarding(cfg)
    log = alog_child.get_logger("child.struct")
    with alog_child.bind_context(worker=5):
        log.info("structured", answer=42)
        try:
            _ = 1 / 0
        except ZeroDivisionError:
            log.exception("child failed")


def test_structlog_events_from_a_child_keep_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "sp.log"
    configure("INFO", "json", file=path)
    cfg = child_logging_config()
    assert cfg.get("structlog") is True
    proc = multiprocessing.get_context("spawn").Process(target=_structlog_child, args=(cfg,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    alog.flush_all(10)
    lines = json_lines(path)
    assert [x["event"] for x in lines] == ["structured", "child failed"]
    first, second = lines
    assert (first["answer"], first["worker"]) == (42, 5)
    assert (first["logger"], first["level"]) == ("child.struct", "info")
    assert "ZeroDivisionError" in second["exception"]


def test_public_surface_resolves_and_is_documented() -> None:
    assert len(set(alog.__all__)) == len(alog.__all__)
    for name in alog.__all__:
        obj = getattr(alog, name)
        assert obj.__module__.startswith("anycore.logging._"), name
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
    with pytest.raises(AttributeError):
        _ = alog.nope  # type: ignore[attr-defined]


def test_every_public_name_is_in_the_docs() -> None:
    text = (ROOT / "docs" / "logging.md").read_text()
    assert [name for name in alog.__all__ if name not in text] == []
