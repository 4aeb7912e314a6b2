"""Entry point: `python -m kruntimes_runtime --listen ... --workspace ...`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from .config import ConfigError, parse_args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("KRUNTIMES_LOG", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = parse_args(argv)
        from .server import serve  # after parsing: --help needs no gRPC

        asyncio.run(serve(config))
    except ConfigError as e:
        print(f"kruntimes-python-runtime: {e}", file=sys.stderr)
        return 2
    return 0
