"""The server's handle on the zygote: starts it, sends spawn/signal/ping requests
over the control socket (stdio pipe fds travel with SCM_RIGHTS), routes exit
reports to their executions and notices when the zygote dies."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from . import zygote_wire
from .reaper import ChildReaper, describe_status

log = logging.getLogger(__name__)

# `python -c` keeps the zygote's own module out of __main__.
_BOOT = "import sys; from kruntimes_runtime.zygote import main; main(int(sys.argv[1]), sys.argv[2:])"
_EXIT_WAIT_S = 1.0

ExitHandler = Callable[[dict[str, Any]], None]


class ZygoteLost(Exception):
    """The zygote is not running (it died, or never started)."""


class SpawnFailed(Exception):
    """The child could not be set up or its program could not be executed."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class ZygoteClient:
    def __init__(
        self,
        reaper: ChildReaper,
        preload: list[str],
        env: dict[str, str],
        on_lost: Callable[[str, list[int]], None],
        executable: str = sys.executable,
    ) -> None:
        self._reaper = reaper
        self.preload = preload
        self.env = env
        self._on_lost = on_lost
        self.executable = executable
        self.pid: int | None = None
        self.alive = False
        self.hello: dict[str, Any] = {}
        self.lost_reason = "not started"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._decoder = zygote_wire.FrameDecoder()
        self._tags = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], ExitHandler | None]] = {}
        self._exit_handlers: dict[int, ExitHandler] = {}
        self._send_lock = asyncio.Lock()
        # Sends not yet fully written: later ones must queue behind them.
        self._queued = 0
        self._hello_future: asyncio.Future[dict[str, Any]] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._stopping = False

    @property
    def preload_errors(self) -> list[str]:
        return list(self.hello.get("preload_errors", []))

    async def start(self, timeout: float = 60.0) -> None:
        """Launch the zygote and wait for its hello (after its preloads)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._decoder = zygote_wire.FrameDecoder()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.set_inheritable(theirs.fileno(), True)
            argv = [self.executable, "-c", _BOOT, str(theirs.fileno()), *self.preload]
            pid = os.posix_spawn(
                self.executable,
                argv,
                self.env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    # The zygote's own output (tracebacks) joins the server log.
                    (os.POSIX_SPAWN_DUP2, 2, 1),
                ],
                setsigmask=[],
                # Its own process group: signals aimed at the server's group (a
                # terminal's Ctrl-C, `timeout`) must not kill it; the server
                # stops it over the socket.
                setpgroup=0,
            )
        except BaseException:
            ours.close()
            theirs.close()
            raise
        theirs.close()
        self.pid = pid
        self._exited = loop.create_future()
        self._reaper.watch(pid, self._on_process_exit)
        ours.setblocking(False)
        self._sock = ours
        self.alive = True
        self._hello_future = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        try:
            self.hello = await asyncio.wait_for(self._hello_future, timeout)
        except asyncio.TimeoutError:
            self._kill()
            self._lose(f"zygote (pid {pid}) sent no hello within {timeout:.0f}s")
            raise ZygoteLost(self.lost_reason) from None
        log.info(
            "zygote pid %d ready (python %s, preloaded %s%s)",
            pid,
            self.hello.get("version"),
            self.preload or "nothing",
            f"; preload errors: {self.preload_errors}" if self.preload_errors else "",
        )

    def spawn(
        self, execution_id: str, plan: dict[str, Any], fds: list[int], on_exit: ExitHandler
    ) -> asyncio.Future[int]:
        """Ask the zygote for a child running `plan`; the future gives its pid.
        Takes ownership of `fds` (closed once sent). `on_exit` gets the exit
        report; it is registered before any report for the pid can arrive.
        Sent synchronously when the channel is idle (no loop round trip)."""
        try:
            loop = self._require_alive()
        except ZygoteLost:
            _close_all(fds)
            raise
        tag = next(self._tags)
        future: asyncio.Future[int] = loop.create_future()
        self._pending[tag] = (future, on_exit)
        sent = self._send({"op": "spawn", "tag": tag, "id": execution_id, "plan": plan}, fds)

        def check(done: asyncio.Future[None]) -> None:
            error = done.exception() if not done.cancelled() else ZygoteLost("send cancelled")
            if error is not None:
                self._pending.pop(tag, None)
                if not future.done():
                    future.set_exception(error)

        sent.add_done_callback(check)
        return future

    def signal_group(self, pid: int, sig: int) -> None:
        """Signal a live execution's process group (fire and forget)."""
        if not self.alive:
            return
        try:
            sent = self._send({"op": "signal", "pid": pid, "sig": int(sig)})
        except ZygoteLost:
            return
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def ping(self, timeout: float) -> int:
        """Round trip to the zygote; returns how many executions it tracks."""
        loop = self._require_alive()
        tag = next(self._tags)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[tag] = (future, None)
        try:
            await self._send({"op": "ping", "tag": tag})
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(tag, None)
        return int(reply.get("leaders", 0))

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the zygote to kill its executions and exit; SIGKILL it if it does not."""
        self._stopping = True
        exited = self._exited
        if self.alive:
            try:
                await self._send({"op": "shutdown"})
            except ZygoteLost:
                pass
        if exited is not None and not exited.done() and self.pid is not None:
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout)
            except asyncio.TimeoutError:
                self._kill()
                await asyncio.shield(exited)
        self._lose("stopped")

    # -- internals ---------------------------------------------------------

    def _require_alive(self) -> asyncio.AbstractEventLoop:
        if not self.alive or self._loop is None:
            raise ZygoteLost(self.lost_reason)
        return self._loop

    def _send(self, msg: dict[str, Any], fds: list[int] | None = None) -> asyncio.Future[None]:
        """Send a message (owning and then closing `fds`). Done at once when
        the socket takes it whole and nothing is queued; otherwise the rest
        goes out from a task, in order. Raises ZygoteLost if the zygote is gone."""
        fds = fds or []
        try:
            loop = self._require_alive()
            header, body = zygote_wire.encode(msg)
        except BaseException:
            _close_all(fds)
            raise
        data = header + body
        anc = zygote_wire.ancillary(fds)
        if self._queued == 0 and self._sock is not None:
            try:
                sent = self._sock.sendmsg([data], anc)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                _close_all(fds)
                self._lose(f"control socket write failed: {e}")
                raise ZygoteLost(self.lost_reason) from None
            if sent:
                _close_all(fds)  # the descriptors went with the first byte
                fds, anc = [], []
                data = data[sent:]
            if not data:
                done: asyncio.Future[None] = loop.create_future()
                done.set_result(None)
                return done
        self._queued += 1
        return asyncio.ensure_future(self._send_rest(data, anc, fds))

    async def _send_rest(self, data: bytes, anc: list[tuple[int, int, bytes]], fds: list[int]) -> None:
        try:
            async with self._send_lock:
                sock, loop = self._sock, self._loop
                if not self.alive or sock is None or loop is None:
                    raise ZygoteLost(self.lost_reason)
                try:
                    while anc:
                        try:
                            sent = sock.sendmsg([data], anc)
                            anc = []
                            data = data[sent:]
                        except BlockingIOError:
                            await self._writable(loop, sock)
                    if data:
                        await loop.sock_sendall(sock, data)
                except OSError as e:
                    self._lose(f"control socket write failed: {e}")
                    raise ZygoteLost(self.lost_reason) from None
        finally:
            self._queued -= 1
            _close_all(fds)

    @staticmethod
    async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        future: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        loop.add_writer(sock.fileno(), ready)
        try:
            await future
        finally:
            loop.remove_writer(sock.fileno())

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._closing(f"control socket read failed: {e}")
            return
        if not data:
            self._closing("control socket closed")
            return
        try:
            messages = self._decoder.feed(data)
        except zygote_wire.WireError as e:
            self._kill()
            self._closing(f"protocol error: {e}")
            return
        for msg in messages:
            self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "hello":
            if self._hello_future is not None and not self._hello_future.done():
                self._hello_future.set_result(msg)
            return
        if op == "exit":
            handler = self._exit_handlers.pop(int(msg["pid"]), None)
            if handler is not None:
                handler(msg)
            return
        entry = self._pending.pop(msg.get("tag", -1), None)
        if entry is None:
            return
        future, on_exit = entry
        if future.done():
            return
        if op == "spawned":
            pid = int(msg["pid"])
            if on_exit is not None:
                self._exit_handlers[pid] = on_exit
            future.set_result(pid)
        elif op == "spawn_failed":
            future.set_exception(SpawnFailed(str(msg.get("kind")), str(msg.get("message"))))
        elif op == "pong":
            future.set_result(msg)

    def _closing(self, reason: str) -> None:
        """The channel ended: wait (briefly) for the process exit to say why."""
        if not self.alive:
            return
        self._detach_socket()
        exited = self._exited
        if exited is None or exited.done():
            self._lose(f"{reason}; zygote {self._status_text()}")
            return
        loop = self._loop
        assert loop is not None

        def give_up() -> None:
            if not exited.done():
                self._kill()

        handle = loop.call_later(_EXIT_WAIT_S, give_up)

        def on_exit(_: asyncio.Future[int]) -> None:
            handle.cancel()
            self._lose(f"{reason}; zygote {self._status_text()}")

        exited.add_done_callback(on_exit)

    def _on_process_exit(self, status: int) -> None:
        # The socket's EOF (always seen: the zygote's children close it) then
        # reports the loss with this status.
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(status)

    def _status_text(self) -> str:
        if self._exited is not None and self._exited.done():
            return f"(pid {self.pid}) {describe_status(self._exited.result())}"
        return f"(pid {self.pid})"

    def _kill(self) -> None:
        if self.pid is not None and self._exited is not None and not self._exited.done():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _detach_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _lose(self, reason: str) -> None:
        was_alive = self.alive or self._exit_handlers or self._pending
        self.alive = False
        if self._stopping:
            reason = "stopped"
        self._detach_socket()
        if not was_alive:
            return
        self.lost_reason = reason
        if self._hello_future is not None and not self._hello_future.done():
            self._hello_future.set_exception(ZygoteLost(reason))
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(ZygoteLost(reason))
        handlers, self._exit_handlers = self._exit_handlers, {}
        if reason != "stopped":
            log.error("python zygote lost: %s", reason)
        self._on_lost(reason, list(handlers))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
