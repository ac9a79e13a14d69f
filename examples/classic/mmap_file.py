"""mmap: a file mapped into memory, read and changed through slices, flushed.

Classic: ``mm = mmap.mmap(f.fileno(), 0)``, ``mm[:5]``, ``mm[6:11] =
b"world"``, ``mm.flush()``.  Changed: the slicing is memory access and stays
as it is; ``flush()`` is an ``msync`` that waits for the disk, so it runs in
a worker thread and the loop keeps serving meanwhile.

    python examples/classic/mmap_file.py [DIRECTORY]
"""

from __future__ import annotations

import mmap
import sys
import tempfile
from pathlib import Path

import anyio

import anycore


async def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    path = directory / "hello.txt"
    path.write_bytes(b"Hello world!\n")
    with path.open("r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        print("whole map:", mm[:].decode().rstrip())
        print("first word:", mm[:5].decode())
        mm[6:11] = b"there"  # same length: a mapping does not grow
        print("after the slice assignment:", mm.readline().decode().rstrip())
        await anyio.to_thread.run_sync(mm.flush)  # msync off the loop
    print("on disk:", path.read_bytes().decode().rstrip())


if __name__ == "__main__":
    anycore.run(main)
