"""Run every benchmark: ``python -m benchmarks [--quick] [--write-docs] [name ...]``.

Each ``bench_<name>.py`` module in this package defines ``main(quick: bool)``,
runs its baselines in the same invocation, prints ratios and records its
headline figures with :mod:`benchmarks._report`.  At the end one summary
table covers every facility, each target marked met or MISSED.  ``--quick``
is the smoke mode CI runs so the benchmarks never rot (small sizes, one
repeat); ``--write-docs`` writes docs/benchmarks.md with the summary, a chart
per facility and every benchmark's output.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import pkgutil
import platform
import sys
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        info.name[len("bench_") :]
        for info in pkgutil.iter_modules([str(here)])
        if info.name.startswith("bench_")
    )


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{python}, {os.cpu_count()} cores, {cpu}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke mode: small sizes")
    parser.add_argument(
        "--write-docs", action="store_true", help="write docs/benchmarks.md from this run"
    )
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {discover()})")
    args = parser.parse_args(argv)
    names = args.names or discover()
    unknown = set(names) - set(discover())
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    print(f"# anycore benchmarks ({'quick' if args.quick else 'full'}) on {machine()}", flush=True)
    failed = []
    outputs: dict[str, str] = {}
    for name in names:
        print(f"\n## {name}", flush=True)
        started = time.perf_counter()
        captured = _Tee(sys.stdout)
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            with contextlib.redirect_stdout(captured):
                module.main(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        outputs[name] = captured.text()
        print(f"({name}: {time.perf_counter() - started:.1f}s)", flush=True)
    from . import _report

    print("\n## summary\n")
    print(_report.summary())
    if args.write_docs:
        page = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        mode = "quick (smoke sizes)" if args.quick else "full"
        _report.write_docs(page, machine(), mode, outputs)
        print(f"wrote {page}")
    failed += [f"{facility}: {what}" for facility, what in _report.failures()]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


class _Tee(io.TextIOBase):
    """Writes through to the terminal and keeps a copy for the docs page."""

    def __init__(self, stream: io.TextIOBase | object) -> None:
        self._stream = stream
        self._copy = io.StringIO()

    def write(self, s: str) -> int:
        self._copy.write(s)
        self._stream.write(s)  # type: ignore[attr-defined]
        self._stream.flush()  # type: ignore[attr-defined]
        return len(s)

    def flush(self) -> None:
        self._stream.flush()  # type: ignore[attr-defined]

    def text(self) -> str:
        return self._copy.getvalue()


if __name__ == "__main__":
    sys.exit(main())
