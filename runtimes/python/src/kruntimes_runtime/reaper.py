"""Reaps the server's children: the zygote (whose exit is reported to its
watcher) and orphans re-parented to the server, the subreaper, when the zygote
dies. Nothing else in the server calls waitpid.

A watched pid is waited for through a pidfd the event loop watches, so no loop
needs to own SIGCHLD (uvloop refuses to hand it out). Orphans have no pidfd
until someone finds them: SIGCHLD (a plain signal handler, restarting
interrupted system calls as asyncio's own does) schedules a sweep, and
`watch_orphans` gives a pidfd to each process `kill_adopted` just killed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with code {os.WEXITSTATUS(status)}"


def _ignore(status: int) -> None:
    pass


class ChildReaper:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # pid -> (pidfd, callback)
        self._watchers: dict[int, tuple[int, Callable[[int], None]]] = {}
        self._previous: Any = None
        self._installed = False
        self.orphans_reaped = 0

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGCHLD, self._on_sigchld)
        signal.siginterrupt(signal.SIGCHLD, False)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGCHLD, self._previous or signal.SIG_DFL)
            self._installed = False
        for pid in list(self._watchers):
            self._unwatch(pid)

    def _on_sigchld(self, signum: int, frame: object) -> None:
        # Runs in the main thread between bytecodes: defer the sweep to the loop.
        self._loop.call_soon_threadsafe(self.reap)

    def watch(self, pid: int, callback: Callable[[int], None]) -> None:
        """Call `callback(status)` when `pid` (our child) is reaped. Register
        right after spawning; the pidfd's readiness is level-triggered, so an
        exit that already happened is not missed."""
        try:
            fd = os.pidfd_open(pid)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            # No pidfds (Linux < 5.3, or a seccomp filter): SIGCHLD's sweep reaps it.
            self._watchers[pid] = (-1, callback)
            return
        self._watchers[pid] = (fd, callback)
        self._loop.add_reader(fd, self._on_pidfd, pid)

    def watch_orphans(self, pids: list[int]) -> None:
        """Reap these adopted processes (just killed) as soon as they die."""
        for pid in pids:
            if pid not in self._watchers:
                try:
                    self.watch(pid, _ignore)
                except (ProcessLookupError, OSError):
                    continue  # already reaped by a sweep

    def _unwatch(self, pid: int) -> Callable[[int], None] | None:
        entry = self._watchers.pop(pid, None)
        if entry is None:
            return None
        fd, callback = entry
        if fd >= 0:
            self._loop.remove_reader(fd)
            os.close(fd)
        return callback

    def _on_pidfd(self, pid: int) -> None:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            self._unwatch(pid)  # reaped elsewhere (a sweep), which ran its callback
            return
        if done == pid:
            self._finish(pid, status)

    def _finish(self, pid: int, status: int) -> None:
        callback = self._unwatch(pid)
        if callback is None:
            self.orphans_reaped += 1
            log.debug("reaped orphan pid %d (%s)", pid, describe_status(status))
        else:
            callback(status)

    def reap(self) -> None:
        """Reap every child that has exited (watched or not)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._finish(pid, status)


def adopted_children(parent: int) -> list[tuple[int, int]]:
    """(pid, pgid) of the live children of `parent`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == parent:
            found.append((int(entry), int(fields[2])))
    return found


def kill_adopted(exclude: set[int]) -> list[int]:
    """SIGKILL the processes (and their groups) re-parented to this process,
    the subreaper, when the zygote died: children it had forked ahead of need,
    or whose report can no longer come. Returns their pids."""
    own_group = os.getpgrp()
    victims = [(pid, pgid) for pid, pgid in adopted_children(os.getpid()) if pid not in exclude]
    for pid, pgid in victims:
        try:
            if pgid != own_group:
                os.killpg(pgid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return [pid for pid, _ in victims]
