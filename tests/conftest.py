"""Shared fixtures: wire vectors, temporary private socket directories."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """`../shared/vectors`: required in CI, skipped outside it when absent."""
    path = Path(os.environ.get("AGENTIO_VECTORS", _SHARED / "vectors"))
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"wire vectors not found at {path}")
        pytest.skip(f"wire vectors not found at {path}")
    return path


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private directory for unix sockets (sun_path is limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="aio-") as name:
        os.chmod(name, 0o700)
        yield Path(name)
