"""Unit-test fixtures: the shared mocks harness (tests/unit/mocks.py) and its full config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from mocks import full_config as _full_config  # noqa: E402


@pytest.fixture
def full_config() -> dict[str, Any]:
    """A fresh copy of the realistic config (2 EC2 nodes, 1 on-prem node) for this test to change."""
    return _full_config()
