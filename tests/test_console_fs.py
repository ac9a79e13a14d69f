"""Console input (lines, keys under a pty) and the async tree walk."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import anyio
import pytest

import anycore
from anycore.errors import FrameTooLarge

# -- console: lines from a pipe and from a file -------------------------------------


async def test_lines_from_a_pipe_while_the_loop_keeps_running() -> None:
    r, w = os.pipe()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    tick = asyncio.create_task(ticker())
    try:
        async with anycore.open_console(r) as console:
            os.write(w, b"first line\nsecond ")
            assert await console.readline() == "first line"
            before = ticks
            writer = asyncio.get_running_loop().call_later(0.05, os.write, w, b"line\r\n")
            assert await console.readline() == "second line"  # CRLF taken off too
            assert ticks > before  # the loop ran while the console waited
            writer.cancel()
            os.write(w, "caf\u00e9 \u2713\nlast without newline".encode())
            os.close(w)
            w = -1
            assert [line async for line in console] == ["caf\u00e9 \u2713", "last without newline"]
            assert await console.readline() == ""
    finally:
        tick.cancel()
        os.close(r)
        if w >= 0:
            os.close(w)


async def test_empty_lines_are_lines_and_eof_ends_the_iteration(tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(b"a\n\nb\n")
    with path.open("rb") as fh:  # a regular file: read in a thread
        async with anycore.open_console(fh.fileno()) as console:
            assert [line async for line in console] == ["a", "", "b"]


async def test_an_overlong_line_is_refused_and_the_console_goes_on() -> None:
    r, w = os.pipe()
    try:
        async with anycore.open_console(r, max_line=100) as console:
            os.write(w, b"x" * 500 + b"\nnext\n")
            with pytest.raises(FrameTooLarge):
                await console.readline()
            assert await console.readline() == "next"
    finally:
        os.close(r)
        os.close(w)


async def test_cancelling_a_read_leaves_the_console_usable() -> None:
    r, w = os.pipe()
    try:
        async with anycore.open_console(r) as console:
            with anyio.move_on_after(0.05) as scope:
                await console.readline()
            assert scope.cancelled_caught
            os.write(w, b"after\n")
            assert await console.readline() == "after"
        with pytest.raises(anycore.ClosedError):
            await console.readline()
    finally:
        os.close(r)
        os.close(w)


def test_lines_on_trio() -> None:
    r, w = os.pipe()

    async def main() -> list[str]:
        async with anycore.open_console(r) as console:
            os.write(w, b"one\ntwo\n")
            os.close(w)
            return [line async for line in console]

    try:
        assert anyio.run(main, backend="trio") == ["one", "two"]
    finally:
        os.close(r)


# -- console: keys under a real pty -------------------------------------------------

_KEYS = textwrap.dedent(
    """
    import anycore

    async def main():
        async with anycore.open_console(keys=True) as console:
            print("READY", flush=True)
            while (key := await console.read_key()) != "q":
                print("KEY", repr(key), flush=True)
        print("DONE", flush=True)

    anycore.run(main)
    """
)


def _read_until(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} never came: {out!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            out += chunk
    return out


def test_single_keys_in_cbreak_mode_and_the_terminal_restored() -> None:
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ICANON
    assert before[3] & termios.ECHO
    proc = subprocess.Popen(
        [sys.executable, "-c", _KEYS], stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    try:
        _read_until(master, b"READY")
        during = termios.tcgetattr(slave)
        assert not during[3] & termios.ICANON  # cbreak: no line editing...
        assert not during[3] & termios.ECHO  # ...and no echo
        os.write(master, b"a")  # no Enter needed: a key is a key
        out = _read_until(master, b"KEY 'a'")
        os.write(master, b"\x1b[A")  # the up arrow: one key
        out += _read_until(master, b"KEY '\\x1b[A'")
        os.write(master, "\u00e9".encode())
        out += _read_until(master, "KEY '\u00e9'".encode())
        os.write(master, b"q")
        out += _read_until(master, b"DONE")
        assert proc.wait(20) == 0
        assert b"a" not in out.replace(b"KEY 'a'", b"").replace(b"READY", b"")
        after = termios.tcgetattr(slave)
        assert after[3] == before[3]  # restored on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


# -- walk -----------------------------------------------------------------------


def _tree(root: Path) -> None:
    for rel in ("a/x.txt", "a/b/y.txt", "a/b/c/z.txt", "d/w.txt", "top.txt"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    (root / "link").symlink_to(root / "a", target_is_directory=True)


async def test_walk_matches_os_walk(tmp_path: Path) -> None:
    _tree(tmp_path)
    for topdown in (True, False):
        ours = [
            (r, sorted(d), sorted(f)) async for r, d, f in anycore.walk(tmp_path, topdown=topdown)
        ]
        theirs = [(r, sorted(d), sorted(f)) for r, d, f in os.walk(tmp_path, topdown=topdown)]
        assert sorted(ours) == sorted(theirs)
        if topdown:
            assert ours[0][0] == str(tmp_path)
        else:
            assert ours[-1][0] == str(tmp_path)
            roots = [r for r, _, _ in ours]  # children before their parent
            assert roots.index(str(tmp_path / "a" / "b")) < roots.index(str(tmp_path / "a"))


async def test_walk_prunes_and_follows_links_only_when_asked(tmp_path: Path) -> None:
    _tree(tmp_path)
    seen = []
    async for root, dirs, _files in anycore.walk(tmp_path):
        seen.append(os.path.relpath(root, tmp_path))
        if "b" in dirs:
            dirs.remove("b")
    assert "a/b" not in seen
    assert "link" not in seen
    followed = [
        os.path.relpath(r, tmp_path) async for r, _, _ in anycore.walk(tmp_path, followlinks=True)
    ]
    assert "link" in followed
    assert "link/b" in followed


async def test_walk_reports_errors_and_iter_files_lists_every_file(tmp_path: Path) -> None:
    _tree(tmp_path)
    errors: list[OSError] = []
    assert [x async for x in anycore.walk(tmp_path / "missing", onerror=errors.append)] == []
    assert len(errors) == 1
    assert isinstance(errors[0], FileNotFoundError)
    files = sorted([os.path.relpath(p, tmp_path) async for p in anycore.iter_files(tmp_path)])
    assert files == ["a/b/c/z.txt", "a/b/y.txt", "a/x.txt", "d/w.txt", "top.txt"]
