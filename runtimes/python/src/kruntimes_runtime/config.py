"""Command line and environment configuration of the server, validated with
errors that name the option, the value and the limit."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from dataclasses import dataclass

from . import limits
from .runtime import RuntimeConfig

_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_UNIX_PATH_MAX = 107


class ConfigError(Exception):
    """Bad configuration: the message names the option, the value and the limit."""


@dataclass(frozen=True)
class ListenAddress:
    """Either a Unix socket path or a loopback host:port."""

    unix_path: str | None = None
    host: str | None = None
    port: int = 0

    def grpc_target(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ServerConfig:
    listen: ListenAddress
    runtime: RuntimeConfig
    shutdown_grace_ms: int


def parse_listen(value: str) -> ListenAddress:
    """`unix:/path` (or unix:///path, unix:relative) or `127.0.0.1:PORT`,
    `[::1]:PORT`, `localhost:PORT`; never a non-loopback address."""
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigError(f"--listen {value!r}: empty Unix socket path")
        path = os.path.abspath(path)
        if len(path.encode()) > _UNIX_PATH_MAX:
            raise ConfigError(
                f"--listen {value!r}: Unix socket path is {len(path.encode())} bytes, the limit is {_UNIX_PATH_MAX}"
            )
        return ListenAddress(unix_path=path)
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"--listen {value!r}: expected unix:/path or 127.0.0.1:PORT")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"--listen {value!r}: port {port} exceeds 65535")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(
                f"--listen {value!r}: host {host!r} is not a loopback address; the Runtime Server "
                "listens only on 127.0.0.1/::1 or a Unix socket"
            )
    return ListenAddress(host=host, port=port)


def parse_preload(value: str) -> list[str]:
    modules = [m.strip() for m in value.split(",") if m.strip()]
    for name in modules:
        if not _MODULE_RE.fullmatch(name):
            raise ConfigError(f"--preload: {name!r} is not a module name")
    if len(modules) > 1000:
        raise ConfigError(f"--preload: {len(modules)} modules, the limit is 1000")
    return modules


def _bounded(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ConfigError(f"{name} {value}: must be between {low} and {high}")
    return value


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m kruntimes_runtime",
        description="kruntimes python Runtime Server (warm zygote, one fork per execution)",
    )
    p.add_argument(
        "--listen", default=env("KRUNTIMES_LISTEN"), help="unix:/path or 127.0.0.1:PORT (env KRUNTIMES_LISTEN)"
    )
    p.add_argument("--workspace", default=env("KRUNTIMES_WORKSPACE"), help="workspace root (env KRUNTIMES_WORKSPACE)")
    p.add_argument(
        "--max-executions",
        type=int,
        default=int(env("KRUNTIMES_MAX_EXECUTIONS", limits.DEFAULT_MAX_EXECUTIONS)),
        help=f"concurrent executions accepted (default {limits.DEFAULT_MAX_EXECUTIONS})",
    )
    p.add_argument(
        "--max-retained",
        type=int,
        default=limits.DEFAULT_MAX_RETAINED,
        help=f"executions held until Forget, running or finished (default {limits.DEFAULT_MAX_RETAINED})",
    )
    p.add_argument(
        "--buffer-bytes",
        type=int,
        default=limits.DEFAULT_BUFFER_BYTES,
        help=f"output buffer per stream (default {limits.DEFAULT_BUFFER_BYTES})",
    )
    p.add_argument(
        "--preload",
        default=env("KRUNTIMES_PYTHON_PRELOAD", ""),
        help="comma-separated modules the zygote imports (env KRUNTIMES_PYTHON_PRELOAD)",
    )
    p.add_argument("--shutdown-grace-ms", type=int, default=2000, help="grace for executions on SIGTERM")
    return p


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    args = build_parser().parse_args(argv)
    if not args.listen:
        raise ConfigError("--listen (or KRUNTIMES_LISTEN) is required")
    if not args.workspace:
        raise ConfigError("--workspace (or KRUNTIMES_WORKSPACE) is required")
    listen = parse_listen(args.listen)
    runtime = RuntimeConfig(
        workspace=os.path.abspath(args.workspace),
        buffer_bytes=_bounded("--buffer-bytes", args.buffer_bytes, limits.BUFFER_MIN_BYTES, limits.BUFFER_MAX_BYTES),
        max_executions=_bounded("--max-executions", args.max_executions, 1, limits.MAX_EXECUTIONS_LIMIT),
        max_retained=_bounded("--max-retained", args.max_retained, 1, 1_000_000),
        preload=parse_preload(args.preload),
    )
    if runtime.max_retained < runtime.max_executions:
        raise ConfigError(
            f"--max-retained {runtime.max_retained}: must be at least --max-executions ({runtime.max_executions})"
        )
    grace = _bounded("--shutdown-grace-ms", args.shutdown_grace_ms, 0, limits.GRACE_MAX_MS)
    return ServerConfig(listen=listen, runtime=runtime, shutdown_grace_ms=grace)
