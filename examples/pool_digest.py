"""Hash every file of a tree in a process pool (multiprocessing's digest example).

    python examples/pool_digest.py [DIRECTORY]

Without an argument it builds a small temporary tree, hashes it, checks the
result against hashlib run in this process, and exits.  The directory walk
runs in a thread, one directory at a time, feeding an async generator; the
pool pulls paths from it only as fast as it hashes them, so a huge tree
never sits in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from anycore import WorkerPool


def digest(path: str) -> tuple[str, str]:
    """Runs in a worker process: the SHA-256 of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return path, h.hexdigest()


def _scan(directory: str) -> tuple[list[str], list[str]]:
    files, dirs = [], []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                dirs.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                files.append(entry.path)
    return sorted(files), sorted(dirs)


async def walk(root: str) -> AsyncIterator[str]:
    """Yield the files under *root*; each directory is listed in a thread."""
    stack = [root]
    while stack:
        files, dirs = await anyio.to_thread.run_sync(_scan, stack.pop())
        for path in files:
            yield path
        stack.extend(reversed(dirs))


async def digest_tree(root: str, workers: int = 2) -> dict[str, str]:
    """Map every file under *root* to its SHA-256, hashing in worker processes."""
    digests: dict[str, str] = {}
    async with WorkerPool("processes", workers=workers) as pool:
        async for path, hexdigest in pool.imap_unordered(digest, walk(root), chunksize=4):
            digests[path] = hexdigest
    return digests


def _make_tree(root: Path) -> None:
    for d in range(3):
        sub = root / f"dir{d}" / "nested"
        sub.mkdir(parents=True)
        for i in range(5):
            (sub / f"file{i}.bin").write_bytes(os.urandom(1000 * (i + 1)))
            (root / f"dir{d}" / f"top{i}.txt").write_text(f"file {d}/{i}\n" * (i + 1))


def _check(result: dict[str, str], root: str) -> None:
    expected = {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in Path(root).rglob("*")
        if p.is_file()
    }
    for path, hexdigest in sorted(result.items())[:3]:
        print(f"{hexdigest[:16]}  {os.path.relpath(path, root)}")
    print(f"hashed {len(result)} files in worker processes")
    assert result == expected, "digests differ from hashlib's"
    print("digests match hashlib")


async def main(argv: list[str]) -> None:
    if argv:
        for path, hexdigest in sorted((await digest_tree(argv[0])).items()):
            print(f"{hexdigest}  {path}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        # the demo's own file I/O runs in threads, off the loop
        await anyio.to_thread.run_sync(_make_tree, Path(tmp))
        result = await digest_tree(tmp)
        await anyio.to_thread.run_sync(_check, result, tmp)
    print("done")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
