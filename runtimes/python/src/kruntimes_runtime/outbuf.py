"""A bounded per-stream output buffer with byte offsets.

It holds the stream's bytes [start, end). Bytes at or past `sent` have not yet
been handed to a reader and are never evicted. Of the bytes already handed
over, the last `retain` (half the capacity, at most RETAIN_MAX) are never
evicted either: they may still be in flight (gRPC and HTTP/2 buffers, the
client's window) when the reader dies, and its re-Attach from its last offset
must find them. Older sent bytes are kept for replay until new output needs
their room. `room()` is how much may be read from the child's pipe now: when it
is 0 the server stops reading and the child blocks on its full pipe.
"""

from __future__ import annotations

import collections

from .errors import OutOfRange

# runtimed's per-stream HTTP/2 window is 1 MiB; add room for gRPC's own buffers.
RETAIN_MAX = 2 << 20


class OutputBuffer:
    def __init__(self, capacity: int, name: str) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.name = name
        self.start = 0
        self.end = 0
        self.sent = 0
        self.retain = min(capacity // 2, RETAIN_MAX)
        # The bytes as read, oldest first: appending and evicting never move
        # the whole buffer (a bytearray's front deletion followed by growth
        # memmoves all of it).
        self._chunks: collections.deque[bytes] = collections.deque()

    def _floor(self) -> int:
        """Bytes at or past this offset must stay."""
        return max(self.start, self.sent - self.retain)

    def room(self) -> int:
        """Bytes that may be appended without dropping unsent or in-flight output."""
        return self.capacity - (self.end - self._floor())

    def unsent(self) -> int:
        return self.end - self.sent

    def append(self, data: bytes) -> None:
        if len(data) > self.room():
            raise ValueError(f"{len(data)} bytes exceed the {self.room()} bytes of room")
        if not data:
            return
        self._chunks.append(bytes(data))
        self.end += len(data)
        overflow = (self.end - self.start) - self.capacity
        # Only old sent bytes go: room() guarantees start + overflow <= floor.
        while overflow > 0:
            first = self._chunks[0]
            if len(first) <= overflow:
                self._chunks.popleft()
                self.start += len(first)
                overflow -= len(first)
            else:
                self._chunks[0] = first[overflow:]
                self.start += overflow
                overflow = 0

    def check_offset(self, offset: int, field: str) -> None:
        """OUT_OF_RANGE unless `offset` can be served (start <= offset <= end)."""
        if offset < self.start:
            raise OutOfRange(
                f"{field} {offset} is older than the oldest {self.name} byte still "
                f"buffered ({self.start}; the buffer holds the last {self.capacity} bytes)"
            )
        if offset > self.end:
            raise OutOfRange(f"{field} {offset} is past the end of {self.name} ({self.end} bytes so far)")

    def read(self, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes from `offset` (start <= offset <= end)."""
        if offset < self.start or offset > self.end:
            raise ValueError(f"offset {offset} outside [{self.start}, {self.end}]")
        parts: list[bytes | memoryview] = []
        pos = self.start
        wanted = min(limit, self.end - offset)
        for chunk in self._chunks:
            if wanted <= 0:
                break
            chunk_end = pos + len(chunk)
            if chunk_end > offset:
                lo = max(0, offset - pos)
                take = min(wanted, len(chunk) - lo)
                parts.append(chunk if lo == 0 and take == len(chunk) else memoryview(chunk)[lo : lo + take])
                wanted -= take
            pos = chunk_end
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]  # a whole chunk: no copy
        return b"".join(parts)

    def mark_sent(self, offset: int) -> None:
        """The current reader has been handed everything below `offset`."""
        self.sent = max(self.start, min(offset, self.end))

    def rewind(self, offset: int) -> None:
        """A new reader starts at `offset`: everything from it is unsent again."""
        self.check_offset(offset, f"{self.name}_offset")
        self.sent = offset
