"""The zygote: a single-threaded warm interpreter that forks one child per execution.

The server starts it (exec of the resolved interpreter, `-c` importing this
module) with one end of a Unix socket pair. It imports the preloaded modules,
freezes the GC (children then neither copy nor rescan the zygote's heap) and
keeps SPARES children forked ahead of need, whose hand-off sockets it passes
to the server (SCM_RIGHTS): the server gives a plan and the stdio pipes to a
spare directly, tells the zygote it was "taken" (now an execution's leader),
and the zygote forks a replacement once that execution's exit is on its way
(so the fork does not compete with it for the CPUs). Other requests: signal (a
live execution's process group), fork_spare (the server has none), ping,
shutdown.

It is a child subreaper and reaps everything below it. When a leader exits, the
rest of its process group is SIGKILLed while the leader is still an unreaped
zombie (waitid WNOWAIT), so the group id cannot have been reused; then the exit
status (code or signal) is reported to the server. A Python leader that ends
normally gives its exit status earlier, just before it exits, in its slot of
a shared notice table, and wakes the zygote with SIGURG: the group is killed
then (the leader, still unreaped, keeps the group id reserved) and the exit
reported at once, not again at the reap.
"""

from __future__ import annotations

import gc
import importlib
import mmap
import os
import runpy  # noqa: F401 - children use it for -m: imported before any fork
import select
import signal
import socket
import sys
import time
from typing import Any

from . import child, zygote_wire
from .stdio import PreparedStdio
from .subreaper import become_subreaper

# Spares kept forked ahead of need. Two, so the spare a Run took can be
# replaced off that Run's path (REFILL_DELAY_S after its exit is reported)
# while a Run that follows at once still finds one ready. (An idle spare
# costs ~1.2 MB of private memory.)
SPARES = 2
# Forking a spare and its setup cost ~2 ms of CPU (the fork alone ~0.8 ms
# here): done this long after an execution's exit was reported, not while
# its output and exit are still travelling to the client on the same CPUs.
REFILL_DELAY_S = 0.005
# At the latest this long after a spare was taken (an execution that runs on).
SPARE_DELAY_S = 0.05
# Exit-notice slots (4 bytes each); a child forked while all are in use is
# reported when reaped, as without a notice.
NOTICE_SLOTS = 4096


class Zygote:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Leader pid -> execution id, for live (unreaped) leaders.
        self.leaders: dict[int, str] = {}
        # The children forked ahead of need, not yet taken by the server (oldest first).
        self.spares: dict[int, None] = {}
        self.stdio = PreparedStdio.prepare()
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_w = wake_w
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        # A Python-level handler (not SIG_DFL) so SIGCHLD writes the wakeup fd.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        # Statuses of spares that died idle, in case a "taken" for one comes late.
        self.idle_deaths: dict[int, int] = {}
        # When the next spare is to be forked (monotonic time), if not yet.
        self.spare_due: float | None = None
        self.ctrl_poll = select.poll()
        self.ctrl_poll.register(sock.fileno(), select.POLLIN)
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        self.poller.register(self.wake_r, select.POLLIN)
        # The exit-notice table shared with every child (MAP_SHARED): a slot
        # holds 0, or its child's exit status + 1.
        self.notice_map = mmap.mmap(-1, NOTICE_SLOTS * 4)
        self.notices = memoryview(self.notice_map).cast("I")
        self.free_slots = list(range(NOTICE_SLOTS - 1, -1, -1))
        self.slot_of: dict[int, int] = {}
        signal.signal(signal.SIGURG, lambda signum, frame: None)
        # Leaders whose exit was reported from their notice (not yet reaped).
        self.noticed: set[int] = set()
        self.running = True

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        zygote_wire.send_blocking(self.sock, msg, fds)

    def serve(self) -> None:
        ctrl = self.sock.fileno()
        while self.running:
            timeout = None
            if self.spare_due is not None:
                timeout = max(0.0, (self.spare_due - time.monotonic()) * 1000)
            for fd, _ in self.poller.poll(timeout):
                if fd == self.wake_r:
                    self._drain_wakeups()
                    self.read_notices()
                    self.reap()
                elif fd == ctrl:
                    self.read_ctrl()
                if not self.running:
                    return
            if self.spare_due is not None and time.monotonic() >= self.spare_due:
                self.fork_due_spare()

    def read_ctrl(self) -> None:
        """Handle every control message already received."""
        while self.running and self.ctrl_poll.poll(0):
            received = zygote_wire.recv_blocking(self.sock)
            if received is None:
                self.shutdown()
                return
            msg, fds = received
            for fd in fds:
                os.close(fd)
            self.handle(msg)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "taken":
            self.taken(int(msg["pid"]), str(msg.get("id", "")))
        elif op == "fork_spare":
            self.request_spare()
        elif op == "signal":
            self.signal_group(int(msg["pid"]), int(msg["sig"]))
        elif op == "ping":
            self.send({"op": "pong", "tag": msg.get("tag"), "leaders": len(self.leaders)})
        elif op == "shutdown":
            self.shutdown()

    def taken(self, pid: int, execution_id: str) -> None:
        """The server handed the spare a plan: it is now an execution's leader.
        (A "taken" for a spare already reaped idle is ignored: the server's
        hand-off to it failed, as its socket was closed.)"""
        if pid not in self.spares:
            died = self.idle_deaths.pop(pid, None)
            if died is not None:
                # Reaped as an idle spare before this message was read: its
                # status still goes to the server, which must not wait forever.
                self.report(pid, died)
            elif self.is_child(pid):
                self.leaders[pid] = execution_id
            return
        del self.spares[pid]
        self.leaders[pid] = execution_id
        # The replacement is forked off the execution's path (forking now would
        # compete with the child for the CPUs and delay its output and exit):
        # REFILL_DELAY_S after its exit is reported, at the latest after
        # SPARE_DELAY_S. A server out of spares asks with fork_spare, served
        # at once.
        self.refill_in(SPARE_DELAY_S)

    def refill_in(self, delay: float) -> None:
        """Fork the next missing spare `delay` seconds from now (or earlier, if
        already due earlier)."""
        if len(self.spares) >= SPARES:
            return
        due = time.monotonic() + delay
        if self.spare_due is None or due < self.spare_due:
            self.spare_due = due

    def fork_due_spare(self) -> None:
        self.spare_due = None
        if self.fork_spare():
            # One at a time: each fork is ~1 ms of the zygote's CPU. (After a
            # failed fork, the server asks again when it needs a spare.)
            self.refill_in(REFILL_DELAY_S)

    def request_spare(self) -> None:
        """The server has no spare ready: fork one at once unless one is
        already on its way to it."""
        if not self.spares:
            self.fork_spare()

    def fork_spare(self) -> bool:
        """Fork a spare child and give the server the socket that hands it
        work; False if the fork failed."""
        if len(self.spares) >= SPARES:
            return True
        # No free slot (that many executions running): reaped as usual.
        slot = self.free_slots.pop() if self.free_slots else -1
        if slot >= 0:
            self.notices[slot] = 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError as e:
            ours.close()
            theirs.close()
            if slot >= 0:
                self.free_slots.append(slot)
            self.send({"op": "spare_failed", "message": f"fork failed: {e}"})
            return False
        if pid == 0:
            try:
                ours.detach()
                child.spare(self.sock, theirs, self.stdio, self.notices, slot)
            finally:
                os._exit(child.SETUP_FAILED)
        theirs.close()
        if slot >= 0:
            self.slot_of[pid] = slot
        self.spares[pid] = None
        try:
            self.send({"op": "spare", "pid": pid}, [ours.fileno()])
        finally:
            ours.close()
        return True

    def signal_group(self, pid: int, sig: int) -> None:
        # Only while the leader is unreaped does its pid still name its group.
        if pid in self.leaders:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass

    def read_notices(self) -> None:
        """Report the leaders that gave their exit status before exiting."""
        if any(self.notices[self.slot_of[s]] for s in self.spares if s in self.slot_of):
            # Its "taken" may still be queued.
            self.read_ctrl()
        for pid in [p for p in self.leaders if p not in self.noticed and p in self.slot_of]:
            value = self.notices[self.slot_of[pid]]
            if not value:
                continue
            # Unreaped, the leader keeps its group id: kill the rest of the
            # group before the exit is reported, as when it is reaped.
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.noticed.add(pid)
            self.send({"op": "exit", "pid": pid, "time_ns": time.time_ns(), "code": (value - 1) & 0xFF})
            if self.spares:
                # Refilled once this exit is on its way (without a spare
                # left, at the reap as before: the teardown is over then).
                self.refill_in(REFILL_DELAY_S)

    def reap(self) -> None:
        # Read any "taken" first, so a leader's exit is not taken for an idle
        # spare's. (One still unsent when its child exited arrives later and
        # reports the status kept in idle_deaths.)
        self.read_ctrl()
        while self.running:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            leader = pid in self.leaders
            if leader or pid in self.spares:
                # The zombie keeps its group id reserved: kill the rest. (A
                # "spare" may be a taken child whose "taken" is still unread.)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _, status = os.waitpid(pid, 0)
            slot = self.slot_of.pop(pid, -1)
            if slot >= 0:
                self.free_slots.append(slot)
            if leader:
                del self.leaders[pid]
                if pid in self.noticed:
                    self.noticed.discard(pid)
                else:
                    self.report(pid, status)
                if self.spares:
                    self.refill_in(REFILL_DELAY_S)
                else:
                    self.fork_spare()
            elif pid in self.spares:
                # It died idle (killed?): withdraw it and fork another.
                del self.spares[pid]
                self.idle_deaths[pid] = status
                while len(self.idle_deaths) > 16:
                    del self.idle_deaths[next(iter(self.idle_deaths))]
                self.send({"op": "spare_gone", "pid": pid})
                self.fork_spare()

    def report(self, pid: int, status: int) -> None:
        msg: dict[str, Any] = {"op": "exit", "pid": pid, "time_ns": time.time_ns()}
        if os.WIFSIGNALED(status):
            msg["signal"] = os.WTERMSIG(status)
        else:
            msg["code"] = os.WEXITSTATUS(status)
        self.send(msg)

    @staticmethod
    def is_child(pid: int) -> bool:
        """An unreaped child of ours (its pid cannot have been reused)."""
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def shutdown(self) -> None:
        """Kill every execution's group and the spare, and reap them (no
        reports: the server is going away or already gone)."""
        self.running = False
        leaders, self.leaders = list(self.leaders), {}
        leaders.extend(self.spares)
        self.spares.clear()
        for pid in leaders:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in leaders:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return


def preload(modules: list[str]) -> list[str]:
    errors = []
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as e:  # noqa: BLE001 - reported to the server
            errors.append(f"{name}: {type(e).__name__}: {e}")
    return errors


def main(fd: int, modules: list[str]) -> None:
    """Run the zygote on control socket `fd` (called via `python -c`)."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    # Ctrl-C at a terminal reaches the whole process group; the server decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    become_subreaper()
    os.chdir("/")
    zygote = Zygote(sock)
    errors = preload(modules)
    # Objects created so far are never collected: children skip scanning them
    # and do not dirty (copy) their pages.
    gc.collect()
    gc.freeze()
    zygote.send(
        {
            "op": "hello",
            "pid": os.getpid(),
            "executable": sys.executable,
            "version": sys.version.split()[0],
            "preloaded": modules,
            "preload_errors": errors,
        }
    )
    try:
        zygote.fork_spare()
        zygote.refill_in(0)
        zygote.serve()
    except (BrokenPipeError, ConnectionResetError):
        zygote.shutdown()
    os._exit(0)
