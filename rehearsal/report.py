"""The rehearsal's result: per node what the program's own verification proved, as a table and as JSON.

Pure: the verify tool's reports (``node/mariadb_kms_verify.py``, one JSON
object per node, the stdout of the program's verification commands) in, a
summary out. Nothing is inferred that the report does not say: a node whose
report is missing or unreadable is a failed node.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from rehearsal.plan import decode_put, is_put_payload


def parse_verify(stdout: str) -> dict[str, Any] | None:
    try:
        report = json.loads(stdout)
    except (json.JSONDecodeError, TypeError):
        return None
    return report if isinstance(report, dict) else None


def key_source(verify: Mapping[str, Any], key_arn: str | None) -> str:
    key = verify.get("key") or {}
    active = [p for p in key.get("plugins") or [] if p.get("status") == "ACTIVE"]
    plugin = ", ".join(f"{p.get('name')} ({p.get('load_option')})" for p in active) or "no active plugin"
    keyfile = key.get("keyfile") or {}
    where = f", keyfile on {keyfile.get('filesystem')}" if keyfile else ""
    unwrapped = f", unwrapped by KMS key {key_arn}" if key_arn else ""
    return f"{plugin}{where}{unwrapped}"


def node_summary(verify: Mapping[str, Any] | None, *, key_arn: str | None) -> dict[str, Any]:
    if verify is None:
        return {"ok": False, "error": "no verification report", "gaps": ["no verification report"]}
    galera = verify.get("galera") or {}
    innodb = verify.get("innodb") or {}
    canary = verify.get("canary") or {}
    return {
        "ok": bool(verify.get("ok")) and not verify.get("gaps"),
        "cluster_state": galera.get("local_state"),
        "cluster_status": galera.get("cluster_status"),
        "cluster_size": galera.get("cluster_size"),
        "tablespaces_encrypted": innodb.get("encrypted"),
        "tablespaces_total": innodb.get("tablespaces"),
        "key_source": key_source(verify, key_arn),
        "canary": {
            "found_in": canary.get("found_in"),
            "files_scanned": canary.get("files_scanned"),
            "bytes_scanned": canary.get("bytes_scanned"),
        } if canary else None,
        "in_transit": in_transit(verify),
        "gaps": list(verify.get("gaps") or []),
        "error": verify.get("error"),
    }


def in_transit(verify: Mapping[str, Any]) -> dict[str, str] | None:
    """Each channel's state as the verify tool reports it (None when it checks none)."""
    tls = verify.get("tls")
    if not isinstance(tls, Mapping):
        return None
    channels = {str(k): str(v.get("state")) for k, v in tls.items() if isinstance(v, Mapping) and "state" in v}
    return channels or None


def in_transit_text(channels: Mapping[str, str] | None) -> str:
    if not channels:
        return "-"
    by_state: dict[str, list[str]] = {}
    for channel, state in channels.items():
        by_state.setdefault(state, []).append(channel)
    return "; ".join(f"{state}: {', '.join(names)}" for state, names in sorted(by_state.items()))


def canary_text(summary: Mapping[str, Any]) -> str:
    canary = summary.get("canary")
    if not canary:
        return "not run"
    found = canary.get("found_in") or []
    if found:
        return f"FOUND in {len(found)} file(s): {', '.join(map(str, found[:3]))}"
    megabytes = (canary.get("bytes_scanned") or 0) / 1e6
    return f"absent from {canary.get('files_scanned')} files ({megabytes:.0f} MB) at rest"


def table(nodes: Mapping[str, Mapping[str, Any]], *, key_arn: str | None = None) -> Table:
    caption = f"key source: the cluster data key, unwrapped by KMS key {key_arn}" if key_arn else None
    t = Table(title="make demo: the cluster, as the program's verification reports it", caption=caption)
    transit = any((n.get("summary") or {}).get("in_transit") for n in nodes.values())
    columns = ["node", "kind", "address", "cluster", "tablespaces enc/total", "key source", "canary"]
    for column in [*columns, *(["in transit"] if transit else []), "result"]:
        t.add_column(column, overflow="fold")
    for name, n in nodes.items():
        s = n.get("summary") or {}
        cluster = (f"{s.get('cluster_state')}, {s.get('cluster_status')}, size {s.get('cluster_size')}"
                   if s.get("cluster_state") else "-")
        tablespaces = (f"{s.get('tablespaces_encrypted')}/{s.get('tablespaces_total')}"
                       if s.get("tablespaces_total") is not None else "-")
        result = "[green]ok[/green]" if s.get("ok") else "[red]FAILED[/red]: " + "; ".join(
            map(str, (s.get("gaps") or [s.get("error") or "not verified"])[:3]))
        source = str(s.get("key_source") or "-")
        if key_arn:
            source = source.replace(f", unwrapped by KMS key {key_arn}", "")
        row = [name, str(n.get("kind")), str(n.get("address")), cluster, tablespaces, source,
               canary_text(s) if s else "-"]
        if transit:
            row.append(in_transit_text(s.get("in_transit")))
        t.add_row(*row, result)
    return t


def print_table(nodes: Mapping[str, Mapping[str, Any]], *, key_arn: str | None = None) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log or a pipe: do not fold the table into 80 columns
    console.print(table(nodes, key_arn=key_arn))


# --------------------------------------------------------------------------
# What the plan carried, and what was sent, as digests (no content)
# --------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stdin_digest(stdin: str | None) -> dict[str, Any] | None:
    """A stdin by digest: per file for a put payload (path, mode, owner, sha256), else the whole."""
    if stdin is None:
        return None
    if is_put_payload(stdin):
        files = decode_put(stdin)
        return {"files": {p: {"sha256": _sha(c), "mode": f"{m:o}", "owner": o} for p, (c, m, o) in files.items()}}
    return {"sha256": _sha(stdin.encode())}


def plan_digest(commands: Sequence[tuple[str, str, str | None]],
                user_data: Mapping[str, Mapping[str, tuple[bytes, int, str]]]) -> dict[str, Any]:
    """``commands``: (name, create, stdin); ``user_data``: node -> write_files as put files."""
    return {
        "commands": {name: {"create": create, "stdin": stdin_digest(stdin)} for name, create, stdin in commands},
        "user_data": {node: {p: {"sha256": _sha(c), "mode": f"{m:o}", "owner": o} for p, (c, m, o) in files.items()}
                      for node, files in user_data.items()},
    }
