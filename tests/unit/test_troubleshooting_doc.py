"""docs/troubleshooting.md covers every unwrap cause (with its exit status) and every verify gap the code can report.

Causes come from the unwrap tool's EXIT_CODES; gaps are read from the verify tool's source: every string
that starts with a section name ("galera: ", "tls: ", ...) is a gap template, its placeholders become
"…", and the page must hold a line that matches it. Controls prove a missing cause, a wrong exit status
and a missing gap are each caught.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from node_scripts import NODE, load_node_script

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "troubleshooting.md"
SECTIONS = (
    "galera", "flags", "key", "innodb", "tables", "aria", "gcache", "swap", "tls", "canary", "cannot verify", "datadir",
    "sql paths",
)


def template(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    return None


def gap_templates(source: str) -> set[str]:
    tree = ast.parse(source)
    inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = set()
    for node in ast.walk(tree):
        if id(node) in inner or not isinstance(node, ast.Constant | ast.JoinedStr):
            continue
        text = template(node)
        if text and text.split(":", 1)[0] in SECTIONS and ": " in text:
            found.add(text)
    return found


def pattern(gap: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in gap.split("…")))


def missing_gaps(doc: str, gaps: set[str]) -> list[str]:
    lines = doc.splitlines()
    return sorted(g for g in gaps if not any(pattern(g).search(line) for line in lines))


def cause_problems(doc: str, exit_codes: dict[str, int]) -> list[str]:
    problems = []
    for cause, code in exit_codes.items():
        rows = [line for line in doc.splitlines() if f"`FAILED cause={cause}`" in line]
        if not rows:
            problems.append(f"{cause}: not documented")
        elif not any(re.search(rf"\|\s*{code}\s*\|", row) for row in rows):
            problems.append(f"{cause}: exit status {code} not in its row")
    return problems


def unwrap_exit_codes() -> dict[str, int]:
    return dict(load_node_script("mariadb_kms_unwrap_doc", NODE / "mariadb_kms_unwrap.py").EXIT_CODES)


def verify_gaps() -> set[str]:
    return gap_templates((NODE / "mariadb_kms_verify.py").read_text())


def test_every_unwrap_cause_is_documented_with_its_exit_status() -> None:
    codes = unwrap_exit_codes()
    assert len(codes) >= 12
    assert cause_problems(DOC.read_text(), codes) == []


def test_every_verify_gap_is_documented() -> None:
    gaps = verify_gaps()
    assert len(gaps) > 40, "the gap reader found too few gaps: it no longer reads the verify tool"
    assert missing_gaps(DOC.read_text(), gaps) == []


def test_control_a_missing_cause_and_a_wrong_exit_status_are_caught() -> None:
    doc = DOC.read_text()
    codes = unwrap_exit_codes()
    assert cause_problems(doc, {**codes, "kms-on-fire": 99}) == ["kms-on-fire: not documented"]
    assert cause_problems(doc, {**codes, "unreachable": 42}) == ["unreachable: exit status 42 not in its row"]


def test_control_a_missing_gap_is_caught() -> None:
    doc = DOC.read_text()
    extra = gap_templates('gaps.append(f"swap: {name} is on a floppy disk")\n')
    assert extra == {"swap: … is on a floppy disk"}
    assert missing_gaps(doc, verify_gaps() | extra) == ["swap: … is on a floppy disk"]
    without = "\n".join(line for line in doc.splitlines() if "not Synced" not in line)
    assert missing_gaps(without, verify_gaps()) == ["galera: local state is …, not Synced"]
