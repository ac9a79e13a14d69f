"""The docs' sources: links resolve, every page is in the nav, every public name has a
reference entry, and the programs on the getting-started page run and print what
the page says they print.  (tests/test_docs_site.py builds the site itself.)"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import anycore

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
ENTRY = re.compile(r"^::: (anycore(?:\.\w+)*)$", re.M)
PUBLIC_MODULES = ("anycore", "anycore.abc", "anycore.errors", "anycore.logging", "anycore.testing")
# Public modules documented as modules (not listed in an __all__).
PUBLIC_SUBMODULES = {"anycore.testing.pytest_plugin"}


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_relative_links_resolve() -> None:
    broken = []
    for page in _pages():
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")]
    missing = [p for p in pages if f" {p}\n" not in nav]
    assert not missing, missing


def _reference_entries() -> set[str]:
    text = "\n".join(p.read_text() for p in (DOCS / "reference").glob("*.md"))
    return set(ENTRY.findall(text))


def test_every_public_name_has_a_reference_entry() -> None:
    entries = _reference_entries()
    errors = set(anycore.errors.__all__)
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            wanted = {f"{module_name}.{name}"}
            if module_name == "anycore" and name in errors:
                wanted.add(f"anycore.errors.{name}")  # documented once, where it is defined
            if not wanted & entries:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"no '::: NAME' entry in docs/reference/*.md: {missing}"


def test_reference_entries_name_public_names() -> None:
    # The converse: no entry for a name that is gone (mkdocstrings would fail
    # the build, but this says which one, without building).
    public = {
        f"{module_name}.{name}"
        for module_name in PUBLIC_MODULES
        for name in importlib.import_module(module_name).__all__
    }
    stale = sorted(_reference_entries() - public - PUBLIC_SUBMODULES)
    assert not stale, stale


# -- the getting-started page's programs ---------------------------------------------

PROGRAM = re.compile(r"^```python\n(.*?)^```\n\n```console\n\$ [^\n]*\n(.*?)^```", re.S | re.M)
PORT = re.compile(r"tcp://127\.0\.0\.1:\d+")


def _getting_started_programs() -> list[tuple[str, str]]:
    return PROGRAM.findall((DOCS / "getting-started.md").read_text())


def test_getting_started_has_its_three_programs() -> None:
    assert len(_getting_started_programs()) == 3


@pytest.mark.parametrize(
    ("source", "expected"),
    _getting_started_programs(),
    ids=["handler", "supervised-stack", "pool"],
)
def test_getting_started_program_prints_what_the_page_shows(
    source: str, expected: str, tmp_path: Path
) -> None:
    script = tmp_path / "program.py"
    script.write_text(source)
    # The anycore under test, whatever the working directory.
    env = {**os.environ, "PYTHONPATH": str(Path(anycore.__file__).parent.parent)}
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # Ports are the OS's choice and results that arrive as they finish may
    # come in any order: compare the lines, normalised, as multisets.
    got = sorted(PORT.sub("tcp://127.0.0.1:PORT", proc.stdout).splitlines())
    want = sorted(PORT.sub("tcp://127.0.0.1:PORT", expected).splitlines())
    assert got == want, proc.stdout


def test_getting_started_names_every_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    table = (DOCS / "getting-started.md").read_text().split("## Install", 1)[1]
    table = table.split("\n## ", 1)[0]
    missing = [e for e in project["optional-dependencies"] if f"`{e}`" not in table]
    assert not missing, f"extras not described in getting-started.md's Install: {missing}"


def test_the_facility_map_covers_every_classic_module() -> None:
    headings = re.findall(r"^## (.+)$", (DOCS / "facility-map.md").read_text(), re.M)
    wanted = [
        "asyncore", "asynchat", "socketserver", "subprocess", "os process functions",
        "signal", "threading", "queue", "multiprocessing", "logging", "logging.handlers",
        "logging.config", "optparse",
    ]  # fmt: skip
    assert headings == wanted
    text = (DOCS / "facility-map.md").read_text()
    for name in ("Process", "Pool", "Pipe", "Queue", "managers", "connection", "shared_memory"):
        assert f"`multiprocessing.{name}" in text, name


def test_no_page_needs_a_cdn_at_view_time() -> None:
    # Material renders a ```mermaid fence with mermaid.js fetched from unpkg.com:
    # the built HTML would look self-contained, the diagram would not render offline.
    mermaid = re.compile(r"^\s*```\s*mermaid", re.M)
    fenced = [p.name for p in DOCS.rglob("*.md") if mermaid.search(p.read_text())]
    assert not fenced, fenced
