# One supervised instance: the state machine that keeps one copy of a program running.
#
# What this module owns: ``_Instance`` (``name`` or ``name:N`` of a ``Program``):
# starting its process, watching its readiness, its output and its exit, deciding
# what follows (restart after a backoff, EXITED, FATAL) and stopping it.  The
# ``Supervisor`` holds the instances, orders them by dependency and serves control
# requests; an instance asks it only for its dependencies and reports each state
# change to it.
#
# Design choices:
#   * One runner task per instance, a plain loop: wait for the dependencies, start,
#     wait for readiness, wait for the exit, decide.  A stop request is an event the
#     runner races against everything it waits for, so a stop in any state is prompt.
#   * The restart policy (``always``, ``on-failure``, ``never``) is judged on the
#     exit and on whether the run became ready; restart number *n* waits
#     ``backoff_initial * 2**(n-1)`` (capped, jittered); more than ``max_restarts``
#     restarts within ``restart_window`` give up with FATAL.
#   * Commands run through ``anycore.Process`` (own process group, pidfd exit
#     watching, bounded line readers); Python callables through ``ChildProcess``,
#     their descriptors 1 and 2 on socketpairs read like a command's pipes.  Both
#     with ``die_with_parent``: a supervisor killed by SIGKILL or the OOM killer
#     takes its programs' process groups with it.  Both are started with
#     ``register=False``: the runtime would stop them all at once in
#     ``Phase.PROCESSES``, while the supervisor stops them in reverse dependency
#     order (it registers one step and one force-exit hook of its own).
#   * Readiness is a conjunction of checks: a TCP port accepts, an output line
#     matches a regex, the process stayed up for a delay, or the program reported
#     ``READY=1`` on a notify socket (``_notify``), all within ``ready_timeout``.
#     Rejected: a fixed "startsecs" only (supervisord), which cannot tell a slow
#     start from a ready one.
#   * Stopping is the stop signal to the whole process group, the grace period,
#     SIGKILL to the group.  Output lines are logged with the instance's name and
#     pid, and the last ``_HISTORY`` of them kept for ``ctl tail``.
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from .._core._backoff import backoff_delay
from ..errors import AnycoreError, ProcessError, RuntimeStateError, describe_returncode
from ..logging._context import bind_context
from ._control import _HISTORY, _Follower
from ._notify import NotifySocket
from ._program import Program, ProgramState, ProgramStatus, _parse_host_port, exec_form

if TYPE_CHECKING:
    from ._supervisor import Supervisor

logger = logging.getLogger("anycore.supervisor")


class _Instance:
    """One running copy of a program and the task that keeps it running."""

    def __init__(self, sup: Supervisor, program: Program, index: int, name: str) -> None:
        self.sup = sup
        self.program = program
        self.index = index
        self.name = name
        self.state = ProgramState.STOPPED
        self.pid: int | None = None
        self.started_at: float | None = None
        self.restarts = 0
        self.exit_code: int | None = None
        self.description = "not started"
        self.is_ready = False
        self.task: asyncio.Task[None] | None = None
        self.proc: Any = None
        # The current process's captured output: (stream, "stdout" | "stderr").
        self._outputs: list[tuple[Any, str]] = []
        self._own_readers: list[Any] = []  # a callable's, closed by us
        self._stop_event = asyncio.Event()
        self._changed = asyncio.Event()
        self._restart_times: collections.deque[float] = collections.deque()
        self._line_regex = (
            re.compile(program.ready_line) if program.ready_line is not None else None
        )
        self._line_seen: asyncio.Future[None] | None = None
        self.log = logging.getLogger(f"anycore.program.{name}")
        # The last output lines (for ``ctl tail``) and the tails following them.
        self.history: collections.deque[tuple[int, str, str, str]] = collections.deque(
            maxlen=_HISTORY
        )
        self.followers: set[_Follower] = set()

    # -- state ------------------------------------------------------------------------

    def _set(self, state: ProgramState, description: str) -> None:
        self.state = state
        self.description = description
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self.sup._notify_change()
        level = (
            logging.WARNING
            if state in (ProgramState.FATAL, ProgramState.BACKOFF)
            else (logging.INFO)
        )
        logger.log(
            level,
            "%s %s%s",
            self.name,
            state.value,
            f" ({description})" if description else "",
            extra=self._extra(),
        )

    def _extra(self) -> dict[str, Any]:
        """The ``extra`` of this instance's records (no ``pid`` while none runs)."""
        if self.pid is None:
            return {"program": self.name}
        return {"program": self.name, "pid": self.pid}

    def status(self) -> ProgramStatus:
        uptime = None
        if self.started_at is not None and self.pid is not None:
            uptime = time.monotonic() - self.started_at
        return ProgramStatus(
            name=self.name,
            program=self.program.name,
            index=self.index,
            state=self.state,
            pid=self.pid,
            uptime=uptime,
            restarts=self.restarts,
            exit_code=self.exit_code,
            description=self.description,
            ready=self.is_ready,
        )

    @property
    def active(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def settled(self) -> bool:
        """Whether dependants may stop waiting (ready, or given up)."""
        return self.is_ready or self.state in (
            ProgramState.FATAL,
            ProgramState.EXITED,
            ProgramState.STOPPED,
        )

    async def wait_changed(self) -> None:
        await self._changed.wait()

    # -- control ------------------------------------------------------------------------

    def start(self) -> None:
        if self.active:
            return
        self._stop_event = asyncio.Event()
        self._restart_times.clear()
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"supervise {self.name}"
        )

    async def stop(self) -> None:
        self._stop_event.set()
        task = self.task
        if task is not None and not task.done():
            await asyncio.wait({task})

    def send_signal(self, sig: int) -> bool:
        """Signal the running process (a command's whole group); whether one got it."""
        proc = self.proc
        if proc is None or self.pid is None:
            return False
        try:
            if hasattr(proc, "join"):
                proc.send_signal(sig)
            else:
                proc.send_signal(sig, group=True)
        except (OSError, ValueError, AnycoreError):
            return False
        return True

    def _record(self, stream_name: str, text: str) -> None:
        self.sup._sequence += 1
        item = (self.sup._sequence, self.name, stream_name, text)
        self.history.append(item)
        for follower in self.followers:
            follower.push(item)

    def kill_now(self) -> None:
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(Exception):
                if hasattr(proc, "_kill_now"):
                    proc._kill_now()
                else:
                    proc.kill()

    # -- the runner -------------------------------------------------------------------

    async def _wait_deps(self) -> str | None:
        """Wait until every dependency is settled; the failed one's name, if any."""
        deps = [i for d in self.program.depends_on for i in self.sup._instances_of(d)]
        while True:
            pending = [d for d in deps if not d.settled]
            if not pending:
                break
            self._set(ProgramState.STARTING, f"waiting for {pending[0].name}")
            stopper = asyncio.ensure_future(self._stop_event.wait())
            waits = {asyncio.ensure_future(d.wait_changed()) for d in pending}
            try:
                await asyncio.wait({stopper, *waits}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (stopper, *waits):
                    fut.cancel()
            if self._stop_event.is_set():
                return None
        for d in deps:
            if not d.is_ready:
                return d.name
        return None

    async def _run(self) -> None:
        p = self.program
        try:
            failed_dep = await self._wait_deps()
            if self._stop_event.is_set():
                return
            if failed_dep is not None:
                self._set(ProgramState.FATAL, f"dependency {failed_dep} is not running")
                return
            while not self._stop_event.is_set():
                returncode, was_ready = await self._run_once()
                if self._stop_event.is_set():
                    break
                if returncode is not None:
                    self.exit_code = returncode
                why = self.description if returncode is None else describe_returncode(returncode)
                if p.restart == "never" or (
                    p.restart == "on-failure" and returncode == 0 and was_ready
                ):
                    self._set(ProgramState.EXITED, why)
                    return
                now = time.monotonic()
                while self._restart_times and now - self._restart_times[0] > p.restart_window:
                    self._restart_times.popleft()
                if len(self._restart_times) >= p.max_restarts:
                    self._set(
                        ProgramState.FATAL,
                        f"{why}; gave up after {len(self._restart_times)} restarts "
                        f"in {p.restart_window:g}s",
                    )
                    return
                self._restart_times.append(now)
                attempt = len(self._restart_times)
                delay = backoff_delay(attempt, p.backoff_initial, p.backoff_max, p.backoff_jitter)
                self._set(ProgramState.BACKOFF, f"{why}; restarting in {delay:.2f}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), delay)
                if self._stop_event.is_set():
                    break
                self.restarts += 1
        finally:
            if self.state not in (ProgramState.FATAL, ProgramState.EXITED):
                self._set(ProgramState.STOPPED, "stopped")

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update({k: v.replace("{index}", str(self.index)) for k, v in self.program.env.items()})
        env["ANYCORE_PROGRAM"] = self.name
        env.pop("NOTIFY_SOCKET", None)
        env.pop("LISTEN_FDS", None)
        env.pop("LISTEN_PID", None)
        if self._notify is not None:
            env["NOTIFY_SOCKET"] = self._notify.address
        return env

    async def _spawn(self) -> None:
        p = self.program
        argv = p.argv(self.index)
        if argv is None:
            await self._spawn_callable()
            return
        from .._proc._subprocess import DEVNULL, PIPE, Process

        env = self._environment()
        capture = PIPE if p.capture_output else None
        if isinstance(argv, str):
            argv = exec_form(argv)
        proc = Process(
            argv,
            shell=isinstance(argv, str),
            stdin=DEVNULL,
            stdout=capture,
            stderr=capture,
            cwd=p.cwd,
            env=env,
            process_group=0,
            grace_period=p.grace_period,
            split_long_lines=True,
            pass_fds=p.pass_fds,
            register=False,
            die_with_parent=True,  # even a SIGKILLed supervisor leaves no program behind
            kill_tree=p.kill_tree,
        )
        await proc.start()
        self.proc = proc
        self.pid = proc.pid
        self._outputs = [(s, n) for s, n in ((proc.stdout, "stdout"), (proc.stderr, "stderr")) if s]

    async def _spawn_callable(self) -> None:
        # The child's descriptors 1 and 2 are redirected to socketpairs whose
        # other ends are read here like a command's pipes (sockets, because
        # multiprocessing hands sockets to a forkserver / spawn child).
        from .._proc._pipes import ProcessReader
        from .._workers._child import ChildProcess

        p = self.program
        assert p.target is not None
        pairs = [socket.socketpair() for _ in range(2 if p.capture_output else 0)]
        try:
            child: Any = ChildProcess(
                p.target,
                name=self.name,
                grace=p.grace_period,
                register=False,
                stdout=pairs[0][1] if pairs else None,
                stderr=pairs[1][1] if pairs else None,
                env=self._environment(),
                cwd=p.cwd,
                die_with_parent=True,
            )
            await child.start()
        except BaseException:
            for ours, _ in pairs:
                ours.close()
            raise
        finally:
            for _, theirs in pairs:
                theirs.close()  # the child has its copy: EOF once it (and its children) end
        loop = asyncio.get_running_loop()
        for (ours, _), stream_name in zip(pairs, ("stdout", "stderr"), strict=False):
            reader = ProcessReader(loop, ours.detach(), stream_name, split_long_lines=True)
            self._own_readers.append(reader)
            self._outputs.append((reader, stream_name))
        self.proc = child
        self.pid = child.pid

    _notify: NotifySocket | None = None

    async def _run_once(self) -> tuple[int | None, bool]:
        """Start the program once and supervise it until it exits or is stopped.

        Returns:
            the return code (``None`` when it could not start) and whether it
            became ready.
        """
        p = self.program
        loop = asyncio.get_running_loop()
        self.is_ready = False
        self.pid = None
        self._set(ProgramState.STARTING, "")
        notify_wanted = p.ready_notify or (p.server is not None)
        self._notify = NotifySocket(loop, self.name.replace(":", "-")) if notify_wanted else None
        self._line_seen = loop.create_future() if self._line_regex is not None else None
        pumps: list[asyncio.Task[None]] = []
        waiters: list[asyncio.Future[Any]] = []
        try:
            try:
                await self._spawn()
            except (OSError, ProcessError, ValueError, RuntimeStateError) as exc:
                self._set(ProgramState.STARTING, f"cannot start: {exc}")
                return None, False
            self.started_at = time.monotonic()
            for stream, stream_name in self._outputs:
                pumps.append(
                    loop.create_task(
                        self._pump(stream, stream_name), name=f"{self.name} {stream_name}"
                    )
                )
            exited = asyncio.ensure_future(self._wait_exit())
            stopper = asyncio.ensure_future(self._stop_event.wait())
            ready = asyncio.ensure_future(self._check_ready())
            waiters = [exited, stopper, ready]
            self._set(ProgramState.STARTING, f"pid {self.pid}")
            await asyncio.wait({exited, stopper, ready}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done() and not exited.done() and not stopper.done():
                error = ready.exception()
                if error is None:
                    self.is_ready = True
                    self._set(ProgramState.RUNNING, f"pid {self.pid}")
                else:
                    self.log.error(
                        "%s did not become ready: %s",
                        self.name,
                        error,
                        extra={"program": self.name, "pid": self.pid},
                    )
                    self.description = f"not ready: {error}"
                    await self._terminate(exited)
                    return exited.result() if exited.done() else None, False
            if not exited.done():
                await asyncio.wait({exited, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                self._set(ProgramState.STOPPING, f"pid {self.pid}")
                await self._terminate(exited)
                await asyncio.wait({exited})
            return exited.result(), self.is_ready
        finally:
            for fut in waiters:
                fut.cancel()
            await self._cleanup(pumps)

    async def _wait_exit(self) -> int:
        proc = self.proc
        if hasattr(proc, "join"):
            code = await proc.join()
            await self._log_remote_error(proc)
            return int(code) if code is not None else -signal.SIGKILL
        return int(await proc.wait())

    async def _log_remote_error(self, child: Any) -> None:
        # A callable that raised reports its exception over the channel rather
        # than on stderr: log its traceback, as a command's would have been.
        from ..errors import RemoteError

        try:
            await child.result()
        except RemoteError as exc:
            self.log.error(
                "%s raised:\n%s",
                self.name,
                exc.remote_traceback.rstrip("\n"),
                extra={"program": self.name, "pid": self.pid, "stream": "stderr"},
            )
        except Exception:  # killed, or sys.exit: the exit status says it
            pass

    async def _terminate(self, exited: asyncio.Future[int]) -> None:
        """stop_signal to the group, grace period, SIGKILL to the group."""
        p = self.program
        proc = self.proc
        if proc is None:
            return
        try:
            if hasattr(proc, "join"):
                proc.send_signal(p.stop_signal)
            else:
                proc.send_signal(p.stop_signal, group=True)
        except (OSError, ValueError):
            pass
        await asyncio.wait({exited}, timeout=p.grace_period)
        if not exited.done():
            self.log.warning(
                "%s did not stop within %gs: killing its process group",
                self.name,
                p.grace_period,
                extra={"program": self.name, "pid": self.pid},
            )
            self.kill_now()
            await asyncio.wait({exited}, timeout=5.0)

    async def _cleanup(self, pumps: list[asyncio.Task[None]]) -> None:
        proc = self.proc
        # Let the pumps log what the program wrote last (bounded: a grandchild
        # may hold the pipes open).
        if pumps:
            await asyncio.wait(pumps, timeout=1.0)
        if proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.aclose())
        for task in pumps:
            task.cancel()
        if pumps:
            await asyncio.wait(pumps)
        for reader in self._own_readers:
            reader.close()
        self._own_readers = []
        self._outputs = []
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._line_seen is not None and not self._line_seen.done():
            self._line_seen.cancel()
        self._line_seen = None
        self.proc = None
        self.pid = None
        self.started_at = None
        self.is_ready = False

    async def _pump(self, stream: Any, stream_name: str) -> None:
        pid = self.pid
        extra = {"program": self.name, "pid": pid, "stream": stream_name}
        with bind_context(program=self.name, pid=pid):
            try:
                async for raw in stream:
                    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                    text = text.rstrip("\r\n")
                    self.log.info("%s", text, extra=extra)
                    self._record(stream_name, text)
                    seen = self._line_seen
                    regex = self._line_regex
                    if (
                        seen is not None
                        and regex is not None
                        and not seen.done()
                        and regex.search(text)
                    ):
                        seen.set_result(None)
            except (OSError, AnycoreError) as exc:
                self.log.debug("%s: %s pump ended: %s", self.name, stream_name, exc, extra=extra)

    async def _check_ready(self) -> None:
        p = self.program
        checks: list[Awaitable[Any]] = []
        if self._line_seen is not None:
            checks.append(self._line_seen)
        if self._notify is not None:
            checks.append(self._notify.ready)
        if p.ready_port is not None:
            checks.append(self._wait_port(*_parse_host_port(p.ready_port)))
        if p.ready_delay is not None:
            checks.append(asyncio.sleep(p.ready_delay))
        if not checks:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*checks), p.ready_timeout)
        except TimeoutError:
            raise TimeoutError(f"no readiness within {p.ready_timeout:g}s") from None

    async def _wait_port(self, host: str, port: int) -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)  # polling OS state (a port), bounded by ready_timeout
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
