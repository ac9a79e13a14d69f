"""The architecture's rules, as tests (docs/design.md, "The layers").

The import graph is read from the source (module-level *and* function-level
``import`` statements of anycore's own modules), so a lazy import inside a
function counts as much as one at the top.  Each rule has an explicit list of
today's known exceptions: a new violation fails at once, and an exception
that no longer occurs fails too (so the lists only shrink).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "framework" / "anycore"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(current: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: -(level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, bool]]:
    """(imported anycore module, inside a function?) for each import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, in_function: bool, in_tc: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            func = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            tc = in_tc or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.Import) and not tc:
                for alias in child.names:
                    if alias.name.startswith("anycore"):
                        yield _longest_known(alias.name, known), func
            elif isinstance(child, ast.ImportFrom) and not tc:
                target = _resolve(name, is_package, child.module, child.level)
                if not target.startswith("anycore"):
                    continue
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    yield (sub if sub in known else _longest_known(target, known)), func
            yield from visit(child, func, tc)

    yield from visit(tree, False, False)


def _longest_known(name: str, known: set[str]) -> str:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {dep for dep, _ in _imports(name, path, known) if dep and dep != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: set[frozenset[str]] = set()
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.add(frozenset(component))
    return found


# The package __init__ files re-export lazily (PEP 562): they name every
# module, and some modules import a public name through them.  Edges *into*
# a package __init__ are not dependencies on the package's modules.
_FACADES = {"anycore", "anycore.logging", "anycore.testing"}


@functools.cache
def _graph_without_facades() -> dict[str, set[str]]:
    return {m: deps - _FACADES for m, deps in _graph().items() if m not in _FACADES}


# Today's import circles (issue 13 cuts them).  Each entry: the modules of one
# strongly connected component, and why it exists.
def _cycle(*names: str) -> frozenset[str]:
    return frozenset(f"anycore.{n}" for n in names)


KNOWN_CYCLES: dict[frozenset[str], str] = {}


def test_no_import_circle_beyond_the_known_ones() -> None:
    cycles = _cycles(_graph_without_facades())
    names = {c: sorted(m.removeprefix("anycore.") for m in c) for c in cycles}
    new = [names[c] for c in cycles if c not in KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"these circles are gone: remove them from KNOWN_CYCLES: {gone}"
    assert not new, f"new import circles: {new}"


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        for dep in graph.get(node, ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_framers_import_nothing_async() -> None:
    for module in ("anycore._net._framing",):
        path = _modules()[module]
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0
        }
        assert not imported & {"asyncio", "anyio", "trio", "uvloop"}, (module, imported)
        deps = _reaches(_graph_without_facades(), module)
        assert deps <= {"anycore.errors"}, (module, deps)


# Logging may use the core and the leaves, never networking, processes or
# supervision.  Known exceptions, with the reason each still exists:
LOGGING_KNOWN: dict[tuple[str, str], str] = {}

_NOT_FOR_LOGGING = (
    "anycore._net._handler",
    "anycore._net._portable",
    "anycore._net._server",
    "anycore._net._client",
    "anycore._net._datagram",
    "anycore._net._datagram_portable",
    "anycore._net._datagram_server",
    "anycore._net._datagram_client",
    "anycore._workers._child",
    "anycore._workers._start",
    "anycore._workers._wire",
    "anycore._workers._pools",
    "anycore._workers._pool_processes",
    "anycore._proc._spawn",
    "anycore._proc._subprocess",
    "anycore._supervise._supervisor",
    "anycore._cli",
)


def test_logging_does_not_import_networking_processes_or_supervision() -> None:
    graph = _graph_without_facades()
    bad = {
        (m, dep)
        for m, deps in graph.items()
        if m.startswith("anycore.logging")
        for dep in deps
        if dep in _NOT_FOR_LOGGING
    }
    assert not bad - set(LOGGING_KNOWN), sorted(bad - set(LOGGING_KNOWN))
    assert not set(LOGGING_KNOWN) - bad, (
        f"fixed, remove from LOGGING_KNOWN: {set(LOGGING_KNOWN) - bad}"
    )


def test_nothing_in_the_package_imports_the_test_kit() -> None:
    graph = _graph()
    users = sorted(
        m
        for m, deps in graph.items()
        if not m.startswith("anycore.testing")
        and any(d == "anycore.testing" or d.startswith("anycore.testing.") for d in deps)
    )
    assert not users, users


def test_the_leaves_import_nothing_of_anycore() -> None:
    graph = _graph_without_facades()
    assert graph["anycore._core._state"] == {"anycore._core._phases"}
    assert graph["anycore._core._phases"] == set()
    assert graph["anycore.errors"] == set()


def _string_imports(path: Path) -> Iterator[str]:
    """``sys.modules`` lookups and ``import_module`` calls naming anycore's modules."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in (
            "importlib.import_module",
            "import_module",
            "sys.modules.get",
        ):
            keys = node.args[:1]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "sys.modules":
            keys = [node.slice]
        elif isinstance(node, ast.Compare) and any(
            ast.unparse(c) == "sys.modules" for c in node.comparators
        ):
            keys = [node.left]
        else:
            continue
        for key in keys:
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                if key.value.startswith(("anycore", ".")):
                    yield f"{path.name}:{node.lineno}: {key.value}"
            elif path.name != "__init__.py":  # (the facades' lazy attributes)
                name = ast.unparse(key)
                if name not in _USER_MODULE_IMPORTS:
                    yield f"{path.name}:{node.lineno}: {name}"


# Computed names imported by string, each the user's module (not anycore's).
_USER_MODULE_IMPORTS = {
    "module_name",  # _cli: the MODULE of `anycore run MODULE:OBJECT`
    "module",  # _workers._carry: the module of a job's function, in the worker
    "getattr(info.incrementaldecoder, '__module__', '')",  # _net._text: a codec's module
}


def test_no_module_reaches_anycore_by_string() -> None:
    # Cross-cutting state is imported by name (anycore._core._state), so that
    # readers and type checkers can follow every dependency.
    found = [hit for path in PACKAGE.rglob("*.py") for hit in _string_imports(path)]
    assert not found, found


# What anycore always has: its own modules and its runtime dependencies (uvloop
# only where it installs, so its guards stay).
_ALWAYS_THERE = ("anycore", "anyio", "structlog")


def _guarded_imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Try):
            continue
        caught = {
            getattr(e, "id", None)
            for h in node.handlers
            for e in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])
        }
        if not caught & {"ImportError", "ModuleNotFoundError"}:
            continue
        for stmt in node.body:
            for inner in ast.walk(stmt):
                if isinstance(inner, ast.ImportFrom):
                    names = ["anycore"] if inner.level else [inner.module or ""]
                elif isinstance(inner, ast.Import):
                    names = [a.name for a in inner.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in _ALWAYS_THERE:
                        yield f"{path.relative_to(PACKAGE)}:{inner.lineno} guards {name}"


def test_no_import_guard_for_what_is_always_installed() -> None:
    found = [hit for path in PACKAGE.rglob("*.py") for hit in _guarded_imports(path)]
    assert not found, found


def test_no_nowait_method_returns_a_flag() -> None:
    # One meaning of *_nowait, trio's: it does it or raises WouldBlock (or
    # QueueEmpty / QueueFull); sync_acquire(blocking=False) is the flag form.
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.endswith("_nowait")
        and isinstance(node.returns, ast.Name | ast.Constant)
        and getattr(node.returns, "id", getattr(node.returns, "value", None)) == "bool"
    ]
    assert not found, found


# Modules over 800 lines, each with the reason it is still one module (the
# concepts to split it into are issue 13's).
LONG_MODULES: dict[str, str] = {
    "anycore._net._asyncio_driver": (
        "one class, _ProtocolDriver: the read batch, the back-pressure hold and the "
        "async-handler task share its slots, and its hot path stays inline"
    ),
    "anycore._cli": "the command's parser and each sub-command's runner",
    "anycore._messaging._connection": (
        "Connection, codecs, handshake, Listener/Client: one protocol"
    ),
    "anycore._messaging._managers": "manager server, registry and proxies",
    "anycore._messaging._sharedmem": "shared values, arrays and the channel",
    "anycore._proc._subprocess": "Process and its options, run() and friends",
    "anycore._net._server": "serve(), Server, limits and shedding",
    "anycore._net._framing": "the framers, each small; kept together as the sans-IO layer",
    "anycore._core._queues": "Queue with its thread side, LifoQueue, PriorityQueue",
}


@pytest.mark.parametrize("limit", [800])
def test_no_module_over_the_line_limit_unless_listed(limit: int) -> None:
    long = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in _modules().items()
    }
    over = {name for name, n in long.items() if n > limit}
    assert not over - set(LONG_MODULES), sorted((n, long[n]) for n in over - set(LONG_MODULES))
    shrunk = set(LONG_MODULES) - over
    assert not shrunk, f"now under {limit} lines: remove from LONG_MODULES: {sorted(shrunk)}"


# The folders are the layers (docs/design.md): which layer may import which.
# ``errors`` and ``_version`` are leaves every layer may use.
_LAYERS_BELOW: dict[str, set[str]] = {
    "_core": set(),
    "logging": {"_core"},
    "_net": {"_core", "logging"},
    "_proc": {"_core", "logging"},
    "_workers": {"_core", "logging", "_proc"},
    "_messaging": {"_core", "logging", "_proc", "_workers"},
    "_supervise": {"_core", "logging", "_net", "_proc", "_workers"},
}
# The sans-IO framers are a leaf too (bytes in, frames out; they import only
# errors): every layer that reads a stream may frame it.
_LEAVES = {"anycore.errors", "anycore._version", "anycore._net._framing"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in _LAYERS_BELOW else None


def test_every_private_module_lives_in_a_layer_folder() -> None:
    loose = sorted(
        name
        for name in _modules()
        if name.count(".") == 1
        and name.rpartition(".")[2].startswith("_")
        and name.rpartition(".")[2] not in _LAYERS_BELOW
        and name not in {"anycore.__main__", "anycore._version", "anycore._cli"}
    )
    assert not loose, f"put these in a layer folder (_core, _net, ...): {loose}"


def test_layers_import_only_their_own_and_the_layers_below() -> None:
    graph = _graph_without_facades()
    bad = []
    for module, deps in graph.items():
        layer = _layer(module)
        if layer is None:
            continue
        allowed = _LAYERS_BELOW[layer] | {layer}
        for dep in deps - _LEAVES:
            dep_layer = _layer(dep)
            if dep_layer is None or dep_layer not in allowed:
                bad.append((module, dep))
    assert not bad, sorted(bad)


def test_every_error_class_is_raised_or_a_base() -> None:
    # A documented error that nothing raises misleads whoever catches it.
    import re

    import anycore.errors as errors

    classes = [getattr(errors, name) for name in errors.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, BaseException)]
    sources = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))
    unused = [
        cls.__name__
        for cls in classes
        if not any(other is not cls and issubclass(other, cls) for other in classes)
        and not re.search(rf"(?<!class )\b{cls.__name__}\(|raise {cls.__name__}\b", sources)
    ]
    assert not unused, unused
