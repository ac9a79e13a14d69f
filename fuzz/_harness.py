"""Plumbing shared by the atheris harnesses of this folder (issue 19).

Each ``fuzz_*.py`` next to this file is a libFuzzer target run by atheris:
``python fuzz/fuzz_framers.py [libFuzzer flags] [corpus dir]``.  A harness

* imports the code under test inside :func:`instrumented`, so that atheris
  instruments it (coverage feedback is what lets the fuzzer find its way
  into the parsers' branches);
* turns one input into a call of the parser, and raises (which atheris
  reports as a crash, with the input saved as ``crash-<sha1>``) when the
  property breaks: an exception other than anycore's own errors escapes, a
  bound is broken, or one input costs more memory than :class:`MemoryBound`
  allows;
* seeds an empty corpus directory given on the command line with a few
  well-formed inputs (:func:`main`), so that short runs start deep.

The source tree (``framework/``, ``examples/``) comes first on ``sys.path``:
the harnesses fuzz the code being worked on, not an older installed copy.
"""

from __future__ import annotations

import hashlib
import sys
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "examples", ROOT / "framework"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import atheris  # noqa: E402  (after the path set-up, on purpose)

__all__ = ["ROOT", "MemoryBound", "Reader", "instrumented", "main"]


@contextmanager
def instrumented(*modules: str) -> Iterator[None]:
    """Instrument ``anycore`` (and ``modules``) as they are imported in the block.

    Nothing of anycore may be imported before: a module already in
    ``sys.modules`` is not instrumented again.
    """
    already = [name for name in sys.modules if name == "anycore" or name.startswith("anycore.")]
    if already:
        raise RuntimeError(f"anycore was imported before instrumentation: {already[:3]}")
    with atheris.instrument_imports(include=["anycore", *modules]):
        yield


class MemoryBound:
    """Checks that one input costs at most ``per_byte * len(input) + fixed`` bytes.

    tracemalloc runs for the whole fuzzing session; per input only the peak
    is reset, and the peak above what was allocated before the input is
    compared with the bound.  It measures Python allocations, which is where
    an amplification (a small input building a huge string or buffer) shows.
    Not checked while :func:`main` warms up (first calls import and cache).
    """

    warming = False

    def __init__(self, per_byte: int, fixed: int) -> None:
        self.per_byte = per_byte
        self.fixed = fixed
        if not tracemalloc.is_tracing():
            tracemalloc.start()

    @contextmanager
    def check(self, data: bytes) -> Iterator[None]:
        if MemoryBound.warming:
            yield
            return
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        yield
        peak = tracemalloc.get_traced_memory()[1] - base
        bound = self.per_byte * len(data) + self.fixed
        if peak > bound:
            raise AssertionError(
                f"one input of {len(data)} bytes allocated {peak} bytes at peak "
                f"(the bound is {bound})"
            )


class Reader:
    """Reads a fuzz input as little fields, then the rest (never raises).

    Simpler than atheris' FuzzedDataProvider and with a layout one can write
    seeds for by hand: :meth:`byte` takes one byte from the front (0 when
    the input is used up), :meth:`take` the next ``n`` bytes, :meth:`rest`
    everything left.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _seed_corpus(args: list[str], seeds: Iterable[bytes]) -> None:
    """Write ``seeds`` into the first corpus directory of ``args`` if it is empty."""
    dirs = [Path(a) for a in args if not a.startswith("-")]
    if not dirs:
        return
    corpus = dirs[0]
    if corpus.exists() and not corpus.is_dir():  # a file: an input to re-run
        return
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    for seed in seeds:
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)


def main(test_one_input: Callable[[bytes], Any], seeds: Iterable[bytes]) -> None:
    """Seed the corpus directory (if one is given and empty), warm up, then fuzz.

    The warm-up runs every seed once without the memory check, so that
    one-time costs (lazy imports, caches) are not blamed on the first input.
    """
    seeds = list(seeds)
    _seed_corpus(sys.argv[1:], seeds)
    MemoryBound.warming = True
    try:
        for seed in seeds:
            test_one_input(seed)
    finally:
        MemoryBound.warming = False
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
