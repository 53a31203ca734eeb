"""The rehearsal's stack state: what ``make demo`` and every ``up`` leave for the next ``up``.

A Pulumi stack's state holds every resource's last inputs, outputs and options
by URN, and the stack's config; ``pulumi up`` diffs the program's new
registrations against it. The rehearsal keeps the same: the whole
``RegisteredResource`` of every URN (inputs, what the provider answered,
options, dependencies), the completed stack config (the login key, each
on-prem node's address and host key) and which testbed host is which node.

It holds secrets in plain form (the login key, the on-prem access key, the
nodes' TLS keys), as a state file with a passphrase provider holds them
decrypted in memory: so it is written 0600 in the demo's 0700 directory, under
root, and never printed. One state per demo prefix (``out_dir``).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rehearsal.recorder import RecordedOptions, Recording, RegisteredResource

STATE_FILE = "state.pickle"
FORMAT = 1


@dataclass(frozen=True)
class NodeHost:
    """A node of the stack and the testbed host that stands in for it."""

    name: str
    kind: str  # "ec2" or "onprem"
    address: str


@dataclass
class RehearsalState:
    config: dict[str, Any] = field(repr=False)  # completed stack config (program keys), secrets included
    region: str
    resources: dict[str, RegisteredResource] = field(repr=False)  # by URN
    nodes: dict[str, NodeHost]  # every node the stack has had a host for, by name (departed ones too)
    host_keys: dict[str, str] = field(default_factory=dict)  # on-prem node -> its host key line
    ups: int = 0  # how many `up`s ran since `make demo`

    def recording(self) -> Recording:
        """The state as the engine rules read it: a Recording of the last registered resources."""
        return Recording(preview=False, resources=list(self.resources.values()))

    @classmethod
    def from_recording(cls, rec: Recording, *, config: Mapping[str, Any], region: str,
                       nodes: Mapping[str, NodeHost], host_keys: Mapping[str, str], ups: int = 0) -> RehearsalState:
        return cls(dict(config), region, {r.urn: r for r in rec.resources}, dict(nodes), dict(host_keys), ups)


def path_in(directory: Path) -> Path:
    return directory / STATE_FILE


def save(state: RehearsalState, directory: Path) -> Path:
    """Write the state atomically, 0600 from its first byte."""
    target = path_in(directory)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        pickle.dump({"format": FORMAT, "state": state}, out)
    tmp.replace(target)
    return target


class NoState(RuntimeError):
    pass


def load(directory: Path) -> RehearsalState:
    target = path_in(directory)
    if not target.exists():
        raise NoState(f"no rehearsal state in {directory}: run `make demo` first (with the same "
                      "MARIADB_KMS_DEMO_PREFIX)")
    with target.open("rb") as f:
        data = pickle.load(f)  # noqa: S301 - our own file, root-only, 0600, in a 0700 directory
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise NoState(f"{target}: not a rehearsal state of format {FORMAT}; run `make demo` again")
    state = data["state"]
    assert isinstance(state, RehearsalState)
    return state


# --------------------------------------------------------------------------
# `pulumi state unprotect`, on the rehearsal's state
# --------------------------------------------------------------------------


def protected_urns(state: RehearsalState) -> list[str]:
    """Every URN the engine treats as protected, in the state's order (inherited ``protect`` included)."""
    from rehearsal.engine_rules import resolve_protect

    resolved = resolve_protect(state.recording())
    return [urn for urn in state.resources if resolved.get(urn)]


class UnknownUrn(ValueError):
    pass


def unprotect(state: RehearsalState, urns: Sequence[str]) -> list[str]:
    """``pulumi state unprotect URN...``: each named resource's ``protect`` cleared in the state; the URNs changed.

    As the CLI does, only the state changes: the program still says ``protect=True``, so the next ``up``
    protects the resource again (it is ``destroy`` that reads the state alone). Every URN must be in the
    state; none is changed when one is not.
    """
    missing = [u for u in urns if u not in state.resources]
    if missing:
        raise UnknownUrn("not in the stack's state: " + ", ".join(missing)
                         + "; `make demo-protected` lists the protected URNs")
    changed: list[str] = []
    for urn in urns:
        res = state.resources[urn]
        if res.options is None or res.options.protect is not False:
            opts = res.options or RecordedOptions(None, None, None, (), (), (), (), None)
            state.resources[urn] = dataclasses.replace(res, options=dataclasses.replace(opts, protect=False))
            changed.append(urn)
    return changed


def state_main(directory: Path, command: str, urns: Sequence[str], *, every: bool) -> int:
    """``python -m rehearsal state protected|unprotect``: list, or clear ``protect`` as the Pulumi CLI does."""
    state = load(directory)
    if command == "protected":
        for urn in protected_urns(state):
            print(urn)
        return 0
    if every == bool(urns):
        print("state unprotect: name the URNs, or --all (not both)", file=sys.stderr)
        return 2
    try:
        changed = unprotect(state, protected_urns(state) if every else urns)
    except UnknownUrn as err:
        print(f"state unprotect: {err}", file=sys.stderr)
        return 2
    save(state, directory)
    for urn in changed:
        print(f"unprotected {urn}", file=sys.stderr)
    print(f"state unprotect: {len(changed)} resource(s) unprotected; {len(protected_urns(state))} still protected",
          file=sys.stderr)
    return 0
