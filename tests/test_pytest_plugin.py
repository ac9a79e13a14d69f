"""anycore.testing.pytest_plugin, run in separate pytest sessions (pytester)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "anycore.testing.pytest_plugin"

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
    print("STEPS", steps)


def test_fake_clock(fake_clock):
    async def main():
        return [t.index async for t in anycore.every(3600.0, limit=3)]

    assert fake_clock.run(main) == [0, 1, 2]
    assert fake_clock.time() == 7200.0


def test_leak_is_reported(no_leaked_children):
    subprocess.Popen(["sleep", "2"])  # short-lived: it outlives only the check
"""


@pytest.fixture(autouse=True)
def _work_tree_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner sessions import this work tree's anycore, not an installed copy
    (a relative PYTHONPATH would not survive pytester's change of directory)."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "framework"))


INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


def test_by_default_each_async_test_runs_once_on_the_configured_loop(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(f'pytest_plugins = ["{PLUGIN}"]\n')
    pytester.makeini(INI)
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    # 5 tests pass; the leak check then errors in the last one's teardown.
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(["*LOOP asyncio*"])
    result.stdout.re_match_lines([r".*STEPS \['pools'\]$"])
    result.stdout.no_fnmatch_line("*LOOP uvloop*")
    result.stdout.fnmatch_lines(["*left child processes behind*"])
    # The leaked `sleep 2` belonged to the inner session's process, which has
    # ended; it was reparented and exits by itself.


def test_both_loops_are_opt_in_through_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(f'pytest_plugins = ["{PLUGIN}"]\n')
    pytester.makeini(INI + "anycore_loops = asyncio uvloop\n")
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=7, errors=1)
    result.stdout.fnmatch_lines(["*LOOP asyncio*", "*LOOP uvloop*"])
    result.stdout.re_match_lines([r".*STEPS \['pools', 'pools'\]$"])


def test_fixtures_without_a_conftest(pytester: pytest.Pytester) -> None:
    # What the pytest11 entry point does once installed: load the plugin by name.
    pytester.makeini(INI)
    pytester.makepyfile(
        test_it="""
        import logging

        async def test_fixtures(log_capture, loopback_server, anycore_runtime):
            logging.getLogger("app").warning("hello %s", "there")
            assert log_capture.find(event="hello there", level="warning")
        """
    )
    result = pytester.runpytest_subprocess("-p", PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    bare = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"-p no:{PLUGIN}")
    bare.assert_outcomes(errors=1)  # the fixtures come from the plugin only
    bare.stdout.fnmatch_lines(["*fixture 'log_capture' not found*"])


def test_unknown_loop_in_the_ini_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(f'pytest_plugins = ["{PLUGIN}"]\n')
    pytester.makeini(INI + "anycore_loops = tokio\n")
    pytester.makepyfile(test_it="async def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["*unknown loop 'tokio'*"])
    assert result.ret != 0


def test_loops_option_without_pytest_asyncio_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nanycore_loops = asyncio uvloop\n")
    pytester.makepyfile(test_it="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", PLUGIN, "-p", "no:asyncio", "-p", "no:cacheprovider"
    )
    result.stderr.fnmatch_lines(["*anycore_loops needs pytest-asyncio*anyio_backend*"])
    assert result.ret != 0


ANYIO_TESTS = """
import logging

import anyio
import pytest

import anycore
from anycore.testing import memory_connection

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


class Echo(anycore.LineHandler):
    def line_received(self, line):
        logging.getLogger("echo").info("got %r", line)
        self.send_line(line)


async def test_kit(anyio_backend, log_capture, loopback_server, anycore_runtime):
    assert anycore.current_runtime() is anycore_runtime
    server = await loopback_server(Echo)
    async with await anyio.connect_tcp("127.0.0.1", server.endpoints[0].port) as client:
        await client.send(b"hi\\r\\n")
        assert await client.receive() == b"hi\\r\\n"
    async with memory_connection(Echo()) as peer:
        await peer.send(b"yo\\r\\n")
        assert await peer.receive_until(b"\\r\\n") == b"yo\\r\\n"
    (record,) = log_capture.find(event="got b'yo'")
    assert record["connection_id"] == peer.handler.connection_id
    print("BACKEND", anyio_backend, "OK")
"""


def test_fixtures_under_anyio_plugin_on_asyncio_and_trio(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_it=ANYIO_TESTS)
    result = pytester.runpytest_subprocess(
        "-s", "-p", PLUGIN, "-p", "no:asyncio", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*BACKEND asyncio OK*", "*BACKEND trio OK*"])


def test_loaded_through_a_pytest11_entry_point_and_also_listed_in_a_conftest(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an install gives pytest: a distribution declaring the entry point
    # (here a bare .dist-info on the path, so the shared venv is left alone).
    site = tmp_path / "site"
    info = site / "anycore_entry_point-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: anycore-entry-point\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[pytest11]\n{PLUGIN} = {PLUGIN}\n")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'framework'}:{site}")
    pytester.makeini(INI)
    pytester.makepyfile(
        test_it="""
        def test_fixture_from_the_entry_point(log_capture):
            assert len(log_capture) == 0
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # An old conftest that lists the plugin too: loaded once, no clash.
    pytester.makeconftest(f'pytest_plugins = ["{PLUGIN}"]\n')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_installed_distribution_declares_the_entry_point() -> None:
    dist = importlib.metadata.distribution("anycore")
    declared = {ep.name: ep.value for ep in dist.entry_points if ep.group == "pytest11"}
    if not declared and "pytest11" in (ROOT / "pyproject.toml").read_text():
        pytest.skip(
            "the installed anycore metadata predates the pytest11 entry point: "
            "reinstall the package (make install) to check it"
        )
    assert declared == {PLUGIN: PLUGIN}


def test_unknown_loop_name() -> None:
    from anycore.testing.pytest_plugin import loop_factories

    with pytest.raises(ValueError, match="unknown loop"):
        loop_factories(["tokio"])
    assert set(loop_factories(["asyncio", "uvloop"])) <= {"asyncio", "uvloop"}
