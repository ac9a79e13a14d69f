"""Configuration mistakes get errors that say what is wrong and where."""

from __future__ import annotations

from pathlib import Path

import pytest

import anycore
from anycore.logging import configure, toml_config


def test_an_unknown_level_names_the_levels() -> None:
    with pytest.raises(ValueError, match=r"unknown level 'LOUD': use DEBUG, INFO, WARNING"):
        configure("LOUD")


def test_a_missing_table_names_the_file_and_the_tables_there(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.other]\nx = 1\n[project]\nname = "x"\n')
    with pytest.raises(anycore.LoggingConfigError) as info:
        toml_config(path, key="tool.anycore.logging")
    message = str(info.value)
    assert str(path) in message
    assert "no table [tool.anycore]" in message
    assert "tables here: other" in message
    assert isinstance(info.value, ValueError)


def test_a_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "logging.toml"
    path.write_text("[logging\nversion = 1\n")
    with pytest.raises(anycore.LoggingConfigError, match=rf"{path}: not valid TOML"):
        toml_config(path)
