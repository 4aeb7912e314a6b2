"""Validation of StartRequest fields: each error names the field, the value and the limit."""

from __future__ import annotations

import pytest

from kruntimes_runtime import limits
from kruntimes_runtime.errors import InvalidArgument
from kruntimes_runtime.proto import pb
from kruntimes_runtime.validation import (
    CommandProgram,
    ScriptProgram,
    validate_execution_id,
    validate_forget,
    validate_grace,
    validate_start,
    validate_working_dir,
)


def req(**kw: object) -> object:
    kw.setdefault("execution_id", "ok-1")
    if "command" not in kw and "script" not in kw:
        kw["command"] = pb.Command(argv=["true"])
    return pb.StartRequest(**kw)


def bad(request: object) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate_start(request)
    return info.value.message


def test_valid_command() -> None:
    spec = validate_start(req(env={"A": "1"}, working_dir="./a//b/", timeout_ms=5))
    assert spec.program == CommandProgram(["true"])
    assert spec.working_dir == "a/b"
    assert spec.env == {"A": "1"}
    assert spec.grace_ms == limits.DEFAULT_GRACE_MS


def test_valid_script_defaults_filename() -> None:
    spec = validate_start(req(script=pb.Script(source=b"print(1)", args=["x"])))
    assert spec.program == ScriptProgram(b"print(1)", ["x"], "script")


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("", "must not be empty"),
        ("x" * 129, "129 bytes, the limit is 128"),
        (".hidden", "must not start with '.'"),
        ("a/b", "[A-Za-z0-9._-]"),
        ("a b", "[A-Za-z0-9._-]"),
        ("é", "[A-Za-z0-9._-]"),
    ],
)
def test_execution_id(value: str, fragment: str) -> None:
    msg = bad(req(execution_id=value))
    assert msg.startswith("execution_id"), msg
    assert fragment in msg


def test_execution_id_max_ok() -> None:
    assert validate_execution_id("a" * 128) == "a" * 128


def test_forget_ids_are_checked_bounded_and_deduplicated() -> None:
    forget = pb.ForgetRequest
    assert validate_forget(forget(execution_id="a", more_execution_ids=["b", "a", "c", "b"])) == ["a", "b", "c"]
    with pytest.raises(InvalidArgument) as info:
        validate_forget(forget(execution_id="a", more_execution_ids=["b", "x/y"]))
    assert info.value.field == "more_execution_ids[1]" and "x/y" in info.value.message
    with pytest.raises(InvalidArgument) as info:
        validate_forget(forget(execution_id=""))
    assert info.value.field == "execution_id"
    many = ["b"] * (limits.FORGET_MAX_IDS - 1)
    assert validate_forget(forget(execution_id="a", more_execution_ids=many)) == ["a", "b"]
    with pytest.raises(InvalidArgument) as info:
        validate_forget(forget(execution_id="a", more_execution_ids=[*many, "c"]))
    assert info.value.field == "more_execution_ids"
    assert "256 ids" in info.value.message and "255" in info.value.message


def test_no_program() -> None:
    assert "set either command or script" in bad(pb.StartRequest(execution_id="x"))


def test_empty_argv() -> None:
    assert "command.argv [] : must not be empty".replace(" :", ":") in bad(req(command=pb.Command(argv=[])))


def test_empty_program_name() -> None:
    assert "command.argv[0] '': must name a program" in bad(req(command=pb.Command(argv=["", "x"])))


def test_too_many_args() -> None:
    msg = bad(req(command=pb.Command(argv=["x"] * 4097)))
    assert "has 4097 entries, the limit is 4096" in msg


def test_argv_env_total_bytes() -> None:
    msg = bad(req(command=pb.Command(argv=["x", "a" * 600_000]), env={"BIG": "b" * 500_000}))
    assert "argv+env" in msg and f"exceeds the limit of {1 << 20}" in msg


def test_nul_in_arg() -> None:
    assert "command.argv[1] 'a\\x00b': contains a NUL byte" in bad(req(command=pb.Command(argv=["x", "a\0b"])))


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"": "v"}, "names must not be empty"),
        ({"A=B": "v"}, "env 'A=B': names must not contain '='"),
        ({"A\0": "v"}, "names must not contain NUL"),
        ({"A": "v\0"}, "env[A] 'v\\x00': values must not contain NUL"),
    ],
)
def test_env(env: dict[str, str], fragment: str) -> None:
    assert fragment in bad(req(env=env))


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("/etc", "must be relative"),
        ("..", "must not contain '..'"),
        ("a/../../b", "must not contain '..'"),
        ("a\0b", "NUL"),
        ("a" * 4097, "the limit is 4096"),
    ],
)
def test_working_dir(value: str, fragment: str) -> None:
    msg = bad(req(working_dir=value))
    assert msg.startswith("working_dir"), msg
    assert fragment in msg


def test_working_dir_dots_are_fine_inside_names() -> None:
    assert validate_working_dir("a..b/./c") == "a..b/c"


def test_script_too_large() -> None:
    msg = bad(req(script=pb.Script(source=b"x" * (limits.SCRIPT_MAX_BYTES + 1))))
    assert f"is {limits.SCRIPT_MAX_BYTES + 1} bytes, the limit is {limits.SCRIPT_MAX_BYTES}" in msg


@pytest.mark.parametrize("name", ["a/b", "..", ".", "x\0y", "n" * 256])
def test_script_filename(name: str) -> None:
    msg = bad(req(script=pb.Script(source=b"", filename=name)))
    assert msg.startswith("script.filename"), msg


def test_timeout_bound() -> None:
    msg = bad(req(timeout_ms=limits.TIMEOUT_MAX_MS + 1))
    assert f"exceeds the limit of {limits.TIMEOUT_MAX_MS} ms" in msg


def test_grace_bound() -> None:
    assert validate_grace(0, "grace_period_ms") == limits.DEFAULT_GRACE_MS
    with pytest.raises(InvalidArgument, match="grace_period_ms 3600001: exceeds the limit of 3600000 ms"):
        validate_grace(3_600_001, "grace_period_ms")
