"""Imports the generated protocol stubs, with a clear error when they are missing."""

from __future__ import annotations

try:
    from ._proto import runtime_pb2 as pb
    from ._proto import runtime_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - setup problem
    raise ImportError(
        "kruntimes_runtime._proto is missing: generate it with "
        "`python -m kruntimes_runtime.protogen` (runtimes/python/scripts/venv.sh does)"
    ) from e

__all__ = ["pb", "pb_grpc"]
