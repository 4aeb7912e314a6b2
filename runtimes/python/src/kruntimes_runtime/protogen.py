"""Generates the gRPC/protobuf stubs of the Runtime Server protocol into `_proto/`.

Run at setup time (scripts/venv.sh calls it): `python -m kruntimes_runtime.protogen`.
The stubs are generated from the committed `.proto` (never checked in) and made
package-relative so they live inside `kruntimes_runtime._proto`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_FILE = "kruntimes/runtime/v1/runtime.proto"
DEFAULT_PROTO_ROOT = Path(__file__).resolve().parents[4] / "proto" / "proto"
DEFAULT_OUT = Path(__file__).resolve().parent / "_proto"


class ProtoGenError(Exception):
    """The stubs could not be generated."""


def generate(proto_root: Path, out: Path) -> None:
    """Generate `runtime_pb2.py` and `runtime_pb2_grpc.py` into `out`."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ProtoGenError(f"grpcio-tools is required to generate the stubs: {e}") from e
    source = proto_root / PROTO_FILE
    if not source.is_file():
        raise ProtoGenError(f"proto file {source} not found (proto root {proto_root})")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_root}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                PROTO_FILE,
            ]
        )
        if rc != 0:
            raise ProtoGenError(f"protoc failed with status {rc} for {source}")
        gen = Path(tmp) / "kruntimes" / "runtime" / "v1"
        staging = Path(tempfile.mkdtemp(prefix=".proto-", dir=out.parent))
        try:
            shutil.copy(gen / "runtime_pb2.py", staging / "runtime_pb2.py")
            shutil.copy(gen / "runtime_pb2.pyi", staging / "runtime_pb2.pyi")
            grpc_src = (gen / "runtime_pb2_grpc.py").read_text()
            # Make the generated import package-relative.
            grpc_src = grpc_src.replace("from kruntimes.runtime.v1 import runtime_pb2", "from . import runtime_pb2")
            (staging / "runtime_pb2_grpc.py").write_text(grpc_src)
            (staging / "__init__.py").write_text(
                '"""Generated Runtime Server protocol stubs (do not edit, git-ignored)."""\n'
            )
            # Swap in atomically enough for concurrent importers: rename over.
            if out.exists():
                shutil.rmtree(out)
            os.rename(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proto-root", type=Path, default=DEFAULT_PROTO_ROOT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        generate(args.proto_root, args.out)
    except ProtoGenError as e:
        print(f"protogen: {e}", file=sys.stderr)
        return 1
    print(f"generated stubs in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
