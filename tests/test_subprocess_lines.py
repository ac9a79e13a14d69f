"""The pipe readers' line cutting against a reference model, at every split point.

A real OS pipe carries the bytes (written in the chunk sizes hypothesis picks,
down to one byte); the reader must return the same lines, over-long-line errors
and pieces whatever the chunking.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from hypothesis import given, strategies as st

from anycore import FrameTooLarge, ProcessReader, ProcessWriter, TextProcessReader

TOO_LONG = "<too long>"

lines_st = st.lists(st.text(alphabet="ab\r", max_size=40).map(str.encode), min_size=0, max_size=12)


def model(contents: list[bytes], final_newline: bool, limit: int, split: bool) -> list[object]:
    """What readline() must return for these lines, in order."""
    out: list[object] = []
    for index, content in enumerate(contents):
        last = index == len(contents) - 1
        newline = b"" if (last and not final_newline) else b"\n"
        if last and not final_newline and not content:
            break
        if len(content) <= limit:
            out.append(content + newline)
        elif split:
            while len(content) > limit:
                out.append(content[:limit])
                content = content[limit:]
            if content or newline:
                out.append(content + newline)
        else:
            out.append(TOO_LONG)
    return out


def payload(contents: list[bytes], final_newline: bool) -> bytes:
    data = b"\n".join(contents)
    return data + b"\n" if (contents and final_newline) else data


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos = [], 0
    for size in sizes or [len(data) or 1]:
        if pos >= len(data):
            break
        chunks.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        chunks.append(data[pos:])
    return chunks


async def read_all(
    chunks: list[bytes], limit: int, split: bool, buffer_limit: int, text: bool
) -> list[object]:
    loop = asyncio.get_running_loop()
    r, w = os.pipe2(os.O_CLOEXEC)
    raw = ProcessReader(
        loop, r, "stdout", limit=buffer_limit, max_line_length=limit, split_long_lines=split
    )
    reader: ProcessReader | TextProcessReader = (
        TextProcessReader(raw, "ascii", "strict") if text else raw
    )
    writer = ProcessWriter(loop, w)

    async def feed() -> None:
        for chunk in chunks:
            await writer.write(chunk)
            await asyncio.sleep(0)  # let the reader see chunk boundaries
        writer.close()

    task = asyncio.ensure_future(feed())
    got: list[object] = []
    try:
        while True:
            try:
                line = await reader.readline()
            except FrameTooLarge:
                got.append(TOO_LONG)
                continue
            if not line:
                break
            got.append(line.encode() if isinstance(line, str) else line)
        await task
    finally:
        task.cancel()
        reader.close()
        writer.close()
    return got


def run_on(loop_name: str, coro: Callable[[], Coroutine[Any, Any, list[object]]]) -> list[object]:
    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro())


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@given(
    contents=lines_st,
    final_newline=st.booleans(),
    limit=st.integers(1, 30),
    split=st.booleans(),
    sizes=st.lists(st.integers(1, 50), max_size=30),
    buffer_limit=st.integers(1, 64),
)
def test_binary_lines_match_the_model(
    loop_name: str,
    contents: list[bytes],
    final_newline: bool,
    limit: int,
    split: bool,
    sizes: list[int],
    buffer_limit: int,
) -> None:
    data = payload(contents, final_newline)
    expected = model(contents, final_newline, limit, split) if data else []
    got = run_on(
        loop_name, lambda: read_all(chunked(data, sizes), limit, split, buffer_limit, text=False)
    )
    assert got == expected


@given(
    contents=st.lists(st.text(alphabet="xy", max_size=30).map(str.encode), max_size=10),
    final_newline=st.booleans(),
    limit=st.integers(1, 20),
    split=st.booleans(),
    sizes=st.lists(st.integers(1, 40), max_size=20),
)
def test_text_lines_match_the_model(
    contents: list[bytes], final_newline: bool, limit: int, split: bool, sizes: list[int]
) -> None:
    data = payload(contents, final_newline)
    expected = model(contents, final_newline, limit, split) if data else []
    got = run_on("asyncio", lambda: read_all(chunked(data, sizes), limit, split, 16, text=True))
    assert got == expected


async def test_one_byte_at_a_time_keeps_lines_whole() -> None:
    data = b"alpha\nbeta\n\ngamma"
    got = await read_all([data[i : i + 1] for i in range(len(data))], 100, False, 1, False)
    assert got == [b"alpha\n", b"beta\n", b"\n", b"gamma"]
