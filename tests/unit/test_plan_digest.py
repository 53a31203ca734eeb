"""The recorded plan's structure for ``Pulumi.rehearsal.yaml`` stays what it was, unless changed on purpose.

The engine knows a resource by its URN: a renamed, re-typed or re-parented
resource is a delete plus a create, and for the one-time bootstrap that would
mean ``galera_new_cluster`` a second time. So the program is recorded under
mocks with the rehearsal's stack config (the stack ``make demo`` replays) and
its structure is compared with the stored one in
``tests/unit/data/plan_structure.rehearsal.json``:

- every resource: URN, type token, parent, explicit ``depends_on`` and the
  dependencies the registration saw through its inputs, and the options
  ``protect``, ``retain_on_delete``, ``delete_before_replace``,
  ``ignore_changes``, ``replace_on_changes``, ``additional_secret_outputs``;
- every remote command: ``create``/``update``/``delete``, ``logging``,
  ``addPreviousOutputInEnv``, whether it has a stdin and whether that is
  secret, the connection (user, port, host and pinned key, jump host), and
  its ``triggers`` as a structure: which inputs, not their values. A digest
  value (64 hex digits) becomes ``digest#N``, numbered by first appearance,
  so two triggers reading the same input show the same label while content
  (rendered files, generated certificates) may change.

Login and host keys are fixed here instead of generated, so two runs give the
same structure. Changing the structure on purpose is a deliberate act: run

    MARIADB_KMS_UPDATE_PLAN_STRUCTURE=1 pytest tests/unit/test_plan_digest.py

which rewrites the stored file; review its diff (``git diff``) and commit it
with the change that caused it. Every intended change of a URN carries
``aliases``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import mocks
import pytest
from mocks import Recording, RegisteredResource, Types, run_program
from pulumi.runtime import rpc

from rehearsal.recorder import UNKNOWN
from rehearsal.stack import STACK, load_file, prepare

DATA = Path(__file__).resolve().parent / "data" / "plan_structure.rehearsal.json"
UPDATE_ENV = "MARIADB_KMS_UPDATE_PLAN_STRUCTURE"
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def rehearsal_config() -> tuple[dict[str, Any], str]:
    """``Pulumi.rehearsal.yaml`` as ``make demo`` completes it, with fixed keys and addresses."""
    raw, region = load_file()
    stack = prepare(raw, region, address_of=lambda i: f"10.231.5.{10 + i}")
    config = dict(stack.config)
    config["sshPrivateKey"] = mocks.PLANTED_SSH_PRIVATE_KEY
    config["sshAuthorizedKey"] = mocks.SSH_AUTHORIZED_KEY
    config["onPremNodes"] = [
        {**node, "hostKey": mocks._ed25519_line(f"{node['name']} host key")} for node in config["onPremNodes"]
    ]
    return config, region


def record_rehearsal_plan() -> Recording:
    config, region = rehearsal_config()
    return run_program(config, preview=False, region=region, stack=STACK)


class _Labels:
    """Stands for values by what they are, not what they hold: digests become ``digest#N``."""

    def __init__(self) -> None:
        self.digests: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if rpc.is_rpc_secret(value):
            return {"secret": self(rpc.unwrap_rpc_secret(value))}
        if value is UNKNOWN:
            return "<unknown>"
        if isinstance(value, str) and _HEX_DIGEST.match(value):
            return self.digests.setdefault(value, f"digest#{len(self.digests) + 1}")
        if isinstance(value, dict):
            return {k: self(v) for k, v in sorted(value.items())}
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        return value


def _connection(res: RegisteredResource, labels: _Labels) -> dict[str, Any]:
    raw = res.inputs.get("connection")
    conn = rpc.unwrap_rpc_secret(raw) or {}
    # The SDK sends a connection holding a secret (the login key) as one secret value.
    out: dict[str, Any] = {"<secret>": rpc.is_rpc_secret(raw)}
    for key, value in sorted(conn.items()):
        if key == "privateKey":
            out[key] = "<given>" if value else None
        elif key == "proxy" and value:
            out[key] = {k: v for k, v in sorted(rpc.unwrap_rpc_secret(value).items()) if k != "privateKey"}
        else:
            out[key] = labels(value)
    return out


def plan_structure(rec: Recording) -> list[dict[str, Any]]:
    """The recorded structure, as plain JSON data in URN order (see the module docstring)."""
    labels = _Labels()
    out: list[dict[str, Any]] = []
    for res in sorted(rec.resources, key=lambda r: r.urn):
        o = res.options
        entry: dict[str, Any] = {
            "urn": res.urn,
            "type": res.type,
            "parent": res.parent_urn,
            "depends_on": sorted(o.depends_on) if o else None,
            "input_dependencies": sorted(set(res.dependencies)),
            "options": None if o is None else {
                "protect": o.protect,
                "retain_on_delete": o.retain_on_delete,
                "delete_before_replace": o.delete_before_replace,
                "ignore_changes": sorted(o.ignore_changes),
                "replace_on_changes": sorted(o.replace_on_changes),
                "additional_secret_outputs": sorted(o.additional_secret_outputs),
            },
        }
        if res.type == Types.REMOTE_COMMAND:
            stdin = res.inputs.get("stdin")
            entry["command"] = {
                "create": res.input("create"),
                "update": res.input("update"),
                "delete": res.input("delete"),
                "logging": res.input("logging"),
                "addPreviousOutputInEnv": res.input("addPreviousOutputInEnv"),
                "stdin": None if stdin is None else ("secret" if rpc.is_rpc_secret(stdin) else "plain"),
                "environment": res.input("environment"),
                "connection": _connection(res, labels),
                "triggers": labels(res.inputs.get("triggers")),
            }
        out.append(entry)
    return out


def canonical(structure: list[dict[str, Any]]) -> str:
    return json.dumps(structure, indent=1, sort_keys=True) + "\n"


def digest(structure: list[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical(structure).encode()).hexdigest()


@pytest.fixture(scope="module")
def structure() -> list[dict[str, Any]]:
    return plan_structure(record_rehearsal_plan())


def test_the_recorded_plan_keeps_its_stored_structure(structure: list[dict[str, Any]]) -> None:
    current = {"digest": digest(structure), "structure": structure}
    if os.environ.get(UPDATE_ENV) == "1":
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    stored = json.loads(DATA.read_text(encoding="utf-8"))
    assert stored["digest"] == digest(stored["structure"]), f"{DATA.name}: the stored digest does not match its dump"
    if stored["digest"] != current["digest"]:
        diff = "".join(difflib.unified_diff(
            canonical(stored["structure"]).splitlines(keepends=True), canonical(structure).splitlines(keepends=True),
            "stored", "recorded now", n=2,
        ))
        pytest.fail(f"the plan's structure changed ({UPDATE_ENV}=1 rewrites {DATA.name} on purpose):\n{diff[:20000]}")


def test_two_recordings_give_the_same_structure(structure: list[dict[str, Any]]) -> None:
    # Stable across runs: nothing random (generated keys, certificates) reaches the structure.
    assert digest(plan_structure(record_rehearsal_plan())) == digest(structure)


def test_the_structure_sees_what_it_guards(structure: list[dict[str, Any]]) -> None:
    """Control: each guarded property shows up, so a change of it would change the digest."""
    commands = {e["urn"].rsplit("::", 1)[1]: e for e in structure if e["type"] == Types.REMOTE_COMMAND}
    assert "cluster-bootstrap" in commands
    bootstrap = commands["cluster-bootstrap"]
    assert "galera" not in bootstrap["command"]["create"] and "mariadb-kms-bootstrap" in bootstrap["command"]["create"]
    assert bootstrap["options"]["ignore_changes"], "the bootstrap's ignore_changes is guarded"
    roll = commands["aws-a-ssh-roll"]
    assert roll["depends_on"] and roll["command"]["triggers"] and roll["options"]["delete_before_replace"]
    assert any(t.startswith("digest#") for t in roll["command"]["triggers"] if isinstance(t, str))
    volumes = [e for e in structure if e["type"] == Types.EBS_VOLUME]
    assert volumes and all(v["options"]["protect"] and v["options"]["retain_on_delete"] for v in volumes)
    # A moved resource changes the digest: the same structure with one parent changed does not match.
    moved = json.loads(json.dumps(structure))
    next(e for e in moved if e["urn"].endswith("::cluster-bootstrap"))["parent"] = "urn:pulumi:elsewhere"
    assert digest(moved) != digest(structure)
    # And a changed digest input keeps its label: two different values, two labels.
    labels = _Labels()
    assert labels("a" * 64) == labels("a" * 64) != labels("b" * 64)
