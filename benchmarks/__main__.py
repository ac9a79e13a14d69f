"""Run every benchmark: ``python -m benchmarks [--quick] [name ...]``.

Each ``bench_<name>.py`` module in this package defines ``main(quick: bool)``,
runs its baselines in the same invocation and prints ratios.  ``--quick`` is
the smoke mode CI runs so the benchmarks never rot (small sizes, one repeat).
"""

from __future__ import annotations

import argparse
import importlib
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
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {discover()})")
    args = parser.parse_args(argv)
    names = args.names or discover()
    unknown = set(names) - set(discover())
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    print(f"# anycore benchmarks ({'quick' if args.quick else 'full'}) on {machine()}", flush=True)
    failed = []
    for name in names:
        print(f"\n## {name}", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            module.main(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"({name}: {time.perf_counter() - started:.1f}s)", flush=True)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
