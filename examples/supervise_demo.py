"""Supervise two programs: dependency order, readiness, a restart after kill -9.

    python examples/supervise_demo.py

`db` and two `web` instances (which wait for db to be ready) print READY and
sleep; the demo kills one web instance with SIGKILL, waits until the
supervisor restarted it, prints the status table and exits, stopping web
before db.
"""

from __future__ import annotations

import os
import signal
import sys

import anycore
from anycore import Program, ProgramState, Supervisor

SLEEPER = (sys.executable, "-c", "import time; print('READY', flush=True); time.sleep(60)")


async def main() -> None:
    programs = [
        Program("db", command=SLEEPER, ready_line="READY"),
        Program(
            "web",
            command=SLEEPER,
            ready_line="READY",
            depends_on=("db",),
            numprocs=2,
            backoff_initial=0.1,
        ),
    ]
    async with Supervisor(programs) as sup:
        await sup.wait_state("all", ProgramState.RUNNING, timeout=30)
        [victim] = sup.status("web:1")
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        await sup.wait_for(
            "web:1",
            lambda s: s[0].state is ProgramState.RUNNING and s[0].pid != victim.pid,
            timeout=30,
        )
        for st in sup.status():
            print(f"{st.name:<6} {st.state.value:<8} pid={st.pid} restarts={st.restarts}")
    # Leaving the block stopped web:0 and web:1 first, then db.


if __name__ == "__main__":
    anycore.run(main)
