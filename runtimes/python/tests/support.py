"""Test support: a real server process on a Unix socket and a small client."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kruntimes_runtime.proto import pb, pb_grpc

_ids = itertools.count(1)
# Bounded waits (not timing assertions): generous for a shared, noisy machine.
WAIT_S = 60.0


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


@dataclass
class Result:
    stdout: bytes
    stderr: bytes
    exit: Any
    chunks: int = 0

    @property
    def code(self) -> int | None:
        return self.exit.code if self.exit.WhichOneof("status") == "code" else None

    @property
    def signal(self) -> int | None:
        return self.exit.signal if self.exit.WhichOneof("status") == "signal" else None


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    socket: str
    workspace: Path
    log: Path
    channel: grpc.Channel = field(init=False)
    stub: Any = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        self.stub = pb_grpc.RuntimeServerStub(self.channel)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start_stream(self, execution_id: str | None = None, **kw: Any) -> tuple[str, Any, Any]:
        """Call Start: (id, the Started event, the rest of the stream). Errors
        raise here, as the call fails before its first event."""
        execution_id = execution_id or new_id()
        argv = kw.pop("argv", None)
        if argv is not None:
            kw["command"] = pb.Command(argv=argv)
        script = kw.pop("script", None)
        if script is not None:
            kw["script"] = pb.Script(
                source=script if isinstance(script, bytes) else script.encode(),
                args=kw.pop("args", []),
                filename=kw.pop("filename", ""),
            )
        stream = self.stub.Start(pb.StartRequest(execution_id=execution_id, **kw), timeout=WAIT_S * 4)
        first = next(stream)
        assert first.WhichOneof("event") == "started", first
        assert first.started.pid > 0 and first.started.started_at.seconds > 0, first
        return execution_id, first.started, stream

    def start(self, execution_id: str | None = None, **kw: Any) -> str:
        """Start, then drop the Start stream: the execution runs on unread
        (the tests read it later with Attach)."""
        execution_id, _, stream = self.start_stream(execution_id, **kw)
        stream.cancel()
        return execution_id

    def attach(self, execution_id: str, stdout_offset: int = 0, stderr_offset: int = 0) -> Result:
        stream = self.stub.Attach(
            pb.AttachRequest(execution_id=execution_id, stdout_offset=stdout_offset, stderr_offset=stderr_offset),
            timeout=WAIT_S * 4,
        )
        return collect(stream, stdout_offset, stderr_offset)

    def run(self, **kw: Any) -> Result:
        """Start and read the Start stream to its end, then Forget."""
        execution_id, _, stream = self.start_stream(**kw)
        result = collect(stream)
        self.stub.Forget(pb.ForgetRequest(execution_id=execution_id), timeout=WAIT_S)
        return result

    def status(self, execution_id: str) -> Any:
        return self.stub.Status(pb.StatusRequest(execution_id=execution_id), timeout=WAIT_S)

    def wait_exited(self, execution_id: str) -> Any:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            st = self.status(execution_id)
            if st.state == pb.EXECUTION_STATE_EXITED:
                return st
            time.sleep(0.02)
        raise AssertionError(f"{execution_id} did not exit within {WAIT_S}s")

    def zygote_pid(self) -> int:
        return single(children(self.pid))

    def stop(self) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=WAIT_S)


def unbatched(messages: Any) -> Iterator[Any]:
    """The events of a stream's messages, EventBatches unpacked in order."""
    for msg in messages:
        if msg.WhichOneof("event") == "batch":
            assert 1 <= len(msg.batch.events) <= 64, msg
            for ev in msg.batch.events:
                assert ev.WhichOneof("event") != "batch", "a batch inside a batch"
                yield ev
        else:
            yield msg


def collect(events: Any, stdout_offset: int = 0, stderr_offset: int = 0) -> Result:
    """Read output events to the end: contiguous per stream, Exited last."""
    out, err = bytearray(), bytearray()
    chunks = 0
    exit_msg = None
    for ev in unbatched(events):
        assert exit_msg is None, "an event after Exited"
        kind = ev.WhichOneof("event")
        if kind == "output":
            chunks += 1
            target = out if ev.output.stream == pb.STREAM_STDOUT else err
            base = stdout_offset if ev.output.stream == pb.STREAM_STDOUT else stderr_offset
            assert ev.output.offset == base + len(target), "chunks must be contiguous"
            target += ev.output.data
        else:
            assert kind == "exited", f"unexpected {kind} event"
            exit_msg = ev.exited
    assert exit_msg is not None, "stream ended without Exited"
    assert exit_msg.stdout_length == stdout_offset + len(out)
    assert exit_msg.stderr_length == stderr_offset + len(err)
    return Result(bytes(out), bytes(err), exit_msg, chunks)


def start_server(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """Start `python -m kruntimes_runtime` and wait for its listening line."""
    tmp.mkdir(parents=True, exist_ok=True)
    sock = str(tmp / "rt.sock")
    ws = tmp / "ws"
    log = tmp / "server.log"
    logf = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kruntimes_runtime", "--listen", f"unix:{sock}", "--workspace", str(ws), *args],
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=logf,
        env=env if env is not None else dict(os.environ),
        cwd=str(tmp),
    )
    logf.close()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()}")
        if b"listening on" in log.read_bytes():
            return Server(proc, sock, ws, log)
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()}")


def proc_stat(pid: int) -> tuple[str, int, int]:
    """(state, ppid, pgid) of a process; FileNotFoundError once it is gone
    (also when it is reaped between the open and the read, which gives ESRCH)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except ProcessLookupError as e:
        raise FileNotFoundError(f"process {pid} is gone") from e
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if proc_stat(int(entry))[1] == pid:
                out.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def zombies_under(pid: int) -> list[int]:
    out = []
    for p in descendants(pid):
        try:
            if proc_stat(p)[0] == "Z":
                out.append(p)
        except FileNotFoundError:
            continue
    return out


def single(items: list[int]) -> int:
    assert len(items) == 1, items
    return items[0]


def eventually(predicate: Any, what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")
