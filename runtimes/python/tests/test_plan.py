"""Plan building: warm in-process Python vs exec, and program resolution."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kruntimes_runtime.errors import FailedPrecondition
from kruntimes_runtime.plan import build_plan, resolve_program, warm_compatible
from kruntimes_runtime.validation import CommandProgram, ScriptProgram, StartSpec

BASE = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def plan(program: object, env: dict[str, str] | None = None) -> dict[str, object]:
    spec = StartSpec("p1", program, env or {})  # type: ignore[arg-type]
    return build_plan(spec, cwd="/tmp", base_env=BASE, zygote_env=BASE, script_path="/ws/.scripts/p1/s.py")


def test_python_c_runs_in_process() -> None:
    p = plan(CommandProgram(["python3", "-c", "print(1)", "a"]), {"X": "1", "HOME": "/root"})
    assert p["kind"] == "python" and p["mode"] == "c"
    assert p["argv"] == ["-c", "a"]
    assert p["env"] == {"X": "1"}  # only what differs from the inherited env


def test_script_runs_in_process() -> None:
    p = plan(ScriptProgram(b"", ["a"], "s.py"))
    assert p["kind"] == "python" and p["mode"] == "file"
    assert p["argv"] == ["/ws/.scripts/p1/s.py", "a"]


def test_unsupported_flag_execs_the_real_interpreter() -> None:
    p = plan(CommandProgram(["python3", "-X", "dev", "-c", "1"]))
    assert p["kind"] == "exec"
    assert p["path"] == sys.executable  # never a PATH shim
    assert p["argv"] == [sys.executable, "-X", "dev", "-c", "1"]


@pytest.mark.parametrize("var", ["PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONNOUSERSITE", "LC_ALL", "LANG"])
def test_startup_env_forces_exec(var: str) -> None:
    env = dict(BASE, **{var: "1"})
    assert not warm_compatible(env, BASE)
    assert plan(CommandProgram(["python3", "-c", "1"]), {var: "1"})["kind"] == "exec"
    assert plan(ScriptProgram(b"", [], "s.py"), {var: "1"})["kind"] == "exec"


def test_emulated_env_stays_warm() -> None:
    env = {"PYTHONPATH": "lib", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    p = plan(CommandProgram(["python3", "-c", "1"]), env)
    assert p["kind"] == "python"
    assert p["pythonpath"] == ["lib"] and p["unbuffered"] and p["dont_write_bytecode"]


def test_other_programs_exec_resolved(tmp_path: Path) -> None:
    p = plan(CommandProgram(["sh", "-c", "true"]))
    assert p["kind"] == "exec" and p["path"] in ("/usr/bin/sh", "/bin/sh")


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"program 'nope-x' not found in PATH='/nonexistent'"):
        resolve_program("nope-x", {"PATH": "/nonexistent"}, str(tmp_path))
    (tmp_path / "plain").write_text("x")
    with pytest.raises(FailedPrecondition, match=r"found at .*plain' but it is not executable"):
        resolve_program("plain", {"PATH": str(tmp_path)}, str(tmp_path))
    with pytest.raises(FailedPrecondition, match=r"program './plain' at '.*plain' is not executable"):
        resolve_program("./plain", {}, str(tmp_path))
    with pytest.raises(FailedPrecondition, match="is a directory"):
        resolve_program(str(tmp_path), {}, str(tmp_path))
    with pytest.raises(FailedPrecondition, match=r"looked at '/no/such'"):
        resolve_program("/no/such", {}, str(tmp_path))
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert resolve_program("tool", {"PATH": f"/nonexistent:{tmp_path}"}, "/") == str(exe)
    assert resolve_program("./tool", {}, str(tmp_path)) == os.path.join(str(tmp_path), "./tool")
