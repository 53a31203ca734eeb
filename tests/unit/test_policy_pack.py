"""The policy pack (policy/): each check on good and bad resources, the whole pack over what the program
registers under mocks, and deliberately broken variants where each policy fires.

Two ways in, as docs/review.md explains:

- the real analyzer: pulumi-policy's own gRPC servicer (the object `pulumi preview --policy-pack` talks to),
  fed AnalyzeRequest/AnalyzeStackRequest messages built from the recording, with unknowns as the engine's
  sentinel. It sees protect, ignore_changes and additional secret outputs, not retain_on_delete nor which
  inputs are secret;
- the recorder's registrations, which know those too (``check_all`` over ``Res`` views).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import mocks as mocks_module
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from mocks import Computed, Recording, RegisteredResource, Types, run_program
from pulumi.output import Unknown
from pulumi.runtime import proto, rpc
from pulumi.runtime.proto import analyzer_pb2_grpc
from pulumi_policy import EnforcementLevel
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.policy import _PolicyAnalyzerServicer
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from policy import mariadb_kms_policies as pp
from policy.mariadb_kms_policies import Res
from rehearsal.recorder import record

PACK = "mariadb-kms"
ADVISORY = {c.name for c in pp.RESOURCE_CHECKS if c.advisory} | {c.name for c in pp.STACK_CHECKS if c.advisory}
ALL_POLICIES = {c.name for c in pp.RESOURCE_CHECKS} | {c.name for c in pp.STACK_CHECKS}
CANT_RUN = "can't run policy"


# --------------------------------------------------------------------------
# From a recording to what the analyzer and the checks see
# --------------------------------------------------------------------------


def wire(value: Any) -> Any:
    """A recorded value as the engine sends it to an analyzer: unknowns as the string sentinel."""
    if isinstance(value, Unknown) or value == rpc.UNKNOWN:
        return UNKNOWN_STRING_VALUE
    if isinstance(value, dict):
        return {k: wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [wire(v) for v in value]
    return value


def _struct(props: dict[str, Any]) -> struct_pb2.Struct:
    return json_format.ParseDict(json.loads(json.dumps(wire(props), default=str)), struct_pb2.Struct())


def _options(r: RegisteredResource) -> Any:
    o = r.options
    return proto.AnalyzerResourceOptions(
        protect=bool(o and o.protect),
        ignoreChanges=list(o.ignore_changes) if o else [],
        deleteBeforeReplace=bool(o and o.delete_before_replace),
        deleteBeforeReplaceDefined=bool(o and o.delete_before_replace is not None),
        additionalSecretOutputs=list(r.secret_outputs),
        parent=r.parent_urn,
    )


def analyze(rec: Recording, *, policies: list[Any] | None = None) -> list[tuple[str, str, int]]:
    """Every diagnostic of the real servicer: (policy name, message, enforcement level)."""
    servicer = _PolicyAnalyzerServicer(PACK, "0.0.1", policies or pp.policies(), EnforcementLevel.MANDATORY)
    found: list[Any] = []
    for r in rec.resources:
        if not r.custom:
            continue
        request = proto.AnalyzeRequest(type=r.type, properties=_struct(r.inputs), urn=r.urn, name=r.name,
                                       options=_options(r))
        found += servicer.Analyze(request, None).diagnostics
    stack = proto.AnalyzeStackRequest(resources=[
        proto.AnalyzerResource(
            type=r.type, properties=_struct(r.state), urn=r.urn, name=r.name, options=_options(r),
            parent=r.parent_urn, dependencies=list(r.dependencies),
            propertyDependencies={k: proto.AnalyzerPropertyDependencies(urns=list(v))
                                  for k, v in r.property_dependencies.items()},
        )
        for r in rec.resources
    ])
    found += servicer.AnalyzeStack(stack, None).diagnostics
    return [(d.policyName, d.message, d.enforcementLevel) for d in found]


def res_view(r: RegisteredResource, *, outputs: bool) -> Res:
    """What the recorder knows of a resource, retain_on_delete and secretness included."""
    values = r.state if outputs else r.inputs
    return Res(
        type=r.type, name=r.name, urn=r.urn,
        props=unknown_checking_proxy(deserialize_properties(wire(values))),
        protect=bool(r.options and r.options.protect),
        retain_on_delete=bool(r.options and r.options.retain_on_delete),
        additional_secret_outputs=r.secret_outputs,
        ignore_changes=r.options.ignore_changes if r.options else (),
        parent=r.parent_urn,
        property_dependencies=dict(r.property_dependencies),
        secret_inputs=frozenset(k for k, v in r.inputs.items() if rpc.is_rpc_secret(v)),
    )


def recorder_check(rec: Recording) -> dict[str, list[pp.Violation]]:
    return pp.check_all([res_view(r, outputs=False) for r in rec.resources if r.custom],
                        [res_view(r, outputs=True) for r in rec.resources])


def fired(diags: list[tuple[str, str, int]]) -> set[str]:
    return {name for name, message, _lvl in diags if CANT_RUN not in message}


@pytest.fixture(scope="module")
def up() -> Recording:
    return run_program(mocks_module.full_config(), preview=False)


@pytest.fixture(scope="module")
def first_preview() -> Recording:
    return run_program(mocks_module.full_config(), preview=True)


class DeployedMocks(mocks_module.RecordingMocks):
    """A preview of a stack already deployed and unchanged: every resource's outputs come from its state."""

    def computed(self, typ: str, name: str, inputs: dict[str, Any]) -> Computed:
        found = super().computed(typ, name, inputs)
        return Computed(found.id, found.outputs, frozenset(found.outputs))


@pytest.fixture(scope="module")
def update_preview() -> Recording:
    mocks = DeployedMocks(preview=True, stack=mocks_module.STACK, region=mocks_module.REGION, caller_session="ci-run-1")
    flat, secret_keys = mocks_module.config_for_pulumi(mocks_module.full_config(), mocks_module.REGION)
    rec = record(mocks, flat, secret_keys, stack=mocks_module.STACK)
    assert rec.exception is None, rec.errors
    return rec


# --------------------------------------------------------------------------
# The whole pack over the program
# --------------------------------------------------------------------------

# With the realistic config: a 21-day deletion window (node Decrypt carries the encryption context).
EXPECTED_ADVISORIES = {"kms-key-deletion-window-30"}


def test_the_program_passes_every_mandatory_policy_in_up(up: Recording) -> None:
    diags = analyze(up)
    assert not [d for d in diags if CANT_RUN in d[1]]
    mandatory = [d for d in diags if d[2] == proto.MANDATORY]
    assert mandatory == []
    assert fired(diags) == EXPECTED_ADVISORIES
    found = recorder_check(up)
    assert {name for name, v in found.items() if v} == EXPECTED_ADVISORIES


def test_without_the_encryption_context_the_node_decrypt_advisory_fires() -> None:
    # Control for the advisory over the whole program: a stack with the context off (or in aws-plugin mode).
    rec = run_program(mocks_module.full_config(dataKeyEncryptionContext=False), preview=False)
    assert fired(analyze(rec)) == EXPECTED_ADVISORIES | {"key-policy-node-decrypt-context"}


def test_a_preview_of_the_deployed_stack_runs_every_policy_and_passes(update_preview: Recording) -> None:
    assert update_preview.preview
    diags = analyze(update_preview)
    # "Passes" means every policy ran: a policy that met an unknown only says it could not.
    assert [d for d in diags if CANT_RUN in d[1]] == []
    assert [d for d in diags if d[2] == proto.MANDATORY] == []
    assert fired(diags) == EXPECTED_ADVISORIES


def test_a_first_preview_cannot_run_the_policies_that_read_computed_values(first_preview: Recording) -> None:
    # Nothing exists yet, so the key policy (it names the node role's ARN) and an EC2 node's connection are
    # unknown: those policies say they cannot run, and run in the first `pulumi up` (which checks each
    # resource before creating it). Every other policy runs and passes.
    diags = analyze(first_preview)
    cant = {name for name, message, _ in diags if CANT_RUN in message}
    assert cant == {
        "key-policy-no-wildcard-principal", "key-policy-admins-cannot-decrypt", "key-policy-node-least-privilege",
        "key-policy-node-decrypt-context",
        # An EC2 node's address and host key are made in the same run.
        "remote-command-host-key",
    }
    unknown_connections = {m for name, m, _ in diags if name == "remote-command-host-key"}
    assert unknown_connections == {"can't run policy 'remote-command-host-key' from policy pack 'mariadb-kms@v0.0.1' "
                                   "during preview: string value at .connection can't be known during preview"}
    assert [d for d in diags if d[2] == proto.MANDATORY and CANT_RUN not in d[1]] == []


# --------------------------------------------------------------------------
# Broken variants: each policy fires
# --------------------------------------------------------------------------


def _one(rec: Recording, type_: str, name: str | None = None) -> RegisteredResource:
    return next(r for r in rec.resources if r.type == type_ and (name is None or r.name == name))


def _set_input(r: RegisteredResource, key: str, value: Any) -> None:
    r.inputs[key] = value
    r.state[key] = value


def _edit_key_policy(rec: Recording, edit: Callable[[dict[str, Any]], None]) -> None:
    key = _one(rec, Types.KMS_KEY)
    doc = json.loads(key.input("policy"))
    edit(doc)
    _set_input(key, "policy", json.dumps(doc))


def _statement(doc: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in doc["Statement"] if s.get("Sid") == sid)


def _no_rotation(rec: Recording) -> None:
    _set_input(_one(rec, Types.KMS_KEY), "enableKeyRotation", False)


def _short_window(rec: Recording) -> None:
    _set_input(_one(rec, Types.KMS_KEY), "deletionWindowInDays", 5)


def _wildcard(rec: Recording) -> None:
    _edit_key_policy(rec, lambda d: _statement(d, "DeployersWrapDataKeys").update(Principal={"AWS": "*"}))


def _admin_decrypts(rec: Recording) -> None:
    _edit_key_policy(rec, lambda d: _statement(d, "KeyAdministrators")["Action"].append("kms:Decrypt"))


def _node_encrypts(rec: Recording) -> None:
    _edit_key_policy(rec, lambda d: _statement(d, "Ec2NodesUnwrap")["Action"].append("kms:GenerateDataKey"))


def _unprotected_volume(rec: Recording) -> None:
    vol = _one(rec, Types.EBS_VOLUME)
    assert vol.options is not None
    vol.options.protect = False


def test_a_data_key_moved_to_another_key_passes_with_the_volumes_under_the_stacks_own_key() -> None:
    rec = run_program(mocks_module.full_config(
        kmsKeyArn="arn:aws:kms:eu-west-1:210987654321:key/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"), preview=False)
    assert fired(analyze(rec)) == EXPECTED_ADVISORIES
    # Control: a volume under no key of the stack still fires.
    _volume_other_key(rec)
    assert "volumes-under-cluster-key" in fired(analyze(rec))


def _imds_hops(rec: Recording) -> None:
    inst = _one(rec, Types.EC2_INSTANCE)
    _set_input(inst, "metadataOptions", {**inst.input("metadataOptions"), "httpPutResponseHopLimit": 2})


def _volume_other_key(rec: Recording) -> None:
    # The ARN string stays the same; only where it came from changes: the check follows property dependencies.
    _one(rec, Types.EBS_VOLUME).property_dependencies["kmsKeyId"] = ()


def _world_mysql(rec: Recording) -> None:
    rule = _one(rec, Types.SG_INGRESS_RULE, "cluster-nodes-in-tcp-3306-10-20-0-0-16")
    _set_input(rule, "cidrIpv4", "0.0.0.0/0")


def _rsa_host_key(rec: Recording) -> None:
    cmd = _one(rec, Types.REMOTE_COMMAND, "dc-1-ssh-install")
    conn = dict(rpc.unwrap_rpc_secret(cmd.inputs["connection"]))
    conn["hostKey"] = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"
    _set_input(cmd, "connection", rpc.wrap_rpc_secret(conn))


def _secret_in_environment(rec: Recording) -> None:
    cmd = _one(rec, Types.REMOTE_COMMAND, "dc-1-ssh-install")
    access_key = _one(rec, Types.IAM_ACCESS_KEY)
    _set_input(cmd, "environment", {"AWS_SECRET_ACCESS_KEY": "from the access key"})
    cmd.property_dependencies["environment"] = (access_key.urn,)


def _tls_output_shown(rec: Recording) -> None:
    cmd = _one(rec, Types.REMOTE_COMMAND, "dc-1-ssh-tls")
    cmd.secret_outputs = tuple(k for k in cmd.secret_outputs if k != "stderr")


def _unverified_node(rec: Recording) -> None:
    rec.resources = [r for r in rec.resources if r.name != "dc-1-verification-run"]


def _second_bootstrap(rec: Recording) -> None:
    boot = _one(rec, Types.REMOTE_COMMAND, "cluster-bootstrap")
    twin = copy.deepcopy(boot)
    twin.name, twin.urn = "cluster-bootstrap-again", boot.urn + "-again"
    rec.resources.append(twin)


def _bootstrap_reruns(rec: Recording) -> None:
    boot = _one(rec, Types.REMOTE_COMMAND, "cluster-bootstrap")
    assert boot.options is not None
    boot.options.ignore_changes = tuple(k for k in boot.options.ignore_changes if k != "triggers")


BROKEN: dict[str, Callable[[Recording], None]] = {
    "kms-key-rotation": _no_rotation,
    "kms-key-deletion-window": _short_window,
    "key-policy-no-wildcard-principal": _wildcard,
    "key-policy-admins-cannot-decrypt": _admin_decrypts,
    "key-policy-node-least-privilege": _node_encrypts,
    "protect-key-and-data": _unprotected_volume,
    "ec2-imdsv2-hop-limit-1": _imds_hops,
    "volumes-under-cluster-key": _volume_other_key,
    "no-world-open-cluster-ports": _world_mysql,
    "remote-command-host-key": _rsa_host_key,
    "remote-command-no-secret-on-command-line": _secret_in_environment,
    "remote-command-secret-stdin-hides-output": _tls_output_shown,
    "every-node-verified": _unverified_node,
    "exactly-one-bootstrap": _second_bootstrap,
}


def test_every_mandatory_policy_has_a_broken_variant() -> None:
    assert set(BROKEN) | ADVISORY | {"exactly-one-bootstrap"} == ALL_POLICIES


@pytest.mark.parametrize("policy", sorted(BROKEN))
def test_each_broken_variant_fires_its_policy_in_the_real_analyzer(up: Recording, policy: str) -> None:
    rec = copy.deepcopy(up)
    BROKEN[policy](rec)
    diags = analyze(rec)
    assert fired(diags) - EXPECTED_ADVISORIES == {policy}
    messages = [m for name, m, lvl in diags if name == policy]
    assert all(lvl == proto.MANDATORY for name, _m, lvl in diags if name == policy)
    # Each message tells the author what to do.
    assert messages and all(len(m) > 40 for m in messages), messages


def test_a_bootstrap_that_could_run_again_fires(up: Recording) -> None:
    rec = copy.deepcopy(up)
    _bootstrap_reruns(rec)
    assert fired(analyze(rec)) - EXPECTED_ADVISORIES == {"exactly-one-bootstrap"}


def test_retain_on_delete_is_checked_from_the_recording_only(up: Recording) -> None:
    rec = copy.deepcopy(up)
    key = _one(rec, Types.KMS_KEY)
    assert key.options is not None
    key.options.retain_on_delete = False
    # The real analyzer is never told retain_on_delete ...
    assert fired(analyze(rec)) == EXPECTED_ADVISORIES
    # ... the recorder is.
    found = recorder_check(rec)["protect-key-and-data"]
    assert len(found) == 1 and "retain_on_delete=True" in found[0][0]


def test_a_secret_marked_command_line_is_caught_from_the_recording(up: Recording) -> None:
    rec = copy.deepcopy(up)
    cmd = _one(rec, Types.REMOTE_COMMAND, "dc-1-ssh-install")
    cmd.inputs["create"] = rpc.wrap_rpc_secret(cmd.input("create"))
    found = recorder_check(rec)["remote-command-no-secret-on-command-line"]
    assert [m for m, _u in found] == [
        "dc-1-ssh-install: `create` is secret. A command line and its environment are visible to every local user "
        "(ps) and kept in state: pass secrets on stdin."
    ]


# --------------------------------------------------------------------------
# Each check on its own
# --------------------------------------------------------------------------


def res(type_: str, name: str = "r", **props: Any) -> Res:
    return Res(type=type_, name=name, urn=f"urn:{name}", props=props)


def test_kms_key_checks() -> None:
    good = res(pp.KMS_KEY, enableKeyRotation=True, deletionWindowInDays=30)
    assert pp.kms_key_rotation(good) == pp.kms_key_deletion_window(good) == pp.kms_key_deletion_window_30(good) == []
    assert pp.kms_key_rotation(res(pp.KMS_KEY, enableKeyRotation=False))
    assert pp.kms_key_deletion_window(res(pp.KMS_KEY, deletionWindowInDays=6))
    assert pp.kms_key_deletion_window(res(pp.KMS_KEY, deletionWindowInDays=7)) == []
    assert pp.kms_key_deletion_window_30(res(pp.KMS_KEY, deletionWindowInDays=29))
    # Unset is the provider's default of 30 days.
    assert pp.kms_key_deletion_window_30(res(pp.KMS_KEY)) == []


def _doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


ADMIN = "arn:aws:iam::1:role/admin"
NODE = "arn:aws:iam::1:role/node"


def test_key_policy_checks() -> None:
    admin = {"Sid": "A", "Effect": "Allow", "Principal": {"AWS": [ADMIN]}, "Action": ["kms:PutKeyPolicy"],
             "Resource": "*"}
    ebs = {"Sid": "E", "Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:Decrypt", "Resource": "*",
           "Condition": {"StringEquals": {"kms:ViaService": "ec2.eu-west-1.amazonaws.com"}}}
    good = res(pp.KMS_KEY, policy=_doc(admin, ebs))
    assert pp.key_policy_no_wildcard_principal(good) == pp.key_policy_admins_cannot_decrypt(good) == []
    assert pp.key_policy_no_wildcard_principal(res(pp.KMS_KEY, policy=_doc({**admin, "Principal": "*"})))
    assert pp.key_policy_no_wildcard_principal(res(pp.KMS_KEY, policy=_doc({**admin, "Principal": {"AWS": "*"}})))
    assert pp.key_policy_admins_cannot_decrypt(res(pp.KMS_KEY, policy=_doc(admin, {**ebs, "Condition": {}})))
    # Admin actions through a wildcard count too.
    assert pp.key_policy_admins_cannot_decrypt(res(pp.KMS_KEY, policy=_doc(
        {**admin, "Action": ["kms:*"]})))


def _stack_with_node(actions: list[str], condition: dict[str, Any] | None = None) -> list[Res]:
    role = Res(type=pp.IAM_ROLE, name="node-role", urn="urn:role", props={"arn": NODE})
    stmt: dict[str, Any] = {"Sid": "N", "Effect": "Allow", "Principal": {"AWS": [NODE]}, "Action": actions,
                            "Resource": "*"}
    if condition:
        stmt["Condition"] = condition
    key = Res(type=pp.KMS_KEY, name="key", urn="urn:key", props={"policy": _doc(stmt)},
              property_dependencies={"policy": ("urn:role",)})
    return [role, key]


def test_node_least_privilege_and_context_follow_the_key_policy_sources() -> None:
    assert pp.key_policy_node_least_privilege(_stack_with_node(["kms:Decrypt", "kms:DescribeKey"])) == []
    assert pp.key_policy_node_least_privilege(_stack_with_node(["kms:Decrypt", "kms:Encrypt"]))
    # The same principal without the property dependency is not known to be a node: nothing to say.
    role, key = _stack_with_node(["kms:Encrypt"])
    key.property_dependencies = {}
    assert pp.key_policy_node_least_privilege([role, key]) == []
    assert pp.key_policy_node_decrypt_context(_stack_with_node(["kms:Decrypt"]))
    assert pp.key_policy_node_decrypt_context(_stack_with_node(
        ["kms:Decrypt"], {"StringEquals": {"kms:EncryptionContext:cluster": "c"}})) == []


def test_protection_check() -> None:
    for type_ in pp.PROTECTED_TYPES:
        assert pp.protected_and_retained(Res(type=type_, name="k", urn="u", props={}, protect=True)) == []
        assert pp.protected_and_retained(Res(type=type_, name="k", urn="u", props={}, protect=False))
        assert pp.protected_and_retained(Res(type=type_, name="k", urn="u", props={}, protect=True,
                                             retain_on_delete=False))
    assert pp.protected_and_retained(Res(type=pp.IAM_ROLE, name="k", urn="u", props={})) == []


def test_imds_check() -> None:
    assert pp.ec2_imdsv2_hop_limit(res(pp.EC2_INSTANCE, metadataOptions={"httpTokens": "required",
                                                                         "httpPutResponseHopLimit": 1})) == []
    assert pp.ec2_imdsv2_hop_limit(res(pp.EC2_INSTANCE, metadataOptions={"httpTokens": "optional",
                                                                         "httpPutResponseHopLimit": 1}))
    assert pp.ec2_imdsv2_hop_limit(res(pp.EC2_INSTANCE))


def test_volume_key_check_uses_property_dependencies() -> None:
    key = Res(type=pp.KMS_KEY, name="key", urn="urn:key", props={"arn": "arn:k"})
    other = Res(type=pp.KMS_KEY, name="other", urn="urn:other", props={"arn": "arn:k"})
    data_key = Res(type=pp.DATA_KEY, name="dk", urn="urn:dk", props={},
                   property_dependencies={"key_arn": ("urn:key",)})

    def vol(dep: str, encrypted: bool = True) -> Res:
        return Res(type=pp.EBS_VOLUME, name="v", urn="urn:v", props={"encrypted": encrypted, "kmsKeyId": "arn:k"},
                   property_dependencies={"kmsKeyId": (dep,)})

    assert pp.volumes_under_cluster_key([key, other, data_key, vol("urn:key")]) == []
    assert pp.volumes_under_cluster_key([key, other, data_key, vol("urn:other")])  # same ARN text, other key
    assert pp.volumes_under_cluster_key([key, data_key, vol("urn:key", encrypted=False)])


def test_world_open_port_check() -> None:
    def rule(cidr: str, lo: int, hi: int, proto_: str = "tcp", v6: bool = False) -> Res:
        return res(pp.INGRESS_RULE, **{"cidrIpv6" if v6 else "cidrIpv4": cidr, "fromPort": lo, "toPort": hi,
                                       "ipProtocol": proto_})

    assert pp.no_world_open_cluster_ports(rule("10.0.0.0/8", 3306, 3306)) == []
    assert pp.no_world_open_cluster_ports(rule("0.0.0.0/0", 443, 443)) == []
    assert pp.no_world_open_cluster_ports(rule("0.0.0.0/0", 4000, 5000))
    assert pp.no_world_open_cluster_ports(rule("::/0", 22, 22, v6=True))
    assert pp.no_world_open_cluster_ports(rule("0.0.0.0/0", 0, 0, proto_="-1"))
    assert pp.no_world_open_cluster_ports(res(pp.SECURITY_GROUP, ingress=[
        {"fromPort": 22, "toPort": 22, "protocol": "tcp", "cidrBlocks": ["0.0.0.0/0"]}]))


def test_host_key_check() -> None:
    def cmd(conn: dict[str, Any]) -> Res:
        return res(pp.REMOTE_COMMAND, connection=conn)

    assert pp.remote_command_host_key(cmd({"host": "h", "hostKey": "ssh-ed25519 AAAA"})) == []
    assert pp.remote_command_host_key(cmd({"host": "h"}))
    assert pp.remote_command_host_key(cmd({"host": "h", "hostKey": "ssh-rsa AAAA"}))
    assert pp.remote_command_host_key(cmd({"host": "h", "hostKey": "ssh-ed25519 AAAA",
                                           "proxy": {"host": "j", "hostKey": "ssh-dss AAAA"}}))


def test_secret_command_checks() -> None:
    key = Res(type=pp.IAM_ACCESS_KEY, name="ak", urn="urn:ak", props={})
    plain_key = Res(type=pp.IAM_ROLE, name="role", urn="urn:role", props={})

    def cmd(dep_key: str, dep: str, outputs: tuple[str, ...] = ()) -> Res:
        return Res(type=pp.REMOTE_COMMAND, name="c", urn="urn:c", props={"create": "x"},
                   property_dependencies={dep_key: (dep,)}, additional_secret_outputs=outputs)

    assert pp.remote_command_no_secret_on_command_line([key, cmd("stdin", "urn:ak")]) == []
    assert pp.remote_command_no_secret_on_command_line([key, cmd("create", "urn:ak")])
    assert pp.remote_command_no_secret_on_command_line([key, cmd("environment", "urn:ak")])
    assert pp.remote_command_no_secret_on_command_line([plain_key, cmd("create", "urn:role")]) == []
    assert pp.remote_command_secret_stdin_hides_output([key, cmd("stdin", "urn:ak", ("stdout", "stderr"))]) == []
    assert pp.remote_command_secret_stdin_hides_output([key, cmd("stdin", "urn:ak", ("stdout",))])
    assert pp.remote_command_secret_stdin_hides_output([plain_key, cmd("stdin", "urn:role")]) == []


def test_cluster_checks() -> None:
    node = Res(type=pp.EC2_NODE, name="n1", urn="urn:n1", props={})
    path = Res(type="mariadb-kms:index:Verification", name="v", urn="urn:v", props={}, parent="urn:n1")
    verify = Res(type=pp.REMOTE_COMMAND, name="run", urn="urn:run", props={"create": "mariadb-kms-verify"},
                 parent="urn:v")
    assert pp.every_node_verified([node, path, verify]) == []
    assert pp.every_node_verified([node, path])
    boot = Res(type=pp.REMOTE_COMMAND, name="b", urn="urn:b", props={"create": "mariadb-kms-bootstrap"},
               ignore_changes=("connection", "create", "triggers", "stdin"))
    assert pp.exactly_one_bootstrap([boot]) == []
    assert pp.exactly_one_bootstrap([])
    assert pp.exactly_one_bootstrap([boot, boot])
    assert pp.exactly_one_bootstrap([Res(type=pp.REMOTE_COMMAND, name="b", urn="urn:b",
                                         props={"create": "mariadb-kms-bootstrap"})])


def test_the_entry_point_builds_a_pack_of_every_policy() -> None:
    names = [p.name for p in pp.policies()]
    assert sorted(names) == sorted(ALL_POLICIES) and len(names) == len(set(names))
    levels = {p.name: p.enforcement_level for p in pp.policies()}
    assert {n for n, lvl in levels.items() if lvl == EnforcementLevel.ADVISORY} == {
        "kms-key-deletion-window-30", "key-policy-node-decrypt-context"}


def test_the_entry_point_serves_the_pack_as_the_cli_would_start_it() -> None:
    # The CLI starts the pack's program and reads the port of its analyzer from the first line of stdout, then
    # talks gRPC on loopback: do the same, and analyze a key that does not rotate.
    policy_dir = Path(pp.__file__).resolve().parent
    proc = subprocess.Popen([sys.executable, "-u", "__main__.py"], cwd=policy_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
            assert info.name == PACK
            assert {p.name for p in info.policies} == ALL_POLICIES
            request = proto.AnalyzeRequest(type=pp.KMS_KEY, name="k", urn="urn:k",
                                           properties=_struct({"enableKeyRotation": False}),
                                           options=proto.AnalyzerResourceOptions(protect=True))
            diags = stub.Analyze(request, timeout=30).diagnostics
            assert [(d.policyName, d.enforcementLevel) for d in diags] == [("kms-key-rotation", proto.MANDATORY)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
