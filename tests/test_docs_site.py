"""The documentation site: it builds with --strict, renders the pages that matter, and
works offline (nothing loaded from another host, no link leading out of the site).

Skipped when the docs extra (mkdocs-material, mkdocstrings) is not installed.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import pytest

import anycore

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parent.parent
# docs/hooks.py, the mkdocs hooks that generate the example pages.
_spec = importlib.util.spec_from_file_location("anycore_docs_hooks", ROOT / "docs" / "hooks.py")
assert _spec is not None
assert _spec.loader is not None
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)

ATTRIBUTE = re.compile(r"<(\w+)\b[^>]*?\b(href|src)=\"([^\"]*)\"")
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)")
TAG = re.compile(r"<[^>]+>")
# pymdownx.snippets' section markers ("# --8<-- [start:name]"), left out of an include.
SECTION_MARKER = re.compile(r"^.*--8<-- \[(?:start|end):\w+\].*$", re.M)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return site_dir


def _text(page: Path) -> str:
    return html.unescape(TAG.sub("", page.read_text()))


def test_reference_lists_serve(site: Path) -> None:
    page = site / "reference" / "networking.html"
    assert 'id="anycore.serve"' in page.read_text()
    summary = (anycore.serve.__doc__ or "").strip().split("\n", 1)[0]
    assert summary, "serve has no docstring"
    assert summary.replace("``", "") in _text(page).replace("\n", " ")


def test_facility_map_has_a_row_for_imap_unordered(site: Path) -> None:
    page = (site / "facility-map.html").read_text()
    row = re.search(
        r"<tr>\s*<td><code>multiprocessing\.Pool\.imap_unordered</code></td>(.*?)</tr>",
        page,
        re.S,
    )
    assert row, "no row for multiprocessing.Pool.imap_unordered"
    assert "#anycore.WorkerPool.imap_unordered" in row.group(1)


def test_every_example_page_shows_its_source(site: Path) -> None:
    for example in hooks.example_files():
        page = site / hooks.page_uri(example).replace(".md", ".html")
        # Highlighting splits the source into spans; the characters stay.
        shown = re.sub(r"\s", "", _text(page))
        source = re.sub(r"\s", "", SECTION_MARKER.sub("", example.read_text()))
        assert source in shown, f"{page.name} does not show {example.name}"


def test_links_to_examples_lead_to_their_pages(site: Path) -> None:
    # docs/servers.md links to ../examples/echo.py; the site has no such file.
    page = (site / "servers.html").read_text()
    assert 'href="examples/echo.html"' in page
    assert "../examples/echo.py" not in page


def test_the_lifecycle_diagram_shows_every_phase_in_order(site: Path) -> None:
    page = (site / "lifecycle.html").read_text()
    svg = re.search(r"<svg\b[^>]*aria-labelledby=\"lc-title\".*?</svg>", page, re.S)
    assert svg, "no inline SVG on the lifecycle page"
    positions = [svg.group(0).find(f"{phase.value}  {phase.name}<") for phase in anycore.Phase]
    assert -1 not in positions, positions
    assert positions == sorted(positions)


def test_nothing_is_loaded_from_another_host(site: Path) -> None:
    external = []
    for page in site.rglob("*.html"):
        for tag, _, url in ATTRIBUTE.findall(page.read_text()):
            if tag != "a" and url.startswith(("http:", "https:", "//")):
                external.append(f"{page.name}: <{tag}> {url}")
    for sheet in site.rglob("*.css"):
        for url in CSS_URL.findall(sheet.read_text()):
            if url.startswith(("http:", "https:", "//")):
                external.append(f"{sheet.name}: url({url})")
    assert not external, external
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()


def test_every_link_stays_inside_the_site(site: Path) -> None:
    root = site.resolve()
    broken = []
    for page in site.rglob("*.html"):
        for tag, _, url in ATTRIBUTE.findall(page.read_text()):
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or not parts.path:
                continue  # a page of another site (an <a>: see above), or an anchor
            base = root if parts.path.startswith("/") else page.parent
            target = (base / unquote(parts.path).lstrip("/")).resolve()
            if target.is_dir():
                target /= "index.html"
            if not target.is_relative_to(root) or not target.is_file():
                broken.append(f"{page.relative_to(site)}: <{tag}> {url}")
    assert not broken, broken


def test_the_hook_points_example_links_at_pages_from_any_depth() -> None:
    page = SimpleNamespace(file=SimpleNamespace(src_uri="reference/x.md"))
    config = SimpleNamespace(docs_dir=str(ROOT / "docs"))
    markdown = (
        "[a](../../examples/echo.py#L3) [b](../../examples/classic/subprocess_wc.py) "
        "[c](https://example.org/echo.py) [d](../servers.md) [e](../../examples/nope.py)"
    )
    assert hooks.on_page_markdown(markdown, page, config, None) == (
        "[a](../examples/echo.md) [b](../examples/classic/subprocess_wc.md) "
        "[c](https://example.org/echo.py) [d](../servers.md) [e](../../examples/nope.py)"
    )


def test_the_hook_turns_docstring_rest_into_markdown() -> None:
    rest = "Uses :class:`~anycore.Queue` and ``put``; run it::\n\n    python x.py\n"
    assert hooks._rest_to_markdown(rest) == "Uses `Queue` and `put`; run it:\n\n    python x.py\n"
