"""Async filesystem helpers: walk a tree without blocking the loop.

Owns :func:`walk` (``os.walk``'s contract, async) and :func:`iter_files`
(every file path under a tree, the shape a pool wants for
``imap_unordered``).  Each directory is listed with one ``os.scandir`` in a
worker thread (``anyio.to_thread``): one thread hop per directory, not per
file, and the loop stays free while a slow disk or a network filesystem
answers.  The directory's entries are classified in the same thread (the
``is_dir`` checks may ``stat``).

Rejected: aiofiles' ``os.scandir`` wrapper (a dependency for one call) and
a thread that walks the whole tree into a queue (it keeps walking after the
consumer stopped; here the walk is a generator and stops with it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import AnyStr

import anyio

__all__ = ["iter_files", "walk"]


def _list(path: AnyStr, follow_symlinks: bool) -> tuple[list[AnyStr], list[AnyStr], list[AnyStr]]:
    dirs: list[AnyStr] = []
    files: list[AnyStr] = []
    walk_into: list[AnyStr] = []
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(entry.name)
                try:
                    symlink = entry.is_symlink()
                except OSError:
                    symlink = False
                if follow_symlinks or not symlink:
                    walk_into.append(entry.name)
            else:
                files.append(entry.name)
    return dirs, files, walk_into


async def walk(
    top: AnyStr | os.PathLike[AnyStr],
    *,
    topdown: bool = True,
    onerror: Callable[[OSError], object] | None = None,
    followlinks: bool = False,
) -> AsyncIterator[tuple[AnyStr, list[AnyStr], list[AnyStr]]]:
    """``os.walk`` without blocking the loop: ``async for root, dirs, files in walk(top)``.

    Same contract as :func:`os.walk`: top-down by default, and pruning
    ``dirs`` in place (top-down) keeps the walk out of those directories;
    errors listing a directory go to ``onerror`` (default: ignored);
    symbolic links to directories are listed but not followed unless
    ``followlinks``.

    Args:
        top: the root of the tree.
        topdown: yield a directory before (True) or after its subdirectories.
        onerror: called with the :class:`OSError` of a directory that
            cannot be listed.
        followlinks: walk into symbolic links to directories.

    Yields:
        ``(dirpath, dirnames, filenames)`` for each directory.
    """
    root: AnyStr = os.fspath(top)
    # An explicit stack, not recursion: a deep tree costs no Python frames.
    stack: list[tuple[AnyStr, bool]] = [(root, False)]
    pending_bottom_up: list[tuple[AnyStr, list[AnyStr], list[AnyStr]]] = []
    while stack:
        path, revisit = stack.pop()
        if revisit:
            yield pending_bottom_up.pop()
            continue
        try:
            dirs, files, walk_into = await anyio.to_thread.run_sync(_list, path, followlinks)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        if topdown:
            yield path, dirs, files
            # The caller may have pruned dirs: walk only what is left.
            kept = set(dirs)
            walk_into = [d for d in walk_into if d in kept]
        else:
            pending_bottom_up.append((path, dirs, files))
            stack.append((path, True))
        stack.extend((os.path.join(path, d), False) for d in reversed(walk_into))


async def iter_files(
    top: AnyStr | os.PathLike[AnyStr],
    *,
    onerror: Callable[[OSError], object] | None = None,
    followlinks: bool = False,
) -> AsyncIterator[AnyStr]:
    """Every file path under ``top`` (top-down, directories first-listed first).

    ``async for path in iter_files("src"): ...`` - the input of a pool's
    ``imap_unordered`` in the classic digest example.
    """
    async for root, _dirs, files in walk(top, onerror=onerror, followlinks=followlinks):
        for name in files:
            yield os.path.join(root, name)
