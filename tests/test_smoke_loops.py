from __future__ import annotations

import asyncio


async def test_async_tests_run_on_both_loops() -> None:
    loop = asyncio.get_running_loop()
    assert type(loop).__module__.startswith(("asyncio", "uvloop"))
