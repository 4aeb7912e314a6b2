"""The Runtime Server's core: the table of executions, their workspace
directories, the zygote's supervision (restart on death, in-flight executions
failed with the reason) and the Handshake self-check. The gRPC service is a thin
layer over this."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from . import __version__, limits
from .dirpool import DirPool
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from .execution import Execution
from .plan import build_plan
from .proto import pb
from .reaper import ChildReaper, kill_adopted
from .validation import ScriptProgram, StartSpec
from .zygote_client import SpawnFailed, ZygoteClient, ZygoteLost

log = logging.getLogger(__name__)

SCRIPTS_DIR = ".scripts"


@dataclass(frozen=True)
class RuntimeConfig:
    workspace: str
    buffer_bytes: int = limits.DEFAULT_BUFFER_BYTES
    max_executions: int = limits.DEFAULT_MAX_EXECUTIONS
    max_retained: int = limits.DEFAULT_MAX_RETAINED
    preload: list[str] = field(default_factory=list)


class Runtime:
    def __init__(self, config: RuntimeConfig, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.root = os.path.realpath(config.workspace)
        self.env = dict(os.environ if env is None else env)
        self.executions: dict[str, Execution] = {}
        self._starting: set[str] = set()
        self._running: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reaper: ChildReaper | None = None
        self.zygote: ZygoteClient | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.zygote_restarts = 0
        self.dirs = DirPool(self.root)
        # Told False when the zygote is lost and True once it is back (health).
        self.on_ready_change: Callable[[bool], None] | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        os.makedirs(self.root, exist_ok=True)
        self.dirs.reset()
        self.dirs.refill()
        self.reaper = ChildReaper(self._loop)
        self.reaper.install()
        self.zygote = self._new_zygote()
        await self.zygote.start()

    def _new_zygote(self) -> ZygoteClient:
        assert self.reaper is not None
        return ZygoteClient(self.reaper, self.config.preload, self.env, self._on_zygote_lost)

    def _on_zygote_lost(self, reason: str, pids: list[int]) -> None:
        for execution in self.executions.values():
            if execution.running and execution.pid > 0:
                execution.lose(f"the python runtime's zygote died ({reason})")
        if not self._stopping:
            # Its other children (a spare, one handed a plan whose pid never
            # reached us) are now ours: none may run untracked.
            stray = kill_adopted(exclude=set())
            if stray:
                log.warning("killed %d process(es) left by the dead zygote", len(stray))
                if self.reaper is not None:
                    self.reaper.watch_orphans(stray)
        if self._stopping or (self._restart_task is not None and not self._restart_task.done()):
            return
        if self.on_ready_change is not None:
            self.on_ready_change(False)
        self._restart_task = asyncio.ensure_future(self._restart_zygote())

    async def _restart_zygote(self) -> None:
        delay = 0.1
        while not self._stopping:
            await asyncio.sleep(delay)
            zygote = self._new_zygote()
            self.zygote = zygote
            try:
                await zygote.start()
            except (ZygoteLost, OSError) as e:
                log.error("zygote restart failed: %s; retrying in %.1fs", e, delay)
                delay = min(delay * 2, 5.0)
                continue
            self.zygote_restarts += 1
            log.warning("zygote restarted (restart #%d)", self.zygote_restarts)
            if self.on_ready_change is not None:
                self.on_ready_change(True)
            return

    async def stop(self, grace_ms: int = 2000) -> None:
        """Cancel running executions (SIGTERM, grace, SIGKILL), stop the zygote."""
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        running = [e for e in self.executions.values() if e.running]
        for execution in running:
            execution.cancel(grace_ms, server_stopping=True)
        if running:
            await asyncio.wait(
                [asyncio.ensure_future(e.wait()) for e in running],
                timeout=grace_ms / 1000 + limits.DRAIN_TIMEOUT_S + 1,
            )
        if self.zygote is not None:
            await self.zygote.stop()
        if self.reaper is not None:
            self.reaper.reap()
            self.reaper.uninstall()
        self.dirs.clear()

    # -- requests ----------------------------------------------------------

    def get(self, execution_id: str) -> Execution:
        execution = self.executions.get(execution_id)
        if execution is None:
            raise NotFound(f"execution {execution_id!r} is not known")
        return execution

    def _reserve(self, execution_id: str) -> None:
        if execution_id in self.executions or execution_id in self._starting:
            raise AlreadyExists(f"execution {execution_id!r} already exists (Forget it first)")
        running = len(self._starting) + len(self._running)
        if self.config.max_executions and running >= self.config.max_executions:
            raise ResourceExhausted(
                f"{running} executions are running, the limit is {self.config.max_executions} (--max-executions)"
            )
        known = len(self._starting) + len(self.executions)
        if known >= self.config.max_retained:
            raise ResourceExhausted(
                f"{known} executions are held (finished ones until Forget), the limit is {self.config.max_retained}"
            )

    async def start_execution(self, spec: StartSpec) -> tuple[Execution, AsyncIterator[list[Any]]]:
        """Start an execution: prepared and sent to the zygote synchronously,
        then its pid awaited. If the caller goes away meanwhile, the execution
        is still registered when the pid arrives, so no process runs untracked.
        Returns it with its events from offsets 0/0 (the Start stream), whose
        reader is registered together with the execution: an Attach can only
        come after, and then replaces it."""
        zygote = self.zygote
        if zygote is None or not zygote.alive:
            reason = zygote.lost_reason if zygote is not None else "not started"
            raise Unavailable(f"the python runtime's zygote is not running ({reason}); it is being restarted")
        self._reserve(spec.execution_id)
        self._starting.add(spec.execution_id)
        execution: Execution | None = None
        try:
            execution, plan, fds = self._prepare(spec, zygote)
            started_ns = time.time_ns()
            future = zygote.spawn(spec.execution_id, plan, fds, execution.on_leader_exit)
        except BaseException:
            self._abandon(spec.execution_id, execution)
            raise
        prepared = execution
        settled = False
        events: AsyncIterator[list[Any]] | None = None

        def settle(done: asyncio.Future[int]) -> None:
            # Once: as the future's callback (also when the caller went away)
            # or directly after the await, whichever comes first.
            nonlocal settled, events
            if settled:
                return
            settled = True
            self._starting.discard(spec.execution_id)
            if done.cancelled() or done.exception() is not None:
                self._abandon(spec.execution_id, prepared)
                return
            self.executions[spec.execution_id] = prepared
            if prepared.running:
                self._running.add(spec.execution_id)
            prepared.begin(done.result(), started_ns)
            events = prepared.attach(0, 0)

        future.add_done_callback(settle)
        # Off the execution's path: once this task waits for the child.
        loop = self._loop
        assert loop is not None
        loop.call_soon(self.dirs.refill)
        try:
            await asyncio.shield(future)
            settle(future)
        except SpawnFailed as e:
            raise FailedPrecondition(e.message) from None
        except ZygoteLost as e:
            raise Unavailable(f"the python runtime's zygote died while starting the execution ({e})") from None
        assert events is not None
        return execution, events

    def _prepare(self, spec: StartSpec, zygote: ZygoteClient) -> tuple[Execution, dict[str, Any], list[int]]:
        """Directories, script, plan and pipes; returns the execution (owning the
        read ends), the plan and the write ends for the child."""
        loop = self._loop
        assert loop is not None
        exec_dir = self._execution_dir(spec.execution_id)
        cwd = self._working_dir(exec_dir, spec.working_dir)
        script_dir = script_path = None
        if isinstance(spec.program, ScriptProgram):
            script_dir, script_path = self._write_script(spec.execution_id, spec.program)
        fds: list[int] = []
        try:
            plan = build_plan(spec, cwd=cwd, base_env=self.env, zygote_env=zygote.env, script_path=script_path)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            fds += [out_r, out_w]
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            fds += [err_r, err_w]
            os.set_blocking(out_r, False)
            os.set_blocking(err_r, False)
            _grow_pipe(out_w)
            execution = Execution(
                loop,
                spec,
                out_r,
                err_r,
                self.config.buffer_bytes,
                self._signal,
                script_dir=script_dir,
                on_finished=lambda e: self._running.discard(e.id),
            )
        except BaseException:
            for fd in fds:
                os.close(fd)
            if script_dir is not None:
                shutil.rmtree(script_dir, ignore_errors=True)
            raise
        return execution, plan, [out_w, err_w]

    def _abandon(self, execution_id: str, execution: Execution | None) -> None:
        self._starting.discard(execution_id)
        if execution is not None:
            execution.dispose()
            if execution.script_dir is not None:
                shutil.rmtree(execution.script_dir, ignore_errors=True)

    def _signal(self, pid: int, sig: int) -> None:
        zygote = self.zygote
        if zygote is not None:
            zygote.signal_group(pid, sig)

    def _execution_dir(self, execution_id: str) -> str:
        path = os.path.join(self.root, execution_id)
        try:
            # runtimed puts it in place before the Start: one lstat then.
            st = os.lstat(path)
        except FileNotFoundError:
            if self.dirs.take(path):
                return path  # renamed into place: a directory, not a symlink
            try:
                os.mkdir(path, 0o755)
                return path  # just created: a directory, not a symlink
            except FileExistsError:
                st = os.lstat(path)
            except OSError as e:
                raise FailedPrecondition(f"cannot create execution directory {path!r}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise FailedPrecondition(f"execution directory {path!r} exists and is not a directory")
        return path

    def _working_dir(self, exec_dir: str, working_dir: str) -> str:
        """Create the working directory component by component, refusing
        symlinks so nothing is created or entered outside the execution dir."""
        path = exec_dir
        if not working_dir:
            return path
        for part in working_dir.split("/"):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                try:
                    os.mkdir(path, 0o755)
                except OSError as e:
                    raise FailedPrecondition(f"cannot create working directory {path!r}: {e.strerror}") from None
                continue
            if stat.S_ISLNK(st.st_mode):
                raise InvalidArgument(
                    "working_dir",
                    working_dir,
                    f"component {part!r} is a symlink; it must stay inside the execution directory",
                )
            if not stat.S_ISDIR(st.st_mode):
                raise FailedPrecondition(f"working directory component {path!r} exists and is not a directory")
        return path

    def _write_script(self, execution_id: str, script: ScriptProgram) -> tuple[str, str]:
        """The server's own copy of the script, outside the execution dir."""
        scripts = os.path.join(self.root, SCRIPTS_DIR)
        directory = os.path.join(scripts, execution_id)
        try:
            os.makedirs(scripts, mode=0o700, exist_ok=True)
            shutil.rmtree(directory, ignore_errors=True)
            os.mkdir(directory, 0o700)
            path = os.path.join(directory, script.filename)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(script.source)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError as e:
            raise FailedPrecondition(f"cannot write the script under {scripts!r}: {e}") from None
        return directory, path

    def cancel(self, execution_id: str, grace_ms: int) -> None:
        self.get(execution_id).cancel(grace_ms)

    def forget(self, execution_ids: list[str]) -> None:
        """Drop finished executions, all or none: if one is unknown or still
        running, nothing is dropped."""
        executions = [self.get(execution_id) for execution_id in execution_ids]
        for execution in executions:
            if execution.running:
                raise FailedPrecondition(
                    f"execution {execution.id!r} is still running; Cancel it and wait for its exit first"
                )
        for execution in executions:
            del self.executions[execution.id]
            execution.dispose()
            if execution.script_dir is not None:
                shutil.rmtree(execution.script_dir, ignore_errors=True)

    def list(self) -> list[Any]:
        return [e.status() for e in self.executions.values()]

    async def handshake(self) -> Any:
        ready = True
        notes: list[str] = [f"python {sys.version.split()[0]} at {sys.executable}"]
        zygote = self.zygote
        if zygote is None or not zygote.alive:
            ready = False
            notes.append(f"zygote not running ({zygote.lost_reason if zygote else 'not started'})")
        else:
            began = time.monotonic()
            try:
                tracked = await zygote.ping(limits.ZYGOTE_PING_TIMEOUT_S)
                elapsed_ms = (time.monotonic() - began) * 1000
                notes.append(f"zygote pid {zygote.pid} answered in {elapsed_ms:.1f} ms ({tracked} running)")
            except (ZygoteLost, asyncio.TimeoutError) as e:
                ready = False
                notes.append(f"zygote pid {zygote.pid} did not answer: {e or 'timeout'}")
            if zygote.preload_errors:
                ready = False
                notes.append("preload failed: " + "; ".join(zygote.preload_errors))
            elif zygote.preload:
                notes.append("preloaded " + ",".join(zygote.preload))
        probe = os.path.join(self.root, f".handshake-{os.getpid()}-{time.monotonic_ns()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(probe)
            notes.append(f"workspace {self.root} writable")
        except OSError as e:
            ready = False
            notes.append(f"workspace {self.root} not writable: {e}")
        return pb.HandshakeResponse(
            protocol_version=pb.PROTOCOL_VERSION_V1,
            runtime="python",
            server_version=f"kruntimes-python-runtime {__version__} (CPython {sys.version.split()[0]})",
            ready=ready,
            message="; ".join(notes),
            workspace_root=self.root,
            max_executions=self.config.max_executions,
        )


def _grow_pipe(fd: int) -> None:
    """A larger stdout pipe: bulk output is read in fewer, larger reads, and a
    chatty child blocks less often. Best effort (the per-user pipe quota)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, limits.PIPE_BYTES)
    except OSError:
        pass
