"""Mail and memory handlers: SMTP from a writer thread, a bounded MemoryHandler.

Owns :class:`SMTPHandler` (smtplib on a :class:`~._sink.ThreadedHandler`
writer: mail is slow and rare, a thread is the honest tool; no dependency)
and :class:`MemoryHandler` (the stdlib's, with its buffer bounded when it has
no target).  Rejected: an async SMTP client (aiosmtplib would be a new
dependency for a handler that sends a few messages a day).
"""

from __future__ import annotations

import email.utils
import logging
import logging.handlers
import smtplib
import time
from email.message import EmailMessage
from typing import Any

from .._core._backoff import backoff_delay
from ._engine import Overflow, ThreadedHandler

__all__ = ["MemoryHandler", "SMTPHandler"]

_MAX_RETRY_DELAY = 60.0  # a mail server down for longer is retried with the next batch


class SMTPHandler(ThreadedHandler, logging.handlers.SMTPHandler):
    """Mails records from a writer thread (smtplib), never from the loop.

    Same arguments as :class:`logging.handlers.SMTPHandler`; the writer sends
    one message per record, all of a batch over one SMTP session, and retries
    a failed session ``retries`` times with a doubling delay (from
    ``retry_delay``, jittered, at most a minute) before counting
    the batch as dropped.
    """

    def __init__(
        self,
        mailhost: str | tuple[str, int],
        fromaddr: str,
        toaddrs: str | list[str],
        subject: str,
        credentials: tuple[str, str] | None = None,
        secure: tuple[()] | tuple[str] | tuple[str, str] | None = None,
        timeout: float = 5.0,
        *,
        retries: int = 3,
        retry_delay: float = 1.0,
        queue_size: int = 1000,
        max_batch: int = 50,
        overflow: Overflow = "block",
        close_timeout: float = 30.0,
    ) -> None:
        logging.handlers.SMTPHandler.__init__(
            self, mailhost, fromaddr, toaddrs, subject, credentials, secure, timeout
        )
        self.retries = retries
        self.retry_delay = retry_delay
        self._init_sink(
            queue_size=queue_size,
            max_batch=max_batch,
            overflow=overflow,
            close_timeout=close_timeout,
        )

    def _prepare(self, record: logging.LogRecord) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.fromaddr
        msg["To"] = ",".join(self.toaddrs)
        msg["Subject"] = self.getSubject(record)
        msg["Date"] = email.utils.localtime()
        msg.set_content(self.format(record))
        return msg

    def _write_batch(self, batch: list[Any]) -> None:
        for attempt in range(self.retries + 1):
            try:
                self._send_session(batch)
                return
            except (OSError, smtplib.SMTPException):
                if attempt == self.retries or self._closing:
                    raise
                time.sleep(backoff_delay(attempt + 1, self.retry_delay, _MAX_RETRY_DELAY))

    def _send_session(self, batch: list[EmailMessage]) -> None:
        port = self.mailport or smtplib.SMTP_PORT
        with smtplib.SMTP(self.mailhost, port, timeout=self.timeout) as smtp:
            if self.username:
                if self.secure is not None:
                    smtp.ehlo()
                    smtp.starttls(*self.secure)
                    smtp.ehlo()
                smtp.login(self.username, self.password)
            for msg in batch:
                smtp.send_message(msg)


# -- memory ---------------------------------------------------------------------


class MemoryHandler(logging.handlers.MemoryHandler):
    """The stdlib's buffering handler, with a bound that holds without a target.

    Buffers up to ``capacity`` records and hands them to ``target`` when the
    buffer is full or a record at ``flushLevel`` or above arrives.  The
    stdlib's buffer grows without limit while ``target`` is None; here the
    oldest records are dropped (and counted in :attr:`dropped`) instead.  Use
    an anycore handler as the target so that flushing never blocks the loop.
    """

    def __init__(
        self,
        capacity: int,
        flushLevel: int = logging.ERROR,
        target: logging.Handler | None = None,
        flushOnClose: bool = True,
    ) -> None:
        super().__init__(capacity, flushLevel, target, flushOnClose)
        self.dropped = 0

    def flush(self) -> None:
        """Hand the buffer to the target; without one, trim it to ``capacity``."""
        assert self.lock is not None
        with self.lock:
            if self.target is not None:
                for record in self.buffer:
                    self.target.handle(record)
                self.buffer.clear()
            elif len(self.buffer) > self.capacity:
                excess = len(self.buffer) - self.capacity
                del self.buffer[:excess]
                self.dropped += excess
