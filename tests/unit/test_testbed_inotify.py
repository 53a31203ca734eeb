"""The testbed raises the machine's inotify instance budget that its hosts' systemd use up, and never lowers it."""

from __future__ import annotations

from pathlib import Path

from rehearsal.testbed import raise_inotify_instances


def test_a_low_budget_is_raised(tmp_path: Path) -> None:
    knob = tmp_path / "max_user_instances"
    knob.write_text("128\n")
    assert raise_inotify_instances(knob, 1024) == 1024
    assert knob.read_text() == "1024\n"


def test_a_higher_budget_is_left_alone(tmp_path: Path) -> None:
    knob = tmp_path / "max_user_instances"
    knob.write_text("8192\n")
    assert raise_inotify_instances(knob, 1024) == 8192
    assert knob.read_text() == "8192\n"
