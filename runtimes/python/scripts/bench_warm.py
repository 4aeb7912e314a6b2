"""Benchmark of the python Runtime Server's warm path (a program, not a test).

Starts a server, then alternates: a trivial Run (`python3 -c 'print(1)'`)
through the server over its Unix socket — one Start stream read until Exited,
as runtimed does — and the same command run cold with the same interpreter.
Prints p50/p90 of each, the ratio (goal: <= 0.25), and the CPU time the
server and its zygote spent per Run (over the whole loop, Forget included;
the Run's own process is not counted). The client here is Python gRPC (its
own CPU cost is in the warm wall time; runtimed is a lighter client).

    $(scripts/venv.sh) scripts/bench_warm.py [--runs 200] [--server-arg=--flag ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from kruntimes_runtime.proto import pb, pb_grpc

WARMUP = 10
# USER_HZ, fixed at 100 by the Linux ABI.
TICK_MS = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for the server")
    args = parser.parse_args()
    if not 1 <= args.runs <= 100_000:
        parser.error(f"--runs {args.runs}: must be 1..100000")
    with tempfile.TemporaryDirectory(prefix="krt-bench-") as tmp:
        sock = Path(tmp) / "rt.sock"
        log = Path(tmp) / "server.log"
        with open(log, "wb") as logf:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kruntimes_runtime",
                    "--listen",
                    f"unix:{sock}",
                    "--workspace",
                    f"{tmp}/ws",
                    *args.server_arg,
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
            )
        try:
            deadline = time.monotonic() + 60
            while b"listening on" not in log.read_bytes():
                if server.poll() is not None or time.monotonic() > deadline:
                    print(log.read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.05)
            zygote = _zygote_pid(server.pid)
            with grpc.insecure_channel(f"unix:{sock}") as channel:
                stub = pb_grpc.RuntimeServerStub(channel)
                for i in range(WARMUP):
                    warm_run(stub, f"warmup-{i}")
                    cold_run()
                warm, cold = [], []
                cpu0 = (_cpu_ms(server.pid), _cpu_ms(zygote))
                for i in range(args.runs):
                    warm.append(warm_run(stub, f"bench-{i}"))
                    # A cold run's own CPU (a child of this client) lands on
                    # neither the server nor the zygote.
                    cold.append(cold_run())
                cpu1 = (_cpu_ms(server.pid), _cpu_ms(zygote))
            _report(warm, cold, args.runs, cpu0, cpu1)
        finally:
            server.terminate()
            server.wait(60)
    return 0


def _report(
    warm: list[float], cold: list[float], runs: int, cpu0: tuple[float, float], cpu1: tuple[float, float]
) -> None:
    def pct(xs: list[float], q: int) -> float:
        return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] * 1e3 if len(xs) > 1 else xs[0] * 1e3

    w50, w90 = pct(warm, 50), pct(warm, 90)
    c50, c90 = pct(cold, 50), pct(cold, 90)
    print(f"runs {runs} (after {WARMUP} warm-up), load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    print(f"warm Run print(1), Start stream until Exited: p50 {w50:.2f} ms  p90 {w90:.2f} ms")
    print(f"cold python3 -c 'print(1)':                   p50 {c50:.2f} ms  p90 {c90:.2f} ms")
    print(f"ratio warm/cold p50 {w50 / c50:.3f}  (goal <= 0.25)")
    server_ms = (cpu1[0] - cpu0[0]) / runs
    zygote_ms = (cpu1[1] - cpu0[1]) / runs
    print(f"CPU per Run (avg of {runs}, {TICK_MS:g} ms ticks): server {server_ms:.2f} ms, zygote {zygote_ms:.2f} ms")


def warm_run(stub: Any, execution_id: str) -> float:
    request = pb.StartRequest(execution_id=execution_id, command=pb.Command(argv=["python3", "-c", "print(1)"]))
    t0 = time.perf_counter()
    out = b""
    events = stub.Start(request)
    first = next(events)
    assert first.HasField("started"), first
    exited = None
    for event in events:
        if event.HasField("output"):
            out += event.output.data
        elif event.HasField("exited"):
            exited = event.exited
    elapsed = time.perf_counter() - t0
    stub.Forget(pb.ForgetRequest(execution_id=execution_id))
    assert out == b"1\n" and exited is not None and exited.code == 0, (out, exited)
    return elapsed


def cold_run() -> float:
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", "print(1)"], stdout=subprocess.PIPE, check=True)
    elapsed = time.perf_counter() - t0
    assert result.stdout == b"1\n"
    return elapsed


def _zygote_pid(server: int) -> int:
    """The server's one direct child (the zygote)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == server:
                    kids.append(int(entry))
        if len(kids) == 1:
            return kids[0]
        time.sleep(0.05)
    raise RuntimeError(f"server {server} has no single child (the zygote)")


def _cpu_ms(pid: int) -> float:
    """user + system CPU of `pid` (all its threads, exited ones included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS


if __name__ == "__main__":
    sys.exit(main())
