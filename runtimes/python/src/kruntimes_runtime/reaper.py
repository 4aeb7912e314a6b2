"""Reaps the server's children on SIGCHLD: the zygote (whose exit is reported to
its watcher) and orphans re-parented to the server, the subreaper, when the
zygote dies. Nothing else in the server calls waitpid."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

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


class ChildReaper:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watchers: dict[int, Callable[[int], None]] = {}
        self.orphans_reaped = 0

    def install(self) -> None:
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def uninstall(self) -> None:
        self._loop.remove_signal_handler(signal.SIGCHLD)

    def watch(self, pid: int, callback: Callable[[int], None]) -> None:
        """Call `callback(status)` when `pid` is reaped. Register right after
        spawning (before yielding to the loop) so the exit cannot be missed."""
        self._watchers[pid] = callback

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            callback = self._watchers.pop(pid, None)
            if callback is not None:
                callback(status)
            else:
                self.orphans_reaped += 1
                log.debug("reaped orphan pid %d (%s)", pid, describe_status(status))


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


def kill_adopted(exclude: set[int]) -> int:
    """SIGKILL the processes (and their groups) re-parented to this process,
    the subreaper, when the zygote died: children it had forked ahead of need,
    or whose report can no longer come. Returns how many were found."""
    own_group = os.getpgrp()
    victims = [(pid, pgid) for pid, pgid in adopted_children(os.getpid()) if pid not in exclude]
    for pid, pgid in victims:
        try:
            if pgid != own_group:
                os.killpg(pgid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(victims)
