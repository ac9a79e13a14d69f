"""mkdocs hooks: the examples become pages of the site, and links to them stay inside it.

Registered in mkdocs.yml (``hooks:``); excluded from the site itself.

* One page per file of ``examples/`` (``examples/classic/`` included), generated
  at build time: the module's docstring (or a data file's leading comment) as
  the introduction, how to run it, and the file's source included by
  pymdownx.snippets - nothing is copied, so a page never drifts from its file
  and a new example has a page as soon as it exists.  The pages are appended
  to the nav's ``Examples`` section, one sub-section per sub-directory.
* A link in any page to a file of ``examples/`` (``../examples/echo.py``, which
  the built site does not contain) is rewritten to that example's page, so the
  pages can keep linking to the files (which also works when reading them on
  GitHub) without the site linking outside itself.
* Sphinx roles left in the rendered docstrings (``:meth:`feed```, which
  mkdocstrings shows as is) are reduced to the code they name, ``~`` shortening
  ``~anycore.FrameTooLarge`` to ``FrameTooLarge`` as Sphinx does; a paragraph
  that introduced a literal block (``Example::``) ends in one colon.

Rejected: one hand-written page per example (drifts, and there are dozens).
"""

from __future__ import annotations

import ast
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SECTION = "Examples"
LANGUAGES = {".py": "python", ".toml": "toml", ".ini": "ini"}

# reST in the examples' docstrings -> Markdown: roles, double backticks, "::".
ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`~?([^`]+)`")
DOUBLE_BACKTICKS = re.compile(r"``([^`]+)``")
LITERAL_MARKER = re.compile(r"(\S)::$|^\s*::$", re.M)
RENDERED_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):<code>(~?)([^<]*)</code>")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")


def example_files() -> list[Path]:
    """The files of examples/ that get a page: programs, modules, data files."""
    return sorted(
        path
        for path in EXAMPLES.rglob("*")
        if path.suffix in LANGUAGES
        and path.name != "__init__.py"
        and "__pycache__" not in path.parts
    )


def page_uri(example: Path) -> str:
    """Where an example's page lives in the docs: ``examples/[DIR/]STEM.md``."""
    return posixpath.join("examples", example.relative_to(EXAMPLES).with_suffix(".md").as_posix())


def _rest_to_markdown(text: str) -> str:
    text = ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    text = DOUBLE_BACKTICKS.sub(r"`\1`", text)
    return LITERAL_MARKER.sub(lambda m: f"{m.group(1)}:" if m.group(1) else "", text)


def _introduction(example: Path) -> tuple[str, str]:
    """(summary line, rest) from the docstring or the leading comment."""
    source = example.read_text(encoding="utf-8")
    if example.suffix == ".py":
        text = ast.get_docstring(ast.parse(source)) or ""
    else:
        lines = []
        for line in source.splitlines():
            if not line.startswith(("#", ";")):
                break
            lines.append(line[1:].removeprefix(" "))
        text = "\n".join(lines)
    summary, _, rest = text.strip().partition("\n")
    return _rest_to_markdown(summary.strip()), _rest_to_markdown(rest.strip())


def _users(example: Path) -> list[Path]:
    """The other examples that name this file (import it or read it)."""
    name = example.stem if example.suffix == ".py" else example.name
    return [
        other
        for other in example_files()
        if other != example and other.suffix == ".py" and name in other.read_text("utf-8")
    ]


def _run_section(example: Path) -> str:
    rel = example.relative_to(ROOT).as_posix()
    source = example.read_text(encoding="utf-8")
    if example.suffix == ".py" and "__main__" in source:
        command = f"$ python {rel}"
    elif example.suffix == ".toml" and "[programs." in source:
        command = f"$ anycore supervise {rel}"
    else:
        here = posixpath.dirname(page_uri(example))
        users = ", ".join(
            f"[{user.name}]({posixpath.relpath(page_uri(user), here)})" for user in _users(example)
        )
        return f"## Run it\n\nNot a program of its own: used by {users or 'the examples'}.\n"
    return (
        "## Run it\n\n"
        "From the root of a checkout, with anycore installed (`pip install .`, or\n"
        "`make install` for the development setup):\n\n"
        f"```console\n{command}\n```\n\n"
        "The introduction above lists its other modes, if it has any.\n"
    )


def example_page(example: Path) -> str:
    """The Markdown of an example's page."""
    summary, rest = _introduction(example)
    rel = example.relative_to(ROOT).as_posix()
    parts = [f"# {example.relative_to(EXAMPLES).as_posix()}\n", summary, rest]
    parts.append(_run_section(example))
    parts.append(
        f'## Source\n\n```{LANGUAGES[example.suffix]} title="{rel}"\n--8<-- "{rel}"\n```\n'
    )
    return "\n\n".join(p for p in parts if p)


def _nav_entries() -> list[Any]:
    """Top-level examples first, then one sub-section per sub-directory."""
    entries: list[Any] = []
    sections: dict[str, list[Any]] = {}
    for example in example_files():
        rel = example.relative_to(EXAMPLES)
        entry = {example.name: page_uri(example)}
        if len(rel.parts) == 1:
            entries.append(entry)
        else:
            sections.setdefault(rel.parent.as_posix() + "/", []).append(entry)
    entries.extend({title: pages} for title, pages in sections.items())
    return entries


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Append the examples' pages to the nav's ``Examples`` section."""
    uris = [page_uri(example) for example in example_files()]
    if len(set(uris)) != len(uris):
        raise PluginError(f"two files of examples/ would share a page: {sorted(uris)}")
    for entry in config.nav or []:
        if isinstance(entry, dict) and SECTION in entry:
            entry[SECTION].extend(_nav_entries())
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated example pages to the site's files."""
    for example in example_files():
        files.append(File.generated(config, page_uri(example), content=example_page(example)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Point links to files of examples/ at those examples' pages."""
    here = posixpath.dirname(page.file.src_uri)
    docs_dir = Path(config.docs_dir).resolve()
    pages = {example: page_uri(example) for example in example_files()}

    def rewrite(match: re.Match[str]) -> str:
        target = match.group(1)
        if "://" in target or target.startswith(("mailto:", "/")):
            return match.group(0)
        uri = pages.get((docs_dir / here / target).resolve())
        if uri is None:
            return match.group(0)
        # An anchor (a line on GitHub) has no meaning on the page: dropped.
        return f"]({posixpath.relpath(uri, here or '.')})"

    return LINK.sub(rewrite, markdown)


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Drop the reST markup the rendered docstrings still show."""

    def code(match: re.Match[str]) -> str:
        name = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
        return f"<code>{name}</code>"

    return RENDERED_ROLE.sub(code, html).replace("::</p>", ":</p>")
