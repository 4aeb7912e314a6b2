"""The zygote: a single-threaded warm interpreter that forks one child per execution.

The server starts it (exec of the resolved interpreter, `-c` importing this
module) with one end of a Unix socket pair. It imports the preloaded modules,
freezes the GC (children then neither copy nor rescan the zygote's heap), and
serves requests: spawn (hand a plan and the stdio pipe fds, received via
SCM_RIGHTS, to a spare child forked ahead of need, then fork the next spare),
signal (to a live execution's process group), ping, shutdown.

It is a child subreaper and reaps everything below it. When a leader exits, the
rest of its process group is SIGKILLed while the leader is still an unreaped
zombie (waitid WNOWAIT), so the group id cannot have been reused; then the exit
status (code or signal) is reported to the server.
"""

from __future__ import annotations

import gc
import importlib
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


class Zygote:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Leader pid -> execution id, for live (unreaped) leaders.
        self.leaders: dict[int, str] = {}
        # A child forked ahead of need, and the socket that hands it work.
        self.spare: tuple[int, socket.socket] | None = None
        self.stdio = PreparedStdio.prepare()
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_w = wake_w
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        # A Python-level handler (not SIG_DFL) so SIGCHLD writes the wakeup fd.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def send(self, msg: dict[str, Any]) -> None:
        zygote_wire.send_blocking(self.sock, msg)

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.wake_r:
                    self._drain_wakeups()
                    self.reap()
                else:
                    received = zygote_wire.recv_blocking(self.sock)
                    if received is None:
                        self.shutdown()
                        return
                    msg, fds = received
                    if not self.handle(msg, fds):
                        return

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def handle(self, msg: dict[str, Any], fds: list[int]) -> bool:
        op = msg.get("op")
        if op == "spawn":
            self.spawn(msg, fds)
        elif op == "signal":
            self.signal_group(int(msg["pid"]), int(msg["sig"]))
        elif op == "ping":
            self.send({"op": "pong", "tag": msg.get("tag"), "leaders": len(self.leaders)})
        elif op == "shutdown":
            self.shutdown()
            return False
        for fd in fds:
            if op != "spawn":
                os.close(fd)
        return True

    def spawn(self, msg: dict[str, Any], fds: list[int]) -> None:
        tag = msg.get("tag")
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            self.fail(tag, "setup", f"expected 2 fds, got {len(fds)}")
            return
        plan = msg["plan"]
        # An exec is waited for (EOF when it succeeds, a report when it fails)
        # so Start can fail with the reason. The in-process Python path cannot
        # fail that way; not waiting for the child keeps Start fast.
        status_r = -1
        if plan["kind"] == "exec":
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            fds.append(status_w)
        try:
            pid = self.hand_off(plan, fds)
        except OSError as e:
            if status_r >= 0:
                os.close(status_r)
            self.fail(tag, "setup", f"cannot start a child: {e}")
            return
        finally:
            for fd in fds:
                os.close(fd)
        if status_r >= 0:
            report = self.read_status(status_r)
            if report:
                os.waitpid(pid, 0)
                kind, _, message = report.decode("utf-8", "replace").partition("\n")
                self.fail(tag, kind, message)
                self.ensure_spare()
                return
        self.leaders[pid] = msg.get("id", "")
        self.send({"op": "spawned", "tag": tag, "pid": pid})
        # The next spare is forked off the Start's path.
        self.ensure_spare()

    def fail(self, tag: Any, kind: str, message: str) -> None:
        self.send({"op": "spawn_failed", "tag": tag, "kind": kind, "message": message})

    @staticmethod
    def read_status(status_r: int) -> bytes:
        """EOF once the child execs; bytes when it failed."""
        report = bytearray()
        try:
            while data := os.read(status_r, 65536):
                report += data
        finally:
            os.close(status_r)
        return bytes(report)

    def hand_off(self, plan: dict[str, Any], fds: list[int]) -> int:
        """Give the plan and pipes to the spare; returns its pid. A spare that
        died meanwhile is replaced once."""
        for attempt in (0, 1):
            if self.spare is None:
                self.ensure_spare()
            assert self.spare is not None
            pid, handoff = self.spare
            self.spare = None
            try:
                zygote_wire.send_blocking(handoff, {"plan": plan}, fds)
                return pid
            except OSError:
                if attempt:
                    raise
            finally:
                handoff.close()
        raise AssertionError("unreachable")

    def ensure_spare(self) -> None:
        if self.spare is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            try:
                ours.detach()
                child.spare(self.sock, theirs, self.stdio)
            finally:
                os._exit(child.SETUP_FAILED)
        theirs.close()
        self.spare = (pid, ours)

    def signal_group(self, pid: int, sig: int) -> None:
        # Only while the leader is unreaped does its pid still name its group.
        if pid in self.leaders:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            if self.spare is not None and self.spare[0] == pid:
                self.spare[1].close()  # it died idle: fork another when needed
                self.spare = None
            leader = pid in self.leaders
            if leader:
                # The zombie leader keeps the group id reserved: kill the rest.
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _, status = os.waitpid(pid, 0)
            if leader:
                del self.leaders[pid]
                report: dict[str, Any] = {"op": "exit", "pid": pid, "time_ns": time.time_ns()}
                if os.WIFSIGNALED(status):
                    report["signal"] = os.WTERMSIG(status)
                else:
                    report["code"] = os.WEXITSTATUS(status)
                self.send(report)

    def shutdown(self) -> None:
        """Kill every execution's group and reap the leaders (no reports: the
        server is going away or already gone)."""
        leaders, self.leaders = list(self.leaders), {}
        if self.spare is not None:
            pid, handoff = self.spare
            self.spare = None
            handoff.close()  # EOF: the spare exits
            leaders.append(pid)
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
        self.reap()


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
    zygote.ensure_spare()
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
        zygote.serve()
    except (BrokenPipeError, ConnectionResetError):
        zygote.shutdown()
    os._exit(0)
