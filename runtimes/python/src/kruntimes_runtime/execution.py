"""One execution: its output buffers and pipe readers, its termination (cancel,
timeout, the zygote's exit report) and the Attach stream.

The Exit is final only once the leader has exited and both pipes reached EOF
(bounded: a pipe still held open by a process that left the group is abandoned
after DRAIN_TIMEOUT_S, and the Exit message says so), so an attached reader
always gets all output before Exited.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from . import limits
from .errors import Aborted
from .outbuf import OutputBuffer
from .pipereader import PipeReader
from .proto import pb
from .validation import StartSpec

SignalSender = Callable[[int, int], None]


def timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class Execution:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        spec: StartSpec,
        out_fd: int,
        err_fd: int,
        buffer_bytes: int,
        send_signal: SignalSender,
        script_dir: str | None = None,
        on_finished: Callable[[Execution], None] | None = None,
    ) -> None:
        self._loop = loop
        self.spec = spec
        self.id = spec.execution_id
        self.script_dir = script_dir
        self.stdout = OutputBuffer(buffer_bytes, "stdout")
        self.stderr = OutputBuffer(buffer_bytes, "stderr")
        self._readers = (
            PipeReader(loop, out_fd, self.stdout, self._changed),
            PipeReader(loop, err_fd, self.stderr, self._changed),
        )
        self._send_signal = send_signal
        self._on_finished = on_finished
        self.pid = 0
        self.started_ns = time.time_ns()
        self.leader: dict[str, Any] | None = None
        self.exit: Any = None  # pb.Exit once final
        self.cancelled = False
        self.timed_out = False
        # Cancelled because the server itself is stopping (said in the Exit).
        self.server_stopping = False
        self.killed = False
        self.lost_reason: str | None = None
        self.drain_note: str | None = None
        self._terminating = False
        self._kill_at = 0.0
        self._grace_ms = 0
        self._pending_grace: int | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._kill_timer: asyncio.TimerHandle | None = None
        self._event = asyncio.Event()
        self._attach_gen = 0
        self._finished = asyncio.Event()
        for reader in self._readers:
            reader.resume()

    # -- lifecycle ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.exit is None

    def begin(self, pid: int, started_ns: int) -> None:
        """The process exists."""
        self.pid = pid
        self.started_ns = started_ns
        if self.leader is not None:
            return
        if self.spec.timeout_ms:
            self._timers.append(self._loop.call_later(self.spec.timeout_ms / 1000, self._on_timeout))
        if self._pending_grace is not None:
            grace, self._pending_grace = self._pending_grace, None
            self._terminate(grace)

    def on_leader_exit(self, report: dict[str, Any]) -> None:
        """The zygote reaped the leader (and SIGKILLed the rest of its group)."""
        if self.leader is not None:
            return
        self.leader = report
        for timer in self._timers:
            timer.cancel()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if not all(r.done for r in self._readers):
            for reader in self._readers:
                reader.end_pause()
            self._timers.append(self._loop.call_later(limits.DRAIN_TIMEOUT_S, self._drain_check))
        self._maybe_finish()

    def lose(self, reason: str) -> None:
        """The zygote died: its report can never come. Kill the group (its
        leader, now our orphan, is unreaped until our reaper runs) and fail."""
        if self.leader is not None or self.exit is not None:
            return
        self.lost_reason = reason
        if self.pid > 0:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.on_leader_exit({"signal": int(signal.SIGKILL), "time_ns": time.time_ns()})

    def cancel(self, grace_ms: int, server_stopping: bool = False) -> None:
        """SIGTERM the group, SIGKILL it after the grace period. Idempotent; a
        shorter grace on a repeated cancel brings the SIGKILL forward; the
        first reason stays."""
        if self.leader is not None:
            return
        if not self.timed_out and not self.cancelled:
            self.cancelled = True
            self.server_stopping = server_stopping
        self._terminate(grace_ms)

    def _on_timeout(self) -> None:
        if self.leader is not None:
            return
        if not self.cancelled:
            self.timed_out = True
        self._terminate(self.spec.grace_ms)

    def _terminate(self, grace_ms: int) -> None:
        if self.pid == 0:
            # Still starting: apply once the process exists.
            self._pending_grace = grace_ms if self._pending_grace is None else min(grace_ms, self._pending_grace)
            return
        kill_at = self._loop.time() + grace_ms / 1000
        if self._terminating:
            if kill_at < self._kill_at and self._kill_timer is not None:
                self._kill_timer.cancel()
                self._kill_at = kill_at
                self._grace_ms = grace_ms
                self._kill_timer = self._loop.call_at(kill_at, self._kill)
            return
        self._terminating = True
        self._kill_at = kill_at
        self._grace_ms = grace_ms
        self._send_signal(self.pid, signal.SIGTERM)
        self._kill_timer = self._loop.call_at(kill_at, self._kill)

    def _kill(self) -> None:
        if self.leader is None:
            self.killed = True
            self._send_signal(self.pid, signal.SIGKILL)

    def _drain_check(self) -> None:
        if self.exit is not None:
            return
        open_readers = [r for r in self._readers if not r.done]
        if not open_readers:
            return
        if any(r.blocked for r in open_readers):
            # Waiting for a reader to make room, not for the pipe: wait on.
            self._timers.append(self._loop.call_later(limits.DRAIN_TIMEOUT_S, self._drain_check))
            return
        for reader in open_readers:
            reader.close()
        self.drain_note = (
            f"output pipes were still open {limits.DRAIN_TIMEOUT_S:g}s after the process group "
            "ended (held by a process that left the group); stopped reading them"
        )
        self._maybe_finish()

    def _changed(self) -> None:
        self._event.set()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.exit is not None or self.leader is None:
            return
        if not all(r.done for r in self._readers):
            return
        for timer in self._timers:
            timer.cancel()
        report = self.leader
        exit_msg = pb.Exit(
            timed_out=self.timed_out,
            cancelled=self.cancelled,
            started_at=timestamp(self.started_ns),
            finished_at=timestamp(int(report.get("time_ns") or time.time_ns())),
            message=self._describe(),
            stdout_length=self.stdout.end,
            stderr_length=self.stderr.end,
        )
        if "signal" in report:
            exit_msg.signal = int(report["signal"])
        else:
            exit_msg.code = int(report.get("code", 0))
        self.exit = exit_msg
        self._event.set()
        self._finished.set()
        if self._on_finished is not None:
            self._on_finished(self)

    def _describe(self) -> str:
        report = self.leader or {}
        if "signal" in report:
            outcome = f"killed by {signal_name(int(report['signal']))}"
        else:
            outcome = f"exited with code {int(report.get('code', 0))}"
        if self.lost_reason is not None:
            text = f"failed: {self.lost_reason}; the execution's process group was killed"
        elif self.timed_out or self.cancelled:
            if self.timed_out:
                what = f"timed out after {self.spec.timeout_ms} ms"
            elif self.server_stopping:
                what = "cancelled (the runtime server stopped)"
            else:
                what = "cancelled"
            text = f"{what}: SIGTERM sent to the process group"
            if self.killed:
                text += f", SIGKILL after {self._grace_ms} ms grace"
            text += f"; {outcome}"
        else:
            text = outcome
        if self.drain_note:
            text += f"; {self.drain_note}"
        return text

    async def wait(self) -> None:
        await self._finished.wait()

    def dispose(self) -> None:
        """Forget: stop reading and drop the buffers."""
        for timer in self._timers:
            timer.cancel()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        for reader in self._readers:
            reader.close()
        self._attach_gen += 1
        self._event.set()

    # -- reading -----------------------------------------------------------

    def status(self) -> Any:
        msg = pb.ExecutionStatus(
            execution_id=self.id,
            state=pb.EXECUTION_STATE_RUNNING if self.exit is None else pb.EXECUTION_STATE_EXITED,
            pid=self.pid,
            started_at=timestamp(self.started_ns),
            stdout_length=self.stdout.end,
            stderr_length=self.stderr.end,
        )
        if self.exit is not None:
            msg.exit.CopyFrom(self.exit)
        return msg

    def attach(self, stdout_offset: int, stderr_offset: int) -> AsyncIterator[list[Any]]:
        """Become the execution's reader: output from the offsets, then Exited,
        in batches of events (see `_attach_batches`). A newer reader (Attach)
        ends this one with ABORTED. Offsets are checked here, before the first
        event; registration is synchronous, so a Start that registers its
        reader before yielding cannot replace a later Attach."""
        self.stdout.check_offset(stdout_offset, "stdout_offset")
        self.stderr.check_offset(stderr_offset, "stderr_offset")
        self._attach_gen += 1
        gen = self._attach_gen
        self._event.set()  # wake a previous attach so it ends
        streams = (
            (self.stdout, self._readers[0], pb.STREAM_STDOUT),
            (self.stderr, self._readers[1], pb.STREAM_STDERR),
        )
        positions = [stdout_offset, stderr_offset]
        for (buf, reader, _), pos in zip(streams, positions, strict=True):
            buf.rewind(pos)
            reader.resume()
        return self._attach_batches(gen, streams, positions)

    async def _attach_batches(self, gen: int, streams: Any, positions: list[int]) -> AsyncIterator[list[Any]]:
        """Everything at hand as one batch: the output of both streams (up to
        CHUNK_MAX_BYTES in all) and, once all output is in it, the exit. Until
        the exit is final, output waits up to OUTPUT_LINGER_S for more or for
        the exit, so a short Run's output and exit travel in one message (each
        message is one write and one wake-up on either side), also when the
        zygote's exit report is read before the pipes' EOF."""
        linger_until = 0.0
        while True:
            if gen != self._attach_gen:
                raise Aborted(f"execution {self.id!r}: replaced by a newer Attach")
            self._event.clear()
            batch: list[Any] = []
            ends = list(positions)
            room = limits.CHUNK_MAX_BYTES
            for i, (buf, _, tag) in enumerate(streams):
                pos = ends[i]
                if pos >= buf.end or room <= 0:
                    continue
                data = buf.read(pos, room)
                batch.append(pb.ExecutionEvent(output=pb.OutputChunk(stream=tag, offset=pos, data=data)))
                ends[i] = pos + len(data)
                room -= len(data)
            complete = all(ends[i] >= buf.end for i, (buf, _, _) in enumerate(streams))
            exited = self.exit is not None and complete
            if exited:
                batch.append(pb.ExecutionEvent(exited=self.exit))
            elif not batch:
                linger_until = 0.0
                await self._event.wait()
                continue
            elif room > 0 and self.exit is None:
                now = self._loop.time()
                if not linger_until:
                    linger_until = now + limits.OUTPUT_LINGER_S
                if now < linger_until:
                    await self._wait_until(linger_until)
                    continue
            linger_until = 0.0
            yield batch
            if gen != self._attach_gen:
                raise Aborted(f"execution {self.id!r}: replaced by a newer Attach")
            if exited:
                return
            for i, (buf, reader, _) in enumerate(streams):
                if ends[i] != positions[i]:
                    positions[i] = ends[i]
                    buf.mark_sent(ends[i])
                    reader.resume()

    async def _wait_until(self, deadline: float) -> None:
        """Until something changes or `deadline` (loop time)."""
        timer = self._loop.call_at(deadline, self._event.set)
        try:
            await self._event.wait()
        finally:
            timer.cancel()


def batch_message(batch: list[Any]) -> Any:
    """One event as itself, several as an EventBatch (one message, one write)."""
    if len(batch) == 1:
        return batch[0]
    return pb.ExecutionEvent(batch=pb.EventBatch(events=batch))
