"""Managers: a server holding shared objects, and async proxies to them.

multiprocessing.managers re-expressed for an event loop.  This module owns:

* the **server**: an async loop over a :class:`~anycore.Listener` (always
  with an authkey), one task per client connection.  Requests are pickled
  tuples - ``create``, ``call``, ``release``, ``shutdown`` - answered in order
  on their connection.  A method that returns an awaitable (a manager Lock's
  ``acquire``, a Queue's ``get``) is awaited in that connection's task, so a
  waiting call blocks no other client; if the client disconnects meanwhile
  the call is cancelled (a cancelled ``acquire`` does not take the lock
  later), and if it disconnects just after, the object's ``_abandoned_``
  hook undoes the call (a Queue puts the item back; a Lock is released when
  its holder's connection closes).  Each client's handshake runs in its own
  task too.  The server runs in a child process
  (:class:`anycore.ChildProcess`, the default) or as a task in the current
  loop (``process=False``);
* the **registry** with :meth:`BaseManager.register` semantics: type ids
  mapped to callables, ``exposed`` methods (default: the public ones),
  ``method_to_typeid`` (a method whose result is itself shared and comes
  back as a proxy) and custom proxy types;
* the **proxies**: ``await proxy.method(...)`` sends a call and returns its
  result; a method that is not exposed raises :class:`~anycore.MethodNotExposed`
  on both sides; the object's own exceptions come back as themselves
  (``KeyError`` from a dict), their remote traceback chained.  A client keeps
  a small pool of connections, one per concurrent call, so a task waiting on
  a manager Lock does not hold up another task's ``dict.get``;
* :class:`SyncManager`'s shared types: dict, list, Namespace, Queue, Event,
  Lock, Value and Array, whose blocking operations are async on the server.

Proxies pickle (to hand them to child processes): the pickle carries the
manager's address and authkey, so send it only to processes you trust with
that key.  Shared objects live until :meth:`AsyncProxy._dispose` or the
server's shutdown (multiprocessing's distributed reference counting is left
out: a dropped proxy never frees its object behind the user's back).

Rejected: multiprocessing's manager wire protocol (its server is threads
calling blocking methods, and its proxies are blocking); one connection per
client shared by every call (a waiting ``acquire`` would stall the process).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import inspect
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio

from ..errors import (
    ClosedError,
    ManagerError,
    MethodNotExposed,
    PeerClosed,
    QueueEmpty,
    QueueFull,
    RuntimeStateError,
)
from ._connection import Address, Client, Connection, Listener, Pipe, _fd_readable_now

__all__ = [
    "BaseManager",
    "SyncManager",
    "AsyncProxy",
    "Token",
    "Namespace",
]

log = logging.getLogger("anycore.managers")

_IDLE_CONNECTIONS = 8  # per client: idle connections kept for later calls


# -- the registry ------------------------------------------------------------------


@dataclass(frozen=True)
class _TypeInfo:
    callable: Callable[..., Any] | None
    exposed: tuple[str, ...] | None
    method_to_typeid: Mapping[str, str] | None
    proxytype: type[AsyncProxy]


def _public_methods(obj: object) -> tuple[str, ...]:
    return tuple(
        name for name in dir(obj) if not name.startswith("_") and callable(getattr(obj, name, None))
    )


# -- shared types of SyncManager (they live in the server) -------------------------


class Namespace:
    """A bag of attributes (multiprocessing.managers.Namespace).

    Through a proxy: ``await ns.set("x", 1)``, ``await ns.get("x")``,
    ``await ns.delete("x")``, ``await ns.todict()``.
    """

    def __init__(self, **kwds: Any) -> None:
        self.__dict__.update(kwds)

    def get(self, name: str) -> Any:
        """Return attribute *name* (AttributeError when missing)."""
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(name) from None

    def set(self, name: str, value: Any) -> None:
        """Set attribute *name*."""
        self.__dict__[name] = value

    def delete(self, name: str) -> None:
        """Delete attribute *name* (AttributeError when missing)."""
        try:
            del self.__dict__[name]
        except KeyError:
            raise AttributeError(name) from None

    def todict(self) -> dict[str, Any]:
        """All attributes as a dict."""
        return dict(self.__dict__)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Namespace({items})"


class _ManagedValue:
    """Value(typecode, value): ``get`` / ``set`` (the server serialises access)."""

    def __init__(self, typecode: str, value: Any = 0) -> None:
        array.array(typecode)  # validates the typecode
        self._typecode = typecode
        self._value = value

    def get(self) -> Any:
        return self._value

    def set(self, value: Any) -> None:
        self._value = value


class _ManagedQueue:
    """A FIFO queue whose blocking get / put are awaited in the server.

    Its own (rather than asyncio.Queue) for one thing asyncio's lacks: an item
    whose ``get`` finished just as its client vanished is put back at the
    front (:meth:`_abandoned_`), so a cancelled client loses nothing.
    """

    def __init__(self, maxsize: int = 0) -> None:
        self._items: deque[Any] = deque()
        self._maxsize = maxsize
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._unfinished = 0
        self._all_done = asyncio.Event()
        self._all_done.set()

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def _wait(self, waiters: deque[asyncio.Future[None]]) -> None:
        fut = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._wake(waiters)  # woken, then cancelled: pass the turn on
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
            raise

    async def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            return self.get_nowait()
        with anyio.move_on_after(timeout):
            while not self._items:
                await self._wait(self._getters)
            return self.get_nowait()
        raise QueueEmpty

    async def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not block:
            return self.put_nowait(item)
        with anyio.move_on_after(timeout):
            while self.full():
                await self._wait(self._putters)
            return self.put_nowait(item)
        raise QueueFull

    def get_nowait(self) -> Any:
        if not self._items:
            raise QueueEmpty
        item = self._items.popleft()
        self._wake(self._putters)
        return item

    def put_nowait(self, item: Any) -> None:
        if self.full():
            raise QueueFull
        self._items.append(item)
        self._unfinished += 1
        self._all_done.clear()
        self._wake(self._getters)

    def _abandoned_(self, method: str, result: Any) -> None:
        """The client of a finished call went away before it got *result*."""
        if method in ("get", "get_nowait"):
            self._items.appendleft(result)  # back where it was, whatever the bound
            self._wake(self._getters)

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self._maxsize <= len(self._items)

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0:
            self._all_done.set()

    async def join(self) -> None:
        await self._all_done.wait()


class _ManagedEvent:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        with anyio.move_on_after(timeout):
            await self._event.wait()
        return self._event.is_set()


class _ClientState:
    """One client connection in the server: what to undo when it goes away."""

    __slots__ = ("cleanups",)

    def __init__(self) -> None:
        self.cleanups: dict[int, Callable[[], None]] = {}

    def close(self) -> None:
        cleanups, self.cleanups = self.cleanups, {}
        for undo in cleanups.values():
            undo()


#: The client connection whose request the server is running.
_CLIENT: ContextVar[_ClientState | None] = ContextVar("anycore_manager_client", default=None)


class _ManagedLock:
    """A lock owned by the client connection that acquired it.

    When that connection closes (the client was cancelled, crashed or was
    killed) the lock is released: a dead client cannot hold it forever.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: _ClientState | None = None

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if not blocking:
            if self._lock.locked():
                return False
            await self._lock.acquire()  # uncontended: completes at once
        else:
            got = False
            with anyio.move_on_after(timeout):
                await self._lock.acquire()
                got = True  # no await between the acquire and this line
            if not got:
                return False
        owner = self._owner = _CLIENT.get()
        if owner is not None:
            owner.cleanups[id(self)] = self._abandon
        return True

    def release(self) -> None:
        if not self._lock.locked():
            raise RuntimeError("release unlocked lock")
        client = _CLIENT.get()
        if self._owner is not None and client is not None and client is not self._owner:
            raise RuntimeError("the lock is held by another client")
        self._release()

    def _release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.cleanups.pop(id(self), None)
        self._lock.release()

    def _abandon(self) -> None:
        self._owner = None
        if self._lock.locked():
            self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


_DICT_EXPOSED = (
    "__contains__", "__delitem__", "__getitem__", "__len__", "__setitem__", "clear",
    "copy", "get", "items", "keys", "pop", "popitem", "setdefault", "update", "values",
)  # fmt: skip
_LIST_EXPOSED = (
    "__add__", "__contains__", "__delitem__", "__getitem__", "__len__", "__setitem__",
    "append", "count", "extend", "index", "insert", "pop", "remove", "reverse", "sort",
    "copy", "clear",
)  # fmt: skip
_ARRAY_EXPOSED = ("__len__", "__getitem__", "__setitem__", "tolist")


class _ManagedDict(dict):  # type: ignore[type-arg]
    """The dict a manager holds: views come back as lists (they do not pickle)."""

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return list(super().items())

    def keys(self) -> list[Any]:  # type: ignore[override]
        return list(super().keys())

    def values(self) -> list[Any]:  # type: ignore[override]
        return list(super().values())

    def copy(self) -> dict[Any, Any]:
        return dict(self)


# -- the server --------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """What a proxy knows of its object: type id, manager address, object id, methods."""

    typeid: str
    address: Address
    ident: str
    exposed: tuple[str, ...]


class _Served:
    __slots__ = ("exposed", "method_to_typeid", "obj", "typeid")

    def __init__(
        self, obj: Any, typeid: str, exposed: frozenset[str], m2t: Mapping[str, str]
    ) -> None:
        self.obj = obj
        self.typeid = typeid
        self.exposed = exposed
        self.method_to_typeid = m2t


class _Server:
    """The manager server: shared objects, served over an authenticated Listener."""

    def __init__(self, registry: Mapping[str, tuple[Any, Any, Any]], authkey: bytes) -> None:
        self.registry = registry
        self.authkey = authkey
        self.objects: dict[str, _Served] = {}
        self._next = 0
        self.stop = anyio.Event()

    def _new_ident(self) -> str:
        self._next += 1
        return f"{self._next:x}"

    def _create(
        self, typeid: str, args: Sequence[Any], kwds: Mapping[str, Any]
    ) -> tuple[str, tuple[str, ...]]:
        try:
            fn, exposed, m2t = self.registry[typeid]
        except KeyError:
            raise ManagerError(f"unknown type id {typeid!r}") from None
        if fn is None:
            raise ManagerError(f"type id {typeid!r} has no callable: it cannot be created")
        obj = fn(*args, **kwds)
        return self._store(obj, typeid, exposed, m2t)

    def _store(self, obj: Any, typeid: str, exposed: Any, m2t: Any) -> tuple[str, tuple[str, ...]]:
        names = tuple(exposed) if exposed is not None else _public_methods(obj)
        ident = self._new_ident()
        self.objects[ident] = _Served(obj, typeid, frozenset(names), dict(m2t or {}))
        return ident, names

    async def serve(self, listener: Listener) -> None:
        # Listener.serve: each client's handshake in its own task, so a silent
        # client cannot hold up the others.
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._handle)
            await self.stop.wait()
            tg.cancel_scope.cancel()

    async def _handle(self, conn: Connection) -> None:
        state = _ClientState()
        _CLIENT.set(state)  # this task's context: its calls see their client
        try:
            await self._serve_client(conn)
        finally:
            state.close()

    async def _serve_client(self, conn: Connection) -> None:
        while True:
            try:
                request = await conn.recv()
            except (PeerClosed, ClosedError):
                return
            except Exception as exc:
                log.warning("manager: dropping a client that sent garbage: %s", exc)
                return
            if not isinstance(request, tuple) or not request:
                log.warning("manager: dropping a client that sent %r", type(request))
                return
            reply, gone, undo = await self._answer(conn, request)
            if undo is not None and not gone:
                # The client sends nothing while it waits for a reply:
                # anything readable now means it has gone.
                gone = _fd_readable_now(conn.fileno())
            if gone:
                if undo is not None:
                    undo()
                return
            try:
                data = conn.codec.dumps(reply)
            except Exception as exc:  # a result that does not pickle: say so
                from .._workers._wire import exception_payload

                if undo is not None:
                    undo()
                    undo = None
                data = conn.codec.dumps(("error", exception_payload(exc)))
            try:
                await conn.send_bytes(data)
            except Exception:
                if undo is not None:
                    undo()
                return
            if request[0] == "shutdown":
                self.stop.set()
                return

    async def _answer(
        self, conn: Connection, request: tuple[Any, ...]
    ) -> tuple[tuple[str, Any], bool, Callable[[], None] | None]:
        """The reply; whether the client has gone; how to undo the call if it has."""
        reply, gone = await self._answer_call(conn, request)
        undo = None
        if reply[0] == "ok" and request[0] == "call":
            served = self.objects.get(request[1])
            abandoned = getattr(served.obj, "_abandoned_", None) if served else None
            if abandoned is not None:
                undo = functools.partial(abandoned, request[2], reply[1])
        return reply, gone, undo

    async def _answer_call(self, conn: Connection, request: Any) -> tuple[tuple[str, Any], bool]:
        try:
            op = request[0]
            if op == "call":
                _, ident, name, args, kwds = request
                served = self.objects.get(ident)
                if served is None:
                    raise ManagerError(f"no shared object {ident!r} (released?)")
                if name not in served.exposed:
                    return (
                        "not-exposed",
                        f"method {name!r} of {served.typeid!r} is not exposed",
                    ), False
                result = getattr(served.obj, name)(*args, **kwds)
                if inspect.isawaitable(result):
                    result, gone = await _unless_peer_leaves(conn, result)
                    if gone:
                        return ("gone", None), True
                typeid = served.method_to_typeid.get(name)
                if typeid is not None:
                    try:
                        _, exposed, m2t = self.registry[typeid]
                    except KeyError:
                        raise ManagerError(
                            f"method_to_typeid names unknown type id {typeid!r}"
                        ) from None
                    ident2, names = self._store(result, typeid, exposed, m2t)
                    return ("proxy", (typeid, ident2, names)), False
                return ("ok", result), False
            if op == "create":
                _, typeid, args, kwds = request
                return ("ok", self._create(typeid, args, kwds)), False
            if op == "release":
                self.objects.pop(request[1], None)
                return ("ok", None), False
            if op == "shutdown":
                return ("ok", None), False
            raise ManagerError(f"unknown request {op!r}")
        except ManagerError as exc:
            return ("manager-error", str(exc)), False
        except Exception as exc:
            from .._workers._wire import exception_payload

            return ("error", exception_payload(exc)), False


async def _unless_peer_leaves(conn: Connection, awaitable: Awaitable[Any]) -> tuple[Any, bool]:
    """Await *awaitable*; cancel it if the client disconnects first."""
    box: list[Any] = []
    gone = False

    async def run() -> None:
        try:
            box.append((True, await awaitable))
        except Exception as exc:  # the method's own error: the caller's to report
            box.append((False, exc))
        tg.cancel_scope.cancel()

    async def watch() -> None:
        nonlocal gone
        await conn.poll(None)  # the client sends nothing mid-call: readable means EOF
        gone = True
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(watch)
    if box:
        ok, value = box[0]
        if not ok:
            raise value
        return value, False
    return None, gone


async def _serve_in_child(
    registry: Mapping[str, tuple[Any, Any, Any]],
    address: Address,
    authkey: bytes,
    report: Connection,
) -> None:
    """Body of a manager's child process: bind, report the address, serve."""
    server = _Server(registry, authkey)
    try:
        listener = Listener(address, authkey=authkey)
    except BaseException as exc:
        async with report:
            await report.send(("error", repr(exc)))
        raise
    async with listener:
        async with report:
            await report.send(("ok", listener.address))
        await server.serve(listener)


# -- the client side ---------------------------------------------------------------


class _ClientPool:
    """Connections to one manager server, one per concurrent call.

    At most ``max_connections`` are open at once (more concurrent calls wait
    for one); up to ``_IDLE_CONNECTIONS`` idle ones are kept for later calls.
    """

    def __init__(self, address: Address, authkey: bytes, max_connections: int = 64) -> None:
        self.address = address
        self.authkey = authkey
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()  # idle and checked out (a held lock's)
        self._closed = False
        self._slots = anyio.Semaphore(max_connections)

    async def checkout(self) -> Connection:
        if self._closed:
            raise ClosedError("the manager client is closed")
        await self._slots.acquire()
        try:
            if self._idle:
                return self._idle.pop()
            conn = await Client(self.address, authkey=self.authkey)
            self._open.add(conn)
            return conn
        except BaseException:
            self._slots.release()
            raise

    def checkin(self, conn: Connection) -> None:
        self._slots.release()
        if self._closed or conn.closed or len(self._idle) >= _IDLE_CONNECTIONS:
            self._open.discard(conn)
            conn.close()
        else:
            self._idle.append(conn)

    def add_idle(self, conn: Connection) -> None:
        """Adopt a connection made elsewhere as an idle one."""
        self._open.add(conn)
        self._idle.append(conn)

    def discard(self, conn: Connection) -> None:
        """Close a checked-out connection whose state is unknown (never reuse it)."""
        self._open.discard(conn)
        conn.close()
        self._slots.release()

    async def request_on(self, conn: Connection, message: tuple[Any, ...]) -> tuple[str, Any]:
        """Send *message* on a checked-out *conn*; on any failure the slot is given back."""
        try:
            await conn.send(message)
            reply: tuple[str, Any] = await conn.recv()
        except BaseException:
            self.discard(conn)
            raise
        return reply

    async def request(self, message: tuple[Any, ...]) -> tuple[str, Any]:
        conn = await self.checkout()
        reply = await self.request_on(conn, message)
        self.checkin(conn)
        return reply

    def close(self) -> None:
        """Close every connection, idle or checked out (a held lock is let go)."""
        self._closed = True
        self._idle = []
        conns, self._open = self._open, set()
        for conn in conns:
            conn.close()


def _raise_reply(kind: str, value: Any, where: str) -> None:
    if kind == "not-exposed":
        raise MethodNotExposed(value)
    if kind == "manager-error":
        raise ManagerError(value)
    if kind == "error":
        from .._workers._wire import rebuild_exception

        original, remote = rebuild_exception(value, where)
        if original is not None:
            raise original from remote
        raise remote
    raise ManagerError(f"unexpected reply {kind!r} from the manager")


class AsyncProxy:
    """An async proxy to an object held by a manager.

    ``await proxy.method(*args, **kwds)`` calls an exposed method; a dunder
    method is reached by its bare name (``await d.getitem(k)``,
    ``await d.setitem(k, v)``, ``await d.len()``, ``await d.contains(k)``).
    :meth:`_callmethod` is the general form.  Subclass it for a custom proxy
    type (``BaseManager.register(..., proxytype=...)``); ``_exposed_`` on the
    subclass is the default exposed list for its type.

    A proxy from a manager shares the manager's connections; a proxy
    unpickled in another process opens its own and should be closed there
    (``async with proxy:`` or :meth:`aclose`).
    """

    _exposed_: ClassVar[tuple[str, ...] | None] = None
    _method_to_typeid_: ClassVar[Mapping[str, str] | None] = None

    def __init__(
        self,
        token: Token,
        pool: _ClientPool,
        manager: BaseManager | None = None,
        owns_pool: bool = False,
    ) -> None:
        self._token = token
        self._pool = pool
        self._manager = manager
        self._owns_pool = owns_pool
        self._exposed = frozenset(token.exposed)

    async def _callmethod(
        self, name: str, args: Sequence[Any] = (), kwds: Mapping[str, Any] | None = None
    ) -> Any:
        """Call method *name* of the shared object and return its result.

        Raises:
            MethodNotExposed: *name* is not exposed (checked here and on the server).
            ManagerError: the object was released or the server refused.
            Exception: what the method raised, with the remote traceback chained.
        """
        if name not in self._exposed:
            raise MethodNotExposed(f"method {name!r} of {self._token.typeid!r} is not exposed")
        kind, value = await self._pool.request(
            ("call", self._token.ident, name, tuple(args), dict(kwds or {}))
        )
        if kind == "ok":
            return value
        if kind == "proxy":
            typeid, ident, names = value
            token = Token(typeid, self._token.address, ident, tuple(names))
            return _make_proxy(self._manager, self._pool, typeid, token)
        _raise_reply(kind, value, f"the manager at {self._token.address!r}")
        return None  # pragma: no cover - _raise_reply always raises

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        exposed = self.__dict__.get("_exposed", frozenset())
        if name in exposed:
            method = name
        elif f"__{name}__" in exposed:
            method = f"__{name}__"
        else:
            raise MethodNotExposed(
                f"method {name!r} of {self.__dict__['_token'].typeid!r} is not exposed"
            )

        async def call(*args: Any, **kwds: Any) -> Any:
            return await self._callmethod(method, args, kwds)

        call.__name__ = name
        return call

    async def _dispose(self) -> None:
        """Drop the shared object from the server (other proxies to it stop working).

        Underscored, like :meth:`_callmethod`, so it cannot hide a method of
        the shared object.
        """
        kind, value = await self._pool.request(("release", self._token.ident))
        if kind != "ok":
            _raise_reply(kind, value, "the manager")

    async def aclose(self) -> None:
        """Close the connections this proxy opened itself (an unpickled proxy)."""
        if self._owns_pool:
            self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_proxy, (type(self), self._token, self._pool.authkey)

    def __repr__(self) -> str:
        t = self._token
        return f"<{type(self).__name__} {t.typeid} id={t.ident} at {t.address!r}>"


def _rebuild_proxy(cls: type[AsyncProxy], token: Token, authkey: bytes) -> AsyncProxy:
    return cls(token, _ClientPool(token.address, authkey), None, owns_pool=True)


class NamespaceProxy(AsyncProxy):
    """Proxy of a manager Namespace: ``get`` / ``set`` / ``delete`` / ``todict``."""

    _exposed_ = ("get", "set", "delete", "todict")


class ValueProxy(AsyncProxy):
    """Proxy of a manager Value: ``await v.get()``, ``await v.set(x)``."""

    _exposed_ = ("get", "set")


class LockProxy(AsyncProxy):
    """Proxy of a manager Lock: ``acquire`` / ``release`` / ``locked`` and ``async with``.

    The lock belongs to the connection that acquired it: this proxy keeps
    that connection while it holds the lock and releases over it.  If the
    holder goes away - its task cancelled mid-acquire, its process killed -
    the server releases the lock, so no client can hold it forever.  Only
    the proxy (the process) holding the lock can release it.
    """

    _exposed_ = ("acquire", "release", "locked")

    def __init__(self, *args: Any, **kwds: Any) -> None:
        super().__init__(*args, **kwds)
        self._held: Connection | None = None

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock; False when *blocking* is false or *timeout* passed first."""
        conn = await self._pool.checkout()
        kind, value = await self._pool.request_on(
            conn, ("call", self._token.ident, "acquire", (blocking, timeout), {})
        )
        if kind == "ok" and value:
            self._held = conn  # the server releases the lock if this one closes
            return True
        self._pool.checkin(conn)
        if kind != "ok":
            _raise_reply(kind, value, "the manager")
        return False

    async def release(self) -> None:
        """Release the lock held through this proxy.

        Raises:
            RuntimeError: this proxy does not hold the lock.
        """
        conn, self._held = self._held, None
        if conn is None:
            raise RuntimeError("release unlocked lock (not held through this proxy)")
        kind, value = await self._pool.request_on(
            conn, ("call", self._token.ident, "release", (), {})
        )
        self._pool.checkin(conn)
        if kind != "ok":
            _raise_reply(kind, value, "the manager")

    async def locked(self) -> bool:
        """Whether some client holds the lock."""
        return bool(await self._callmethod("locked"))

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a lock taken must be given back even when the block is
        # cancelled (and if this fails, closing the connection releases it).
        with anyio.CancelScope(shield=True):
            await self.release()

    async def aclose(self) -> None:
        """Give up a held lock (by closing its connection) and close owned connections."""
        conn, self._held = self._held, None
        if conn is not None:
            self._pool.discard(conn)
        await super().aclose()


def _make_proxy(
    manager: BaseManager | None, pool: _ClientPool, typeid: str, token: Token
) -> AsyncProxy:
    registry = type(manager)._registry if manager is not None else {}
    info = registry.get(typeid)
    cls = info.proxytype if info is not None else AsyncProxy
    return cls(token, pool, manager)


# -- managers ----------------------------------------------------------------------


class BaseManager:
    """A manager: a server of shared objects and the client side of it.

    ``async with MyManager() as m:`` starts the server - in a child process by
    default, or as a task of the current loop with ``process=False`` - and
    shuts it down at the end.  ``async with MyManager(address, authkey).connect():``
    (or ``await m.connect()``) joins a server someone else started.

    Type ids are added with :meth:`register`; each gets an async method on
    the manager (``await m.Maker(*args)``) that creates a shared object and
    returns its proxy.

    Args:
        address: where the server listens: ``(host, port)`` or a Unix socket
            path; default ``("127.0.0.1", 0)`` (read :attr:`address` after
            :meth:`start`).  For :meth:`connect`: the server's address.
        authkey: the shared secret; clients must know it.  Default for
            :meth:`start`: 32 random bytes (read :attr:`authkey`).
        process: run the server in a child process (True) or in this loop.
        start_timeout: seconds the child server may take to report its address.
    """

    _registry: ClassVar[dict[str, _TypeInfo]] = {}

    def __init__(
        self,
        address: Address | None = None,
        authkey: bytes | None = None,
        *,
        process: bool = True,
        start_timeout: float = 30.0,
    ) -> None:
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError("authkey must be bytes")
        self._address: Address | None = address
        self._authkey = authkey
        self._process = process
        self._start_timeout = start_timeout
        self._pool: _ClientPool | None = None
        self._child: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._state = "initial"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._registry = dict(cls._registry)  # a subclass extends a copy

    @classmethod
    def register(
        cls,
        typeid: str,
        callable: Callable[..., Any] | None = None,
        proxytype: type[AsyncProxy] | None = None,
        exposed: Iterable[str] | None = None,
        method_to_typeid: Mapping[str, str] | None = None,
        create_method: bool = True,
    ) -> None:
        """Register a type id (multiprocessing's BaseManager.register).

        Args:
            typeid: the name; with *create_method*, also an async method of
                the manager that creates one and returns its proxy.
            callable: makes the object in the server (a class, a factory);
                ``None`` for a type id only reached through
                *method_to_typeid*.  It must be importable by the server
                process (a module-level name).
            proxytype: the proxy class (default :class:`AsyncProxy`).
            exposed: the method names proxies may call (default: the
                proxytype's ``_exposed_``, else every public method).
            method_to_typeid: method name -> type id of its result, which
                then stays in the server and comes back as a proxy.
            create_method: add the creating method to the manager class.
        """
        proxy = proxytype or AsyncProxy
        names = tuple(exposed) if exposed is not None else proxy._exposed_
        m2t = method_to_typeid if method_to_typeid is not None else proxy._method_to_typeid_
        cls._registry[typeid] = _TypeInfo(callable, names, dict(m2t) if m2t else None, proxy)
        if create_method:

            async def create(self: BaseManager, *args: Any, **kwds: Any) -> AsyncProxy:
                return await self.create(typeid, *args, **kwds)

            create.__name__ = typeid
            create.__doc__ = f"Create a shared {typeid!r} in the server and return its proxy."
            setattr(cls, typeid, create)

    # -- introspection --
    @property
    def address(self) -> Address:
        """The server's address (known after :meth:`start`)."""
        if self._address is None:
            raise RuntimeStateError("the manager has not been started")
        return self._address

    @property
    def authkey(self) -> bytes:
        """The server's authkey (known after :meth:`start`)."""
        if self._authkey is None:
            raise RuntimeStateError("the manager has not been started")
        return self._authkey

    def _server_registry(self) -> dict[str, tuple[Any, Any, Any]]:
        return {
            k: (v.callable, v.exposed, v.method_to_typeid) for k, v in type(self)._registry.items()
        }

    # -- lifecycle --
    async def start(self) -> None:
        """Start the server (child process or in-loop task) and connect to it.

        Raises:
            RuntimeStateError: already started or connected.
            ManagerError: the child server could not bind its address.
        """
        if self._state != "initial":
            raise RuntimeStateError("a manager can be started or connected only once")
        self._state = "starting"
        if self._authkey is None:
            self._authkey = os.urandom(32)
        address = self._address if self._address is not None else ("127.0.0.1", 0)
        stack = contextlib.AsyncExitStack()
        try:
            if self._process:
                await self._start_child(stack, address)
            else:
                await self._start_in_loop(stack, address)
        except BaseException:
            self._state = "closed"
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        self._stack = stack
        self._pool = _ClientPool(self.address, self.authkey)
        self._state = "started"

    async def _start_child(self, stack: contextlib.AsyncExitStack, address: Address) -> None:
        from .._workers._child import ChildProcess

        mine, theirs = Pipe()
        stack.callback(mine.close)
        child: ChildProcess[None] = ChildProcess(
            _serve_in_child,
            self._server_registry(),
            address,
            self.authkey,
            theirs,
            name=f"{type(self).__name__}-server",
        )
        try:
            await stack.enter_async_context(child)
        finally:
            theirs.close()
        self._child = child
        report: list[tuple[str, Any]] = []

        async def read_report() -> None:
            with contextlib.suppress(PeerClosed):
                report.append(await mine.recv())
            tg.cancel_scope.cancel()

        async def watch_child() -> None:
            # The child's end may stay open in multiprocessing's fd sharer
            # until the child fetches it: a child that dies first shows here.
            await child.join()
            tg.cancel_scope.cancel()

        with anyio.move_on_after(self._start_timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_report)
                tg.start_soon(watch_child)
        if not report:
            raise ManagerError(
                f"the manager's server process did not report its address ({child!r})"
            )
        kind, value = report[0]
        if kind != "ok":
            raise ManagerError(f"the manager's server could not start: {value}")
        self._address = value

    async def _start_in_loop(self, stack: contextlib.AsyncExitStack, address: Address) -> None:
        server = _Server(self._server_registry(), self.authkey)
        listener = Listener(address, authkey=self.authkey)
        stack.callback(listener.close)
        self._address = listener.address
        # A task the manager owns (not a task group of the caller's): start()
        # and shutdown() may then run in different tasks, as fixtures do.
        task = asyncio.get_running_loop().create_task(server.serve(listener))

        async def stop_server() -> None:
            server.stop.set()
            try:
                with anyio.fail_after(5.0):
                    await asyncio.shield(task)
            except TimeoutError:  # pragma: no cover - serve() ends on stop at once
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        stack.push_async_callback(stop_server)

    async def connect(self) -> Self:
        """Connect to a server started elsewhere (needs *address* and *authkey*).

        Returns the manager, so ``async with await m.connect():`` and
        ``async with m.connect_scope()`` read naturally.

        Raises:
            ValueError: no address or no authkey.
            AuthenticationError: the authkey is wrong.
            OSError: nothing listens there.
        """
        if self._state != "initial":
            raise RuntimeStateError("a manager can be started or connected only once")
        if self._address is None or self._authkey is None:
            raise ValueError("connect() needs the server's address and authkey")
        pool = _ClientPool(self._address, self._authkey)
        # Fail now on a wrong key or address, not at the first call.
        conn = await Client(self._address, authkey=self._authkey)
        pool.add_idle(conn)
        self._pool = pool
        self._state = "connected"
        return self

    async def create(self, typeid: str, /, *args: Any, **kwds: Any) -> AsyncProxy:
        """Create a shared object of *typeid* in the server and return its proxy.

        Raises:
            ManagerError: unknown type id.
        """
        pool = self._require_pool()
        kind, value = await pool.request(("create", typeid, args, kwds))
        if kind != "ok":
            _raise_reply(kind, value, f"the manager at {pool.address!r}")
        ident, names = value
        return _make_proxy(self, pool, typeid, Token(typeid, pool.address, ident, tuple(names)))

    def _require_pool(self) -> _ClientPool:
        if self._pool is None:
            raise RuntimeStateError("start() or connect() the manager first")
        return self._pool

    async def shutdown(self) -> None:
        """Stop the server if this manager started it, and close the connections.

        Idempotent.  A child server is asked to stop, then waited for (and
        SIGTERMed / SIGKILLed by :class:`~anycore.ChildProcess` if it does not).
        """
        if self._state == "closed":
            return
        started = self._state == "started"
        self._state = "closed"
        pool, self._pool = self._pool, None
        stack, self._stack = self._stack, None
        try:
            if started and pool is not None and self._child is not None:
                # Ask the child server to stop; ChildProcess's exit below stops
                # (SIGTERM, then SIGKILL) and reaps it if this does not work.
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(5.0),
                    contextlib.suppress(Exception),
                ):
                    await pool.request(("shutdown",))
                    await self._child.join(5.0)
        finally:
            if pool is not None:
                pool.close()
            if stack is not None:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()

    aclose = shutdown

    async def __aenter__(self) -> Self:
        if self._state == "initial":
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state} address={self._address!r}>"


class SyncManager(BaseManager):
    """A manager with multiprocessing's SyncManager types, as async proxies.

    ``await m.dict()``, ``await m.list()``, ``await m.Namespace()``,
    ``await m.Queue(maxsize)``, ``await m.Event()``, ``await m.Lock()``,
    ``await m.Value(typecode, value)``, ``await m.Array(typecode, sequence)``.
    """

    if TYPE_CHECKING:  # the methods register() adds, spelled out for type checkers

        async def dict(self, *args: Any, **kwds: Any) -> AsyncProxy: ...
        async def list(self, *args: Any, **kwds: Any) -> AsyncProxy: ...
        async def Namespace(self, **kwds: Any) -> NamespaceProxy: ...
        async def Queue(self, maxsize: int = 0) -> AsyncProxy: ...
        async def Event(self) -> AsyncProxy: ...
        async def Lock(self) -> LockProxy: ...
        async def Value(self, typecode: str, value: Any = 0) -> ValueProxy: ...
        async def Array(self, typecode: str, sequence: Any = ()) -> AsyncProxy: ...


SyncManager.register("dict", _ManagedDict, exposed=_DICT_EXPOSED)
SyncManager.register("list", list, exposed=_LIST_EXPOSED)
SyncManager.register("Namespace", Namespace, NamespaceProxy)
SyncManager.register(
    "Queue",
    _ManagedQueue,
    exposed=(
        "get",
        "put",
        "get_nowait",
        "put_nowait",
        "qsize",
        "empty",
        "full",
        "task_done",
        "join",
    ),
)
SyncManager.register("Event", _ManagedEvent, exposed=("set", "clear", "is_set", "wait"))
SyncManager.register("Lock", _ManagedLock, LockProxy)
SyncManager.register("Value", _ManagedValue, ValueProxy)
SyncManager.register("Array", array.array, exposed=_ARRAY_EXPOSED)
