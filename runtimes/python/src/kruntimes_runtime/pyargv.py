"""Parses a `python3 ...` command line into what the warm child runs in-process.

Only what can be reproduced exactly in a forked interpreter is accepted (`-c`,
`-m`, a script file; flags -u -B -q -P); anything else returns None and the
server execs the real interpreter instead, so behaviour always matches python3.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Literal

# Flags that only change things the forked child can set itself.
_INPROCESS_FLAGS = frozenset("uBqP")


@dataclass(frozen=True)
class PythonInvocation:
    """What `python3 <options> (-c CODE | -m MODULE | FILE) ARGS` runs."""

    mode: Literal["c", "m", "file"]
    # The code, the module name, or the file path as given.
    target: str
    # sys.argv exactly as CPython sets it before running (for -m runpy then
    # replaces argv[0] with the module's path, as CPython does).
    argv: list[str]
    unbuffered: bool = False
    dont_write_bytecode: bool = False
    safe_path: bool = False


def interpreter_names(executable: str = sys.executable) -> frozenset[str]:
    """Bare program names that mean this runtime's interpreter."""
    major, minor = sys.version_info[:2]
    return frozenset({"python", f"python{major}", f"python{major}.{minor}"})


def is_this_interpreter(argv0: str, executable: str = sys.executable) -> bool:
    """Whether argv[0] names the interpreter the zygote runs.

    A bare name (python, python3, python3.X) means the runtime's interpreter; a
    path must be the interpreter's own path or a sibling python name beside it
    (a venv's bin/python and bin/python3 share its sys.path; another install's
    binary does not, even if it is the same file).
    """
    if "/" not in argv0:
        return argv0 in interpreter_names(executable)
    path = os.path.normpath(argv0)
    if not os.path.isabs(path):
        return False
    bindir = os.path.dirname(executable)
    if os.path.dirname(path) != bindir:
        return False
    return os.path.basename(path) in interpreter_names(executable) | {os.path.basename(executable)}


def parse_python_argv(argv: list[str]) -> PythonInvocation | None:
    """Parse argv (argv[0] is the interpreter); None means "exec python3 instead"."""
    flags: set[str] = set()
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            if i + 1 >= len(argv):
                return None  # interactive / stdin
            return _file(argv[i + 1], argv[i + 2 :], flags)
        if arg == "-" or not arg.startswith("-"):
            if arg == "-":
                return None  # program read from stdin
            return _file(arg, argv[i + 1 :], flags)
        if arg.startswith("--"):
            return None  # --version, --help, --check-hash-based-pycs ...
        j = 1
        while j < len(arg):
            opt = arg[j]
            if opt in "cm":
                rest_of_arg = arg[j + 1 :]
                if rest_of_arg:
                    value, tail = rest_of_arg, argv[i + 1 :]
                elif i + 1 < len(argv):
                    value, tail = argv[i + 1], argv[i + 2 :]
                else:
                    return None  # "Argument expected": let python3 say it
                if opt == "c":
                    return _make("c", value, ["-c", *tail], flags)
                if value == "":
                    return None
                return _make("m", value, ["-m", *tail], flags)
            if opt not in _INPROCESS_FLAGS:
                return None
            flags.add(opt)
            j += 1
        i += 1
    return None  # no program: interactive, reads stdin


def _file(path: str, rest: list[str], flags: set[str]) -> PythonInvocation:
    return _make("file", path, [path, *rest], flags)


def _make(mode: Literal["c", "m", "file"], target: str, argv: list[str], flags: set[str]) -> PythonInvocation:
    return PythonInvocation(
        mode=mode,
        target=target,
        argv=argv,
        unbuffered="u" in flags,
        dont_write_bytecode="B" in flags,
        safe_path="P" in flags,
    )
