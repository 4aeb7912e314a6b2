"""What a child forked by the zygote does: become the execution's process.

Forked ahead of need (a spare), it starts its own session and closes every
descriptor it does not need; handed a plan, it takes the stdio pipes, enters
the working directory and sets the environment; then it either execs a
program or runs Python in-process exactly as `python3 -c/-m/FILE` would (argv,
sys.path[0], __main__, exit codes, tracebacks, flushing, KeyboardInterrupt).

Setup failures are written to the status pipe (closed on success), so the
zygote can fail the Start. A Python run that ends normally closes its stdio,
puts its exit status in its slot of the zygote's shared notice table and
signals the zygote (SIGURG) before exiting: tearing down the address space
the child shares with the zygote takes about a millisecond (page tables), and
the Run need not wait for it. (Shared memory, not a pipe: the user's code must
see no descriptor beyond 0-2, as in python3.) Everything used here is imported by the zygote before
it forks: the fork path imports nothing.
"""

from __future__ import annotations

import _signal
import atexit
import builtins
import errno
import gc
import io
import os
import runpy
import signal
import socket
import sys
import zipimport
from importlib.machinery import BuiltinImporter, SourceFileLoader
from importlib.util import MAGIC_NUMBER
from typing import Any, NoReturn

from . import zygote_wire
from .stdio import PreparedStdio

# Exit status when setup or exec fails (as shells use for "cannot execute").
SETUP_FAILED = 127
# CPython's status when flushing stdout at exit fails.
FLUSH_FAILED = 120
_SIG_DFL, _SIG_IGN = int(signal.SIG_DFL), int(signal.SIG_IGN)
_SIGCHLD, _SIGTERM, _SIGINT = int(signal.SIGCHLD), int(signal.SIGTERM), int(signal.SIGINT)
_SIGPIPE, _SIGXFSZ, _SIGURG = int(signal.SIGPIPE), int(signal.SIGXFSZ), int(signal.SIGURG)
# (leader pid, zygote pid, notice slot) once this process is an execution's leader.
_notice: tuple[int, int, Any, int] | None = None


def spare(ctrl: socket.socket, handoff: socket.socket, stdio: PreparedStdio, notices: Any, slot: int) -> NoReturn:
    """A child forked ahead of need. It does the setup that does not depend on
    the execution (session, descriptors, signal dispositions) right away, then
    waits for the zygote to hand it a plan and its stdio pipes: a Start then
    costs no fork and no setup on its path. EOF (the zygote going away, or
    retiring it) ends it quietly. `notices[slot]` is where it leaves its
    exit status for the zygote (no slot: -1)."""
    global _notice
    try:
        # The zygote's socket objects must not close fd numbers the user's
        # code may reuse later: detach them, closerange closes the real fds.
        ctrl.detach()
        keep = handoff.fileno()
        signal.set_wakeup_fd(-1)
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 20)
        _python_signals()
        _prefault(stdio)
        received = zygote_wire.recv_blocking(handoff)
        handoff.close()
    except (OSError, zygote_wire.WireError):
        os._exit(0)
    if received is None:
        os._exit(0)
    msg, fds = received
    if len(fds) not in (2, 3):
        os._exit(SETUP_FAILED)
    if slot >= 0:
        # Only this process may give the notice, not one the Run forks from it.
        _notice = (os.getpid(), os.getppid(), notices, slot)
    status_fd = fds[2] if len(fds) == 3 else -1
    if status_fd >= 0:
        # SCM_RIGHTS delivers descriptors without close-on-exec; this one must
        # close at exec so the zygote sees EOF exactly when the exec succeeded.
        os.set_inheritable(status_fd, False)
    run(msg["plan"], fds[0], fds[1], status_fd, stdio)


def run(plan: dict[str, Any], out_fd: int, err_fd: int, status_fd: int, stdio: PreparedStdio) -> NoReturn:
    """Become the execution's process (never returns)."""
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        os.chdir(plan["cwd"])
    except OSError as e:
        _fail(status_fd, "setup", f"cannot set up the process (cwd {plan['cwd']!r}): {e}")
    if plan["kind"] == "exec":
        _exec(plan, status_fd)
    _run_python(plan, status_fd, stdio)


def _fail(status_fd: int, kind: str, message: str) -> NoReturn:
    """Report a setup failure to the zygote (exec path) or, when nobody waits
    for the child (in-process path), on the execution's stderr."""
    try:
        if status_fd >= 0:
            os.write(status_fd, f"{kind}\n{message}".encode("utf-8", "replace"))
        else:
            os.write(2, f"kruntimes: {message}\n".encode("utf-8", "replace"))
    finally:
        os._exit(SETUP_FAILED)


def _exec(plan: dict[str, Any], status_fd: int) -> NoReturn:
    # Undo the dispositions CPython and the zygote set (ignored signals stay
    # ignored across exec), as subprocess's restore_signals does.
    for sig in (_SIGPIPE, _SIGXFSZ, _SIGINT, _SIGCHLD, _SIGURG, _SIGTERM):
        _signal.signal(sig, _SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    path = plan["path"]
    try:
        _set_environ(plan["env"])
        os.execve(path, plan["argv"], os.environ)
    except OSError as e:
        kind = "not_found" if e.errno == errno.ENOENT else "not_executable"
        _fail(status_fd, kind, f"cannot execute {path!r}: {e.strerror}")


def _prefault(stdio: PreparedStdio) -> None:
    """Do, while idle, the kind of work a run does first (compile, allocate,
    print), so the copy-on-write faults it causes are taken now, not on the
    execution's path."""
    sink = io.StringIO()
    code = compile("x = [str(i) for i in range(64)]\nprint(len(x), x[-1], {'a': 1}, file=sink)\n", "<prefault>", "exec")
    exec(code, {"__builtins__": builtins, "sink": sink})
    stdio.touch()
    _rehearse_handoff()
    _rehearse_setup(stdio)
    gc.collect()


def _rehearse_setup(stdio: PreparedStdio) -> None:
    """Write, and then restore, what `_run_python` sets up (the environment,
    sys.std*, sys.argv, sys.path, sys.modules["__main__"]): its copy-on-write
    faults are taken now. Measured: 39 -> 16 page faults and ~85 us less from
    the hand-off to the exit notice of `print(1)`."""
    keys = [k for k in (f"KRUNTIMES_PREFAULT_{i}" for i in range(4)) if k not in os.environ]
    for key in keys:
        os.environ[key] = "x"
    for key in keys:
        del os.environ[key]
    saved = (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__)
    stdio.install(False)
    stdio.install(True)
    sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__ = saved  # type: ignore[misc]
    sys.argv = list(sys.argv)
    sys.orig_argv = list(sys.orig_argv)
    sys.dont_write_bytecode = sys.dont_write_bytecode
    sys.path.insert(0, "")
    del sys.path[0]
    main = sys.modules["__main__"]
    sys.modules["__main__"] = _new_main()
    sys.modules["__main__"] = main


def _rehearse_handoff() -> None:
    """Receive a plan-shaped message with two descriptors over a socket pair,
    as the hand-off will. Its copy-on-write faults (the zygote keeps writing
    to pages shared with its spare) are taken now: measured, the hand-off's
    ~46 faults and ~0.2 ms CPU on the execution's path go to 0 faults."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        plan = {
            "kind": "python",
            "cwd": "/" + "x" * 64,
            "env": {"KEY": "value"},
            "mode": "c",
            "target": "print(1)",
            "argv": ["-c"],
            "orig_argv": ["python3", "-c", "print(1)"],
            "unbuffered": False,
            "dont_write_bytecode": False,
            "safe_path": False,
            "pythonpath": None,
            "exec_path": "/" + "x" * 64,
        }
        zygote_wire.send_blocking(ours, {"plan": plan}, [ours.fileno(), ours.fileno()])
        received = zygote_wire.recv_blocking(theirs)
        for fd in received[1] if received is not None else []:
            os.close(fd)
    finally:
        ours.close()
        theirs.close()


def _python_signals() -> None:
    """The dispositions a cold python3 starts with (the zygote changed some).
    _signal, not signal: the enum wrappers cost copy-on-write faults."""
    _signal.signal(_SIGCHLD, _SIG_DFL)
    _signal.signal(_SIGURG, _SIG_DFL)
    _signal.signal(_SIGTERM, _SIG_DFL)
    _signal.signal(_SIGINT, _signal.default_int_handler)
    _signal.signal(_SIGPIPE, _SIG_IGN)
    _signal.signal(_SIGXFSZ, _SIG_IGN)


def _set_environ(changes: dict[str, str]) -> None:
    """Apply the Run's variables that differ from the zygote's environment
    (which is the server's, i.e. the base the Run's env overlays)."""
    for key, value in changes.items():
        os.environ[key] = value


def _new_main(**attrs: Any) -> Any:
    main = type(sys)("__main__")
    main.__dict__.update(
        {
            "__loader__": BuiltinImporter,
            "__annotations__": {},
            "__builtins__": builtins,
        }
    )
    main.__dict__.update(attrs)
    sys.modules["__main__"] = main
    return main


def _python_path(pythonpath: list[str] | None, at: int) -> None:
    """Insert PYTHONPATH entries set by the Run (the zygote started without)."""
    if not pythonpath:
        return
    entries: list[str] = []
    for entry in pythonpath:
        full = os.path.abspath(entry)
        if full not in entries and full not in sys.path[at:]:
            entries.append(full)
    sys.path[at:at] = entries


def _run_python(plan: dict[str, Any], status_fd: int, stdio: PreparedStdio) -> NoReturn:
    try:
        _set_environ(plan["env"])
        stdio.install(plan["unbuffered"])
        sys.argv = list(plan["argv"])
        sys.orig_argv = list(plan["orig_argv"])
        sys.dont_write_bytecode = plan["dont_write_bytecode"]
        # The zygote was started with -c, so sys.path[0] is its '' entry.
        if sys.path and sys.path[0] == "":
            del sys.path[0]
        _python_path(plan["pythonpath"], 0)
    except Exception as e:  # noqa: BLE001 - reported to the zygote, then exit
        _fail(status_fd, "setup", f"cannot set up the interpreter: {type(e).__name__}: {e}")
    if status_fd >= 0:
        os.close(status_fd)

    mode, target = plan["mode"], plan["target"]
    safe_path = plan["safe_path"]
    code = 0
    interrupted = False
    try:
        if mode == "c":
            if not safe_path:
                sys.path.insert(0, "")
            main = _new_main()
            exec(compile(target, "<string>", "exec"), main.__dict__)
        elif mode == "m":
            if not safe_path:
                sys.path.insert(0, os.getcwd())
            runpy._run_module_as_main(target, True)  # type: ignore[attr-defined]
        else:
            code = _run_file(plan, target, safe_path)
    except SystemExit as e:
        code = _system_exit_code(e)
    except BaseException as e:  # noqa: BLE001 - python3 prints any uncaught exception
        interrupted = isinstance(e, KeyboardInterrupt)
        tb = e.__traceback__
        # python3 shows only the user's frames (and runpy's for -m): drop ours.
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        # PyErr_Display prints the exception's own __traceback__, not `tb`.
        e.__traceback__ = tb
        try:
            sys.excepthook(type(e), e, tb)
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    _finish(code, interrupted)


def _run_file(plan: dict[str, Any], path: str, safe_path: bool) -> int:
    """`python3 FILE`: returns only for "can't open file" (status 2)."""
    full = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    if os.path.isdir(path) or _is_zip(path):
        # A directory or zip with __main__.py, run the way CPython does.
        sys.path.insert(0, path)
        runpy._run_module_as_main("__main__", False)  # type: ignore[attr-defined]
        return 0
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        prog = plan["orig_argv"][0] if plan["orig_argv"] else "python3"
        sys.stderr.write(f"{prog}: can't open file {full!r}: [Errno {e.errno}] {e.strerror}\n")
        return 2
    if path.endswith(".pyc") or source[:4] == MAGIC_NUMBER:
        # Compiled files: let the real interpreter run them.
        sys.stdout.flush()
        os.execv(plan["exec_path"], [plan["exec_path"], *plan["orig_argv"][1:]])
    if not safe_path:
        sys.path.insert(0, os.path.dirname(os.path.realpath(path)))
    main = _new_main(
        __file__=full,
        __cached__=None,
        __loader__=SourceFileLoader("__main__", full),
    )
    code = compile(source, full, "exec", dont_inherit=True)
    exec(code, main.__dict__)
    return 0


def _is_zip(path: str) -> bool:
    try:
        zipimport.zipimporter(path)
    except (zipimport.ZipImportError, OSError):
        return False
    return True


def _system_exit_code(e: SystemExit) -> int:
    value = e.code
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    try:
        sys.stderr.write(f"{value}\n")
    except Exception:  # noqa: BLE001
        pass
    return 1


def _flush_std() -> bool:
    ok = True
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        if stream is None or getattr(stream, "closed", False):
            continue
        try:
            stream.flush()
        except Exception as e:  # noqa: BLE001
            ok = False
            if name == "stdout":
                try:
                    sys.stderr.write(f"Exception ignored in: {stream!r}\n{type(e).__name__}: {e}\n")
                except Exception:  # noqa: BLE001
                    pass
    return ok


def _finish(code: int, interrupted: bool) -> NoReturn:
    """Py_FinalizeEx's observable steps, then exit without the full teardown."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()  # type: ignore[attr-defined]
        except BaseException:  # noqa: BLE001
            pass
    atexit._run_exitfuncs()
    ok = _flush_std()
    # Objects left in __main__ (open files not closed, ...) are finalized as at
    # interpreter shutdown, so buffered writes reach their files.
    main = sys.modules.get("__main__")
    if main is not None:
        try:
            main.__dict__.clear()
            gc.collect()
        except BaseException:  # noqa: BLE001
            pass
    ok = _flush_std() and ok
    if interrupted:
        # CPython re-raises an uncaught KeyboardInterrupt as death by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    status = code if ok else FLUSH_FAILED
    _notify_exit(status)
    # Skipping Py_FinalizeEx's teardown is safe: what python3 does observably
    # at exit (threads joined, atexit, __main__ finalized, stdio flushed) is
    # done above; the rest only frees memory the kernel reclaims anyway.
    os._exit(status)


def _notify_exit(status: int) -> None:
    """Tell the zygote the exit status now, with stdio closed (so the server
    sees EOF): it kills the process group and reports the exit while this
    process is still tearing down its memory, and not again when it reaps it."""
    if _notice is None:
        return
    leader, zygote, notices, slot = _notice
    # Not from a process the Run forked, nor to whoever adopted us (SIGURG's
    # default action is to ignore it, should the zygote die in between).
    if os.getpid() != leader or os.getppid() != zygote:
        return
    try:
        os.closerange(0, 3)
        notices[slot] = status + 1
        os.kill(zygote, _SIGURG)
    except OSError:
        pass  # the zygote reports the exit when it reaps this process
