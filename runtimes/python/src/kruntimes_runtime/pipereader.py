"""Reads one child stdio pipe into its OutputBuffer, only while there is room.

The read end is non-blocking and watched by the event loop; when the buffer is
full the watch is removed, so the child blocks on its full pipe instead of the
server's memory growing. Each read takes everything available up to the room
(and a chunk's size); small reads in quick succession pause reading briefly,
so a chatty child's output is read, and sent, in large chunks.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from . import limits
from .outbuf import OutputBuffer


class PipeReader:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        buffer: OutputBuffer,
        on_change: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._fd: int | None = fd
        self.buffer = buffer
        self._on_change = on_change
        self._watching = False
        self._last_read = 0.0
        self._delayed: asyncio.TimerHandle | None = None
        self.eof = False

    @property
    def done(self) -> bool:
        """EOF seen, or reading was abandoned (see `close`)."""
        return self._fd is None

    @property
    def blocked(self) -> bool:
        """Still open but not reading because the buffer is full."""
        return self._fd is not None and self.buffer.room() <= 0

    def resume(self) -> None:
        if self._delayed is not None:
            return  # a coalescing pause resumes by itself
        if self._fd is not None and not self._watching and self.buffer.room() > 0:
            self._loop.add_reader(self._fd, self._on_readable)
            self._watching = True

    def _pause(self) -> None:
        if self._watching and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        room = self.buffer.room()
        if room <= 0:
            self._pause()
            return
        try:
            data = os.read(fd, min(room, limits.CHUNK_MAX_BYTES))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            self.close()
            self._on_change()
            return
        self.buffer.append(data)
        now = time.monotonic()
        if self.buffer.room() <= 0:
            self._pause()
        elif len(data) < limits.COALESCE_SMALL_BYTES and now - self._last_read < limits.COALESCE_DELAY_S:
            # Small reads in quick succession: let the pipe fill a little.
            self._pause()
            self._delayed = self._loop.call_later(limits.COALESCE_DELAY_S, self._end_delay)
        self._last_read = now
        self._on_change()

    def _end_delay(self) -> None:
        self._delayed = None
        self.resume()

    def end_pause(self) -> None:
        """Read again now: once the process has exited, waiting for more
        output to coalesce would only delay its EOF, and so its Exited."""
        if self._delayed is not None:
            self._delayed.cancel()
            self._end_delay()

    def close(self) -> None:
        """Stop reading and close the read end (EOF, or giving up on a pipe held
        open by a process that escaped the group)."""
        self._pause()
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
