"""Quick benchmark of the python Runtime Server's warm path (not a test).

Starts a server, then alternates: Start→Exited of `python3 -c 'print(1)'`
through the server over its Unix socket, and the same command run cold with
the same interpreter. Prints the p50 of each and the ratio (goal: <= 0.25).
The client here is Python gRPC, whose own CPU cost is included in the warm
figure; runtimed (Rust) is a lighter client.

    $(scripts/venv.sh) scripts/bench_warm.py [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from kruntimes_runtime.proto import pb, pb_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="krt-bench-") as tmp:
        sock = Path(tmp) / "rt.sock"
        log = Path(tmp) / "server.log"
        with open(log, "wb") as logf:
            server = subprocess.Popen(
                [sys.executable, "-m", "kruntimes_runtime", "--listen", f"unix:{sock}", "--workspace", f"{tmp}/ws"],
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
            with grpc.insecure_channel(f"unix:{sock}") as channel:
                stub = pb_grpc.RuntimeServerStub(channel)
                warm, cold = [], []
                for i in range(args.runs + 5):
                    w, c = warm_run(stub, f"bench-{i}"), cold_run()
                    if i >= 5:
                        warm.append(w)
                        cold.append(c)
            w50, c50 = statistics.median(warm) * 1e3, statistics.median(cold) * 1e3
            print(
                f"python Run print(1) warm p50 {w50:.2f} ms   cold python3 -c p50 {c50:.2f} ms   ratio {w50 / c50:.3f}"
            )
        finally:
            server.terminate()
            server.wait(60)
    return 0


def warm_run(stub: pb_grpc.RuntimeServerStub, execution_id: str) -> float:
    t0 = time.perf_counter()
    stub.Start(pb.StartRequest(execution_id=execution_id, command=pb.Command(argv=["python3", "-c", "print(1)"])))
    out = b""
    for event in stub.Attach(pb.AttachRequest(execution_id=execution_id)):
        if event.HasField("output"):
            out += event.output.data
    elapsed = time.perf_counter() - t0
    stub.Forget(pb.ForgetRequest(execution_id=execution_id))
    assert out == b"1\n", out
    return elapsed


def cold_run() -> float:
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", "print(1)"], stdout=subprocess.PIPE, check=True)
    elapsed = time.perf_counter() - t0
    assert result.stdout == b"1\n"
    return elapsed


if __name__ == "__main__":
    sys.exit(main())
