"""The public surface: flat, importable, documented, cheap to import."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import anycore

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_public_name_resolves() -> None:
    assert len(set(anycore.__all__)) == len(anycore.__all__), "duplicate names in __all__"
    for name in anycore.__all__:
        assert getattr(anycore, name) is not None, name


def test_unknown_name_is_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = anycore.nope  # type: ignore[attr-defined]


def test_private_modules_start_with_underscore() -> None:
    package = Path(anycore.__file__).parent
    public = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    public |= {p.name for p in package.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert public <= {"abc", "errors", "logging", "testing"}, public


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for name in anycore.__all__:
        if name == "__version__":
            continue
        obj = getattr(anycore, name)
        if not getattr(obj, "__module__", "anycore").startswith("anycore"):
            continue  # re-exported from anyio as is (documented in docs/)
        if (inspect.isclass(obj) or callable(obj)) and not inspect.getdoc(obj):
            missing.append(name)
    assert not missing, f"no docstring: {missing}"


def test_every_public_name_is_documented() -> None:
    text = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    missing = [n for n in anycore.__all__ if n != "__version__" and n not in text]
    assert not missing, f"not mentioned anywhere in docs/: {missing}"


def test_errors_are_anycore_errors_and_anyio_resource_errors() -> None:
    import anyio

    assert issubclass(anycore.QueueClosed, anycore.AnycoreError)
    assert issubclass(anycore.QueueClosed, anyio.ClosedResourceError)
    assert issubclass(anycore.WorkerCrashed, anyio.BrokenResourceError)
    assert issubclass(anycore.BusyError, anyio.BusyResourceError)
    assert issubclass(anycore.TimeoutExpired, TimeoutError)
    for name in anycore.errors.__all__:
        assert issubclass(getattr(anycore.errors, name), anycore.AnycoreError), name


def test_import_is_cheap_and_lazy() -> None:
    code = (
        "import sys, anycore; "
        "heavy = [m for m in ('structlog', 'trio', 'multiprocessing', 'ssl', 'cloudpickle', "
        "'distributed', 'anycore._net._handler', 'anycore._proc._subprocess') "
        "if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"


def test_version() -> None:
    assert anycore.__version__.count(".") >= 2


def test_shared_memory_names() -> None:
    for name in ("SharedValue", "SharedArray", "RawSharedArray", "ShmChannel"):
        assert getattr(anycore, name).__module__ == "anycore._messaging._sharedmem", name
    for name in ("ProcessLock", "ProcessSemaphore", "ProcessEvent"):
        assert getattr(anycore, name).__module__ == "anycore._messaging._psync", name
    # Not the task-level primitives of the same family.
    assert anycore.ProcessLock is not anycore.Lock
    assert issubclass(anycore.MessageTooLarge, ValueError)
    assert issubclass(anycore.ProcessLock, anycore.ProcessSemaphore)


def test_message_passing_errors_fit_the_standard_library_and_anyio() -> None:
    import anyio

    assert issubclass(anycore.PeerClosed, EOFError)
    assert issubclass(anycore.PeerClosed, anyio.EndOfStream)
    assert issubclass(anycore.MethodNotExposed, AttributeError)
    assert issubclass(anycore.InsecureListener, ValueError)
    assert issubclass(anycore.UndecodableMessage, anycore.RemoteProtocolError)
    assert anycore.Pipe is anycore._messaging._connection.Pipe  # type: ignore[attr-defined]


def test_command_line_and_supervision_names() -> None:
    assert anycore.add_standard_options.__module__ == "anycore._cli"
    assert anycore.apply_standard_options.__module__ == "anycore._cli"
    assert issubclass(anycore.ControlSocketError, PermissionError)
    assert issubclass(anycore.ControlSocketError, anycore.AnycoreError)
