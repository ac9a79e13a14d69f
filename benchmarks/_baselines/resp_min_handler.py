"""The minimal RESP server of resp_min.py as an anycore RawHandler: the same parse, the same reply.

    anycore run --app-dir benchmarks/_baselines resp_min_handler:MinHandler \\
        --bind tcp://127.0.0.1:0

Everything but the layer is shared with the bare asyncio.Protocol of
resp_min.py (:func:`resp_min.respond` and its store), so the comparison of
the two measures what anycore's connection driver costs per read.
"""

from __future__ import annotations

from resp_min import ProtocolError, error_reply, respond

from anycore import RawHandler


class MinHandler(RawHandler):
    """The same :func:`respond` as an anycore RawHandler: the same parse, the same reply."""

    def __init__(self) -> None:
        self.rest = b""

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        try:
            reply, self.rest = respond(data)
        except ProtocolError as exc:
            self.send(error_reply(exc))
            self.close()
            return
        if reply:
            self.send(reply)
