"""Parsing of `python3 ...` command lines for the in-process warm path."""

from __future__ import annotations

import sys

import pytest

from kruntimes_runtime.pyargv import PythonInvocation, is_this_interpreter, parse_python_argv


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["python3", "-c", "print(1)"], PythonInvocation("c", "print(1)", ["-c"])),
        (["python3", "-c", "x", "a", "-b"], PythonInvocation("c", "x", ["-c", "a", "-b"])),
        (["python3", "-cprint(2)", "z"], PythonInvocation("c", "print(2)", ["-c", "z"])),
        (["python3", "-uc", "x"], PythonInvocation("c", "x", ["-c"], unbuffered=True)),
        (
            ["python3", "-u", "-B", "-c", "x"],
            PythonInvocation("c", "x", ["-c"], unbuffered=True, dont_write_bytecode=True),
        ),
        (["python3", "-m", "json.tool", "f"], PythonInvocation("m", "json.tool", ["-m", "f"])),
        (["python3", "-mjson.tool"], PythonInvocation("m", "json.tool", ["-m"])),
        (["python3", "-P", "-m", "mod"], PythonInvocation("m", "mod", ["-m"], safe_path=True)),
        (["python3", "main.py", "-c", "x"], PythonInvocation("file", "main.py", ["main.py", "-c", "x"])),
        (["python3", "-q", "--", "-odd.py", "a"], PythonInvocation("file", "-odd.py", ["-odd.py", "a"])),
    ],
)
def test_in_process(argv: list[str], expected: PythonInvocation) -> None:
    assert parse_python_argv(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["python3"],  # interactive / stdin
        ["python3", "-"],
        ["python3", "-c"],  # "Argument expected": python3 itself says so
        ["python3", "-m"],
        ["python3", "-I", "-c", "x"],
        ["python3", "-E", "x.py"],
        ["python3", "-S", "x.py"],
        ["python3", "-O", "-c", "x"],
        ["python3", "-W", "error", "-c", "x"],
        ["python3", "-X", "dev", "-c", "x"],
        ["python3", "-ic", "x"],
        ["python3", "--version"],
        ["python3", "--"],
    ],
)
def test_falls_back_to_exec(argv: list[str]) -> None:
    assert parse_python_argv(argv) is None


def test_interpreter_names() -> None:
    exe = sys.executable
    major, minor = sys.version_info[:2]
    for name in ("python", "python3", f"python{major}.{minor}", exe):
        assert is_this_interpreter(name, exe), name
    assert not is_this_interpreter("python2", exe)
    assert not is_this_interpreter("bash", exe)
    assert not is_this_interpreter("/usr/bin/python3-other", exe)
    assert not is_this_interpreter("bin/python3", exe)  # relative path: another file
    assert not is_this_interpreter("/elsewhere/python3", exe)
