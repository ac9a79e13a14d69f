# Design: stream clients.
#
# This module owns ``connect()``: resolve, connect (Happy Eyeballs across the
# addresses of a name), optionally wrap in TLS, and run the handler on the same
# asyncio driver servers use.  The whole attempt (name resolution included) runs
# under one connect timeout; failed attempts are retried with exponential backoff
# and jitter, and the last error is reported as a ConnectError.
#
# Happy Eyeballs (RFC 8305) is done here rather than through
# ``create_connection(happy_eyeballs_delay=...)`` because uvloop's
# create_connection does not take that argument: we connect raw non-blocking
# sockets with ``loop.sock_connect`` (staggered, families interleaved) and hand
# the winner to ``create_connection(sock=...)`` on both loops.
#
# On a non-asyncio backend (trio) or with ``portable=True`` connect() uses the
# anyio driver (``_anyio_driver``) over anyio's connect_tcp, which does its own
# Happy Eyeballs; the connection then runs as a system task (trio) or a task
# of its own (asyncio), since it outlives the connect() call.  Both paths share
# the retry policy and the TLS context choice.

from __future__ import annotations

import asyncio
import math
import socket
import ssl as _ssl
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.abc

from .._core._backend import current_backend, running_on_asyncio
from .._core._backoff import backoff_delay
from ..errors import ConnectError, EndpointError
from ._anyio_driver import _StreamDriver
from ._asyncio_driver import _ProtocolDriver
from ._endpoints import Endpoint, parse_endpoint
from ._handler import Handler, check_handler_factory, checked_handler

__all__ = ["connect"]

H = TypeVar("H", bound=Handler)

_AddrInfo = tuple[int, int, int, str, Any]


async def connect(
    endpoint: str | Endpoint,
    handler_factory: Callable[[], H],
    *,
    timeout: float | None = 10.0,
    retries: int = 0,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    handshake_timeout: float | None = None,
    happy_eyeballs_delay: float = 0.25,
    portable: bool | None = None,
) -> H:
    """Connect to ``endpoint`` and run ``handler_factory()`` on the connection.

    Returns once the connection is up and ``connection_made`` has been called
    (an async ``connection_made`` is running by then).  The handler is an async
    context manager: ``async with await connect(...) as handler:`` closes it
    (``await handler.aclose()``) when the block ends.  ``handler.close()``
    closes without waiting; ``await handler.wait_closed()`` waits until it is gone.

    Args:
        endpoint: ``tcp://host:port``, ``tls://host:port[?ca=..&cert=..&key=..]``
            or ``unix:///path``.
        handler_factory: returns the :class:`Handler` for the connection.
        timeout: seconds for one attempt, name resolution and TLS handshake
            included (``None``: no limit).
        retries: attempts after the first one fails.
        backoff: delay before the first retry; doubled each time (with jitter).
        max_backoff: the longest delay between attempts.
        ssl: an SSL context (makes a tcp or unix endpoint use TLS).
        server_hostname: the name to verify the server certificate against
            (default: the endpoint's host, or its ``hostname`` option).
        handshake_timeout: seconds for the TLS handshake.
        happy_eyeballs_delay: seconds before trying the next address of a name
            with several addresses (RFC 8305).
        portable: use the portable anyio driver (default: only when the
            running backend is not asyncio).

    Returns:
        The connected handler.

    Raises:
        ConnectError: every attempt failed; the last error is chained.
        HandlerError: ``handler_factory`` is not a Handler subclass or a function
            returning a Handler (checked before connecting).
        EndpointError: the endpoint is malformed or a datagram endpoint.
    """
    check_handler_factory(handler_factory, "connect")
    ep = parse_endpoint(endpoint)
    if not ep.is_stream:
        raise EndpointError(f"{ep}: connect() takes stream endpoints (tcp, tls, unix)")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    if portable is None:
        portable = not running_on_asyncio()
    if portable:
        return await _connect_portable(
            ep,
            handler_factory,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            ssl=ssl,
            server_hostname=server_hostname,
            happy_eyeballs_delay=happy_eyeballs_delay,
        )
    ctx = client_ssl_context(ep, ssl)
    last: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(backoff_delay(attempt, backoff, max_backoff))
        try:
            if timeout is None:
                return await _connect_once(
                    ep,
                    handler_factory,
                    ctx,
                    server_hostname,
                    handshake_timeout,
                    happy_eyeballs_delay,
                )
            async with asyncio.timeout(timeout):
                return await _connect_once(
                    ep,
                    handler_factory,
                    ctx,
                    server_hostname,
                    handshake_timeout,
                    happy_eyeballs_delay,
                )
        except _ssl.SSLCertVerificationError as exc:
            raise ConnectError(f"cannot connect to {ep}: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            last = exc
    what = "timed out" if isinstance(last, TimeoutError) else f"{type(last).__name__}: {last}"
    raise ConnectError(f"cannot connect to {ep} after {retries + 1} attempt(s): {what}") from last


def client_ssl_context(ep: Endpoint, ssl: _ssl.SSLContext | None) -> _ssl.SSLContext | None:
    """The client SSL context for ``ep``: ``ssl``, or one built from tls options."""
    if ssl is not None:
        return ssl
    if ep.is_tls:
        return ep.ssl_context(server_side=False)
    return None


async def _connect_once(
    ep: Endpoint,
    handler_factory: Callable[[], H],
    ctx: _ssl.SSLContext | None,
    server_hostname: str | None,
    handshake_timeout: float | None,
    delay: float,
) -> H:
    loop = asyncio.get_running_loop()
    handler = handler_factory()
    driver = _ProtocolDriver(checked_handler(handler, handler_factory), server_side=False)
    tls: dict[str, Any] = {}
    if ctx is not None:
        tls = {
            "ssl": ctx,
            "server_hostname": server_hostname or ep.option("hostname") or ep.host or "",
            "ssl_handshake_timeout": handshake_timeout,
        }
    if ep.scheme == "unix":
        await loop.create_unix_connection(lambda: driver, ep.path, **tls)
        return handler
    infos = await loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
    sock = await happy_eyeballs(infos, delay)
    try:
        await loop.create_connection(lambda: driver, sock=sock, **tls)
    except BaseException:
        sock.close()
        raise
    return handler


def _interleave(infos: Sequence[_AddrInfo]) -> list[_AddrInfo]:
    """Order addresses per RFC 8305: alternate families, starting with the first."""
    by_family: dict[int, list[_AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    queues = list(by_family.values())
    ordered: list[_AddrInfo] = []
    while any(queues):
        for q in queues:
            if q:
                ordered.append(q.pop(0))
    return ordered


async def _attempt(info: _AddrInfo) -> socket.socket:
    family, type_, proto, _canon, addr = info
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def happy_eyeballs(infos: Sequence[_AddrInfo], delay: float) -> socket.socket:
    """Connect to the first address that answers, starting one every ``delay`` s.

    A failed attempt starts the next one at once.  Losing attempts are cancelled
    and their sockets closed.

    Args:
        infos: ``getaddrinfo`` results.
        delay: the stagger between attempts.

    Returns:
        The connected socket.

    Raises:
        OSError: every address failed (the first error, with the others noted).
    """
    ordered = iter(_interleave(infos))
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[socket.socket]] = set()
    errors: list[BaseException] = []
    winner: socket.socket | None = None

    def start_next() -> bool:
        info = next(ordered, None)
        if info is None:
            return False
        pending.add(loop.create_task(_attempt(info)))
        return True

    if not start_next():
        raise OSError("name resolution returned no addresses")
    try:
        while pending:
            done, _ = await asyncio.wait(
                pending, timeout=delay, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                start_next()
                continue
            failed = False
            for task in done:
                pending.discard(task)
                exc = task.exception()
                if exc is not None:
                    errors.append(exc)
                    failed = True
                elif winner is None:
                    winner = task.result()
                else:
                    task.result().close()
            if winner is not None:
                break
            if failed:
                start_next()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            # Losing attempts: wait for them to end and close any that connected.
            for result in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(result, socket.socket):
                    result.close()
    if winner is not None:
        return winner
    first = errors[0] if errors else OSError("no address could be connected")
    if len(errors) > 1:
        message = (
            f"{first} (and {len(errors) - 1} other address(es) failed: "
            + "; ".join(str(e) for e in errors[1:])
            + ")"
        )
        # Keep the first error's type (ConnectionRefusedError...) for callers.
        if isinstance(first, OSError) and first.errno is not None:
            raise type(first)(first.errno, message) from first
        raise OSError(message) from first
    raise first


async def _connect_portable(
    ep: Endpoint,
    handler_factory: Callable[[], H],
    *,
    timeout: float | None,
    retries: int,
    backoff: float,
    max_backoff: float,
    ssl: _ssl.SSLContext | None,
    server_hostname: str | None,
    happy_eyeballs_delay: float,
) -> H:
    """``connect()`` on the portable driver; the connection runs as a system task."""
    from anyio.streams.tls import TLSStream

    ctx = client_ssl_context(ep, ssl)
    last: BaseException | None = None
    stream: anyio.abc.ByteStream | None = None
    for attempt in range(retries + 1):
        if attempt:
            await anyio.sleep(backoff_delay(attempt, backoff, max_backoff))
        try:
            with anyio.fail_after(math.inf if timeout is None else timeout):
                if ep.scheme == "unix":
                    stream = await anyio.connect_unix(ep.path or "")
                    if ctx is not None:
                        stream = await TLSStream.wrap(
                            stream,
                            ssl_context=ctx,
                            hostname=server_hostname or ep.option("hostname"),
                            standard_compatible=False,
                        )
                else:
                    stream = await anyio.connect_tcp(
                        ep.host or "", ep.port or 0, happy_eyeballs_delay=happy_eyeballs_delay
                    )
                    if ctx is not None:
                        stream = await TLSStream.wrap(
                            stream,
                            ssl_context=ctx,
                            hostname=server_hostname or ep.option("hostname") or ep.host,
                            standard_compatible=False,
                        )
            break
        except _ssl.SSLCertVerificationError as exc:
            raise ConnectError(f"cannot connect to {ep}: {exc}") from exc
        except (OSError, TimeoutError, anyio.BrokenResourceError) as exc:
            last = exc
    if stream is None:
        raise ConnectError(
            f"cannot connect to {ep} after {retries + 1} attempt(s): {last}"
        ) from last
    handler = handler_factory()
    driver = _StreamDriver(handler, stream)
    _spawn_system(driver.run)
    await driver._made.wait()
    return handler


_background: set[Any] = set()


def _spawn_system(fn: Callable[[], Any]) -> None:
    """Run a connection outside the caller's scope (a client connection outlives
    the ``connect()`` call, like a transport on asyncio)."""
    if current_backend() == "trio":
        import trio

        trio.lowlevel.spawn_system_task(fn, name="anycore-portable-connection")
        return
    task = asyncio.get_running_loop().create_task(fn())
    _background.add(task)
    task.add_done_callback(_background.discard)
