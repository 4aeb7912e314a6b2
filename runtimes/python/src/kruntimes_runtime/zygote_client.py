"""The server's handle on the zygote: starts it, keeps the hand-off sockets of
the spare children it forks ahead of need (received with SCM_RIGHTS), starts an
execution by handing a spare its plan and stdio pipes directly (then telling
the zygote that the spare was taken), sends signal/ping requests, routes exit
reports to their executions and notices when the zygote dies."""

from __future__ import annotations

import array
import asyncio
import collections
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
# A spare reads its plan at once; one that does not take it within this is dead.
_HANDOFF_TIMEOUT_S = 5.0

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
        # Hand-off sockets of spares (pid, socket), oldest first.
        self._spares: collections.deque[tuple[int, socket.socket]] = collections.deque()
        self._spare_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Descriptors received on the control socket, for the messages carrying them.
        self._fd_queue: collections.deque[int] = collections.deque()

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
        """Start a child running `plan` with the stdio pipes' write ends `fds`
        (owned from here on); the future gives its pid. Done synchronously when
        a spare is ready. An exec completes once it succeeded (or fails with
        SpawnFailed). `on_exit` gets the exit report."""
        try:
            loop = self._require_alive()
        except ZygoteLost:
            _close_all(fds)
            raise
        status_r = -1
        fds = list(fds)
        if plan["kind"] == "exec":
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            fds.append(status_w)
        future: asyncio.Future[int] = loop.create_future()
        try:
            pid = self._hand_off(execution_id, plan, fds, on_exit)
        except BaseException:
            _close_all([*fds, status_r] if status_r >= 0 else fds)
            raise
        if pid is None:
            task = asyncio.ensure_future(self._hand_off_when_ready(execution_id, plan, fds, on_exit))

            def handed(t: asyncio.Future[int]) -> None:
                if t.cancelled() or t.exception() is not None:
                    if status_r >= 0:
                        os.close(status_r)
                    if not future.done():
                        future.set_exception(t.exception() or ZygoteLost("cancelled"))
                    return
                self._started(future, t.result(), status_r)

            task.add_done_callback(handed)
        else:
            _close_all(fds)
            self._started(future, pid, status_r)
        return future

    def _started(self, future: asyncio.Future[int], pid: int, status_r: int) -> None:
        if status_r < 0:
            future.set_result(pid)
            return
        # Exec: EOF on the status pipe once the exec succeeded; a report otherwise.
        loop = self._loop
        assert loop is not None
        report = bytearray()

        def readable() -> None:
            try:
                data = os.read(status_r, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                report.extend(data)
                return
            loop.remove_reader(status_r)
            os.close(status_r)
            if future.done():
                return
            if report:
                self._exit_handlers.pop(pid, None)
                kind, _, message = report.decode("utf-8", "replace").partition("\n")
                future.set_exception(SpawnFailed(kind, message))
            else:
                future.set_result(pid)

        os.set_blocking(status_r, False)
        loop.add_reader(status_r, readable)

    def _hand_off(self, execution_id: str, plan: dict[str, Any], fds: list[int], on_exit: ExitHandler) -> int | None:
        """Give the plan to a ready spare; its pid, or None when none is ready.
        A spare that died meanwhile is skipped (the zygote reaps it as idle).

        The zygote is told "taken" after the plan went out, so the child is
        woken first and is not kept waiting for a CPU behind the zygote. A
        child that exits before the zygote reads "taken" is reaped as an idle
        spare (its process group killed all the same, while it is a zombie)
        and its status reported when "taken" arrives."""
        while self._spares:
            pid, handoff = self._spares.popleft()
            try:
                zygote_wire.send_handoff(handoff, {"plan": plan}, fds, _HANDOFF_TIMEOUT_S)
            except OSError:
                continue  # a dead spare, or one not reading
            finally:
                handoff.close()
            self._exit_handlers[pid] = on_exit
            try:
                self._send({"op": "taken", "pid": pid, "id": execution_id}).add_done_callback(_retrieve)
            except ZygoteLost:
                # Its report can never come: the child must not run untracked.
                self._exit_handlers.pop(pid, None)
                _kill_group(pid)
                raise
            return pid  # its replacement is forked once its exit is reported
        self._request_spare()
        return None

    async def _hand_off_when_ready(
        self, execution_id: str, plan: dict[str, Any], fds: list[int], on_exit: ExitHandler
    ) -> int:
        try:
            while True:
                # The pool first: a spare may have arrived before this task ran.
                pid = self._hand_off(execution_id, plan, fds, on_exit)
                if pid is not None:
                    return pid
                ready: asyncio.Future[None] = self._require_alive().create_future()
                self._spare_waiters.append(ready)
                await ready
        finally:
            _close_all(fds)

    def _request_spare(self) -> None:
        """Ask for a spare now (idempotent in the zygote)."""
        try:
            self._send({"op": "fork_spare"}).add_done_callback(_retrieve)
        except ZygoteLost:
            pass

    def signal_group(self, pid: int, sig: int) -> None:
        """Signal a live execution's process group (fire and forget)."""
        if not self.alive:
            return
        try:
            self._send({"op": "signal", "pid": pid, "sig": int(sig)}).add_done_callback(_retrieve)
        except ZygoteLost:
            return

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
            # CLOEXEC: a zygote restarted later must not inherit these.
            data, ancdata, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._closing(f"control socket read failed: {e}")
            return
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fd_queue.extend(fds)
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
        if op == "spare":
            # Its descriptor came with this message's first byte.
            if not self._fd_queue:
                log.error("zygote sent a spare without its socket")
                return
            # Family and type given: no getsockname/getsockopt to find them.
            handoff = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, self._fd_queue.popleft())
            self._spares.append((int(msg["pid"]), handoff))
            while self._spare_waiters:
                waiter = self._spare_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break
            return
        if op == "spare_gone":
            pid = int(msg["pid"])
            for spare in [e for e in self._spares if e[0] == pid]:
                self._spares.remove(spare)
                spare[1].close()
            return
        if op == "spare_failed":
            log.error("zygote could not fork a spare: %s", msg.get("message"))
            waiters, self._spare_waiters = self._spare_waiters, collections.deque()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(SpawnFailed("setup", f"cannot start a child: {msg.get('message')}"))
            return
        entry = self._pending.pop(msg.get("tag", -1), None)
        if entry is None:
            return
        future, _ = entry
        if future.done():
            return
        if op == "pong":
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
        for _, handoff in self._spares:
            handoff.close()  # EOF: an idle spare exits
        self._spares.clear()
        _close_all(list(self._fd_queue))
        self._fd_queue.clear()
        waiters, self._spare_waiters = self._spare_waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ZygoteLost(reason))
        if reason != "stopped":
            log.error("python zygote lost: %s", reason)
        self._on_lost(reason, list(handlers))


def _retrieve(done: asyncio.Future[Any]) -> None:
    """Mark a fire-and-forget send's outcome as seen (loss is handled elsewhere)."""
    if not done.cancelled():
        done.exception()


def _kill_group(pid: int) -> None:
    """SIGKILL a child's process group (it is its own session leader)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
