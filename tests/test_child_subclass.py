"""ChildProcess's subclass form: override run(), as multiprocessing.Process allows."""

from __future__ import annotations

import os

import pytest

import anycore


class Squarer(anycore.ChildProcess[list[int]]):
    def __init__(self, numbers: list[int]) -> None:
        super().__init__(daemon=False)
        self.numbers = numbers
        self._offset = 1  # the subclass's own private attributes go too

    def run(self) -> list[int]:
        return [n * n + self._offset for n in self.numbers] + [os.getpid()]


class AsyncRun(anycore.ChildProcess[str]):
    def __init__(self, word: str) -> None:
        super().__init__()
        self.word = word

    async def run(self) -> str:  # type: ignore[override]
        return self.word.upper()


async def test_run_is_called_in_the_child_with_the_subclass_attributes() -> None:
    async with Squarer([1, 2, 3]) as child:
        *squares, pid = await child.result(timeout=30)
    assert squares == [2, 5, 10]
    assert pid == child.pid != os.getpid()
    assert child.exitcode == 0


async def test_an_async_run_runs_under_asyncio_in_the_child() -> None:
    async with AsyncRun("hello") as child:
        assert await child.result(timeout=30) == "HELLO"


def test_no_target_and_no_run_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="needs a target, or a subclass that overrides run"):
        anycore.ChildProcess()
