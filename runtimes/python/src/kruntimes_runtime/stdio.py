"""The children's sys.stdin/stdout/stderr, built once in the zygote.

A cold python3 whose stdout/stderr are pipes gets block-buffered stdout and
write-through stderr (both write-through with -u / PYTHONUNBUFFERED), with the
encoding and error handlers of its locale. The zygote builds exactly those
objects up front, on fds 1 and 2 temporarily pointing at a pipe so every cached
property (seekable, tty, block size) is a pipe's; a child, whose fds 1 and 2
are its output pipes, only installs them. Building them per child would cost
page faults (copy-on-write) on the warm path.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any


def _writer(fd: int, name: str, encoding: str, errors: str, is_stderr: bool, unbuffered: bool) -> io.TextIOWrapper:
    """As CPython's create_stdio builds a write stream."""
    raw = io.FileIO(fd, "w", closefd=False)
    raw.name = name  # type: ignore[misc]
    # CPython 3.9+: stderr is always unbuffered (write-through), like -u.
    direct = unbuffered or is_stderr
    buf: Any = raw if direct else io.BufferedWriter(raw, buffer_size=_blksize(fd))
    text = io.TextIOWrapper(
        buf,
        encoding=encoding,
        errors=errors,
        newline="\n",
        line_buffering=False,
        write_through=direct,
    )
    text.mode = "w"  # type: ignore[misc]
    return text


def _reader(encoding: str, errors: str, unbuffered: bool) -> io.TextIOWrapper:
    """stdin as CPython builds it (always buffered; write_through follows -u)."""
    raw = io.FileIO(0, "r", closefd=False)
    raw.name = "<stdin>"  # type: ignore[misc]
    text = io.TextIOWrapper(
        io.BufferedReader(raw, buffer_size=_blksize(0)),
        encoding=encoding,
        errors=errors,
        newline="\n",
        line_buffering=False,
        write_through=unbuffered,
    )
    text.mode = "r"  # type: ignore[misc]
    return text


def _blksize(fd: int) -> int:
    try:
        size = os.fstat(fd).st_blksize
    except OSError:
        size = 0
    return size if size > 1 else io.DEFAULT_BUFFER_SIZE


class PreparedStdio:
    """Stdio objects for children: a buffered and an unbuffered pair."""

    def __init__(self, stdin: tuple[Any, Any], buffered: tuple[Any, Any], unbuffered: tuple[Any, Any]) -> None:
        self.stdin = stdin
        self.buffered = buffered
        self.unbuffered = unbuffered
        # Held so replacing sys.std* in a child frees nothing (freeing would
        # touch, and so copy, the zygote's pages).
        self.original = (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__)

    @classmethod
    def prepare(cls) -> PreparedStdio:
        """Build them in the zygote (its fd 0 is /dev/null, like a child's)."""
        out_enc = getattr(sys.stdout, "encoding", None) or "utf-8"
        out_err = getattr(sys.stdout, "errors", None) or "strict"
        err_enc = getattr(sys.stderr, "encoding", None) or "utf-8"
        err_errors = getattr(sys.stderr, "errors", None) or "backslashreplace"
        in_enc = getattr(sys.stdin, "encoding", None) or "utf-8"
        in_err = getattr(sys.stdin, "errors", None) or "strict"
        saved = (os.dup(1), os.dup(2))
        r, w = os.pipe()
        try:
            os.dup2(w, 1)
            os.dup2(w, 2)
            pairs = []
            for unbuffered in (False, True):
                out = _writer(1, "<stdout>", out_enc, out_err, False, unbuffered)
                err = _writer(2, "<stderr>", err_enc, err_errors, True, unbuffered)
                pairs.append((out, err))
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, r, w):
                os.close(fd)
        stdin = (_reader(in_enc, in_err, False), _reader(in_enc, in_err, True))
        return cls(stdin, pairs[0], pairs[1])

    def touch(self) -> None:
        """Write to the objects a child will use (their refcounts, their
        pages), so a spare takes its copy-on-write faults before it is needed."""
        for stream in (*self.stdin, *self.buffered, *self.unbuffered):
            stream.encoding  # noqa: B018 - attribute access is the point

    def install(self, unbuffered: bool) -> None:
        """In the child, once fds 0-2 are its own."""
        out, err = self.unbuffered if unbuffered else self.buffered
        # As CPython at start-up: sys.__std*__ are the same objects.
        sys.stdin = sys.__stdin__ = self.stdin[1 if unbuffered else 0]  # type: ignore[misc]
        sys.stdout = sys.__stdout__ = out  # type: ignore[misc]
        sys.stderr = sys.__stderr__ = err  # type: ignore[misc]
