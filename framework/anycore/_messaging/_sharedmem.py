"""Shared memory: Value, Array, RawArray and a channel for large numeric arrays.

What this module owns: :class:`SharedValue`, :class:`SharedArray` and
:class:`RawSharedArray` (``multiprocessing.sharedctypes``' Value / Array /
RawArray on :mod:`multiprocessing.shared_memory`) and :class:`ShmChannel`,
which moves arrays between processes by copying them through a shared
segment: no pickling, no pipe, two copies per message.

* **Ownership.**  The object that creates a segment owns it and is an async
  context manager: scope end unlinks the segment (and the FIFOs of its
  process-shared locks and semaphores, :mod:`anycore._messaging._psync`), so nothing is
  left in ``/dev/shm``.  Pickling (``ChildProcess`` / ``multiprocessing``
  arguments) yields an *attached* copy that maps the same segment by name
  and never unlinks it.  The owner registers the segment with
  multiprocessing's resource tracker (a crashed owner's segment is still
  removed); an attached copy registers nothing: on 3.13+ through
  ``track=False``, before that by withdrawing the registration that
  ``SharedMemory`` makes on attach - but only when the attaching process
  talks to a *different* tracker than the owner (an unrelated process, the
  cpython#82300 case: its tracker would unlink the segment at exit and warn).
  Trackers are told apart by the inode of the tracker pipe.
* **Values and arrays** are typed ``memoryview`` casts of the segment
  (typecodes as in :mod:`array`).  Element access is plain memory access and
  takes no lock: unlike ``sharedctypes``' synchronised wrappers it cannot
  block the loop.  The :class:`~anycore.ProcessLock` of a SharedValue /
  SharedArray is for compound updates: ``async with v.lock: v.value += 1``.
* **The channel** is the classic mmap FloatChannel generalised: a segment of
  *slots* buffers, an ``empty`` semaphore (free slots) and a ``full`` one
  (messages), plus a send lock and a receive lock so that any number of
  processes may send and receive.  A message is any C-contiguous buffer
  (bytes, ``array.array``, ``memoryview``, numpy arrays through the buffer
  protocol); its format and shape travel in the slot header, so ``recv``
  hands back a view of the same type.  All waits are the ``_psync``
  primitives' loop-native waits; the copies run on the caller's thread (a
  memcpy: about 1.5 ms for 8 MB here).  Two slots by default, so a sender fills one
  while the receiver drains the other.  ``close`` sets a shared flag and
  posts one extra token on each semaphore: a receiver that finds a token but
  no message passes the token on and raises :class:`~anycore.errors.PeerClosed`, after the
  messages sent before the close; a sender raises
  :class:`~anycore.errors.ClosedError`.  A failed or cancelled operation
  leaves every token where it was.

Rejected: pickling through a pipe (the baseline this beats); a ring buffer
with byte offsets (variable-size messages need wrap-around handling, slots
are simpler and as fast for large arrays); returning views into the shared
slot (zero-copy, but the slot is reused as soon as the view is handed out);
locking every element access (the sharedctypes way: a blocking lock per
read).

Limits, stated: a message larger than the slot capacity is refused with
:class:`MessageTooLarge` (no chunking); formats are kept up to 16 characters
and 8 dimensions (beyond that the message arrives as flat bytes); a process
killed while it holds the channel's send or receive lock leaves it held (the
others wait: bound their waits where a peer can die); a message that a
*different* process sends at the very moment of ``close()`` can arrive after
a receiver has seen the end (close from the sending side, after its last
send); small messages pay a few syscalls per side (a Pipe is the better tool
there).
"""

from __future__ import annotations

import array
import os
import struct
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from types import TracebackType
from typing import Any, Self, SupportsIndex, TypeVar, overload

from ..errors import BrokenError, BusyError, ClosedError, MessageTooLarge, PeerClosed
from ._psync import ProcessLock, ProcessSemaphore

__all__ = ["RawSharedArray", "SharedArray", "SharedValue", "ShmChannel", "ShmChannelStatistics"]

T = TypeVar("T")
#: The typecodes values and arrays accept (those of :mod:`array`, without 'u').
TYPECODES = "bBhHiIlLqQfd"

_TrackerKey = tuple[int, int]


# -- segments -------------------------------------------------------------------


def _tracker_key() -> _TrackerKey:
    fd = resource_tracker.getfd()  # starts this process's tracker if needed
    assert fd is not None
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _attach_segment(name: str, owner_tracker: _TrackerKey) -> SharedMemory:
    if sys.version_info >= (3, 13):  # pragma: no cover - the venv runs 3.11
        no_track: dict[str, Any] = {"track": False}
        return SharedMemory(name, **no_track)
    shm = SharedMemory(name)  # registers with this process's tracker
    if _tracker_key() != owner_tracker:
        resource_tracker.unregister("/" + shm.name, "shared_memory")
    return shm


class _Segment:
    """One shared-memory segment: created and owned here, or attached.

    The views handed out by :meth:`map` are released before the mapping is
    closed - by :meth:`close`, or by a finalizer at garbage collection and
    interpreter exit (``SharedMemory.__del__`` alone would fail on them) -
    and an owner's finalizer also unlinks.
    """

    def __init__(
        self, size: int, name: str | None = None, tracker: _TrackerKey | None = None
    ) -> None:
        if name is None:
            self.shm = SharedMemory(create=True, size=max(size, 1))
            self.tracker = _tracker_key()
            self.owner = True
        else:
            assert tracker is not None
            self.shm = _attach_segment(name, tracker)
            self.tracker = tracker
            self.owner = False
        self._views: list[memoryview] = []
        self.closed = False
        self._finalizer = weakref.finalize(
            self, _finish, self.shm, self._views, self.owner, os.getpid()
        )

    @property
    def name(self) -> str:
        return self.shm.name

    def map(self, nbytes: int, fmt: str) -> memoryview[Any]:
        buf = self.shm.buf
        assert buf is not None
        view = _cast(buf[:nbytes], fmt)
        self._views.append(view)
        return view

    def close(self) -> None:
        """Release the views, unmap, and unlink when owned.  Idempotent.

        Raises:
            BusyError: a view of the data made elsewhere is still alive.
        """
        if self.closed:
            return
        self.closed = True
        busy = self._finalizer()
        if busy is not None:
            raise BusyError(
                f"shared memory {self.name} is unlinked but still mapped: a memoryview "
                "(or numpy array) of it is alive; release it before the scope ends"
            ) from busy


def _finish(
    shm: SharedMemory, views: list[memoryview], owner: bool, owner_pid: int
) -> BufferError | None:
    busy = None
    for view in views:
        try:
            view.release()
        except BufferError as exc:  # exported further (numpy.asarray(a.buffer), ...)
            busy = exc
    try:
        shm.close()
    except BufferError as exc:
        busy = exc
    if owner and os.getpid() == owner_pid:  # never from a forked child
        try:
            shm.unlink()
        except FileNotFoundError:  # removed behind our back: still withdraw it
            resource_tracker.unregister("/" + shm.name, "shared_memory")
    return busy


def _cast(view: memoryview, fmt: str, shape: tuple[int, ...] | None = None) -> memoryview[Any]:
    # typeshed types cast() by literal format; ours are checked at run time.
    caster: Any = view.cast
    result: memoryview[Any] = caster(fmt) if shape is None else caster(fmt, shape)
    return result


def _typecode(typecode: str | type[Any]) -> str:
    # sharedctypes also takes ctypes types (ctypes.c_double): their _type_ is the code.
    code = typecode if isinstance(typecode, str) else getattr(typecode, "_type_", None)
    if not isinstance(code, str) or len(code) != 1 or code not in TYPECODES:
        raise ValueError(
            f"typecode must be one of {TYPECODES!r} or a ctypes type of one, got {typecode!r}"
        )
    return code


class _Shared:
    """Base: a segment, its typed view, ownership and the scope protocol."""

    _segment: _Segment
    _view: memoryview[Any]

    @property
    def name(self) -> str:
        """The segment's name (without the leading slash)."""
        return self._segment.name

    @property
    def closed(self) -> bool:
        """Whether this copy was closed."""
        return self._segment.closed

    def _check_open(self) -> None:
        if self._segment.closed:
            raise ClosedError(f"{type(self).__name__} is closed")

    def close(self) -> None:
        """Unmap this copy; the owner also unlinks the segment and its locks' FIFOs.

        Raises:
            BusyError: a memoryview of the data is still alive (the segment
                is unlinked all the same and unmapped when the view goes).
        """
        try:
            self._segment.close()
        finally:
            if self._segment.owner:
                for sem in self._semaphores():
                    sem.close()

    def _semaphores(self) -> list[ProcessSemaphore]:
        return []

    async def aclose(self) -> None:
        """:meth:`close` (never blocks)."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- arrays and values --------------------------------------------------------------


class RawSharedArray(_Shared):
    """A fixed-size typed array in shared memory (``multiprocessing.RawArray``).

    ``a[i]``, ``a[i:j]`` (a list), ``a[i:j] = values``, ``len(a)``,
    iteration and :meth:`tolist`; :attr:`buffer` is a typed ``memoryview``
    for zero-copy use (``numpy.asarray(a.buffer)``).  No lock: see
    :class:`SharedArray`.  Use it as an async context manager: scope end
    unlinks the segment.  Pickle it (pass it to a child process) to share it.

    Args:
        typecode: one of ``TYPECODES`` (``'d'`` float64, ``'i'`` int32, ...),
            or the matching ctypes type (``ctypes.c_double``).
        size_or_initializer: the length (zero-filled), or the initial items.

    Raises:
        ValueError: an unknown typecode or a negative size.
        TypeError, OverflowError: an initializer that does not fit the type.
    """

    def __init__(self, typecode: str | type[Any], size_or_initializer: int | Iterable[Any]) -> None:
        code = _typecode(typecode)
        init: array.array[Any] | None = None
        if isinstance(size_or_initializer, int):
            if size_or_initializer < 0:
                raise ValueError(f"size must be >= 0, got {size_or_initializer}")
            length = size_or_initializer
        else:
            init = array.array(code, size_or_initializer)
            length = len(init)
        self._typecode = code
        self._segment = _Segment(length * array.array(code).itemsize)
        self._map(length)
        if init is not None and length:
            self._view[:] = init

    def _map(self, length: int) -> None:
        nbytes = length * array.array(self._typecode).itemsize
        self._view = self._segment.map(nbytes, self._typecode)

    def _state(self) -> tuple[Any, ...]:
        return (self._segment.name, self._segment.tracker, self._typecode, len(self._view))

    def _restore(self, state: tuple[Any, ...]) -> None:
        name, tracker, self._typecode, length = state
        self._segment = _Segment(0, name, tracker)
        self._map(length)

    def __reduce__(self) -> tuple[Any, ...]:
        self._check_open()
        return (_rebuild, (type(self), self._state()))

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__name__} closed>"
        return f"<{type(self).__name__} {self._typecode!r} x {len(self)} /{self.name}>"

    @property
    def typecode(self) -> str:
        """The item type, as an :mod:`array` typecode."""
        return self._typecode

    @property
    def buffer(self) -> memoryview[Any]:
        """The data as a typed memoryview (shared, no copy).

        Release it (``with a.buffer as view:``) before the owner's scope
        ends, or :meth:`close` raises :class:`~anycore.errors.BusyError`.
        """
        self._check_open()
        return self._view[:]

    def __len__(self) -> int:
        return len(self._view)

    @overload
    def __getitem__(self, index: SupportsIndex) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        self._check_open()
        if isinstance(index, slice):
            return self._view[index].tolist()
        return self._view[index]

    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        self._check_open()
        if not isinstance(index, slice):
            self._view[index] = value
            return
        items = array.array(self._typecode, value)
        target = self._view[index]
        if len(items) != len(target):
            raise ValueError(
                f"slice assignment needs {len(target)} items, got {len(items)} (the size is fixed)"
            )
        target[:] = items

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tolist())

    def tolist(self) -> list[Any]:
        """A copy of the items as a list."""
        self._check_open()
        result: list[Any] = self._view.tolist()
        return result


class SharedArray(RawSharedArray):
    """A typed array in shared memory with a process-shared lock (``multiprocessing.Array``).

    Element access takes no lock (it cannot block the loop); hold
    :attr:`lock` for compound updates: ``async with a.lock: a[0] += 1`` in a
    task, ``with a.lock:`` in synchronous code.

    Args:
        typecode: one of ``TYPECODES``, or the matching ctypes type.
        size_or_initializer: the length (zero-filled), or the initial items.
        lock: share an existing :class:`~anycore.ProcessLock` (not owned);
            default: a new one, owned and closed with the array.
    """

    def __init__(
        self,
        typecode: str | type[Any],
        size_or_initializer: int | Iterable[Any],
        *,
        lock: ProcessLock | None = None,
    ) -> None:
        super().__init__(typecode, size_or_initializer)
        self._own_lock = lock is None
        self._lock = ProcessLock() if lock is None else lock

    def _state(self) -> tuple[Any, ...]:
        return (*super()._state(), self._lock)

    def _restore(self, state: tuple[Any, ...]) -> None:
        super()._restore(state[:-1])
        self._lock = state[-1]
        self._own_lock = False

    def _semaphores(self) -> list[ProcessSemaphore]:
        return [self._lock] if self._own_lock else []

    @property
    def lock(self) -> ProcessLock:
        """The process-shared lock for compound updates."""
        return self._lock

    def get_lock(self) -> ProcessLock:
        """:attr:`lock` (``multiprocessing``'s spelling)."""
        return self._lock


class SharedValue(_Shared):
    """One typed value in shared memory with a process-shared lock (``multiprocessing.Value``).

    Read and write :attr:`value`; hold :attr:`lock` for read-modify-write:
    ``async with v.lock: v.value += 1`` in a task, ``with v.lock:`` in
    synchronous code (children, threads).  Use it as an async context
    manager: scope end unlinks the segment and the lock.

    Args:
        typecode: one of ``TYPECODES``, or the matching ctypes type.
        value: the initial value.
        lock: share an existing :class:`~anycore.ProcessLock` (not owned);
            default: a new one, owned.

    Raises:
        ValueError: an unknown typecode.
        TypeError, OverflowError: a value that does not fit the type.
    """

    def __init__(
        self, typecode: str | type[Any], value: Any = 0, *, lock: ProcessLock | None = None
    ) -> None:
        self._typecode = _typecode(typecode)
        initial = array.array(self._typecode, [value])  # type-checks before allocating
        self._segment = _Segment(initial.itemsize)
        self._map()
        self._view[0] = initial[0]
        self._own_lock = lock is None
        self._lock = ProcessLock() if lock is None else lock

    def _map(self) -> None:
        self._view = self._segment.map(array.array(self._typecode).itemsize, self._typecode)

    def _state(self) -> tuple[Any, ...]:
        return (self._segment.name, self._segment.tracker, self._typecode, self._lock)

    def _restore(self, state: tuple[Any, ...]) -> None:
        name, tracker, self._typecode, self._lock = state
        self._own_lock = False
        self._segment = _Segment(0, name, tracker)
        self._map()

    def __reduce__(self) -> tuple[Any, ...]:
        self._check_open()
        return (_rebuild, (type(self), self._state()))

    def __repr__(self) -> str:
        if self.closed:
            return "<SharedValue closed>"
        return f"<SharedValue {self._typecode!r} {self.value!r} /{self.name}>"

    def _semaphores(self) -> list[ProcessSemaphore]:
        return [self._lock] if self._own_lock else []

    @property
    def typecode(self) -> str:
        """The value's type, as an :mod:`array` typecode."""
        return self._typecode

    @property
    def value(self) -> Any:
        """The value (plain memory access, no lock)."""
        self._check_open()
        return self._view[0]

    @value.setter
    def value(self, new: Any) -> None:
        self._check_open()
        self._view[0] = new

    @property
    def lock(self) -> ProcessLock:
        """The process-shared lock for read-modify-write updates."""
        return self._lock

    def get_lock(self) -> ProcessLock:
        """:attr:`lock` (``multiprocessing``'s spelling)."""
        return self._lock


S = TypeVar("S", bound=_Shared)


def _rebuild(cls: type[S], state: tuple[Any, ...]) -> S:
    self = cls.__new__(cls)
    self._restore(state)  # type: ignore[attr-defined]
    return self


# -- the channel --------------------------------------------------------------------

# Channel header: closed flag, messages sent, messages received, next slot to
# write, next slot to read (at these offsets).  Slot header: nbytes, format,
# ndim, shape.
_HEAD = struct.Struct("=I4xQQII")
_CLOSED, _SENT, _RECEIVED, _WRITE, _READ = 0, 8, 16, 24, 28
_HEAD_SIZE = 64
_SLOT_HEAD = struct.Struct("=Q16sB8Q")
_SLOT_HEAD_SIZE = 128
_MAX_DIMS = 8
_ALIGN = 64

_Message = tuple[memoryview, str, tuple[int, ...]]


def _message(data: Any, capacity: int) -> _Message:
    """Validate *data* before any wait: a flat byte view, its format and shape."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"ShmChannel sends buffers (bytes, array.array, memoryview, numpy arrays), "
            f"not {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        raise ValueError("ShmChannel sends C-contiguous buffers; copy it first")
    if view.nbytes > capacity:
        raise MessageTooLarge(view.nbytes, capacity)
    fmt, shape = view.format, tuple(view.shape or ())
    if len(fmt.encode()) > 16 or len(shape) > _MAX_DIMS:
        fmt, shape = "B", (view.nbytes,)
    if (view.format, view.ndim) == ("B", 1):
        return view, fmt, shape
    try:
        return view.cast("B"), fmt, shape
    except (TypeError, ValueError):  # a format memoryview cannot cast: copy it flat
        return memoryview(view.tobytes()), fmt, shape


def _typed(buf: bytearray, fmt: str, shape: tuple[int, ...]) -> memoryview[Any]:
    view = memoryview(buf)
    if fmt in ("B", "") and shape == (len(buf),):
        return view
    try:
        # cast() refuses a shape with a zero in it: an empty message is 1-D.
        return _cast(view, fmt, shape if all(shape) else None)
    except (TypeError, ValueError):
        return view  # a format memoryview cannot cast to: the raw bytes


@dataclass(frozen=True)
class ShmChannelStatistics:
    """A snapshot of a :class:`ShmChannel` (every process sees the same counts).

    Attributes:
        capacity: the largest message, in bytes.
        slots: messages that can wait unreceived.
        sent: messages sent so far.
        received: messages received so far.
        pending: messages sent and not yet received.
        closed: whether the channel was closed.
    """

    capacity: int
    slots: int
    sent: int
    received: int
    pending: int
    closed: bool


class ShmChannel(_Shared):
    """A one-way channel for large arrays between processes, through shared memory.

    Any number of processes may send and receive; each message goes to one
    receiver, in order.  A message is a C-contiguous buffer of up to
    *capacity* bytes (bytes, ``array.array``, ``memoryview``, numpy arrays);
    it is copied into a shared slot and out again, never pickled.  Pass the
    channel to a child process (pickle it) to share it; for two directions
    use two channels.

    Tasks use ``await send()`` / ``await recv()``; synchronous code (a
    child's target, a thread) uses :meth:`sync_send` / :meth:`sync_recv`.
    Waits never block the loop and are cancellation-safe.

    Use it as an async context manager: scope end closes the channel for
    everyone and (for the creating object) unlinks the segment and FIFOs.

    Args:
        capacity: the largest message, in bytes.
        slots: messages that can wait unreceived (the sender runs ahead by
            that many).

    Raises:
        ValueError: capacity or slots out of range.
    """

    def __init__(self, capacity: int, *, slots: int = 2) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if not 1 <= slots <= 64:
            raise ValueError(f"slots must be between 1 and 64, got {slots}")
        self._capacity = capacity
        self._slots = slots
        self._empty = ProcessSemaphore(slots)
        self._full = ProcessSemaphore(0)
        self._send_lock = ProcessLock()
        self._recv_lock = ProcessLock()
        try:
            self._segment = _Segment(_HEAD_SIZE + slots * self._stride())
        except BaseException:
            for sem in self._semaphores():
                sem.close()
            raise
        self._map()

    def _stride(self) -> int:
        return _SLOT_HEAD_SIZE + -(-self._capacity // _ALIGN) * _ALIGN

    def _map(self) -> None:
        buf = self._segment.shm.buf
        assert buf is not None
        self._view = buf

    def _semaphores(self) -> list[ProcessSemaphore]:
        return [self._empty, self._full, self._send_lock, self._recv_lock]

    def __reduce__(self) -> tuple[Any, ...]:
        self._check_open()
        state = (
            self._segment.name,
            self._segment.tracker,
            self._capacity,
            self._slots,
            *self._semaphores(),
        )
        return (_rebuild_channel, state)

    def __repr__(self) -> str:
        if self._segment.closed:
            return "<ShmChannel released>"
        state = "closed" if self.closed else "open"
        return f"<ShmChannel {state} capacity={self._capacity} slots={self._slots} /{self.name}>"

    @property
    def capacity(self) -> int:
        """The largest message, in bytes."""
        return self._capacity

    @property
    def closed(self) -> bool:
        """Whether the channel was closed (by any process)."""
        return self._segment.closed or self._head()[0] != 0

    def statistics(self) -> ShmChannelStatistics:
        """Counts and state, read from the shared header.

        Raises:
            ClosedError: this copy was released (:meth:`aclose`).
        """
        self._check_open()
        closed, sent, received, _, _ = self._head()
        return ShmChannelStatistics(
            self._capacity, self._slots, sent, received, sent - received, bool(closed)
        )

    def _head(self) -> tuple[int, int, int, int, int]:
        return _HEAD.unpack_from(self._view, 0)

    # -- the copies (tokens held) ------------------------------------------------

    def _put_locked(self, message: _Message) -> None:
        # Holds one ``empty`` token and the send lock.
        closed, sent, _, write, _ = self._head()
        if closed:
            self._empty._post()  # pass the close wake-up on
            raise ClosedError("the ShmChannel is closed")
        flat, fmt, shape = message
        base = _HEAD_SIZE + write % self._slots * self._stride()
        data = base + _SLOT_HEAD_SIZE
        self._view[data : data + flat.nbytes] = flat
        dims = (*shape, *(0,) * (_MAX_DIMS - len(shape)))
        _SLOT_HEAD.pack_into(self._view, base, flat.nbytes, fmt.encode(), len(shape), *dims)
        # Only senders write these fields, under the send lock.
        struct.pack_into("=Q", self._view, _SENT, sent + 1)
        struct.pack_into("=I", self._view, _WRITE, (write + 1) % self._slots)
        self._full._post()

    def _take_locked(self, copy: Callable[[memoryview, str, tuple[int, ...]], T]) -> T:
        # Holds one ``full`` token and the receive lock.
        _, sent, received, _, read = self._head()
        if sent == received:  # no message: the token was the close wake-up
            self._full._post()
            raise PeerClosed("the ShmChannel was closed and every message received")
        base = _HEAD_SIZE + read % self._slots * self._stride()
        nbytes, fmt_raw, ndim, *dims = _SLOT_HEAD.unpack_from(self._view, base)
        if nbytes > self._capacity or ndim > _MAX_DIMS:
            self._full._post()  # every receiver should see it
            raise BrokenError(f"ShmChannel /{self.name}: a slot header is corrupt")
        data = base + _SLOT_HEAD_SIZE
        try:
            # Released at once: a view left in a traceback would pin the mapping.
            with self._view[data : data + nbytes] as src:
                result = copy(src, fmt_raw.rstrip(b"\0").decode(), tuple(dims[:ndim]))
        except BaseException:
            self._full._post()  # the message stays for the next receive
            raise
        # Only receivers write these fields, under the receive lock.
        struct.pack_into("=Q", self._view, _RECEIVED, received + 1)
        struct.pack_into("=I", self._view, _READ, (read + 1) % self._slots)
        self._empty._post()
        return result

    # -- async side ----------------------------------------------------------------

    async def send(self, data: Any) -> None:
        """Send one buffer, waiting (without blocking the loop) for a free slot.

        Raises:
            MessageTooLarge: larger than :attr:`capacity` (checked first).
            ClosedError: the channel is closed.
            TypeError, ValueError: not a C-contiguous buffer.
        """
        self._check_open()
        message = _message(data, self._capacity)
        if self.closed:
            raise ClosedError("the ShmChannel is closed")
        await self._empty.acquire()
        try:
            await self._send_lock.acquire()
        except BaseException:
            self._empty._post()
            raise
        try:
            self._put_locked(message)
        except BaseException as exc:
            if not isinstance(exc, ClosedError):
                self._empty._post()
            raise
        finally:
            self._send_lock._post()

    async def _recv(self, copy: Callable[[memoryview, str, tuple[int, ...]], T]) -> T:
        self._check_open()
        await self._full.acquire()
        try:
            await self._recv_lock.acquire()
        except BaseException:
            self._full._post()
            raise
        try:
            return self._take_locked(copy)
        finally:
            self._recv_lock._post()

    async def recv(self) -> memoryview[Any]:
        """Receive one message as a new memoryview with the sender's format and shape.

        ``numpy.asarray(view)`` wraps it without a copy; ``view.tolist()``
        gives the items.

        Raises:
            PeerClosed: the channel was closed and every message received.
            BrokenError: a slot header is corrupt (something wrote over the
                segment); every receive method raises it.
        """
        return await self._recv(_copy_typed)

    async def recv_bytes(self) -> bytes:
        """Receive one message as bytes.

        Raises:
            PeerClosed: the channel was closed and every message received.
        """
        return await self._recv(_copy_bytes)

    async def recv_array(self) -> array.array[Any]:
        """Receive one message as an :class:`array.array` of the sender's typecode.

        Raises:
            PeerClosed: the channel was closed and every message received.
            ValueError: the message's format is not an array typecode (the
                message stays in the channel).
        """
        return await self._recv(_copy_array)

    async def recv_into(self, buffer: Any) -> int:
        """Receive one message into a writable buffer; returns its size in bytes.

        Raises:
            PeerClosed: the channel was closed and every message received.
            MessageTooLarge: *buffer* is smaller than the message (the message
                stays in the channel).
        """
        return await self._recv(_into(buffer))

    # -- sync side ------------------------------------------------------------------

    def sync_send(self, data: Any, timeout: float | None = None) -> None:
        """:meth:`send` for synchronous code (a child's target, a thread).

        Raises:
            TimeoutError: no free slot within *timeout* seconds.
            RuntimeStateError: it would block inside a running event loop.
            MessageTooLarge, ClosedError, TypeError, ValueError: as :meth:`send`.
        """
        self._check_open()
        message = _message(data, self._capacity)
        if self.closed:
            raise ClosedError("the ShmChannel is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._sync_acquire_both(self._empty, self._send_lock, deadline, "no free slot")
        try:
            self._put_locked(message)
        except BaseException as exc:
            if not isinstance(exc, ClosedError):
                self._empty._post()
            raise
        finally:
            self._send_lock._post()

    def sync_recv(self, timeout: float | None = None) -> memoryview[Any]:
        """:meth:`recv` for synchronous code.

        Raises:
            TimeoutError: no message within *timeout* seconds.
            PeerClosed: the channel was closed and every message received.
        """
        return self._sync_recv(_copy_typed, timeout)

    def sync_recv_array(self, timeout: float | None = None) -> array.array[Any]:
        """:meth:`recv_array` for synchronous code."""
        return self._sync_recv(_copy_array, timeout)

    def sync_recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """:meth:`recv_into` for synchronous code."""
        return self._sync_recv(_into(buffer), timeout)

    def _sync_recv(
        self, copy: Callable[[memoryview, str, tuple[int, ...]], T], timeout: float | None
    ) -> T:
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._sync_acquire_both(self._full, self._recv_lock, deadline, "no message")
        try:
            return self._take_locked(copy)
        finally:
            self._recv_lock._post()

    @staticmethod
    def _sync_acquire_both(
        sem: ProcessSemaphore, lock: ProcessLock, deadline: float | None, what: str
    ) -> None:
        def left() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        if not sem.sync_acquire(timeout=left()):
            raise TimeoutError(f"ShmChannel: {what} in time")
        if not lock.sync_acquire(timeout=left()):
            sem._post()
            raise TimeoutError(f"ShmChannel: {what} in time")

    # -- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """End the channel for every process (never blocks).  Idempotent.

        Receivers get the messages already sent, then :class:`~anycore.errors.PeerClosed`;
        senders get :class:`~anycore.errors.ClosedError`.  This copy stays
        mapped (to receive what is left) until :meth:`aclose`.
        """
        if self.closed:
            return
        struct.pack_into("=I", self._view, _CLOSED, 1)
        self._full._post()
        self._empty._post()

    async def aclose(self) -> None:
        """:meth:`close`, then release this copy (the owner unlinks everything)."""
        if self._segment.closed:
            return
        self.close()
        self._view = memoryview(b"")
        try:
            self._segment.close()
        finally:
            for sem in self._semaphores():
                sem.close()  # an attached copy's close only closes its fds


def _rebuild_channel(
    name: str,
    tracker: _TrackerKey,
    capacity: int,
    slots: int,
    empty: ProcessSemaphore,
    full: ProcessSemaphore,
    send_lock: ProcessLock,
    recv_lock: ProcessLock,
) -> ShmChannel:
    self = ShmChannel.__new__(ShmChannel)
    self._capacity, self._slots = capacity, slots
    self._empty, self._full = empty, full
    self._send_lock, self._recv_lock = send_lock, recv_lock
    self._segment = _Segment(0, name, tracker)
    self._map()
    return self


def _copy_typed(src: memoryview, fmt: str, shape: tuple[int, ...]) -> memoryview[Any]:
    return _typed(bytearray(src), fmt, shape)


def _copy_bytes(src: memoryview, fmt: str, shape: tuple[int, ...]) -> bytes:
    return bytes(src)


def _copy_array(src: memoryview, fmt: str, shape: tuple[int, ...]) -> array.array[Any]:
    typecode = fmt.lstrip("@")
    if len(typecode) != 1 or typecode not in TYPECODES + "B":
        raise ValueError(f"the message's format {fmt!r} is not an array typecode; use recv()")
    result = array.array(typecode)
    result.frombytes(src)
    return result


def _into(buffer: Any) -> Callable[[memoryview, str, tuple[int, ...]], int]:
    target = memoryview(buffer)
    if target.readonly:
        raise TypeError("recv_into needs a writable buffer")
    if not target.c_contiguous:
        raise ValueError("recv_into needs a C-contiguous buffer")
    flat = target if (target.format, target.ndim) == ("B", 1) else target.cast("B")

    def copy(src: memoryview, fmt: str, shape: tuple[int, ...]) -> int:
        if src.nbytes > flat.nbytes:
            raise MessageTooLarge(src.nbytes, flat.nbytes)
        flat[: src.nbytes] = src
        return src.nbytes

    return copy
