"""Validation of client requests into typed specs; every error names the field,
the value and the limit (raised as `InvalidArgument`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import limits
from .errors import InvalidArgument


@dataclass(frozen=True)
class CommandProgram:
    """Run argv directly (argv[0] resolved through the merged PATH)."""

    argv: list[str]


@dataclass(frozen=True)
class ScriptProgram:
    """Run `source` as `python3 FILE ARGS`."""

    source: bytes
    args: list[str]
    filename: str


Program = CommandProgram | ScriptProgram


@dataclass(frozen=True)
class StartSpec:
    """A validated StartRequest."""

    execution_id: str
    program: Program
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    timeout_ms: int = 0
    grace_ms: int = limits.DEFAULT_GRACE_MS


def validate_execution_id(value: str, name: str = "execution_id") -> str:
    if not value:
        raise InvalidArgument(name, value, "must not be empty")
    size = len(value.encode())
    if size > limits.EXECUTION_ID_MAX:
        raise InvalidArgument(name, value, f"is {size} bytes, the limit is {limits.EXECUTION_ID_MAX}")
    if not limits.EXECUTION_ID_RE.fullmatch(value):
        raise InvalidArgument(name, value, "may contain only [A-Za-z0-9._-]")
    if value.startswith("."):
        raise InvalidArgument(name, value, "must not start with '.'")
    return value


def validate_forget(request: Any) -> list[str]:
    """A Forget's ids (`execution_id`, then `more_execution_ids`), each
    checked, repeats dropped, in request order."""
    more = list(request.more_execution_ids)
    if len(more) >= limits.FORGET_MAX_IDS:
        raise InvalidArgument(
            "more_execution_ids",
            f"{len(more)} ids",
            f"too many: at most {limits.FORGET_MAX_IDS - 1} ids in one Forget",
        )
    ids = [validate_execution_id(request.execution_id)]
    for i, value in enumerate(more):
        validate_execution_id(value, f"more_execution_ids[{i}]")
        if value not in ids:
            ids.append(value)
    return ids


def validate_grace(ms: int, name: str) -> int:
    """A grace period in ms; 0 means the default."""
    if ms == 0:
        return limits.DEFAULT_GRACE_MS
    if ms > limits.GRACE_MAX_MS:
        raise InvalidArgument(name, ms, f"exceeds the limit of {limits.GRACE_MAX_MS} ms")
    return ms


def _check_arg(name: str, value: str) -> int:
    """Size of one argument with its terminator; rejects NUL."""
    if "\0" in value:
        raise InvalidArgument(name, value, "contains a NUL byte")
    return len(value.encode()) + 1


def validate_working_dir(value: str) -> str:
    """Normalized relative path (no '..', not absolute); "" is the execution dir."""
    name = "working_dir"
    size = len(value.encode())
    if size > limits.WORKING_DIR_MAX_BYTES:
        raise InvalidArgument(name, value, f"is {size} bytes, the limit is {limits.WORKING_DIR_MAX_BYTES}")
    if "\0" in value:
        raise InvalidArgument(name, value, "contains a NUL byte")
    if value.startswith("/"):
        raise InvalidArgument(name, value, "must be relative to the execution directory, not absolute")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(name, value, "must not contain '..'")
    return "/".join(parts)


def validate_filename(value: str) -> str:
    name = "script.filename"
    if value == "":
        return "script"
    size = len(value.encode())
    if size > limits.FILENAME_MAX_BYTES:
        raise InvalidArgument(name, value, f"is {size} bytes, the limit is {limits.FILENAME_MAX_BYTES}")
    if "/" in value or "\0" in value or value in (".", ".."):
        raise InvalidArgument(name, value, "must be a single path component")
    return value


def _validate_env(env: dict[str, str]) -> int:
    total = 0
    for key, val in env.items():
        if key == "":
            raise InvalidArgument("env", key, "names must not be empty")
        if "=" in key:
            raise InvalidArgument("env", key, "names must not contain '='")
        if "\0" in key:
            raise InvalidArgument("env", key, "names must not contain NUL")
        if "\0" in val:
            raise InvalidArgument(f"env[{key}]", val, "values must not contain NUL")
        total += len(key.encode()) + len(val.encode()) + 2
    return total


def validate_start(req: object) -> StartSpec:
    """Validate a `StartRequest` message."""
    execution_id = validate_execution_id(req.execution_id)  # type: ignore[attr-defined]
    which = req.WhichOneof("program")  # type: ignore[attr-defined]
    total = 0
    program: Program
    if which == "command":
        argv = list(req.command.argv)  # type: ignore[attr-defined]
        if not argv:
            raise InvalidArgument("command.argv", argv, "must not be empty")
        if len(argv) > limits.ARGV_MAX_ENTRIES:
            raise InvalidArgument(
                "command.argv",
                argv,
                f"has {len(argv)} entries, the limit is {limits.ARGV_MAX_ENTRIES}",
            )
        if argv[0] == "":
            raise InvalidArgument("command.argv[0]", argv[0], "must name a program")
        for i, arg in enumerate(argv):
            total += _check_arg(f"command.argv[{i}]", arg)
        program = CommandProgram(argv)
    elif which == "script":
        script = req.script  # type: ignore[attr-defined]
        source = bytes(script.source)
        if len(source) > limits.SCRIPT_MAX_BYTES:
            raise InvalidArgument(
                "script.source",
                f"<{len(source)} bytes>",
                f"is {len(source)} bytes, the limit is {limits.SCRIPT_MAX_BYTES}",
            )
        args = list(script.args)
        if len(args) + 2 > limits.ARGV_MAX_ENTRIES:
            raise InvalidArgument(
                "script.args",
                args,
                f"has {len(args)} entries, the limit is {limits.ARGV_MAX_ENTRIES - 2}",
            )
        for i, arg in enumerate(args):
            total += _check_arg(f"script.args[{i}]", arg)
        program = ScriptProgram(source, args, validate_filename(script.filename))
    else:
        raise InvalidArgument("program", None, "set either command or script")
    env = dict(req.env)  # type: ignore[attr-defined]
    total += _validate_env(env)
    if total > limits.ARGV_ENV_MAX_BYTES:
        raise InvalidArgument(
            "argv+env",
            f"<{total} bytes>",
            f"total {total} bytes exceeds the limit of {limits.ARGV_ENV_MAX_BYTES}",
        )
    working_dir = validate_working_dir(req.working_dir)  # type: ignore[attr-defined]
    timeout_ms = int(req.timeout_ms)  # type: ignore[attr-defined]
    if timeout_ms > limits.TIMEOUT_MAX_MS:
        raise InvalidArgument("timeout_ms", timeout_ms, f"exceeds the limit of {limits.TIMEOUT_MAX_MS} ms")
    grace_ms = validate_grace(int(req.grace_period_ms), "grace_period_ms")  # type: ignore[attr-defined]
    return StartSpec(execution_id, program, env, working_dir, timeout_ms, grace_ms)
