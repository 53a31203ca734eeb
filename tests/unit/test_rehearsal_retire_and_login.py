"""The rehearsal's `pulumi state unprotect` and its `up` with a new login key (pure parts, hand-made state).

tests/rehearsal/test_lifecycle_scenarios.py runs both on the demo's hosts: the retirement runbook and the
two-`up` login-key rotation.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_rehearsal_up import LOGIN, resource, stack_file, state_for

from rehearsal.engine_rules import blocking, plan_changes
from rehearsal.recorder import Recording, Types
from rehearsal.stack import StackError, new_ed25519
from rehearsal.state import (
    NodeHost,
    RehearsalState,
    UnknownUrn,
    load,
    protected_urns,
    save,
    state_main,
    unprotect,
)
from rehearsal.up import complete_config, delete_steps, read_login_key

NODES = {"aws-a": NodeHost("aws-a", "ec2", "10.0.0.11")}


def retiring_state() -> RehearsalState:
    key = resource(Types.KMS_KEY, "cluster-key", {"description": "k"}, protect=True, retain=True)
    volume = resource(Types.EBS_VOLUME, "aws-a-data", {"size": 20}, protect=True, retain=True)
    instance = resource(Types.EC2_INSTANCE, "aws-a-instance", {"ami": "ami-1"},
                        parent="urn:pulumi:rehearsal::mariadb-kms::mariadb-kms:index:Ec2Node::aws-a")
    role = resource("aws:iam/role:Role", "node-role", {"name": "r"})
    return RehearsalState(config={}, region="eu-west-1",
                          resources={r.urn: r for r in (key, volume, instance, role)}, nodes=dict(NODES))


def destroy_plan(state: RehearsalState) -> list[str]:
    changes = plan_changes(state.recording(), Recording(preview=False))
    return [c.name for c in blocking(changes)]


def test_destroy_is_refused_until_every_protected_urn_is_unprotected() -> None:
    state = retiring_state()
    protected = protected_urns(state)
    assert sorted(u.rsplit("::", 1)[1] for u in protected) == ["aws-a-data", "cluster-key"]
    # Control: as long as one protected resource is left, the engine refuses the whole destroy.
    assert sorted(destroy_plan(state)) == ["aws-a-data", "cluster-key"]
    assert unprotect(state, protected[:1]) == protected[:1]
    assert destroy_plan(state) == [protected[1].rsplit("::", 1)[1]]
    unprotect(state, protected[1:])
    assert protected_urns(state) == [] and destroy_plan(state) == []
    # Unprotected is not unretained: the key and the volume are forgotten, only the instance is powered off.
    changes = plan_changes(state.recording(), Recording(preview=False))
    assert sorted(c.name for c in changes if c.retain_on_delete) == ["aws-a-data", "cluster-key"]
    steps = delete_steps(changes, state.recording(), NODES)
    assert [(s.name, [r.script for r in s.runs]) for s in steps] == [("aws-a-instance", ["power-off"])]


def test_an_unknown_urn_changes_nothing_and_is_named() -> None:
    state = retiring_state()
    protected = protected_urns(state)
    with pytest.raises(UnknownUrn, match="urn:pulumi:rehearsal::mariadb-kms::nope"):
        unprotect(state, [protected[0], "urn:pulumi:rehearsal::mariadb-kms::nope"])
    assert protected_urns(state) == protected


def test_protection_inherited_from_a_parent_counts_and_goes_with_it() -> None:
    parent = resource("mariadb-kms:index:ClusterDataKey", "data-key", {}, protect=True)
    child = resource(Types.DATA_KEY, "data-key", {"key_arn": "k"}, parent=parent.urn)
    state = RehearsalState(config={}, region="eu-west-1", resources={parent.urn: parent, child.urn: child}, nodes={})
    state.resources[child.urn].options.protect = None  # type: ignore[union-attr]  # unset: the parent's value
    assert protected_urns(state) == [parent.urn, child.urn]
    unprotect(state, [parent.urn])
    assert protected_urns(state) == []


def test_the_command_lists_unprotects_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(retiring_state(), tmp_path)
    assert state_main(tmp_path, "protected", [], every=False) == 0
    listed = capsys.readouterr().out.split()
    assert len(listed) == 2
    assert state_main(tmp_path, "unprotect", [], every=False) == 2  # neither URNs nor --all
    assert state_main(tmp_path, "unprotect", listed[:1], every=True) == 2  # both
    assert state_main(tmp_path, "unprotect", ["urn:nope"], every=False) == 2
    assert protected_urns(load(tmp_path)) == listed  # a refused command saved nothing
    assert state_main(tmp_path, "unprotect", listed[:1], every=False) == 0
    assert protected_urns(load(tmp_path)) == listed[1:]
    assert state_main(tmp_path, "unprotect", [], every=True) == 0
    assert protected_urns(load(tmp_path)) == []
    assert oct((tmp_path / "state.pickle").stat().st_mode & 0o777) == "0o600"


# --------------------------------------------------------------------------- a new login key

NEW = new_ed25519("login-next")


def test_a_new_private_key_comes_with_its_public_half_in_the_file() -> None:
    state = state_for({"sshPrivateKey": LOGIN.private_openssh, "sshAuthorizedKey": LOGIN.public_line})
    raw = {**stack_file(), "sshAuthorizedKey": NEW.public_line}
    done = complete_config(raw, "eu-west-1", state, lambda i: f"10.1.0.{10 + i}", 3, login=NEW.private_openssh)
    assert done.config["sshPrivateKey"] == NEW.private_openssh
    assert done.config["sshAuthorizedKey"] == NEW.public_line
    # Without a new key the state's stays (the control).
    kept = complete_config(stack_file(), "eu-west-1", state, lambda i: f"10.1.0.{10 + i}", 3)
    assert kept.config["sshPrivateKey"] == LOGIN.private_openssh


def test_a_new_private_key_is_refused_without_its_public_half() -> None:
    state = state_for({"sshPrivateKey": LOGIN.private_openssh, "sshAuthorizedKey": LOGIN.public_line})
    raw = stack_file()
    with pytest.raises(StackError, match="sshAuthorizedKey: missing") as missing:
        complete_config(raw, "eu-west-1", state, str, 3, login=NEW.private_openssh)
    with pytest.raises(StackError, match="is not the public half") as other:
        complete_config({**raw, "sshAuthorizedKey": LOGIN.public_line}, "eu-west-1", state, str, 3,
                        login=NEW.private_openssh)
    with pytest.raises(StackError, match="--ssh-private-key FILE"):
        complete_config({**raw, "sshAuthorizedKey": NEW.public_line}, "eu-west-1", state, str, 3)
    with pytest.raises(StackError, match="never goes into the config file"):
        complete_config({**raw, "sshPrivateKey": NEW.private_openssh}, "eu-west-1", state, str, 3)
    with pytest.raises(StackError, match="not an unencrypted OpenSSH private key"):
        complete_config({**raw, "sshAuthorizedKey": NEW.public_line}, "eu-west-1", state, str, 3, login="nonsense")
    for err in (missing.value, other.value):
        # The message names the public half the file should hold, never the private key.
        assert NEW.public_line.split()[1][:20] in str(err)
        assert "PRIVATE KEY" not in str(err) and NEW.private_openssh.splitlines()[1][:20] not in str(err)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "login-next"
    path.write_text(NEW.private_openssh)
    os.chmod(path, 0o644)
    with pytest.raises(StackError, match="mode 0o644, expected 0600"):
        read_login_key(path)
    os.chmod(path, 0o600)
    assert read_login_key(path) == NEW.private_openssh
    with pytest.raises(StackError, match="missing"):
        read_login_key(tmp_path / "missing")
