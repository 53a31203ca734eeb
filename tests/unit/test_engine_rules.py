"""The engine's rules (rehearsal/engine_rules.py) on small recordings made by hand.

Each rule is the Pulumi engine's or a provider's; its source is cited where the rule is applied, and each
test carries a control that shows the outcome the rule changes.
"""

from __future__ import annotations

from typing import Any

from mocks import RecordedOptions, Recording, RegisteredResource
from pulumi.runtime import rpc

from rehearsal.engine_rules import (
    REPLACE_ON,
    Change,
    blocking,
    camel,
    changed_inputs,
    plan_changes,
    remote_runs,
    replace_keys,
)

CMD = "command:remote:Command"
VOLUME = "aws:ebs/volume:Volume"
INSTANCE = "aws:ec2/instance:Instance"
KEY = "aws:kms/key:Key"


def opts(**kw: Any) -> RecordedOptions:
    base: dict[str, Any] = dict(protect=None, retain_on_delete=None, delete_before_replace=None,
                                additional_secret_outputs=(), ignore_changes=(), replace_on_changes=(), depends_on=(),
                                parent=None)
    base.update(kw)
    return RecordedOptions(**base)


def res(type_: str, name: str, inputs: dict[str, Any], *, custom: bool = True, parent: str = "urn:stack",
        deps: dict[str, tuple[str, ...]] | None = None, **options: Any) -> RegisteredResource:
    return RegisteredResource(
        type=type_, name=name, urn=f"urn:{name}", id=f"id-{name}", custom=custom, inputs=inputs, state=dict(inputs),
        parent_urn=parent, dependencies=(), secret_outputs=(), options=opts(**options),
        property_dependencies=deps or {},
    )


def command(name: str, *, triggers: list[Any] | None = None, create: str = "run", **kw: Any) -> RegisteredResource:
    # Every remote.Command gets replace_on_changes=["triggers[*]"] from its SDK
    # (pulumi_command/remote/command.py, _internal_init, pulumi-command 1.2.1).
    kw.setdefault("replace_on_changes", ("triggers[*]",))
    return res(CMD, name, {"create": create, "triggers": triggers or ["a"], **kw.pop("inputs", {})}, **kw)


def rec(*resources: RegisteredResource) -> Recording:
    return Recording(preview=False, resources=list(resources))


def action(changes: list[Change], name: str) -> Change:
    return next(c for c in changes if c.name == name)


def test_unchanged_inputs_do_nothing_and_secretness_alone_is_no_change() -> None:
    old = command("c", inputs={"stdin": "payload"})
    new = command("c", inputs={"stdin": rpc.wrap_rpc_secret("payload")})
    assert action(plan_changes(rec(old), rec(new)), "c").action == "same"
    control = command("c", inputs={"stdin": "other payload"})
    assert action(plan_changes(rec(old), rec(control)), "c").action == "update"


def test_a_command_is_replaced_only_when_its_triggers_change() -> None:
    base = command("c", triggers=["digest-1"])
    replaced = action(plan_changes(rec(base), rec(command("c", triggers=["digest-2"]))), "c")
    assert (replaced.action, replaced.replace_keys) == ("replace", ("triggers",))
    # Any other input, connection included, is an update.
    updated = action(plan_changes(rec(base), rec(command("c", triggers=["digest-1"], create="run --other"))), "c")
    assert (updated.action, updated.changed) == ("update", ("create",))
    moved = command("c", inputs={"connection": {"host": "10.0.0.2"}})
    assert action(plan_changes(rec(command("c", inputs={"connection": {"host": "10.0.0.1"}})), rec(moved)),
                  "c").action == "update"
    # Control: without the SDK's replace_on_changes the provider alone replaces nothing.
    assert REPLACE_ON[CMD] == frozenset()
    bare = action(plan_changes(rec(command("c", triggers=["1"], replace_on_changes=())),
                               rec(command("c", triggers=["2"], replace_on_changes=()))), "c")
    assert bare.action == "update"


def test_an_update_runs_update_else_create_and_a_replacement_runs_delete_first_when_asked() -> None:
    # pulumi-command: "If empty, the create command will be executed instead" (remote/command.py, `update`).
    c = command("c")
    assert remote_runs(Change("urn:c", CMD, "c", "update"), c) == ["create"]
    with_update = command("c", inputs={"update": "reload"})
    assert remote_runs(Change("urn:c", CMD, "c", "update"), with_update) == ["update"]
    with_delete = command("c", inputs={"delete": "cleanup"})
    assert remote_runs(Change("urn:c", CMD, "c", "replace", delete_before_replace=True), with_delete) == [
        "delete", "create"]
    assert remote_runs(Change("urn:c", CMD, "c", "replace"), with_delete) == ["create", "delete"]
    assert remote_runs(Change("urn:c", CMD, "c", "delete"), c) == []
    assert remote_runs(Change("urn:c", CMD, "c", "same"), c) == []


def test_ignore_changes_hides_a_change_and_a_replacement_keeps_the_old_value() -> None:
    old = res(INSTANCE, "i", {"ami": "ami-1", "subnetId": "s-1"}, ignore_changes=("ami",))
    new_ami = res(INSTANCE, "i", {"ami": "ami-2", "subnetId": "s-1"}, ignore_changes=("ami",))
    assert action(plan_changes(rec(old), rec(new_ami)), "i").action == "same"
    # Control: the same change without ignore_changes replaces the instance.
    control = action(plan_changes(rec(res(INSTANCE, "i", {"ami": "ami-1"})), rec(res(INSTANCE, "i", {"ami": "ami-2"}))),
                     "i")
    assert control.action == "replace"
    # Replaced for another reason: the ignored input keeps its old value
    # (https://www.pulumi.com/docs/iac/concepts/resources/options/ignorechanges/).
    moved = res(INSTANCE, "i", {"ami": "ami-2", "subnetId": "s-2"}, ignore_changes=("ami",))
    change = action(plan_changes(rec(old), rec(moved)), "i")
    assert (change.action, change.ignored_kept) == ("replace", ("ami",))


def test_ignore_changes_paths_in_python_names_match_wire_names() -> None:
    assert camel("add_previous_output_in_env") == "addPreviousOutputInEnv"
    assert changed_inputs({"addPreviousOutputInEnv": True}, {"addPreviousOutputInEnv": False},
                           ["add_previous_output_in_env"]) == []
    assert changed_inputs({"addPreviousOutputInEnv": True}, {"addPreviousOutputInEnv": False}) == [
        "addPreviousOutputInEnv"]


def test_a_protected_resource_in_a_replacement_or_delete_refuses_the_whole_update() -> None:
    vol = res(VOLUME, "v", {"availabilityZone": "a", "size": 10}, protect=True, retain_on_delete=True)
    grown = res(VOLUME, "v", {"availabilityZone": "a", "size": 20}, protect=True)
    moved = res(VOLUME, "v", {"availabilityZone": "b", "size": 10}, protect=True)
    assert blocking(plan_changes(rec(vol), rec(grown))) == []  # an update of a protected resource is fine
    assert [c.name for c in blocking(plan_changes(rec(vol), rec(moved)))] == ["v"]
    gone = plan_changes(rec(vol), rec())
    assert [(c.action, c.retain_on_delete) for c in blocking(gone)] == [("delete", True)]
    # Control: unprotected, the same replacement goes ahead.
    loose = res(VOLUME, "v", {"availabilityZone": "b", "size": 10})
    assert blocking(plan_changes(rec(res(VOLUME, "v", {"availabilityZone": "a", "size": 10})), rec(loose))) == []


def test_protect_is_inherited_from_the_parent_unless_set() -> None:
    parent = res("mariadb-kms:index:Thing", "p", {}, custom=False, protect=True)
    child = res(VOLUME, "v", {"availabilityZone": "a"}, parent="urn:p")
    moved = res(VOLUME, "v", {"availabilityZone": "b"}, parent="urn:p")
    assert [c.name for c in blocking(plan_changes(rec(parent, child), rec(parent, moved)))] == ["v"]
    unprotected_child = res(VOLUME, "v", {"availabilityZone": "b"}, parent="urn:p", protect=False)
    assert blocking(plan_changes(rec(parent, child), rec(parent, unprotected_child))) == []


def test_a_replacement_travels_along_property_dependencies() -> None:
    key = res("tls:index/privateKey:PrivateKey", "hk", {"algorithm": "ED25519"})
    new_key = res("tls:index/privateKey:PrivateKey", "hk", {"algorithm": "ECDSA"})
    step = command("c", inputs={"connection": {"hostKey": "x"}}, deps={"connection": ("urn:hk",)})
    changes = plan_changes(rec(key, step), rec(new_key, step))
    assert action(changes, "hk").action == "replace"
    c = action(changes, "c")
    assert (c.action, c.unknown_via) == ("update", ("connection",))
    # Through triggers it is a replacement.
    trig = command("t", deps={"triggers": ("urn:hk",)})
    assert action(plan_changes(rec(key, trig), rec(new_key, trig)), "t").action == "replace"
    # Control: an input that does not come from the replaced resource is untouched.
    other = command("o", deps={"stdin": ("urn:elsewhere",)})
    assert action(plan_changes(rec(key, other), rec(new_key, other)), "o").action == "same"


def test_creates_and_deletes_and_components() -> None:
    a, b = command("a"), command("b")
    comp = res("mariadb-kms:index:Thing", "comp", {"x": 1}, custom=False)
    comp2 = res("mariadb-kms:index:Thing", "comp", {"x": 2}, custom=False)
    changes = plan_changes(rec(a, comp), rec(b, comp2))
    assert {c.name: c.action for c in changes} == {"a": "delete", "b": "create", "comp": "same"}


def test_replace_keys_table_and_wildcards() -> None:
    assert replace_keys(VOLUME, ["size"]) == ([], False)
    assert replace_keys(VOLUME, ["kmsKeyId", "size"]) == (["kmsKeyId"], False)
    assert replace_keys("tls:index/locallySignedCert:LocallySignedCert", ["validityPeriodHours"]) == (
        ["validityPeriodHours"], False)
    # instanceType stops and starts the instance in place: an update.
    assert replace_keys(INSTANCE, ["instanceType"]) == ([], False)
    assert replace_keys("aws:unknown/thing:Thing", ["x"]) == ([], True)
    assert replace_keys("aws:unknown/thing:Thing", ["x"], ["*"]) == (["x"], True)


def test_a_new_key_arn_updates_the_protected_data_key_in_place() -> None:
    # A replacement of the data key would be a create, which mints a new data key; the provider never asks
    # for one, a new key ARN included (it re-wraps), so the engine goes ahead with an update.
    data_key = "pulumi-python:dynamic/mariadb-kms:ClusterDataKey"
    old = res(data_key, "dk", {"key_arn": "arn:a", "escrow_in_ssm": True}, protect=True, retain_on_delete=True)
    new = res(data_key, "dk", {"key_arn": "arn:b", "escrow_in_ssm": True}, protect=True, retain_on_delete=True)
    [change] = plan_changes(rec(old), rec(new))
    assert (change.action, change.changed, change.blocked) == ("update", ("key_arn",), False)
    # Control: the same change on a type that replaces on it is a replacement the engine refuses.
    vol_old = res(VOLUME, "v", {"kmsKeyId": "arn:a"}, protect=True)
    vol_new = res(VOLUME, "v", {"kmsKeyId": "arn:b"}, protect=True)
    [vol] = plan_changes(rec(vol_old), rec(vol_new))
    assert (vol.action, vol.blocked) == ("replace", True)
