"""Reading the SSH path out of a mocks Recording, for the unit tests of the cluster.

The generic part (dependency closure, ``replay_order``, ``decode_put``) is the
rehearsal's own ``rehearsal/plan.py``, so the tests read the plan exactly as
``make demo`` replays it; here are only the tests' look-ups by name.
"""

from __future__ import annotations

from rehearsal.plan import (
    closure,
    connection,
    decode_put,
    explicit_deps,
    remote_commands,
    replay_order,
    stdin_text,
    strings_in,
)
from rehearsal.recorder import Recording, RegisteredResource

__all__ = [
    "closure", "command", "connection", "decode_put", "explicit_deps", "remote_commands", "replay_order",
    "runs_after", "stdin_text", "strings_in",
]


def command(rec: Recording, name: str) -> RegisteredResource:
    found = [r for r in remote_commands(rec) if r.name == name]
    assert len(found) == 1, f"expected one remote command {name!r}, got {[r.name for r in remote_commands(rec)]}"
    return found[0]


def runs_after(rec: Recording, later: str, earlier: str, deps: dict[str, set[str]] | None = None) -> bool:
    """Whether remote command ``later`` waits (transitively, explicit depends_on) for ``earlier`` (names)."""
    deps = closure(rec) if deps is None else deps
    return command(rec, earlier).urn in deps[command(rec, later).urn]
