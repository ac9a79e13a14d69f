# Process supervision: keep a set of programs running (supervisord's job, on the loop).
#
# What this module owns: ``Supervisor``, the async context manager that ties the
# pieces together: it holds the ``Program`` definitions (``_program``) and one
# ``_Instance`` state machine per instance (``_instance``; ``numprocs`` gives
# ``name:0``, ``name:1`` ...), starts dependants only once their dependencies are
# ready, stops in reverse dependency order, applies reloads, sends and forwards
# signals, answers control requests (``handle_command``) and serves them on the
# control socket (``_control``).  Readiness over the notify socket is ``_notify``'s.
#
# Design choices:
#   * The programs are ordered topologically once (cycles and unknown
#     dependencies refused when the definitions are given); stopping walks the
#     same graph backwards: a program stops after every program depending on it.
#   * Processes are started with ``register=False`` (see ``_instance``), so the
#     supervisor registers one ``Phase.PROCESSES`` step (its ``aclose``) and one
#     force-exit hook (``kill_all``: SIGKILL to every group) with the runtime.
#   * A reload compares whole definitions: changed programs are stopped and
#     restarted (dependants first), removed ones stopped, new ones started; a
#     restarted instance keeps its output history and its ``ctl tail`` followers.
#   * Signals: ``signal()`` reaches a command's process group like the stop
#     signal; ``forward_signals`` subscribes through ``on_signal`` beside the
#     runtime's own handlers, so SIGHUP still reloads while it is forwarded.
#   * The state changes are one ``asyncio.Event`` swapped on each change: ``wait_for``
#     re-reads the snapshot after each, so no change is missed and none polled.
# (``_TRUSTED_UIDS``, ``control_directory``, ``peer_uid``, ``parse_signal`` and
# ``exec_form`` are re-exported here for the command line and older imports.)
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from .._core._backend import require_asyncio
from ..errors import AnycoreError, RuntimeStateError
from ._control import (
    _TRUSTED_UIDS as _TRUSTED_UIDS,
    ControlServer,
    _parse_request,
    control_directory as control_directory,
    parse_signal as parse_signal,
    peer_uid as peer_uid,
)
from ._instance import _Instance
from ._program import Program, ProgramState, ProgramStatus, UnknownProgram, exec_form as exec_form

__all__ = [
    "Program",
    "ProgramState",
    "ProgramStatus",
    "Supervisor",
    "UnknownProgram",
]

logger = logging.getLogger("anycore.supervisor")


class Supervisor:
    """Keep a set of programs running; an async context manager.

    ``async with Supervisor(programs) as sup:`` starts every program (each
    after the programs it depends on are ready) and, when the block ends,
    stops them in reverse dependency order: the stop signal to each process
    group, the grace period, SIGKILL.  Under an anycore runtime the stop also
    happens in ``Phase.PROCESSES`` of a graceful shutdown, and a forced exit
    SIGKILLs every group.

    Args:
        programs: the :class:`Program` definitions (names must be unique).
        control_socket: a Unix socket path for ``anycore ctl`` (None: none);
            created mode 0600, each connection's peer must be this user or root.
        autostart: start the programs when entering the block.
        forward_signals: signals (numbers or names such as ``"SIGHUP"``) that,
            received by this process while the block runs, are sent on to every
            running program (see :meth:`signal`).  Other handlers of them
            (the runtime's SIGHUP reload) keep running.

    Raises:
        ValueError: duplicate names, unknown or cyclic dependencies.
    """

    def __init__(
        self,
        programs: Iterable[Program] = (),
        *,
        control_socket: str | None = None,
        autostart: bool = True,
        forward_signals: Iterable[int | str] = (),
    ) -> None:
        self._programs: dict[str, Program] = {}
        self._instances: dict[str, list[_Instance]] = {}
        self.control_socket = control_socket
        self.autostart = autostart
        self._order: list[str] = []
        self._set_programs(list(programs))
        self._entered = False
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._changed: asyncio.Event | None = None
        self._handles: list[Any] = []
        self._control: ControlServer | None = None
        self.forward_signals = tuple(parse_signal(s) for s in forward_signals)
        self._sequence = 0  # orders output lines across instances (``ctl tail``)

    # -- definitions ------------------------------------------------------------------

    @staticmethod
    def _topological(programs: Sequence[Program]) -> list[str]:
        by_name: dict[str, Program] = {}
        for p in programs:
            if p.name in by_name:
                raise ValueError(f"duplicate program name {p.name!r}")
            by_name[p.name] = p
        for p in programs:
            for dep in p.depends_on:
                if dep not in by_name:
                    raise ValueError(f"program {p.name!r} depends on unknown program {dep!r}")
        order: list[str] = []
        marks: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            mark = marks.get(name)
            if mark == 2:
                return
            if mark == 1:
                cycle = [*path[path.index(name) :], name]
                raise ValueError("dependency cycle: " + " -> ".join(cycle))
            marks[name] = 1
            for dep in by_name[name].depends_on:
                visit(dep, [*path, name])
            marks[name] = 2
            order.append(name)

        for p in programs:
            visit(p.name, [])
        return order

    def _set_programs(self, programs: list[Program]) -> None:
        self._order = self._topological(programs)
        self._programs = {p.name: p for p in programs}

    def _make_instances(self, p: Program) -> list[_Instance]:
        return [_Instance(self, p, i, n) for i, n in enumerate(p.instance_names())]

    def _instances_of(self, name: str) -> list[_Instance]:
        return self._instances.get(name, [])

    @property
    def programs(self) -> list[Program]:
        """The current definitions, in dependency order."""
        return [self._programs[n] for n in self._order]

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        require_asyncio(
            "Supervisor",
            "supervise programs from an asyncio (or uvloop) loop, or run `anycore supervise`",
        )
        if self._entered:
            raise RuntimeStateError("a Supervisor can be entered only once")
        self._entered = True
        self._changed = asyncio.Event()
        for name in self._order:
            self._instances[name] = self._make_instances(self._programs[name])
        try:
            from .._core._runtime import Phase, current_runtime

            rt = current_runtime()
            if rt is not None:
                self._handles.append(
                    rt.add_shutdown_step(Phase.PROCESSES, "supervisor", self.aclose)
                )
                self._handles.append(rt.add_force_exit_hook(self.kill_all))
            if self.forward_signals:
                from .._core._signals import on_signal

                first, *more = self.forward_signals
                self._handles.append(on_signal(first, self._forward, *more))
            if self.control_socket is not None:
                self._control = ControlServer(self)
                await self._control.start(self.control_socket)
            if self.autostart:
                for name in self._order:
                    for inst in self._instances[name]:
                        inst.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every program in reverse dependency order (idempotent)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(), name="supervisor close"
            )
        closing = self._closing
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            # Cancelled while stopping: finish the job, then go on cancelling.
            if not closing.done():
                await asyncio.wait({closing})
            raise

    async def _close(self) -> None:
        try:
            control, self._control = self._control, None
            if control is not None:
                await control.aclose()
            await self._stop_programs(list(self._order))
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._closed.set()

    async def _stop_programs(self, names: list[str]) -> None:
        """Stop ``names``; a program stops after every one depending on it."""
        if not names:
            return
        done: dict[str, asyncio.Event] = {n: asyncio.Event() for n in names}
        dependants: dict[str, list[str]] = {n: [] for n in names}
        for n in names:
            for dep in self._programs[n].depends_on if n in self._programs else ():
                if dep in dependants:
                    dependants[dep].append(n)

        async def stop_one(name: str) -> None:
            try:
                for d in dependants[name]:
                    await done[d].wait()
                insts = self._instances.get(name, [])
                if insts:
                    await asyncio.gather(*(i.stop() for i in insts))
            finally:
                done[name].set()

        await asyncio.gather(*(stop_one(n) for n in names))

    def kill_all(self) -> None:
        """SIGKILL every program's process group now (the force-exit hook)."""
        for insts in self._instances.values():
            for inst in insts:
                inst.kill_now()

    async def wait_closed(self) -> None:
        """Wait until the supervisor was closed (by :meth:`aclose` or shutdown)."""
        await self._closed.wait()

    # -- status -------------------------------------------------------------------------

    def _notify_change(self) -> None:
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _select(self, name: str) -> list[_Instance]:
        if name == "all":
            return [i for n in self._order for i in self._instances.get(n, [])]
        if name in self._instances:
            return list(self._instances[name])
        for insts in self._instances.values():
            for inst in insts:
                if inst.name == name:
                    return [inst]
        raise UnknownProgram(name)

    def status(self, name: str = "all") -> list[ProgramStatus]:
        """Snapshots of the instances of ``name`` (a program, an instance or "all").

        Raises:
            UnknownProgram: no such program or instance.
        """
        return [i.status() for i in self._select(name)]

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[list[ProgramStatus]], bool],
        timeout: float | None = None,
    ) -> list[ProgramStatus]:
        """Wait until ``predicate(self.status(name))`` holds; returns those snapshots.

        Raises:
            TimeoutError: ``timeout`` passed first.
            UnknownProgram: no such program or instance.
        """

        async def wait() -> list[ProgramStatus]:
            while True:
                assert self._changed is not None
                changed = self._changed
                snapshot = self.status(name)
                if predicate(snapshot):
                    return snapshot
                await changed.wait()

        if self._changed is None:
            raise RuntimeStateError("the supervisor is not running")
        return await asyncio.wait_for(wait(), timeout)

    async def wait_state(
        self, name: str, *states: ProgramState, timeout: float | None = None
    ) -> list[ProgramStatus]:
        """Wait until every instance of ``name`` is in one of ``states``.

        Raises:
            TimeoutError: ``timeout`` passed first.
        """
        return await self.wait_for(name, lambda snap: all(s.state in states for s in snap), timeout)

    # -- control --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._changed is None or self._closing is not None:
            raise RuntimeStateError("the supervisor is not running")

    async def start(self, name: str) -> list[ProgramStatus]:
        """Start ``name`` (program, instance or "all") if it is not running.

        Returns once the runners started (not once ready; see :meth:`wait_state`).
        """
        self._check_open()
        for inst in self._select(name):
            if not inst.active:
                inst.restarts = 0
                inst.start()
        return self.status(name)

    async def stop(self, name: str) -> list[ProgramStatus]:
        """Stop ``name`` (its instances' groups get the stop signal); waits."""
        self._check_open()
        await asyncio.gather(*(i.stop() for i in self._select(name)))
        return self.status(name)

    async def restart(self, name: str) -> list[ProgramStatus]:
        """Stop then start ``name``."""
        await self.stop(name)
        return await self.start(name)

    async def rolling_restart(self, name: str, timeout: float | None = None) -> None:
        """Restart the instances of ``name`` one at a time, each only after the
        previous replacement is ready: the others keep serving meanwhile.

        Raises:
            TimeoutError: a replacement did not become ready in ``timeout``.
        """
        self._check_open()
        for inst in self._select(name):
            await inst.stop()
            inst.start()
            await self.wait_for(
                inst.name,
                lambda s: s[0].ready or s[0].state in (ProgramState.FATAL, ProgramState.EXITED),
                timeout,
            )

    async def reload(self, programs: Iterable[Program]) -> dict[str, list[str]]:
        """Apply new definitions: programs whose definition changed are restarted,
        new ones started, removed ones stopped.

        Returns:
            ``{"added": [...], "changed": [...], "removed": [...]}``.

        Raises:
            ValueError: the new set is invalid (nothing was changed then).
        """
        self._check_open()
        new = list(programs)
        new_order = self._topological(new)
        by_name = {p.name: p for p in new}
        removed = [n for n in self._order if n not in by_name]
        changed = [n for n in new_order if n in self._programs and self._programs[n] != by_name[n]]
        added = [n for n in new_order if n not in self._programs]
        # Stop what goes away or changes (dependants first), under the old graph.
        await self._stop_programs([n for n in self._order if n in removed or n in changed])
        for n in removed:
            self._instances.pop(n, None)
        self._programs = by_name
        self._order = new_order
        for n in new_order:
            if n in changed or n in added:
                previous = {i.name: i for i in self._instances.get(n, [])}
                self._instances[n] = self._make_instances(by_name[n])
                for inst in self._instances[n]:
                    old = previous.get(inst.name)
                    if old is not None:  # `ctl tail` keeps following a restarted one
                        inst.history, inst.followers = old.history, old.followers
                    inst.start()
        logger.info(
            "reloaded: added %s, changed %s, removed %s",
            added or "-",
            changed or "-",
            removed or "-",
        )
        self._notify_change()
        return {"added": added, "changed": changed, "removed": removed}

    # -- signals ------------------------------------------------------------------------

    def signal(self, name: str, sig: int) -> list[ProgramStatus]:
        """Send ``sig`` to the running instances of ``name`` (program, instance or "all").

        A command's whole process group gets it (as the stop signal does); a
        callable's process gets it.  Instances that are not running are skipped.

        Raises:
            UnknownProgram: no such program or instance.
            RuntimeStateError: none of them is running.
            ValueError: ``sig`` is not a signal.
        """
        self._check_open()
        number = parse_signal(sig)
        insts = self._select(name)
        sent = [inst for inst in insts if inst.send_signal(number)]
        if not sent:
            raise RuntimeStateError(f"{name} is not running: no process got the signal")
        logger.info("sent %s to %s", signal.Signals(number).name, ", ".join(i.name for i in sent))
        return [i.status() for i in insts]

    def _forward(self, sig: int) -> None:
        running = [i for n in self._order for i in self._instances.get(n, [])]
        sent = [inst.name for inst in running if inst.send_signal(sig)]
        if sent:
            logger.info("forwarded %s to %s", signal.Signals(sig).name, ", ".join(sent))

    # -- control requests (``_control.ControlServer`` reads them, these answer) ------

    async def handle_command(self, request: str) -> dict[str, Any]:
        """Run one control request and return the JSON-ready reply.

        ``request`` is ``"status [NAME]"``, ``"start NAME"``, ``"stop NAME"``,
        ``"restart NAME"``, ``"signal NAME SIG"`` or a flat JSON object
        ``{"command": ..., "name": ..., "signal": ...}``.  ``start`` and
        ``restart`` reply once the instances settled (ready, backing off or
        given up; bounded by their ``ready_timeout``).  The reply is
        ``{"ok": true, "result": [...]}`` or ``{"ok": false, "error": "..."}``;
        a request over 4 KiB or nested JSON is refused with an error reply.
        (``tail NAME`` streams and is served by the control socket only.)
        """
        try:
            req = _parse_request(request)
            command, name = req["command"], req["name"]
            if command == "status":
                result = self.status(name)
            elif command == "stop":
                result = await self.stop(name)
            elif command in ("start", "restart"):
                await getattr(self, command)(name)
                result = await self._settled(name)
            elif command == "signal":
                result = self.signal(name, req["signal"])
            else:
                raise ValueError(f"{command} is served by the control socket only")
        except (AnycoreError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "result": [s.to_dict() for s in result]}

    async def _settled(self, name: str) -> list[ProgramStatus]:
        """The status of ``name`` once each instance left STOPPED / plain STARTING."""
        insts = self._select(name)
        bound = max((i.program.ready_timeout for i in insts), default=0.0) + 5.0

        def settled(snapshot: list[ProgramStatus]) -> bool:
            return all(
                s.ready or s.state not in (ProgramState.STOPPED, ProgramState.STARTING)
                for s in snapshot
            )

        try:
            return await self.wait_for(name, settled, bound)
        except TimeoutError:
            return self.status(name)
