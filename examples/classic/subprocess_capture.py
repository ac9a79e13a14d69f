"""subprocess: capture a command's output.

Classic: ``subprocess.check_output(["uname", "-a"], text=True)`` (or a
``Popen(..., stdout=PIPE).communicate()``).  Changed: ``await
anycore.check_output``; the output is bounded (``max_output``), a failure
raises ``CalledProcessError`` with the output and the decoded status.

    python examples/classic/subprocess_capture.py
"""

from __future__ import annotations

import anycore


async def main() -> None:
    output = await anycore.check_output(["uname", "-s"], text=True)
    print("captured:", output.strip())
    try:
        await anycore.check_output(["sh", "-c", "echo partial; exit 3"], text=True)
    except anycore.CalledProcessError as exc:
        print(f"failed with {exc.returncode}, output so far {str(exc.output).strip()!r}")


if __name__ == "__main__":
    anycore.run(main)
