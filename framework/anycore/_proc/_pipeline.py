# Shell-style pipelines: ``cmd("ls", "-l") | cmd("wc", "-l")``.
#
# What this module owns: ``Command`` (a program and its per-stage options, not yet
# running), ``Pipeline`` (stages wired stdout -> stdin with real OS pipes, started and
# stopped together) and ``pipeline(...)``.  Every stage is an ordinary ``Process``; the
# bytes between stages never pass through Python.  As a shell does with a job, all
# stages share one process group (the first stage leads it), so one killpg stops the
# whole pipeline and its grandchildren.  The pipeline's stderr, when it is a PIPE, is
# one pipe shared by every stage (their diagnostics interleave, as on a terminal).
#
# Status: every stage's ProcessStatus; ``returncode`` is the last stage's, or with
# ``pipefail=True`` bash's rule (the rightmost non-zero).
#
# Rejected: pumping each stage's output through the loop into the next (a copy per
# byte, and the loop becomes the bottleneck); running the whole line through
# ``/bin/sh -c`` (quoting pitfalls, one opaque status).
from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from typing import Any

import anyio

from ..errors import CalledProcessError, RuntimeStateError, TimeoutExpired
from ._pipes import (
    DEFAULT_LIMIT,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_OUTPUT,
    ProcessReader,
    ProcessWriter,
    TextProcessReader,
    _communicate,
    _run_to_end,
)
from ._spawn import ProcessStatus, resolve_executable
from ._subprocess import (
    PIPE,
    STDOUT,
    Args,
    CompletedProcess,
    Process,
    Redirect,
    _redirect,
    _running_loop,
)

__all__ = ["Command", "Pipeline", "cmd", "pipeline"]

# Options a single stage may set; the pipeline sets stdin/stdout/text/grouping.
_STAGE_OPTIONS = frozenset(
    {
        "shell", "executable", "cwd", "env", "close_fds", "pass_fds", "user", "group",
        "extra_groups", "umask", "restore_signals", "stderr",
    }
)  # fmt: skip


class Command:
    """A program and its options, to be run as a pipeline stage.

    ``Command(["grep", "x"])`` or :func:`cmd` ``("grep", "x")``.  Join commands
    with ``|`` to build a :class:`Pipeline`.

    Args:
        args: as for :class:`~anycore.Process`.
        **options: per-stage options: shell, executable, cwd, env, close_fds,
            pass_fds, user, group, extra_groups, umask, restore_signals, stderr.

    Raises:
        TypeError: an option a stage cannot set on its own.
    """

    __slots__ = ("args", "options")

    def __init__(self, args: Args, **options: Any) -> None:
        unknown = set(options) - _STAGE_OPTIONS
        if unknown:
            raise TypeError(f"options not valid for a pipeline stage: {sorted(unknown)}")
        if options.get("stderr") == PIPE:
            raise ValueError("a stage's stderr cannot be a PIPE; give the pipeline stderr=PIPE")
        self.args = args
        self.options = options

    def __or__(self, other: Command | Pipeline | Args) -> Pipeline:
        return Pipeline([self, *_stages_of(other)])

    def __ror__(self, other: Args) -> Pipeline:
        return Pipeline([Command(other), self])

    def __repr__(self) -> str:
        return f"cmd({self.args!r})"


def cmd(*args: str | os.PathLike[str], **options: Any) -> Command:
    """``cmd("ls", "-l")``: a :class:`Command` from its words."""
    return Command(list(args), **options)


def _stages_of(item: Command | Pipeline | Args) -> list[Command]:
    if isinstance(item, Command):
        return [item]
    if isinstance(item, Pipeline):
        if item._state != "new":
            raise RuntimeStateError("cannot extend a pipeline that was started")
        return list(item.commands)
    return [Command(item)]


class Pipeline:
    """Stages connected with OS pipes; an async context manager.

    Leaving the block stops every stage that still runs (SIGTERM to the
    pipeline's process group, ``grace_period``, SIGKILL) and reaps them all.

    Args:
        stages: commands (or arg lists), first to last.
        stdin: the first stage's stdin (PIPE, DEVNULL, a file, an fd or None).
        stdout: the last stage's stdout.
        stderr: every stage's stderr; PIPE gives one shared pipe.
        pipefail: ``returncode`` is the rightmost non-zero one (bash's pipefail).
        text, encoding, errors: text mode for the pipeline's own pipes.
        grace_period, drain_timeout, limit, max_line_length, split_long_lines:
            as for :class:`~anycore.Process`.
        limiter: an anyio.CapacityLimiter; the pipeline takes one token.
        die_with_parent: every stage (and the pipeline's process group, while
            its first stage runs) is SIGKILLed if this process dies.

    Raises:
        ValueError, TypeError: invalid stages or options (nothing spawned).
    """

    def __init__(
        self,
        stages: Sequence[Command | Args],
        *,
        stdin: Redirect = None,
        stdout: Redirect = None,
        stderr: Redirect = None,
        pipefail: bool = False,
        text: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        grace_period: float = 5.0,
        drain_timeout: float = 1.0,
        limit: int = DEFAULT_LIMIT,
        max_line_length: int = DEFAULT_MAX_LINE,
        split_long_lines: bool = False,
        limiter: anyio.CapacityLimiter | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.commands = [s if isinstance(s, Command) else Command(s) for s in stages]
        if not self.commands:
            raise ValueError("a pipeline needs at least one stage")
        self._stdin = _redirect(stdin, "stdin")
        self._stdout = _redirect(stdout, "stdout")
        self._stderr = _redirect(stderr, "stderr")
        if self._stderr == STDOUT:
            raise ValueError("stderr=STDOUT is per stage: use Command(..., stderr=STDOUT)")
        self.pipefail = pipefail
        self._text = bool(text or encoding or errors)
        self._encoding = encoding or ("utf-8" if self._text else None)
        self._errors = errors or "strict"
        self.grace_period = grace_period
        self.drain_timeout = drain_timeout
        self._limit = limit
        self._max_line = max_line_length
        self._split = split_long_lines
        self._limiter = limiter
        self._die_with_parent = die_with_parent
        self.processes: list[Process] = []
        self.stdin: ProcessWriter | None = None
        self.stdout: ProcessReader | TextProcessReader | None = None
        self.stderr: ProcessReader | TextProcessReader | None = None
        self._state = "new"
        self._comm: asyncio.Task[tuple[Any, Any]] | None = None
        self._captured = [bytearray(), bytearray()]
        # Validate every stage now: a bad argument fails before anything is spawned.
        self._protos = [self._make_process(i, c, -1) for i, c in enumerate(self.commands)]

    def __or__(self, other: Command | Pipeline | Args) -> Pipeline:
        if self._state != "new":
            raise RuntimeStateError("cannot extend a pipeline that was started")
        return Pipeline(
            [*self.commands, *_stages_of(other)],
            stdin=self._stdin,
            stdout=self._stdout,
            stderr=self._stderr,
            pipefail=self.pipefail,
            text=self._text,
            encoding=self._encoding if self._text else None,
            errors=self._errors if self._text else None,
            grace_period=self.grace_period,
            drain_timeout=self.drain_timeout,
            limiter=self._limiter,
            die_with_parent=self._die_with_parent,
        )

    def _make_process(
        self,
        i: int,
        command: Command,
        leader: int,
        stdin: Redirect = None,
        stdout: Redirect = None,
        stderr: Redirect = None,
    ) -> Process:
        options: dict[str, Any] = dict(command.options)
        if "stderr" not in options:
            options["stderr"] = stderr
        last = i == len(self.commands) - 1
        return Process(
            command.args,
            stdin=stdin,
            stdout=stdout,
            process_group=0 if i == 0 else max(leader, 0),
            kill_group=i == 0,
            text=self._text and (i == 0 or last),
            encoding=self._encoding if self._text else None,
            errors=self._errors if self._text else None,
            grace_period=self.grace_period,
            drain_timeout=self.drain_timeout,
            limit=self._limit,
            max_line_length=self._max_line,
            split_long_lines=self._split,
            die_with_parent=self._die_with_parent,
            **options,
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> Pipeline:
        """Spawn every stage, first to last.

        Raises:
            ExecutableNotFound: a stage's program is missing (stages already
                started are stopped and reaped first).
            RuntimeStateError: already started, or no asyncio event loop is running.
        """
        if self._state != "new":
            raise RuntimeStateError("the pipeline was already started")
        loop = _running_loop("pipelines")
        self._state = "running"
        if self._limiter is not None:
            await self._limiter.acquire_on_behalf_of(self)
        n = len(self.commands)
        err_r = err_w = -1
        try:
            # Every program must exist before the first stage is spawned.
            for proto in self._protos:
                resolve_executable(proto._executable, proto._env)
            if self._stderr == PIPE:
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
            stage_stderr: Redirect = err_w if err_w >= 0 else self._stderr
            prev_read: int = -1
            for i, command in enumerate(self.commands):
                last = i == n - 1
                if last:
                    out_w: int | None = None
                    next_read = -1
                else:
                    next_read, out_w = os.pipe2(os.O_CLOEXEC)
                try:
                    proc = self._make_process(
                        i,
                        command,
                        self.processes[0].pid if self.processes else -1,
                        stdin=self._stdin if i == 0 else prev_read,
                        stdout=self._stdout if last else out_w,
                        stderr=stage_stderr,
                    )
                    await proc.start()
                    self.processes.append(proc)
                finally:
                    # The child has its copies; ours would keep the pipe open.
                    if prev_read >= 0:
                        os.close(prev_read)
                    if out_w is not None:
                        os.close(out_w)
                prev_read = next_read
            if err_w >= 0:
                os.close(err_w)
                err_w = -1
                raw = ProcessReader(
                    loop, err_r, "stderr", limit=self._limit, max_line_length=self._max_line,
                    split_long_lines=self._split,
                )  # fmt: skip
                err_r = -1
                self.stderr = (
                    TextProcessReader(raw, self._encoding, self._errors)
                    if self._encoding is not None
                    else raw
                )
        except BaseException:
            for fd in (err_r, err_w):
                if fd >= 0:
                    os.close(fd)
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        self.stdin = self.processes[0].stdin
        self.stdout = self.processes[-1].stdout
        return self

    async def __aenter__(self) -> Pipeline:
        if self._state == "new":
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the stages still running, close the pipes, reap every stage.

        Shielded from cancellation; idempotent.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        try:
            if self.stdin:
                self.stdin.close()
            procs = self.processes
            try:
                if procs and any(p.status is None for p in procs):
                    with anyio.CancelScope(shield=True):
                        self._signal_group(signal.SIGTERM)
                        await self._wait_all(self.grace_period)
                        if any(p.status is None for p in procs):
                            self._signal_group(signal.SIGKILL)
                            await self._wait_all(5.0)
                if self._comm is not None and not self._comm.done():
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait({self._comm}, timeout=self.drain_timeout)
            finally:
                if self._comm is not None and not self._comm.done():
                    self._comm.cancel()
                if self.stderr:
                    self.stderr.close()
                # Followers first: the leader's close kills what is left of the group.
                for p in reversed(procs):
                    if p.status is None:
                        p._kill_now()
                    await _close_quietly(p)
        finally:
            if self._limiter is not None:
                self._limiter.release_on_behalf_of(self)
                self._limiter = None

    def _signal_group(self, sig: int) -> None:
        if self.processes:
            self.processes[0].send_signal(sig, group=True)

    async def _wait_all(self, timeout: float) -> None:
        futs = {p._exit for p in self.processes if p._exit is not None and not p._exit.done()}
        if futs:
            await asyncio.wait(futs, timeout=timeout)

    # -- status ---------------------------------------------------------------------------

    @property
    def statuses(self) -> tuple[ProcessStatus | None, ...]:
        """Every stage's decoded status (``None`` for one still running)."""
        return tuple(p.status for p in self.processes)

    @property
    def returncodes(self) -> tuple[int | None, ...]:
        """Every stage's return code (``None`` while running)."""
        return tuple(p.returncode for p in self.processes)

    @property
    def returncode(self) -> int | None:
        """The last stage's return code, or with ``pipefail`` the rightmost non-zero.

        ``None`` until every stage exited.
        """
        codes = self.returncodes
        if not codes or any(c is None for c in codes):
            return None
        if self.pipefail:
            for code in reversed(codes):
                if code:
                    return code
            return 0
        return codes[-1]

    async def wait(self, timeout: float | None = None) -> int:
        """Wait until every stage exited; return :attr:`returncode`.

        Raises:
            TimeoutExpired: not all stages finished within ``timeout``.
            RuntimeStateError: the pipeline was not started.
        """
        futs = {p._exit for p in self.processes if p._exit is not None}
        if not futs:
            raise RuntimeStateError("the pipeline was not started")
        if timeout is None:
            await asyncio.shield(asyncio.wait(futs))
        else:
            await asyncio.wait(futs, timeout=timeout)
        rc = self.returncode
        if rc is None:
            raise TimeoutExpired(self.args, timeout or 0.0)
        return rc

    @property
    def args(self) -> list[Any]:
        """The args of every stage."""
        return [c.args for c in self.commands]

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to every process of the pipeline (its process group)."""
        self._signal_group(sig)

    def terminate(self) -> None:
        """SIGTERM to the pipeline's process group."""
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the pipeline's process group."""
        self._signal_group(signal.SIGKILL)

    async def communicate(
        self,
        input: bytes | str | None = None,
        timeout: float | None = None,
        *,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> tuple[Any, Any]:
        """Feed the first stage, collect the last stage's stdout and the shared
        stderr, wait for every stage.  Same contract as
        :meth:`anycore.Process.communicate`.

        Raises:
            TimeoutExpired: with the output read so far (the stages keep running).
            OutputLimitExceeded: a stream grew past ``max_output``.
            RuntimeStateError: the pipeline is not running.
        """
        if self._state != "running":
            raise RuntimeStateError("the pipeline is not running")
        return await _communicate(self, input, timeout, max_output)

    def _exit_futures(self) -> list[asyncio.Future[ProcessStatus]]:
        return [p._exit for p in self.processes if p._exit is not None]

    def _kill_leftovers(self) -> None:
        if self.processes:
            self.processes[0]._kill_leftovers()

    async def run(
        self,
        input: bytes | str | None = None,
        *,
        capture_output: bool = False,
        timeout: float | None = None,
        check: bool = False,
        max_output: int = DEFAULT_MAX_OUTPUT,
        pipefail: bool | None = None,
        text: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
    ) -> CompletedProcess:
        """Run the pipeline to completion (it must not be started yet).

        ``capture_output`` makes the last stdout and the shared stderr PIPEs.
        The result's ``statuses`` holds every stage's status.  ``pipefail``,
        ``text``, ``encoding`` and ``errors``, when given, override the
        pipeline's own settings (handy for pipelines built with ``|``).

        Raises:
            TimeoutExpired, CalledProcessError (``check`` and a non-zero
            :attr:`returncode`), OutputLimitExceeded.
            RuntimeStateError: the pipeline was already started.
        """
        if self._state != "new":
            raise RuntimeStateError("the pipeline was already started")
        if capture_output:
            self._stdout = self._stderr = PIPE
        if input is not None:
            self._stdin = PIPE
        if pipefail is not None:
            self.pipefail = pipefail
        if text or encoding or errors:
            self._text = True
            self._encoding = encoding or self._encoding or "utf-8"
            self._errors = errors or self._errors
        async with self:
            out, err = await _run_to_end(self, input, timeout, max_output)
            rc = self.returncode
            assert rc is not None
            statuses = tuple(s for s in self.statuses if s is not None)
        result = CompletedProcess(self.args, rc, out, err, statuses[-1], statuses)
        if check and rc:
            raise CalledProcessError(rc, self.args, out, err)
        return result

    def __repr__(self) -> str:
        return " | ".join(repr(c) for c in self.commands)


async def _close_quietly(proc: Process) -> None:
    with anyio.CancelScope(shield=True):
        await proc.aclose()


def pipeline(
    *stages: Command | Args,
    stdin: Redirect = None,
    stdout: Redirect = None,
    stderr: Redirect = None,
    pipefail: bool = False,
    **kwargs: Any,
) -> Pipeline:
    """``pipeline(["ls", "-l"], ["wc", "-l"])``: a :class:`Pipeline` of these stages.

    Use it as ``async with pipeline(...) as p`` or ``await pipeline(...).run()``.
    """
    return Pipeline(
        list(stages), stdin=stdin, stdout=stdout, stderr=stderr, pipefail=pipefail, **kwargs
    )
