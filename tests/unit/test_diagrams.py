"""Every picture in docs/ is drawn from its .dot source as it is now (``make docs`` redraws them).

The source's digest is recorded inside the SVG by tools/render_diagrams.py; git keeps no file times, so
the digest is what tells a current picture from a stale one.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_diagrams", ROOT / "tools" / "render_diagrams.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCES = sorted(DOCS.glob("*.dot"))


def test_there_are_diagrams() -> None:
    assert {p.name for p in SOURCES} >= {"topology.dot", "architecture.dot", "key-chain.dot"}


@pytest.mark.parametrize("dot", SOURCES, ids=lambda p: p.name)
def test_picture_is_drawn_from_the_current_source(dot: Path) -> None:
    assert renderer().stale(dot) is None, "run `make docs`"


def test_every_svg_has_a_source() -> None:
    for svg in DOCS.glob("*.svg"):
        assert svg.with_suffix(".dot").exists(), f"{svg.name} has no .dot source beside it"


def test_control_an_edited_source_is_stale(tmp_path: Path) -> None:
    r = renderer()
    dot = tmp_path / "topology.dot"
    dot.write_bytes((DOCS / "topology.dot").read_bytes())
    (tmp_path / "topology.svg").write_text((DOCS / "topology.svg").read_text())
    assert r.stale(dot) is None
    dot.write_text(dot.read_text().replace("3306 TLS", "3307 TLS"))
    assert "another version" in (r.stale(dot) or "")
    (tmp_path / "topology.svg").write_text("<svg/>")
    assert "records no source digest" in (r.stale(dot) or "")
    (tmp_path / "topology.svg").unlink()
    assert "missing" in (r.stale(dot) or "")


def test_topology_shows_what_the_front_page_promises() -> None:
    text = (DOCS / "topology.dot").read_text()
    for needle in ("3306", "4444", "4567", "4568", "KMS", "SSH 22", "availability zone", "datacenter",
                   "KMS interface endpoint", "sshJumpHost"):
        assert needle in text, needle


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed (make docs installs it)")
def test_sources_are_valid_graphviz() -> None:
    for dot in SOURCES:
        subprocess.run(["dot", "-Tcanon", str(dot)], check=True, capture_output=True)
