"""anycore.testing.pytest_plugin, run in a separate pytest session (pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import asyncio
import subprocess

import pytest

import anycore
from anycore import Phase

steps = []


async def test_loop_kind():
    print("LOOP", type(asyncio.get_running_loop()).__module__)


async def test_runtime_fixture(anycore_runtime):
    assert anycore.current_runtime() is anycore_runtime

    async def step():
        steps.append("pools")

    anycore_runtime.add_shutdown_step(Phase.POOLS, "x", step)


def test_runtime_shut_down_in_order():
    assert steps == ["pools", "pools"]  # once per loop


def test_fake_clock(fake_clock):
    async def main():
        return [t.index async for t in anycore.every(3600.0, limit=3)]

    assert fake_clock.run(main) == [0, 1, 2]
    assert fake_clock.time() == 7200.0


def test_leak_is_reported(no_leaked_children):
    subprocess.Popen(["sleep", "2"])  # short-lived: it outlives only the check
"""


def test_plugin_in_a_separate_session(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["anycore.testing.pytest_plugin"]\n')
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    # 7 tests pass; the leak check then errors in the last one's teardown.
    result.assert_outcomes(passed=7, errors=1)
    result.stdout.fnmatch_lines(["*LOOP asyncio*", "*LOOP uvloop*"])
    result.stdout.fnmatch_lines(["*left child processes behind*"])
    # The leaked `sleep 2` belonged to the inner session's process, which has
    # ended; it was reparented and exits by itself.


def test_unknown_loop_name() -> None:
    from anycore.testing.pytest_plugin import loop_factories

    with pytest.raises(ValueError, match="unknown loop"):
        loop_factories(["tokio"])
    assert set(loop_factories(["asyncio", "uvloop"])) <= {"asyncio", "uvloop"}
