"""Render every docs/*.dot to an SVG beside it, recording the source's digest inside the picture.

Run by ``make docs`` (graphviz from Debian). The digest, not a file time (git keeps none), tells
tests/unit/test_diagrams.py whether a picture was drawn from the source as it is now.

    python tools/render_diagrams.py [--check]   # --check: report stale pictures, render nothing
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
MARK = "<!-- rendered from {name} sha256={digest} by tools/render_diagrams.py -->"
MARK_RE = re.compile(
    r"<!-- rendered from (?P<name>\S+) sha256=(?P<digest>[0-9a-f]{64}) by tools/render_diagrams\.py -->"
)


def source_digest(dot: Path) -> str:
    return hashlib.sha256(dot.read_bytes()).hexdigest()


def recorded_digest(svg_text: str) -> str | None:
    m = MARK_RE.search(svg_text)
    return m.group("digest") if m else None


def stale(dot: Path) -> str | None:
    """Why ``dot``'s picture is not current, or None when it is."""
    svg = dot.with_suffix(".svg")
    if not svg.exists():
        return f"{svg.name} is missing"
    recorded = recorded_digest(svg.read_text())
    if recorded is None:
        return f"{svg.name} records no source digest"
    if recorded != source_digest(dot):
        return f"{svg.name} was drawn from another version of {dot.name}"
    return None


def render(dot: Path) -> None:
    svg = subprocess.run(["dot", "-Tsvg", str(dot)], check=True, capture_output=True, text=True).stdout
    mark = MARK.format(name=dot.name, digest=source_digest(dot))
    # After the XML declaration and DOCTYPE, so the file stays a valid SVG document.
    head, sep, body = svg.partition("<svg")
    dot.with_suffix(".svg").write_text(f"{head}{mark}\n{sep}{body}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list stale pictures and exit 1 if any")
    args = parser.parse_args(argv)
    sources = sorted(DOCS.glob("*.dot"))
    if args.check:
        problems = [p for p in (stale(d) for d in sources) if p]
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    if shutil.which("dot") is None:
        print("dot not found: install graphviz (make docs does, with apt)", file=sys.stderr)
        return 1
    for dot in sources:
        render(dot)
        print(f"{dot.with_suffix('.svg').relative_to(DOCS.parent)} from {dot.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
