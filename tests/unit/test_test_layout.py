"""Test modules have unique basenames: pytest's rootdir-relative imports make a second one with the same
name fail collection ("import file mismatch"), which stops the whole run before any test."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def clashing_basenames(paths: Iterable[Path]) -> list[str]:
    counts = Counter(p.name for p in paths)
    return sorted(name for name, n in counts.items() if n > 1)


def test_every_test_module_has_its_own_basename() -> None:
    assert clashing_basenames(TESTS.rglob("test_*.py")) == []


def test_control_a_shared_basename_is_found() -> None:
    paths = [Path("tests/unit/test_x.py"), Path("tests/node/test_x.py"), Path("tests/node/test_y.py")]
    assert clashing_basenames(paths) == ["test_x.py"]
