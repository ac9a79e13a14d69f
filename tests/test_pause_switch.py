"""PauseSwitch: a task that can be paused and resumed, not only cancelled."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from anycore import PauseSwitch


async def _steps_while(switch: PauseSwitch, steps: list[int], stop: int) -> None:
    for i in range(stop):
        await switch.checkpoint()
        steps.append(i)
        await asyncio.sleep(0)


async def test_pause_holds_the_task_at_its_checkpoint_and_resume_lets_it_go() -> None:
    switch = PauseSwitch()
    steps: list[int] = []
    task = asyncio.create_task(_steps_while(switch, steps, 1_000_000))
    while len(steps) < 10:
        await asyncio.sleep(0)
    switch.pause()
    assert switch.paused
    await asyncio.sleep(0)  # the task reaches its checkpoint and stops there
    held = len(steps)
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(steps) == held  # no step while paused
    switch.resume()
    while len(steps) < held + 10:
        await asyncio.sleep(0)
    task.cancel()  # the stoppable thread's "terminate"
    with pytest.raises(asyncio.CancelledError):
        await task
    assert switch.pauses == 1


async def test_a_paused_task_can_be_cancelled() -> None:
    switch = PauseSwitch()
    switch.pause()
    with anyio.move_on_after(0.01) as scope:
        await switch.checkpoint()
    assert scope.cancelled_caught


def test_on_trio() -> None:
    async def main() -> list[int]:
        switch = PauseSwitch()
        steps: list[int] = []
        switch.pause()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_trio_steps, switch, steps)
            for _ in range(20):
                await anyio.sleep(0)  # the task has had every chance to run
            assert steps == []
            switch.resume()
        return steps

    async def _trio_steps(switch: PauseSwitch, steps: list[int]) -> None:
        for i in range(3):
            await switch.checkpoint()
            steps.append(i)

    assert anyio.run(main, backend="trio") == [0, 1, 2]
