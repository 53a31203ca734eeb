"""MariaDB's error log on a testbed host: a file on the data volume, not the journal.

mariadbd writes its error log (and the SST scripts' output it relays) to ``log_error`` on the data volume,
because applier errors quote row values; the journal only gets a one-line pointer. Tests that look for
server messages read them here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from components.mycnf import ERROR_LOG
from rehearsal.testbed import Testbed

_STAMP_LEN = len("2026-12-02 14:19:15")


def _stamp(line: str) -> float | None:
    try:
        return datetime.strptime(line[:_STAMP_LEN], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def error_log_since(testbed: Testbed, host: str, since: float | None = None) -> str:
    """The error log's lines stamped at or after ``since`` (epoch seconds; hosts run in UTC), with the
    unstamped lines that follow them (SST script output); everything when ``since`` is None."""
    result = testbed.exec(host, ["cat", ERROR_LOG], timeout=60)
    if result.rc != 0:
        return ""
    if since is None:
        return result.stdout
    keep, lines = False, []
    for line in result.stdout.splitlines():
        stamp = _stamp(line)
        if stamp is not None:
            keep = stamp >= since
        if keep:
            lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")
