"""subprocess: send input to ``wc`` and read its output.

Classic: ``Popen(["wc"], stdin=PIPE, stdout=PIPE).communicate(text)``.
Changed: ``await proc.communicate(text)`` writes and reads concurrently on
the loop (no deadlock on a full pipe, whatever the sizes).

    python examples/classic/subprocess_wc.py
"""

from __future__ import annotations

import anycore
from anycore import PIPE

TEXT = "one two three\nfour five\nsix\n"


async def main() -> None:
    async with anycore.open_process(["wc"], stdin=PIPE, stdout=PIPE, text=True) as proc:
        out, _ = await proc.communicate(TEXT)
    lines, words, chars = out.split()
    print(f"wc counted {lines} lines, {words} words, {chars} characters")


if __name__ == "__main__":
    anycore.run(main)
