"""Jupyter-kernel baseline for kruntimes-bench.

Starts an ipykernel (running THIS interpreter) with jupyter_client and times
`print(1)`: from sending the execute request until the kernel reports idle on
iopub for it. Prints one JSON line: {"ok": true, "p50_ms", "p90_ms", "n", ...}
or {"ok": false, "error": "..."} when the kernel cannot be used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

MAX_ITERATIONS = 100_000
MAX_WARMUP = 10_000


def emit(doc: dict) -> None:
    print(json.dumps(doc), flush=True)


def percentile(xs: list[float], p: float) -> float:
    """Nearest rank, as the Rust side computes it."""
    s = sorted(xs)
    rank = math.ceil(p / 100.0 * len(s))
    return s[min(max(rank, 1), len(s)) - 1]


def one(kc, timeout: float) -> float:
    start = time.perf_counter()
    msg_id = kc.execute("print(1)")
    text = ""
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "stream":
            text += content.get("text", "")
        elif kind == "error":
            raise RuntimeError(f"kernel error: {content.get('ename')}: {content.get('evalue')}")
        elif kind == "status" and content.get("execution_state") == "idle":
            break
    elapsed = time.perf_counter() - start
    # The shell reply is not part of the figure, but must not pile up.
    kc.get_shell_msg(timeout=timeout)
    if text != "1\n":
        raise RuntimeError(f"kernel printed {text!r}, expected '1\\n'")
    return elapsed * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per message")
    a = ap.parse_args()
    if not 1 <= a.iterations <= MAX_ITERATIONS:
        emit({"ok": False, "error": f"--iterations {a.iterations} must be in 1..={MAX_ITERATIONS}"})
        return 2
    if not 0 <= a.warmup <= MAX_WARMUP:
        emit({"ok": False, "error": f"--warmup {a.warmup} must be in 0..={MAX_WARMUP}"})
        return 2
    try:
        import ipykernel
        import jupyter_client
    except ImportError as e:
        emit({
            "ok": False,
            "error": f"{e} in {sys.executable} (pip install jupyter_client ipykernel, "
            "or create the venv with KRUNTIMES_VENV_EXTRAS=dev,bench)",
        })
        return 0

    with tempfile.TemporaryDirectory(prefix="kruntimes-bench-jupyter-") as d:
        # A kernel spec of our own: a user-level "python3" spec could point
        # at another interpreter (or a shim).
        spec_dir = os.path.join(d, "kernels", "kruntimes-bench")
        os.makedirs(spec_dir)
        with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
            json.dump({
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "kruntimes bench",
                "language": "python",
            }, f)
        os.environ["JUPYTER_PATH"] = d
        os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(d, "runtime")

        from jupyter_client.manager import KernelManager

        km = KernelManager(kernel_name="kruntimes-bench")
        km.start_kernel()
        kc = km.client()
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            samples = []
            for i in range(a.warmup + a.iterations):
                ms = one(kc, a.timeout)
                if i >= a.warmup:
                    samples.append(ms)
        except Exception as e:  # noqa: BLE001 - reported to the bench, which continues
            emit({"ok": False, "error": f"{type(e).__name__}: {e}"})
            return 0
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)

    emit({
        "ok": True,
        "p50_ms": percentile(samples, 50),
        "p90_ms": percentile(samples, 90),
        "n": len(samples),
        "python": sys.executable,
        "ipykernel": ipykernel.__version__,
        "jupyter_client": jupyter_client.__version__,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
