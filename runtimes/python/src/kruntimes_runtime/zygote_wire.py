"""Framing of the server <-> zygote control channel (a Unix stream socket pair).

A message is a 4-byte big-endian length and a `marshal`-encoded dict, written
with one sendmsg carrying any file descriptors (SCM_RIGHTS); the receiver reads
the length alone first, which is where the descriptors arrive. Both ends are our
own code, so marshal (builtin, fast, no import cost in the zygote) is enough.
"""

from __future__ import annotations

import array
import marshal
import os
import socket
import struct
from typing import Any

from . import limits

HEADER = struct.Struct("!I")
MAX_FDS = 4


class WireError(Exception):
    """The control channel carried something malformed."""


def encode(msg: dict[str, Any]) -> tuple[bytes, bytes]:
    body = marshal.dumps(msg)
    if len(body) > limits.ZYGOTE_MESSAGE_MAX_BYTES:
        raise WireError(f"message of {len(body)} bytes exceeds {limits.ZYGOTE_MESSAGE_MAX_BYTES}")
    return HEADER.pack(len(body)), body


def ancillary(fds: list[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def decode(body: bytes) -> dict[str, Any]:
    try:
        msg = marshal.loads(body)
    except (EOFError, ValueError, TypeError) as e:
        raise WireError(f"undecodable message: {e}") from e
    if not isinstance(msg, dict):
        raise WireError(f"message is a {type(msg).__name__}, not a dict")
    return msg


def send_blocking(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    header, body = encode(msg)
    # One syscall (one wakeup of the peer) for the whole message when it fits.
    data = header + body
    sent = sock.sendmsg([data], ancillary(fds or []))
    if sent < len(data):
        sock.sendall(data[sent:])


def send_handoff(sock: socket.socket, msg: dict[str, Any], fds: list[int], timeout: float) -> None:
    """Send to a spare's hand-off socket: at once when the socket takes it
    whole (the usual case: a fresh, empty socket), else with a timeout for the
    rest (a spare that stopped reading is dead). The first attempt avoids the
    poll() a timeout adds before every send."""
    header, body = encode(msg)
    data = header + body
    try:
        sent = sock.sendmsg([data], ancillary(fds), socket.MSG_DONTWAIT)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    sock.settimeout(timeout)
    if sent == 0:
        sent = sock.sendmsg([data], ancillary(fds))
    if sent < len(data):
        sock.sendall(data[sent:])


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(buf)


def recv_blocking(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One message and the fds that came with it; None at EOF."""
    fds: list[int] = []
    cmsg_space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
    data, ancdata, flags, _ = sock.recvmsg(HEADER.size, cmsg_space)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - (len(payload) % arr.itemsize)])
            fds.extend(arr)
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            _close_quietly(fd)
        raise WireError("file descriptors were truncated")
    if not data:
        return None
    if len(data) < HEADER.size:
        rest = _recv_exact(sock, HEADER.size - len(data))
        if rest is None:
            return None
        data += rest
    (size,) = HEADER.unpack(data)
    if size > limits.ZYGOTE_MESSAGE_MAX_BYTES:
        raise WireError(f"message of {size} bytes exceeds {limits.ZYGOTE_MESSAGE_MAX_BYTES}")
    body = _recv_exact(sock, size)
    if body is None:
        return None
    return decode(body), fds


class FrameDecoder:
    """Incremental decoder for the fd-less direction (zygote -> server)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > limits.ZYGOTE_MESSAGE_MAX_BYTES:
                raise WireError(f"message of {size} bytes exceeds {limits.ZYGOTE_MESSAGE_MAX_BYTES}")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            out.append(decode(bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return out


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
