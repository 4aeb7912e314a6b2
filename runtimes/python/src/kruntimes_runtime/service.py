"""gRPC service `kruntimes.runtime.v1.RuntimeServer`: decodes requests, calls the
Runtime, and maps every error to its status in one place (`_guard`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from .errors import ServerError, grpc_code
from .execution import batch_message, timestamp
from .proto import pb, pb_grpc
from .runtime import Runtime
from .validation import validate_execution_id, validate_forget, validate_grace, validate_start

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _guard(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`; a ServerError aborts the RPC with its code and message."""
    try:
        return await call()
    except ServerError as e:
        await context.abort(grpc_code(e), e.message)
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        raise
    except Exception as e:
        log.exception("internal error")
        await context.abort(grpc_code(e), f"internal error: {type(e).__name__}: {e}")
    raise AssertionError("unreachable")  # context.abort always raises


class RuntimeService(pb_grpc.RuntimeServerServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Handshake(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await _guard(context, self.runtime.handshake)

    async def Start(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Started, then what an Attach from 0/0 gives. The execution does not
        depend on this call: if the client goes away, only the writing stops."""

        async def call() -> None:
            spec = validate_start(request)
            execution, events = await self.runtime.start_execution(spec)
            started = pb.Started(pid=execution.pid, started_at=timestamp(execution.started_ns))
            await context.write(pb.ExecutionEvent(started=started))
            async for batch in events:
                await context.write(batch_message(batch))

        await _guard(context, call)

    async def Attach(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        async def call() -> None:
            validate_execution_id(request.execution_id)
            execution = self.runtime.get(request.execution_id)
            events: AsyncIterator[list[Any]] = execution.attach(request.stdout_offset, request.stderr_offset)
            async for batch in events:
                await context.write(batch_message(batch))

        await _guard(context, call)

    async def Cancel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            validate_execution_id(request.execution_id)
            grace = validate_grace(request.grace_period_ms, "grace_period_ms")
            self.runtime.cancel(request.execution_id, grace)
            return pb.CancelResponse()

        return await _guard(context, call)

    async def Status(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            validate_execution_id(request.execution_id)
            return self.runtime.get(request.execution_id).status()

        return await _guard(context, call)

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            return pb.ListResponse(executions=self.runtime.list())

        return await _guard(context, call)

    async def Forget(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.runtime.forget(validate_forget(request))
            return pb.ForgetResponse()

        return await _guard(context, call)


def add_to_server(runtime: Runtime, server: grpc.aio.Server) -> RuntimeService:
    service = RuntimeService(runtime)
    pb_grpc.add_RuntimeServerServicer_to_server(service, server)
    return service
