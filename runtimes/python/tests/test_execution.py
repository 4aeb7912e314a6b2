"""Execution's Attach stream, driven directly (no server, no zygote)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from kruntimes_runtime import limits
from kruntimes_runtime.execution import Execution
from kruntimes_runtime.validation import CommandProgram, StartSpec


def test_output_waits_for_an_exit_reported_before_the_pipes_eof(monkeypatch: pytest.MonkeyPatch) -> None:
    """The zygote's report of the leader's exit may be read before the EOF
    of its pipes: the output still waits for the final exit and both travel
    in one batch. (A long linger, so the test does not depend on timing.)"""
    monkeypatch.setattr(limits, "OUTPUT_LINGER_S", 30.0)

    async def scenario() -> list[list[str]]:
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        spec = StartSpec("e1", CommandProgram(["true"]))
        ex = Execution(loop, spec, out_r, err_r, 1 << 20, lambda pid, sig: None)
        ex.begin(os.getpid(), time.time_ns())
        os.write(out_w, b"1\n")
        ex.on_leader_exit({"code": 0, "time_ns": time.time_ns()})
        events = ex.attach(0, 0)
        first = asyncio.ensure_future(events.__anext__())
        # The output is read and the exit is known, but not final yet.
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not first.done(), [e.WhichOneof("event") for e in first.result()]
        os.close(out_w)
        os.close(err_w)
        batches = [await asyncio.wait_for(first, 10)]
        async for batch in events:
            batches.append(batch)
        return [[e.WhichOneof("event") for e in b] for b in batches]

    assert asyncio.run(scenario()) == [["output", "exited"]]


def test_a_cancel_by_the_stopping_server_says_so() -> None:
    """Executions the server cancels because it is stopping end `cancelled`
    with a message naming why; a later cancel does not change the reason."""

    async def scenario() -> tuple[object, list[tuple[int, int]]]:
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        sent: list[tuple[int, int]] = []
        spec = StartSpec("e2", CommandProgram(["sleep", "30"]))
        ex = Execution(loop, spec, out_r, err_r, 1 << 20, lambda pid, sig: sent.append((pid, sig)))
        ex.begin(4242, time.time_ns())
        ex.cancel(60_000, server_stopping=True)
        ex.cancel(60_000)
        ex.on_leader_exit({"signal": 15, "time_ns": time.time_ns()})
        os.close(out_w)
        os.close(err_w)
        await asyncio.wait_for(ex.wait(), 10)
        return ex.exit, sent

    exit_msg, sent = asyncio.run(scenario())
    assert sent and sent[0] == (4242, 15), sent
    assert exit_msg.cancelled and not exit_msg.timed_out
    assert "cancelled (the runtime server stopped)" in exit_msg.message, exit_msg.message
