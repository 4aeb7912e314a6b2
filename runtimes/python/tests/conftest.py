"""Fixtures: one real server per module (and fresh ones where a test needs to
break or configure its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Server, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("srv"))
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "fresh", "--buffer-bytes", "65536", "--max-executions", "4")
    yield srv
    srv.stop()
