"""multiprocessing: a pool computing SHA-512 digests of every file under a directory.

Classic: ``os.walk`` the tree into a list of paths, then
``pool.imap_unordered(digest, paths)`` - the walk blocks before the first
digest starts.  Changed: ``anycore.iter_files`` walks the tree without
blocking the loop and feeds ``imap_unordered`` as it goes (bounded in-flight
work); results arrive as workers finish.

    python examples/classic/mp_pool_digest.py [DIRECTORY]
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import anycore


def digest(path: str) -> tuple[str, str]:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return path, h.hexdigest()


def show(path: str, hexdigest: str, top: str) -> None:
    print(f"{hexdigest[:16]}...  {os.path.relpath(path, top)}")


def make_tree(top: str) -> None:
    for i in range(6):
        sub = os.path.join(top, f"dir{i % 2}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"file{i}.bin"), "wb") as f:
            f.write(bytes([i]) * 10_000)


async def digest_tree(top: str) -> None:
    count = 0
    async with anycore.WorkerPool("processes", workers=2) as pool:
        # The walk feeds the pool as it goes; results come as workers finish.
        async for path, hexdigest in pool.imap_unordered(digest, anycore.iter_files(top)):
            show(path, hexdigest, top)
            count += 1
    print(count, "files digested")


async def main() -> None:
    if len(sys.argv) > 1:
        await digest_tree(sys.argv[1])
        return
    with tempfile.TemporaryDirectory() as top:  # a small tree of our own
        make_tree(top)
        await digest_tree(top)


if __name__ == "__main__":
    anycore.run(main)
