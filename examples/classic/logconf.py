"""The central logging configuration of the logging_central example.

Classic: one module that configures logging when it is first imported;
every other module imports it (Python runs a module once, so the
configuration is applied once however many modules import it).  Changed:
anycore's handlers, and ``configure`` renders stdlib and structlog records
through one pipeline.
"""

from __future__ import annotations

import sys

from anycore.logging import configure

CONFIGURED = configure(
    "INFO", "console", stream=sys.stdout, colors=False, timestamp=None, capture_warnings=False
)
print(f"logconf: configured {len(CONFIGURED)} handler(s)", flush=True)
