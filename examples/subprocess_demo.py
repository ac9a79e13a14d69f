"""anycore subprocesses in one tour: run, a pipeline, streaming, a timeout, a pty.

    python examples/subprocess_demo.py            # the bounded self-demo
    python examples/subprocess_demo.py --loop asyncio

Every step finishes on its own within a few seconds; nothing is left running.
"""

from __future__ import annotations

import argparse
import re
import sys

import anycore
from anycore import PIPE, TimeoutExpired, cmd, open_process, open_pty, pipeline, run_process

PY = sys.executable


# --8<-- [start:run]
async def run_and_capture() -> None:
    result = await run_process(["uname", "-s"], capture_output=True, text=True, check=True)
    print(f"uname says {result.stdout.strip()} ({result.status})")
    # --8<-- [end:run]


# --8<-- [start:pipeline]
async def count_words() -> None:
    words = "the quick brown fox jumps over the lazy dog the end"
    p = cmd("tr", " ", "\n") | cmd("sort") | cmd("uniq", "-c") | cmd("sort", "-rn")
    result = await p.run(words, capture_output=True, text=True)
    top = result.stdout.splitlines()[0].split()
    print(f"most frequent word: {top[1]!r} x{top[0]}")
    print("stage statuses:", ", ".join(str(s) for s in result.statuses))
    # The same with pipeline() and pipefail: `false | cat` fails as a whole.
    failing = await pipeline(["false"], ["cat"], pipefail=True).run()
    print(f"false | cat with pipefail -> {failing.returncode}")
    # --8<-- [end:pipeline]


# --8<-- [start:stream]
async def stream_lines() -> None:
    code = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.05)"
    async with open_process([PY, "-c", code], stdout=PIPE, text=True) as proc:
        assert proc.stdout is not None
        async for line in proc.stdout:
            print("child said:", line.rstrip())
        print("child", proc.pid, await proc.wait() == 0 and "finished cleanly")
    # --8<-- [end:stream]


# --8<-- [start:timeout]
async def time_out_a_hung_child() -> None:
    # The shell starts a grandchild that holds stdout open and then hangs itself.
    script = "echo started; sleep 1000 & sleep 1000"
    try:
        await run_process(["sh", "-c", script], capture_output=True, timeout=0.5)
    except TimeoutExpired as exc:
        print(f"timed out after {exc.timeout}s; output so far: {exc.output!r}")
    # The whole process group (shell and grandchild) was killed and reaped.
    # --8<-- [end:timeout]


# --8<-- [start:pty]
async def answer_a_password_prompt() -> None:
    code = "import getpass; pw = getpass.getpass('Password: '); print('length', len(pw))"
    async with open_pty([PY, "-c", code], timeout=10) as term:
        await term.expect(b"Password: ")
        await term.sendline("s3cret")
        match = await term.expect(re.compile(rb"length \d+"))  # bytes: literal; regex: compiled
        print("pty program answered:", match.group(0).decode())
    # --8<-- [end:pty]


async def main() -> None:
    await run_and_capture()
    await count_words()
    await stream_lines()
    await time_out_a_hung_child()
    await answer_a_password_prompt()
    print("done")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loop", default="auto", choices=["auto", "uvloop", "asyncio"])
    anycore.run(main, loop=parser.parse_args().loop)
