"""The zygote with real forked children: exit codes, signals, spawn failures,
process groups and reaping, driven through the server's ZygoteClient."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import children, proc_stat, zombies_under

from kruntimes_runtime.plan import build_plan
from kruntimes_runtime.reaper import ChildReaper
from kruntimes_runtime.validation import CommandProgram, StartSpec
from kruntimes_runtime.zygote import SPARES
from kruntimes_runtime.zygote_client import SpawnFailed, ZygoteClient

ENV = dict(os.environ)


class Harness:
    def __init__(self, zygote: ZygoteClient, tmp: Path, lost: list[tuple[str, list[int]]]) -> None:
        self.zygote = zygote
        self.tmp = tmp
        self.lost = lost

    async def run(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], bytes, bytes, int]:
        """Spawn, collect stdout/stderr to EOF and the exit report."""
        spec = StartSpec("z", CommandProgram(argv), env or {})
        plan = build_plan(spec, cwd=str(self.tmp), base_env=ENV, zygote_env=self.zygote.env, script_path=None)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[dict[str, Any]] = loop.create_future()
        pid = await self.zygote.spawn("z", plan, [out_w, err_w], exited.set_result)  # takes the write ends
        out, err = await asyncio.gather(
            loop.run_in_executor(None, read_all, out_r), loop.run_in_executor(None, read_all, err_r)
        )
        report = await asyncio.wait_for(exited, 60)
        return report, out, err, pid


def read_all(fd: int) -> bytes:
    chunks = []
    while data := os.read(fd, 65536):
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with(tmp: Path, body: Any) -> Any:
    loop = asyncio.get_running_loop()
    reaper = ChildReaper(loop)
    reaper.install()
    lost: list[tuple[str, list[int]]] = []
    zygote = ZygoteClient(reaper, ["json"], ENV, lambda r, p: lost.append((r, p)))
    await zygote.start()
    h = Harness(zygote, tmp, lost)
    try:
        return await body(h)
    finally:
        await zygote.stop()
        reaper.uninstall()


@pytest.mark.parametrize(
    "code, expected",
    [
        ("pass", 0),
        ("raise SystemExit(3)", 3),
        ("import sys; sys.exit(255)", 255),
        ("import sys; sys.exit(256 + 7)", 7),
        ("import sys; sys.exit(-1)", 255),
        ("import sys; sys.exit(True)", 1),
        ("import os; os._exit(42)", 42),
        ("1/0", 1),
    ],
)
def test_exit_codes(tmp_path: Path, code: str, expected: int) -> None:
    async def body(h: Harness) -> None:
        report, _, _, _ = await h.run(["python3", "-c", code])
        assert report.get("code") == expected, report
        assert "signal" not in report

    run(_with(tmp_path, body))


def test_signals_and_keyboard_interrupt(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        report, _, _, _ = await h.run(["python3", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
        assert report.get("signal") == signal.SIGKILL
        report, _, err, _ = await h.run(["python3", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
        assert report.get("signal") == signal.SIGTERM
        # As python3: the traceback is printed, then it dies by SIGINT.
        report, _, err, _ = await h.run(["python3", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGINT)"])
        assert report.get("signal") == signal.SIGINT, report
        assert err.startswith(b"Traceback (most recent call last):\n") and err.endswith(b"KeyboardInterrupt\n"), err
        report, _, _, _ = await h.run(["sh", "-c", "kill -USR1 $$"])
        assert report.get("signal") == signal.SIGUSR1

    run(_with(tmp_path, body))


def test_exec_path_and_spawn_failure(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        report, out, err, _ = await h.run(["sh", "-c", "echo out; echo err >&2; exit 9"])
        assert (report.get("code"), out, err) == (9, b"out\n", b"err\n")
        script = tmp_path / "noexec.sh"
        script.write_text("echo hi\n")  # no shebang: execve fails with ENOEXEC
        script.chmod(0o755)
        with pytest.raises(SpawnFailed, match="noexec.sh"):
            await h.run([str(script)])

    run(_with(tmp_path, body))


def test_session_stdio_and_fds(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "print(os.getpid() == os.getpgid(0) == os.getsid(0))\n"
        "print(sorted(int(f) for f in os.listdir('/proc/self/fd')))\n"
        "print(sys.stdin.read() == '', os.getcwd())\n"
        "print(sys.stdout.line_buffering, sys.stderr.line_buffering, sys.stdout.isatty())\n"
    )

    async def body(h: Harness) -> None:
        report, out, err, pid = await h.run(["python3", "-c", code])
        assert err == b""
        lines = out.decode().splitlines()
        assert lines[0] == "True"  # own session and process group
        assert lines[1] == "[0, 1, 2, 3]"  # 3 is listdir's own fd: nothing leaked
        assert lines[2] == f"True {tmp_path}"
        assert lines[3] == "False False False"  # as python3 with pipes

    run(_with(tmp_path, body))


def test_leader_exit_kills_group_and_orphans_are_reaped(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        pidfile = tmp_path / "bg.pid"
        # A background child stays in the group; a second one leaves it
        # (setsid) but closes its output, so only the zygote can reap it.
        report, _, _, leader = await h.run(
            [
                "sh",
                "-c",
                f"sleep 300 & echo $! > {pidfile}; setsid sh -c 'exec sleep 0.3' </dev/null >/dev/null 2>&1 & exit 0",
            ]
        )
        assert report.get("code") == 0
        bg = int(pidfile.read_text())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                state = proc_stat(bg)[0]
            except FileNotFoundError:
                break
            if state == "Z":
                await asyncio.sleep(0.02)
                continue
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("background child of the group survived the leader")
        # The escaped sleeper exits on its own; the zygote (subreaper) reaps it.
        zygote_pid = h.zygote.pid
        assert zygote_pid is not None
        deadline = time.monotonic() + 30
        # (Fewer than SPARES for a moment: a spare is replaced shortly after
        # its Run's exit is reported.)
        while time.monotonic() < deadline and (zombies_under(zygote_pid) or len(children(zygote_pid)) != SPARES):
            await asyncio.sleep(0.05)
        assert zombies_under(zygote_pid) == []
        assert len(children(zygote_pid)) == SPARES  # its idle spares

    run(_with(tmp_path, body))


def test_python_exit_notice_kills_group_and_reports_once(tmp_path: Path) -> None:
    """A Python leader that ends normally gives its status before exiting (the
    exit-notice path): its group is killed all the same (here a background
    child holding the output pipes, so the output only ends when it dies)."""
    pidfile = tmp_path / "bg.pid"
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('started'); sys.exit(4)\n"
    )

    async def body(h: Harness) -> None:
        report, out, _, _ = await asyncio.wait_for(h.run(["python3", "-c", code]), 60)
        assert report.get("code") == 4 and "signal" not in report, report
        assert out == b"started\n"
        bg = int(pidfile.read_text())
        await asyncio.wait_for(_until(lambda: not _alive(bg)), 60)
        # The reap that follows reports nothing more: the next Run is unaffected.
        report, out, _, _ = await asyncio.wait_for(h.run(["python3", "-c", "print(5)"]), 60)
        assert report.get("code") == 0 and out == b"5\n"

    run(_with(tmp_path, body))


def test_exit_notice_only_from_the_leader(tmp_path: Path) -> None:
    """A process the Run forks that returns from the user's code exits
    without giving the notice: only the leader's own end is reported."""
    code = (
        "import os, sys\n"
        "pid = os.fork()\n"
        "if pid:\n"
        "    os.waitpid(pid, 0); print('leader', flush=True); sys.exit(3)\n"
        "print('forked', flush=True)\n"
    )

    async def body(h: Harness) -> None:
        report, out, _, _ = await asyncio.wait_for(h.run(["python3", "-c", code]), 60)
        assert report.get("code") == 3, report
        assert out == b"forked\nleader\n"

    run(_with(tmp_path, body))


def test_signal_group_reaches_backgroundchildren(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        spec = StartSpec("g", CommandProgram(["sh", "-c", "trap '' TERM; sleep 300 & echo ready; wait"]), {})
        plan = build_plan(spec, cwd=str(tmp_path), base_env=ENV, zygote_env=ENV, script_path=None)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        exited: asyncio.Future[dict[str, Any]] = loop.create_future()
        pid = await h.zygote.spawn("g", plan, [out_w, err_w], exited.set_result)
        assert os.read(out_r, 6) == b"ready\n"  # the trap is set
        h.zygote.signal_group(pid, signal.SIGTERM)  # ignored by sh; sleep dies
        h.zygote.signal_group(pid, signal.SIGKILL)
        report = await asyncio.wait_for(exited, 60)
        assert report.get("signal") == signal.SIGKILL
        assert read_all(out_r) == b"" and read_all(err_r) == b""

    run(_with(tmp_path, body))


def test_preload_and_zygote_death(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        # A preloaded module is already imported in the child: no import cost.
        report, out, _, _ = await h.run(["python3", "-c", "import sys; print('json' in sys.modules)"])
        assert out == b"True\n"
        assert h.zygote.hello["preloaded"] == ["json"]
        # A running execution when the zygote dies: the client reports the loss.
        spec = StartSpec("d", CommandProgram(["sleep", "300"]), {})
        plan = build_plan(spec, cwd=str(tmp_path), base_env=ENV, zygote_env=ENV, script_path=None)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = await h.zygote.spawn("d", plan, [out_w, err_w], lambda r: None)
        assert h.zygote.pid is not None
        os.kill(h.zygote.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not h.lost and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        reason, pids = h.lost[0]
        assert "killed by SIGKILL" in reason and pids == [pid], h.lost
        os.killpg(pid, signal.SIGKILL)  # the Runtime does this; here by hand
        os.close(out_r)
        os.close(err_r)

    run(_with(tmp_path, body))


def test_python_semantics_match_cold(tmp_path: Path) -> None:
    """A few programs run warm and cold: same output and status."""
    import subprocess

    programs = [
        "import sys; print(sys.argv, repr(sys.path[0]), __name__, sorted(globals()))",
        "import sys; sys.stdout.write('a'); sys.stderr.write('b'); raise SystemExit('bye')",
        "def f():\n    raise ValueError('x')\nf()",
        "import atexit; atexit.register(print, 'at exit'); print('main')",
        "import threading, time\n"
        "t = threading.Thread(target=lambda: (time.sleep(0.2), print('thread')))\n"
        "t.start()\nprint('main')",
        "f = open('unclosed.txt', 'w'); f.write('data')",
        "input()",
    ]

    async def body(h: Harness) -> None:
        for code in programs:
            report, out, err, _ = await h.run([sys.executable, "-c", code, "arg"])
            cold = subprocess.run(
                [sys.executable, "-c", code, "arg"], cwd=tmp_path, capture_output=True, stdin=subprocess.DEVNULL
            )
            assert (report.get("code"), out, err) == (cold.returncode, cold.stdout, cold.stderr), code
        assert (tmp_path / "unclosed.txt").read_text() == "data"

    run(_with(tmp_path, body))


def test_stdio_objects_match_cold(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys\n"
        "for s in (sys.stdin, sys.stdout, sys.stderr):\n"
        "    print(s.name, s.mode, s.encoding, s.errors, s.line_buffering, s.write_through, type(s.buffer).__name__)\n"
    )

    async def body(h: Harness) -> None:
        for flags in ([], ["-u"]):
            _, out, err, _ = await h.run([sys.executable, *flags, "-c", code])
            cold = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, stdin=subprocess.DEVNULL)
            assert (out, err) == (cold.stdout, cold.stderr)

    run(_with(tmp_path, body))


def test_environment_and_main_match_cold(tmp_path: Path) -> None:
    """The spare's rehearsal of the setup (environment, sys.std*, argv, path,
    __main__) leaves nothing behind: os.environ and the C environment a
    subprocess inherits are those of a cold python3, in the same order."""
    import subprocess

    code = (
        "import os, subprocess, sys\n"
        "print(list(os.environ.items()))\n"
        "print(subprocess.run(['env'], capture_output=True).stdout)\n"
        "print(sys.argv, sys.modules['__main__'].__name__, sys.stdout is sys.__stdout__, __name__)\n"
    )
    env = {"KRT_RUN_VAR": "1"}

    async def body(h: Harness) -> None:
        _, out, err, _ = await h.run([sys.executable, "-c", code, "a"], env=env)
        cold = subprocess.run(
            [sys.executable, "-c", code, "a"], capture_output=True, stdin=subprocess.DEVNULL, env={**ENV, **env}
        )
        assert b"KRUNTIMES_PREFAULT" not in out
        assert (out, err) == (cold.stdout, cold.stderr)

    run(_with(tmp_path, body))


def test_starts_waiting_for_spares(tmp_path: Path) -> None:
    """More Starts than spares, at once and back to back: each waits for a
    spare (one arriving before the waiting task runs included) and none hangs."""

    async def body(h: Harness) -> None:
        for _ in range(3):
            results = await asyncio.wait_for(
                asyncio.gather(*(h.run(["python3", "-c", f"print({i})"]) for i in range(12))), 120
            )
            assert [out for _, out, _, _ in results] == [f"{i}\n".encode() for i in range(12)]
        for i in range(20):
            _, out, _, _ = await asyncio.wait_for(h.run(["python3", "-c", f"print({i})"]), 60)
            assert out == f"{i}\n".encode()

    run(_with(tmp_path, body))


def test_taken_arriving_after_the_childs_exit(tmp_path: Path) -> None:
    """The server tells the zygote "taken" after handing the spare its plan.
    Held back until the child has exited and been reaped as an idle spare, it
    still yields the child's real status, and the child's process group was
    killed while the child was a zombie (as for any leader)."""
    pidfile = tmp_path / "bg.pid"

    async def body(h: Harness) -> None:
        held: list[dict[str, Any]] = []
        send = h.zygote._send

        def holding_send(msg: dict[str, Any], fds: list[int] | None = None) -> Any:
            if msg.get("op") == "taken":
                held.append(msg)
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                done.set_result(None)
                return done
            return send(msg, fds)

        h.zygote._send = holding_send  # type: ignore[method-assign]
        argv = ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; exit 3"]
        spec = StartSpec("late", CommandProgram(argv), {})
        plan = build_plan(spec, cwd=str(tmp_path), base_env=ENV, zygote_env=h.zygote.env, script_path=None)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[dict[str, Any]] = loop.create_future()
        pid = await h.zygote.spawn("late", plan, [os.dup(1), os.dup(2)], exited.set_result)
        assert [m["pid"] for m in held] == [pid]
        zygote_pid = h.zygote.pid
        assert zygote_pid is not None
        # Reaped by the zygote as an idle spare (a new spare replaces it).
        await asyncio.wait_for(_until(lambda: pid not in children(zygote_pid)), 60)
        assert not exited.done()
        bg = int(pidfile.read_text())
        await asyncio.wait_for(_until(lambda: not _alive(bg)), 60)
        h.zygote._send = send  # type: ignore[method-assign]
        send(held[0]).add_done_callback(lambda f: f.exception())
        report = await asyncio.wait_for(exited, 60)
        assert report.get("code") == 3 and "signal" not in report

    run(_with(tmp_path, body))


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        return proc_stat(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def test_spare_pool_refilled_after_exit(tmp_path: Path) -> None:
    """SPARES spares are kept: a Run takes one, the next Run (right after)
    takes another without asking the zygote for one, and the pool is refilled
    once the exits are reported."""

    async def body(h: Harness) -> None:
        await asyncio.wait_for(_until(lambda: len(h.zygote._spares) == SPARES), 60)
        ops: list[str] = []
        send = h.zygote._send

        def recording_send(msg: dict[str, Any], fds: list[int] | None = None) -> Any:
            ops.append(str(msg.get("op")))
            return send(msg, fds)

        h.zygote._send = recording_send  # type: ignore[method-assign]
        ready = [pid for pid, _ in h.zygote._spares]
        used = []
        for i in range(SPARES):
            report, out, _, pid = await h.run(["python3", "-c", f"print({i})"])
            assert out == f"{i}\n".encode() and report.get("code") == 0
            used.append(pid)
        # Handed to spares forked before the first Run, oldest first.
        assert used == ready
        assert "fork_spare" not in ops
        await asyncio.wait_for(_until(lambda: len(h.zygote._spares) == SPARES), 60)
        zygote_pid = h.zygote.pid
        assert zygote_pid is not None
        await asyncio.wait_for(_until(lambda: len(children(zygote_pid)) == SPARES), 60)

    run(_with(tmp_path, body))
