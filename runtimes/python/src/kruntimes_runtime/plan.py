"""Turns a validated Start into the plan a forked child carries out.

A Python invocation (a Script, or a Command naming this interpreter with -c,
-m or a file) runs in-process in the warm child when the result is
indistinguishable from a cold `python3`; otherwise, and for every other
program, the child execs it. Commands are resolved through the merged PATH
here, so a missing program fails the Start with the path that was tried.
"""

from __future__ import annotations

import os
import site
import stat
import sys
from typing import Any

from .errors import FailedPrecondition
from .pyargv import PythonInvocation, is_this_interpreter, parse_python_argv
from .validation import CommandProgram, StartSpec

# Startup-time variables a running interpreter cannot re-apply; any difference
# from the zygote's environment makes the child exec a fresh interpreter.
_STARTUP_VARS = ("LC_ALL", "LC_CTYPE", "LANG")
# PYTHON* variables the warm child reproduces itself (or that only matter later).
_EMULATED_PYTHON_VARS = frozenset(
    {"PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONBREAKPOINT", "PYTHONSTARTUP"}
)


def merged_env(base: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The server's (container) environment overlaid by the Run's."""
    env = dict(base)
    env.update(overrides)
    return env


def warm_compatible(env: dict[str, str], zygote_env: dict[str, str]) -> bool:
    """Whether a child forked from the zygote behaves as python3 would under `env`."""
    for name in _STARTUP_VARS:
        if env.get(name) != zygote_env.get(name):
            return False
    names = {k for k in env if k.startswith("PYTHON")} | {k for k in zygote_env if k.startswith("PYTHON")}
    for name in names - _EMULATED_PYTHON_VARS:
        if env.get(name) != zygote_env.get(name):
            return False
    if env.get("PYTHONPATH", "") != zygote_env.get("PYTHONPATH", "") and zygote_env.get("PYTHONPATH"):
        # Replacing entries the zygote already put on sys.path is not exact.
        return False
    if env.get("HOME") != zygote_env.get("HOME") and _user_site_in_use(env, zygote_env):
        return False
    return True


def _user_site_in_use(env: dict[str, str], zygote_env: dict[str, str]) -> bool:
    """HOME decides the user site-packages dir, which start-up adds if it exists
    (never in a venv, where it is disabled)."""
    if not site.ENABLE_USER_SITE:
        return False
    rel = os.path.join(".local", "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    for e in (env, zygote_env):
        home = e.get("HOME")
        if home and os.path.isdir(os.path.join(home, rel)):
            return True
    return False


def resolve_program(name: str, env: dict[str, str], cwd: str) -> str:
    """execvpe's lookup: a name with '/' is a path (relative to cwd), otherwise
    the first executable regular file in the merged PATH."""
    if "/" in name:
        path = name if os.path.isabs(name) else os.path.join(cwd, name)
        _check_executable(path, name)
        return path
    search = env.get("PATH", os.defpath)
    denied: str | None = None
    for entry in search.split(os.pathsep):
        candidate = os.path.join(entry or cwd, name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        denied = denied or candidate
    if denied is not None:
        raise FailedPrecondition(f"program {name!r} found at {denied!r} but it is not executable")
    raise FailedPrecondition(f"program {name!r} not found in PATH={search!r}")


def _check_executable(path: str, name: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FailedPrecondition(f"program {name!r} not found (looked at {path!r})") from None
    except OSError as e:
        raise FailedPrecondition(f"program {name!r} at {path!r} cannot be examined: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"program {name!r} at {path!r} is a directory")
    if not os.access(path, os.X_OK):
        raise FailedPrecondition(f"program {name!r} at {path!r} is not executable")


def _pythonpath(env: dict[str, str], zygote_env: dict[str, str]) -> list[str] | None:
    value = env.get("PYTHONPATH", "")
    if value == zygote_env.get("PYTHONPATH", "") or value == "":
        return None
    return value.split(os.pathsep)


def python_plan(
    inv: PythonInvocation,
    orig_argv: list[str],
    env: dict[str, str],
    zygote_env: dict[str, str],
    cwd: str,
) -> dict[str, Any]:
    return {
        "kind": "python",
        "cwd": cwd,
        "env": env_changes(env, zygote_env),
        "mode": inv.mode,
        "target": inv.target,
        "argv": inv.argv,
        "orig_argv": orig_argv,
        "unbuffered": inv.unbuffered or bool(env.get("PYTHONUNBUFFERED")),
        "dont_write_bytecode": inv.dont_write_bytecode or bool(env.get("PYTHONDONTWRITEBYTECODE")),
        "safe_path": inv.safe_path,
        "pythonpath": _pythonpath(env, zygote_env),
        "exec_path": sys.executable,
    }


def exec_plan(path: str, argv: list[str], env: dict[str, str], zygote_env: dict[str, str], cwd: str) -> dict[str, Any]:
    return {"kind": "exec", "cwd": cwd, "env": env_changes(env, zygote_env), "path": path, "argv": argv}


def env_changes(env: dict[str, str], zygote_env: dict[str, str]) -> dict[str, str]:
    """What the child sets on top of the environment it inherits from the zygote.
    The Run's env only overrides (never removes), so changes are enough."""
    return {k: v for k, v in env.items() if zygote_env.get(k) != v}


def build_plan(
    spec: StartSpec,
    *,
    cwd: str,
    base_env: dict[str, str],
    zygote_env: dict[str, str],
    script_path: str | None,
    executable: str = sys.executable,
) -> dict[str, Any]:
    env = merged_env(base_env, spec.env)
    warm = warm_compatible(env, zygote_env)
    if isinstance(spec.program, CommandProgram):
        argv = spec.program.argv
        if is_this_interpreter(argv[0], executable):
            inv = parse_python_argv(argv)
            if inv is not None and warm:
                return python_plan(inv, argv, env, zygote_env, cwd)
            # Exec the resolved interpreter itself (never a PATH shim): its
            # argv[0] decides sys.executable, so it is the real path too.
            return exec_plan(executable, [executable, *argv[1:]], env, zygote_env, cwd)
        return exec_plan(resolve_program(argv[0], env, cwd), argv, env, zygote_env, cwd)
    if script_path is None:
        raise ValueError("a Script program needs its file written first")
    args = spec.program.args
    if warm:
        inv = PythonInvocation(mode="file", target=script_path, argv=[script_path, *args])
        return python_plan(inv, [executable, script_path, *args], env, zygote_env, cwd)
    return exec_plan(executable, [executable, script_path, *args], env, zygote_env, cwd)
