"""Assembles and runs the server: subreaper, Runtime (zygote), the gRPC services
(RuntimeServer + grpc.health.v1) on a private Unix socket (mode 0600) or a
loopback port, and graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import service
from .config import ConfigError, ListenAddress, ServerConfig
from .runtime import Runtime
from .subreaper import become_subreaper

log = logging.getLogger(__name__)

SERVICE_NAME = "kruntimes.runtime.v1.RuntimeServer"


def _prepare_unix_socket(path: str) -> None:
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ConfigError(f"--listen unix:{path}: directory {parent!r} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"--listen unix:{path}: path exists and is not a socket")
    os.unlink(path)  # stale socket from a previous run


def _bind(server: grpc.aio.Server, listen: ListenAddress) -> str:
    if listen.unix_path is not None:
        _prepare_unix_socket(listen.unix_path)
        # The socket must never be reachable by other users, not even briefly.
        old = os.umask(0o177)
        try:
            server.add_insecure_port(listen.grpc_target())
        finally:
            os.umask(old)
        os.chmod(listen.unix_path, 0o600)
        return listen.grpc_target()
    try:
        port = server.add_insecure_port(listen.grpc_target())
    except RuntimeError as e:
        raise ConfigError(f"--listen {listen.grpc_target()}: cannot bind: {e}") from None
    host = f"[{listen.host}]" if listen.host and ":" in listen.host else listen.host
    return f"{host}:{port}"


async def serve(config: ServerConfig, env: dict[str, str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; `env` is the Runs' base environment
    (default: this process's)."""
    loop = asyncio.get_running_loop()
    become_subreaper()
    runtime = Runtime(config.runtime, env)
    await runtime.start()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service.add_to_server(runtime, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        address = _bind(server, config.listen)
    except BaseException:
        await runtime.stop(0)
        raise
    await server.start()
    # Remembered so shutdown removes only our own socket file, not one a
    # successor server has bound at the same path meanwhile.
    socket_id = _file_id(config.listen.unix_path) if config.listen.unix_path else None

    async def set_health(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, status)

    await set_health(True)
    health_tasks: set[asyncio.Task[None]] = set()

    def on_ready_change(ready: bool) -> None:
        task = asyncio.ensure_future(set_health(ready))
        health_tasks.add(task)
        task.add_done_callback(health_tasks.discard)

    # While the zygote is being restarted the server cannot run work.
    runtime.on_ready_change = on_ready_change
    # A single line runtimed and tests can wait for.
    print(f"kruntimes-python-runtime listening on {address}", file=sys.stderr, flush=True)
    log.info("workspace %s, max executions %d", runtime.root, config.runtime.max_executions)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await health_servicer.enter_graceful_shutdown()
    stopping = asyncio.ensure_future(server.stop(grace=config.shutdown_grace_ms / 1000 + 3))
    await runtime.stop(config.shutdown_grace_ms)
    await stopping
    if config.listen.unix_path is not None and socket_id is not None:
        if _file_id(config.listen.unix_path) == socket_id:
            try:
                os.unlink(config.listen.unix_path)
            except FileNotFoundError:
                pass
    log.info("stopped")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)
