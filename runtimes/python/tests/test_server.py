"""End to end: the real server process over its Unix socket, real processes."""

from __future__ import annotations

import itertools
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import (
    Server,
    collect,
    descendants,
    eventually,
    new_id,
    proc_stat,
    start_server,
    unbatched,
    zombies_under,
)

from kruntimes_runtime.proto import pb
from kruntimes_runtime.zygote import SPARES


def rpc_error(call: object, *args: object, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kw)  # type: ignore[operator]
    return info.value


def test_handshake_and_health(server: Server) -> None:
    hs = server.stub.Handshake(pb.HandshakeRequest(protocol_version=pb.PROTOCOL_VERSION_V1))
    assert hs.ready, hs.message
    assert hs.runtime == "python"
    assert hs.protocol_version == pb.PROTOCOL_VERSION_V1
    assert hs.workspace_root == str(server.workspace.resolve())
    assert "zygote pid" in hs.message and "writable" in hs.message
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "kruntimes.runtime.v1.RuntimeServer"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_socket_is_private(server: Server) -> None:
    mode = os.stat(server.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.parametrize("code", [0, 1, 255])
def test_exit_codes(server: Server, code: int) -> None:
    assert server.run(argv=["python3", "-c", f"raise SystemExit({code})"]).code == code
    assert server.run(argv=["sh", "-c", f"exit {code}"]).code == code


def test_death_by_signal(server: Server) -> None:
    r = server.run(argv=["sh", "-c", "kill -KILL $$"])
    assert r.signal == signal.SIGKILL and r.code is None
    assert "killed by SIGKILL" in r.exit.message
    r = server.run(argv=["python3", "-c", "import os; os.kill(os.getpid(), 15)"])
    assert r.signal == signal.SIGTERM


def test_env_precedence(server: Server) -> None:
    r = server.run(
        argv=["sh", "-c", 'echo "$HOME|$KRT_X|${PATH:+set}"'],
        env={"HOME": "/run-home", "KRT_X": "x y"},
    )
    assert r.stdout == b"/run-home|x y|set\n"
    r = server.run(
        argv=["python3", "-c", "import os; print(os.environ['KRT_X'], os.environ['HOME'])"],
        env={"KRT_X": "1", "HOME": "/h"},
    )
    assert r.stdout == b"1 /h\n"
    # The server's own tuning (gRPC experiments) stays out of the Runs' environment.
    assert "GRPC_EXPERIMENTS" not in os.environ
    for argv in (
        ["python3", "-c", "import os; print(os.environ.get('GRPC_EXPERIMENTS'))"],
        ["sh", "-c", "echo ${GRPC_EXPERIMENTS-None}"],
    ):
        assert server.run(argv=argv).stdout == b"None\n"


def test_working_directory(server: Server) -> None:
    eid = new_id("wd")
    server.start(eid, argv=["pwd"], working_dir="a/b")
    res = server.attach(eid)
    assert res.stdout.decode().strip() == str(server.workspace.resolve() / eid / "a" / "b")
    r2 = server.run(argv=["python3", "-c", "import os; print(os.getcwd())"])
    assert r2.stdout.decode().strip().startswith(str(server.workspace.resolve()))


def test_working_dir_symlink_is_refused(server: Server) -> None:
    eid = new_id("ln")
    (server.workspace / eid).mkdir(parents=True)
    os.symlink("/etc", server.workspace / eid / "out")
    err = rpc_error(server.start, eid, argv=["true"], working_dir="out/x")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "working_dir 'out/x'" in err.details() and "symlink" in err.details()
    assert not Path("/etc/x").exists()


def test_execution_dir_must_be_a_directory(server: Server) -> None:
    """One put in place (as runtimed does) is used; a symlink or a file at
    its path is refused, not followed."""
    eid = new_id("pre")
    (server.workspace / eid).mkdir(parents=True)
    res = server.run(execution_id=eid, argv=["pwd"])
    assert res.stdout.decode().strip() == str(server.workspace.resolve() / eid)
    for kind in ("symlink", "file"):
        eid = new_id(kind)
        if kind == "symlink":
            os.symlink("/tmp", server.workspace / eid)
        else:
            (server.workspace / eid).write_text("")
        err = rpc_error(server.start, eid, argv=["true"])
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, kind
        assert "exists and is not a directory" in err.details(), err.details()


def test_streams_apart_in_order_and_binary(server: Server) -> None:
    code = (
        "import sys\n"
        "for i in range(2000):\n"
        "    sys.stdout.write(f'o{i}\\n'); sys.stdout.flush()\n"
        "    sys.stderr.write(f'e{i}\\n')\n"
        "sys.stdout.buffer.write(bytes(range(256)))\n"
    )
    r = server.run(argv=["python3", "-c", code])
    assert r.code == 0
    assert r.stdout == "".join(f"o{i}\n" for i in range(2000)).encode() + bytes(range(256))
    assert r.stderr == "".join(f"e{i}\n" for i in range(2000)).encode()


def test_script(server: Server) -> None:
    src = "import sys\nprint(__name__, sys.argv[1:], __file__.endswith('/job.py'))\nraise SystemExit(4)\n"
    r = server.run(script=src, args=["a", "b"], filename="job.py")
    assert r.stdout == b"__main__ ['a', 'b'] True\n"
    assert r.code == 4


def test_module_and_file_invocations(server: Server) -> None:
    eid = new_id("mod")
    d = server.workspace / eid / "src"
    d.mkdir(parents=True)
    (d / "pkg").mkdir()
    (d / "pkg" / "__init__.py").write_text("")
    (d / "pkg" / "tool.py").write_text("import sys\nprint(sys.argv[1:], __name__)\nraise RuntimeError('boom')\n")
    server.start(eid, argv=["python3", "-m", "pkg.tool", "x"], working_dir="src")
    r = server.attach(eid)
    assert r.stdout == b"['x'] __main__\n"
    assert r.code == 1
    # The traceback is python3's, runpy frames included, none of the server's.
    cold = subprocess.run([sys.executable, "-m", "pkg.tool", "x"], cwd=d, capture_output=True, stdin=subprocess.DEVNULL)
    assert r.stderr == cold.stderr
    eid2 = new_id("file")
    (server.workspace / eid2).mkdir()
    (server.workspace / eid2 / "main.py").write_text("import sys\nprint(sys.argv)\n")
    server.start(eid2, argv=["python3", "main.py", "1"])
    assert server.attach(eid2).stdout == b"['main.py', '1']\n"


def test_differential_against_cold_python(server: Server, tmp_path: Path) -> None:
    """The same programs, warm through the server and cold: identical results."""
    programs = [
        ["-c", "import sys; print(sys.argv, repr(sys.path[0]), sys.orig_argv[1:], __name__)", "a"],
        ["-c", "import sys; print(sorted(globals()), __loader__, __spec__)"],
        ["-c", "def f():\n    raise KeyError('k')\nf()"],
        ["-c", "x = ("],
        ["-c", "raise SystemExit('message')"],
        ["-c", "import sys; print('x', end=''); sys.exit(258)"],
        ["-u", "-c", "import sys; print(sys.stdout.write_through, sys.flags.unbuffered == 0)"],
        ["-c", "import warnings; warnings.warn('careful')"],
        ["-c", "import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGINT)"],
        ["-c", "print(input())"],
        ["nope.py"],
    ]
    eid = new_id("diff")
    cwd = server.workspace / eid
    for args in programs:
        eid2 = new_id("diff")
        server.start(eid2, argv=[sys.executable, *args])
        warm = server.attach(eid2)
        cold = subprocess.run(
            [sys.executable, *args], cwd=server.workspace / eid2, capture_output=True, stdin=subprocess.DEVNULL
        )
        status = warm.code if warm.code is not None else -warm.signal  # type: ignore[operator]
        assert (status, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr), args
    assert not cwd.exists() or cwd.is_dir()


def test_output_coalesced(server: Server) -> None:
    """A million short unbuffered lines arrive in far fewer messages."""
    code = "import sys\nw = sys.stdout.write\nfor i in range(1000000):\n    w('x\\n')\n"
    r = server.run(argv=["python3", "-u", "-c", code])
    assert r.code == 0
    assert len(r.stdout) == 2_000_000
    assert r.chunks < 2_000_000 / 1024, r.chunks


def test_large_output_complete(server: Server) -> None:
    size = 64 << 20
    r = server.run(argv=["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' 'a'; echo -n end >&2"])
    assert r.code == 0
    assert len(r.stdout) == size and r.stdout.count(b"a") == size
    assert r.stderr == b"end"


def test_cancel_kills_group_after_grace(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "gc.pid"
    script = f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; while :; do sleep 0.05; done' & echo started; wait"
    eid = server.start(argv=["sh", "-c", script])
    eventually(lambda: pidfile.exists() and pidfile.read_text().strip(), "grandchild started")
    grandchild = int(pidfile.read_text())
    server.stub.Cancel(pb.CancelRequest(execution_id=eid, grace_period_ms=300))
    r = server.attach(eid)
    assert r.exit.cancelled and not r.exit.timed_out
    assert r.stdout == b"started\n"
    assert "cancelled: SIGTERM sent to the process group" in r.exit.message
    eventually(lambda: not _alive(grandchild), "grandchild killed")
    # Idempotent, and a finished execution is left as it is.
    server.stub.Cancel(pb.CancelRequest(execution_id=eid))
    assert server.status(eid).exit == r.exit


def _alive(pid: int) -> bool:
    try:
        return proc_stat(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def test_cancel_python_child_waiting(server: Server) -> None:
    eid = server.start(argv=["python3", "-c", "import time; print('up', flush=True); time.sleep(300)"])
    deadline = time.monotonic() + 60
    while server.status(eid).stdout_length < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.stub.Cancel(pb.CancelRequest(execution_id=eid, grace_period_ms=10_000))
    r = server.attach(eid)
    assert r.signal == signal.SIGTERM and r.exit.cancelled
    assert r.stdout == b"up\n"


def test_timeout(server: Server) -> None:
    eid = server.start(
        argv=["sh", "-c", "trap '' TERM; echo go; while :; do sleep 0.05; done"], timeout_ms=300, grace_period_ms=200
    )
    r = server.attach(eid)
    assert r.exit.timed_out and not r.exit.cancelled
    assert r.signal == signal.SIGKILL
    assert "timed out after 300 ms" in r.exit.message and "SIGKILL after 200 ms grace" in r.exit.message


def test_concurrent_executions_and_no_zombies(server: Server) -> None:
    ids = [server.start(argv=["python3", "-c", f"import time; time.sleep(0.2); print({i})"]) for i in range(50)]
    results: dict[str, object] = {}

    def collect(eid: str) -> None:
        results[eid] = server.attach(eid)

    threads = [threading.Thread(target=collect, args=(e,)) for e in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, eid in enumerate(ids):
        r = results[eid]
        assert r.stdout == f"{i}\n".encode() and r.code == 0  # type: ignore[attr-defined]
    listed = {s.execution_id for s in server.stub.List(pb.ListRequest()).executions}
    assert set(ids) <= listed
    for eid in ids:
        server.stub.Forget(pb.ForgetRequest(execution_id=eid))
    eventually(lambda: zombies_under(server.pid) == [], "no zombies")
    # Only the zygote and its idle spare children remain.
    eventually(lambda: len(descendants(server.pid)) == 1 + SPARES, "only the zygote and its spares remain")


def test_errors(server: Server) -> None:
    eid = server.start(argv=["sleep", "300"])
    err = rpc_error(server.start, eid, argv=["true"])
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and eid in err.details()
    err = rpc_error(server.stub.Forget, pb.ForgetRequest(execution_id=eid))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "still running" in err.details()
    server.stub.Cancel(pb.CancelRequest(execution_id=eid, grace_period_ms=100))
    server.wait_exited(eid)
    server.stub.Forget(pb.ForgetRequest(execution_id=eid))
    for call, req in [
        (server.stub.Status, pb.StatusRequest(execution_id=eid)),
        (server.stub.Forget, pb.ForgetRequest(execution_id=eid)),
        (server.stub.Cancel, pb.CancelRequest(execution_id=eid)),
    ]:
        err = rpc_error(call, req)
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
    err = rpc_error(lambda: list(server.stub.Attach(pb.AttachRequest(execution_id=eid))))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(server.start, None, argv=["no-such-program-kr"])
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "no-such-program-kr" in err.details()
    err = rpc_error(server.start, "bad id", argv=["true"])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "execution_id 'bad id'" in err.details()
    err = rpc_error(server.start, None, argv=[])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "command.argv" in err.details()
    err = rpc_error(server.start, None, argv=["true"], env={"A=B": "1"})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'A=B'" in err.details()
    err = rpc_error(server.start, None, argv=["true"], working_dir="../x")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "working_dir" in err.details()
    err = rpc_error(server.start, None, argv=["x"] * 5000)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit is 4096" in err.details()


def test_backpressure(fresh_server: Server) -> None:
    srv = fresh_server  # 64 KiB buffers
    total = 4 << 20
    # The child writes once the test opens the FIFO, i.e. after the Start
    # stream is dropped: no reader has taken any of it.
    eid, fifo = _fifo_dir(srv)
    code = f"import sys\nopen('go').close()\nsys.stdout.buffer.write(bytes(i % 256 for i in range({total})))\n"
    srv.start(eid, argv=["python3", "-c", code])
    with open(fifo, "w"):
        pass
    # Nobody attached: the server holds at most one buffer; the child blocks.
    eventually(lambda: srv.status(eid).stdout_length == 65536, "buffer filled")
    time.sleep(0.3)
    st = srv.status(eid)
    assert st.state == pb.EXECUTION_STATE_RUNNING and st.stdout_length == 65536
    r = srv.attach(eid)
    assert r.stdout == bytes(i % 256 for i in range(total)) and r.code == 0
    # Offsets older than what is buffered are refused, naming the oldest held.
    err = rpc_error(lambda: list(srv.stub.Attach(pb.AttachRequest(execution_id=eid, stdout_offset=10))))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "stdout_offset 10 is older than the oldest stdout byte still buffered" in err.details()
    # The tail is replayable from any offset still held.
    assert srv.attach(eid, stdout_offset=total - 1000).stdout == r.stdout[-1000:]


def test_reader_dies_midway_and_resumes_from_its_offset(server: Server) -> None:
    """A reader with a bounded window (as runtimed's 1 MiB) that disconnects
    mid-stream re-attaches from the last byte it got: every byte exactly once."""
    total = 24 << 20
    code = f"import sys\nsys.stdout.buffer.write(bytes(i % 251 for i in range({total})))\n"
    eid = new_id("cut")
    expected = bytes(i % 251 for i in range(total))
    got = bytearray()
    # The first reader is the Start stream, the second an Attach.
    for cut in (3 << 20, 11 << 20):
        with grpc.insecure_channel(f"unix:{server.socket}", options=[("grpc.http2.bdp_probe", 0)]) as ch:
            from kruntimes_runtime.proto import pb_grpc

            stub = pb_grpc.RuntimeServerStub(ch)
            if not got:
                request = pb.StartRequest(execution_id=eid, command=pb.Command(argv=["python3", "-c", code]))
                stream = stub.Start(request)
                assert next(stream).HasField("started")
            else:
                stream = stub.Attach(pb.AttachRequest(execution_id=eid, stdout_offset=len(got)))
            for ev in unbatched(stream):
                assert ev.output.offset == len(got)
                got += ev.output.data
                if len(got) >= cut:
                    break
            stream.cancel()
    r = server.attach(eid, stdout_offset=len(got))
    assert bytes(got) + r.stdout == expected
    assert r.code == 0


def test_new_attach_replaces_old(fresh_server: Server) -> None:
    srv = fresh_server
    eid = srv.start(argv=["python3", "-c", "import time\nprint('a', flush=True)\ntime.sleep(300)"])
    eventually(lambda: srv.status(eid).stdout_length == 2, "output")  # print may write twice
    first = srv.stub.Attach(pb.AttachRequest(execution_id=eid))
    assert next(first).output.data == b"a\n"
    second = srv.stub.Attach(pb.AttachRequest(execution_id=eid))
    assert next(second).output.data == b"a\n"
    err = rpc_error(lambda: next(first))
    assert err.code() == grpc.StatusCode.ABORTED and "replaced by a newer Attach" in err.details()
    srv.stub.Cancel(pb.CancelRequest(execution_id=eid, grace_period_ms=100))
    rest = list(unbatched(second))
    assert rest[-1].HasField("exited") and rest[-1].exited.cancelled


def test_resource_exhausted(fresh_server: Server) -> None:
    srv = fresh_server  # --max-executions 4
    ids = [srv.start(argv=["sleep", "300"]) for _ in range(4)]
    err = rpc_error(srv.start, None, argv=["true"])
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4 executions are running, the limit is 4" in err.details()
    for eid in ids:
        srv.stub.Cancel(pb.CancelRequest(execution_id=eid, grace_period_ms=100))


def test_zygote_death_fails_inflight_and_recovers(fresh_server: Server) -> None:
    srv = fresh_server
    eid = srv.start(argv=["python3", "-c", "import time; print('x', flush=True); time.sleep(300)"])
    eventually(lambda: srv.status(eid).stdout_length == 2, "running")
    zygote = srv.zygote_pid()
    os.kill(zygote, signal.SIGKILL)
    r = srv.attach(eid)
    assert r.signal == signal.SIGKILL
    assert "zygote died" in r.exit.message and "killed by SIGKILL" in r.exit.message, r.exit.message
    assert r.stdout == b"x\n"

    def recovered() -> bool:
        hs = srv.stub.Handshake(pb.HandshakeRequest())
        return hs.ready

    eventually(recovered, "zygote restarted")
    health = health_pb2_grpc.HealthStub(srv.channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    eventually(lambda: health.Check(health_pb2.HealthCheckRequest()).status == serving, "serving again")
    assert srv.zygote_pid() != zygote
    assert srv.run(argv=["python3", "-c", "print(2)"]).stdout == b"2\n"
    eventually(lambda: zombies_under(srv.pid) == [], "no zombies after the zygote died")
    # Nothing the dead zygote left runs on: only the new zygote and its spares.
    eventually(lambda: len(descendants(srv.pid)) == 1 + SPARES, "strays killed")


def test_handshake_not_ready_on_bad_preload(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "bad", "--preload", "json,no_such_module_kr")
    try:
        hs = srv.stub.Handshake(pb.HandshakeRequest())
        assert not hs.ready
        assert "no_such_module_kr" in hs.message
    finally:
        srv.stop()


def test_sigterm_shuts_down_gracefully(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "term")
    eid = srv.start(argv=["sleep", "300"])
    assert srv.status(eid).state == pb.EXECUTION_STATE_RUNNING
    zygote = srv.zygote_pid()
    sleeper = [p for p in descendants(srv.pid) if p != zygote]
    assert srv.stop() == 0
    assert not os.path.exists(srv.socket)
    for pid in [zygote, *sleeper]:
        assert not _alive(pid)


def test_bad_config_is_reported(tmp_path: Path) -> None:
    for args, fragment in [
        (["--listen", "10.1.2.3:80", "--workspace", str(tmp_path)], "not a loopback address"),
        (["--listen", "unix:" + "/x" * 80, "--workspace", str(tmp_path)], "the limit is 107"),
        (["--listen", "unix:/tmp/x.sock", "--workspace", str(tmp_path), "--buffer-bytes", "10"], "--buffer-bytes 10"),
        (["--listen", "unix:/tmp/x.sock", "--workspace", str(tmp_path), "--preload", "a-b"], "not a module name"),
        (["--workspace", str(tmp_path)], "--listen"),
    ]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KRUNTIMES_")}
        r = subprocess.run([sys.executable, "-m", "kruntimes_runtime", *args], capture_output=True, env=env, timeout=60)
        assert r.returncode == 2, r.stderr
        assert fragment in r.stderr.decode(), r.stderr


def test_tcp_loopback(tmp_path: Path) -> None:
    log = tmp_path / "tcp.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kruntimes_runtime", "--listen", "127.0.0.1:0", "--workspace", str(tmp_path / "ws")],
            stdout=logf,
            stderr=logf,
        )
    try:
        line = eventually(lambda: [x for x in log.read_text().splitlines() if "listening on" in x], "listening")
        address = line[0].rsplit(" ", 1)[1]
        assert address.startswith("127.0.0.1:")
        from kruntimes_runtime.proto import pb_grpc

        with grpc.insecure_channel(address) as ch:
            assert pb_grpc.RuntimeServerStub(ch).Handshake(pb.HandshakeRequest()).ready
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_pipe_held_by_escaped_process_is_abandoned(server: Server) -> None:
    """A process that left the group keeps the pipes open: Exited still comes
    (bounded wait) and says why; the process is not the execution any more."""
    code = (
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"  # returns once exec'd
        "print(p.pid)\n"
        "raise SystemExit(5)\n"
    )
    r = server.run(argv=["python3", "-c", code])
    escaped = int(r.stdout.split()[0])
    try:
        assert r.code == 5
        assert "output pipes were still open" in r.exit.message, r.exit.message
        assert _alive(escaped)
    finally:
        os.kill(escaped, signal.SIGKILL)
    eventually(lambda: zombies_under(server.pid) == [] and not _alive(escaped), "escaped sleeper reaped")


def test_start_stream_events_in_order(server: Server) -> None:
    """Started (pid, time) first, then output and Exited exactly as an Attach
    from 0/0 gives them; the stream ends after Exited."""
    for argv in (
        ["python3", "-c", "import os, sys; print(os.getpid()); print('e', file=sys.stderr); raise SystemExit(3)"],
        ["sh", "-c", "echo $$; echo e >&2; exit 3"],
    ):
        eid, started, stream = server.start_stream(argv=argv)
        r = collect(stream)
        st = server.status(eid)
        assert int(r.stdout) == started.pid == st.pid
        assert r.stderr == b"e\n" and r.code == 3
        assert started.started_at == st.started_at == r.exit.started_at
        again = server.attach(eid)
        assert (again.stdout, again.stderr, again.exit) == (r.stdout, r.stderr, r.exit)
        server.stub.Forget(pb.ForgetRequest(execution_id=eid))


def _fifo_dir(server: Server) -> tuple[str, Path]:
    """An execution id whose directory holds a FIFO `go`: a child opening it
    waits until the test says go (by opening it for writing)."""
    eid = new_id("fifo")
    (server.workspace / eid).mkdir(parents=True)
    os.mkfifo(server.workspace / eid / "go")
    return eid, server.workspace / eid / "go"


def test_dropped_start_stream_does_not_cancel(server: Server) -> None:
    """A client that cancels its Start stream, or closes its whole connection,
    leaves the process running; a later Attach gets everything."""
    # One write(2), so it arrives as one chunk even when PYTHONUNBUFFERED makes
    # print() write the line and its newline separately.
    code = "import os, sys\nos.write(1, b'before\\n')\nopen('go').close()\nprint('after')\nsys.exit(7)\n"
    for close_channel in (False, True):
        eid, fifo = _fifo_dir(server)
        with grpc.insecure_channel(f"unix:{server.socket}") as ch:
            from kruntimes_runtime.proto import pb_grpc

            stream = pb_grpc.RuntimeServerStub(ch).Start(
                pb.StartRequest(execution_id=eid, command=pb.Command(argv=["python3", "-c", code]))
            )
            assert next(stream).HasField("started")
            first = next(stream)
            assert first.output.data == b"before\n"
            if not close_channel:
                stream.cancel()
        # The channel is closed either way now; the child still waits on the FIFO.
        assert server.status(eid).state == pb.EXECUTION_STATE_RUNNING
        with open(fifo, "w"):
            pass
        r = server.attach(eid)
        assert (r.stdout, r.code) == (b"before\nafter\n", 7)


def test_what_is_at_hand_travels_in_one_batch(server: Server) -> None:
    """Attach to a finished execution: its output of both streams and its
    exit arrive as one EventBatch message, in order."""
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n"
    eid = server.start(argv=["python3", "-c", code])
    server.wait_exited(eid)
    messages = list(server.stub.Attach(pb.AttachRequest(execution_id=eid), timeout=30))
    assert [m.WhichOneof("event") for m in messages] == ["batch"]
    events = messages[0].batch.events
    assert [e.WhichOneof("event") for e in events] == ["output", "output", "exited"]
    assert [(e.output.stream, e.output.data) for e in events[:2]] == [
        (pb.STREAM_STDOUT, b"out\n"),
        (pb.STREAM_STDERR, b"err\n"),
    ]
    r = collect(messages)
    assert (r.stdout, r.stderr, r.code) == (b"out\n", b"err\n", 3)


def test_attach_replaces_start_stream(server: Server) -> None:
    eid, fifo = _fifo_dir(server)
    code = "import os\nos.write(1, b'a\\n')\nopen('go').close()\nprint('b')\n"
    _, _, stream = server.start_stream(eid, argv=["python3", "-c", code])
    assert next(stream).output.data == b"a\n"
    attach = server.stub.Attach(pb.AttachRequest(execution_id=eid))
    first = next(attach)
    assert first.output.data == b"a\n"
    err = rpc_error(lambda: next(stream))
    assert err.code() == grpc.StatusCode.ABORTED and "replaced by a newer Attach" in err.details()
    with open(fifo, "w"):
        pass
    r = collect(itertools.chain([first], attach))
    assert r.stdout == b"a\nb\n" and r.code == 0
