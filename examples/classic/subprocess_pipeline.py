"""subprocess: the pipeline ``ls -l | wc``.

Classic: two Popen objects wired by hand - ``p1 = Popen(["ls", "-l"],
stdout=PIPE)``, ``p2 = Popen(["wc"], stdin=p1.stdout, stdout=PIPE)``,
``p1.stdout.close()`` so that ls gets SIGPIPE if wc exits, then
``p2.communicate()``.  Changed: ``cmd("ls", "-l") | cmd("wc")`` wires the
real pipe and closes the parent's ends itself; one result carries every
stage's status.

    python examples/classic/subprocess_pipeline.py [DIRECTORY]
"""

from __future__ import annotations

import sys

import anycore
from anycore import cmd


async def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "/"
    result = await (cmd("ls", "-l", directory) | cmd("wc", "-l")).run(
        capture_output=True, text=True
    )
    print(f"ls -l {directory} | wc -l -> {result.stdout.strip()}")
    print("statuses:", ", ".join(str(s) for s in result.statuses))


if __name__ == "__main__":
    anycore.run(main)
