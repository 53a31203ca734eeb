"""The whole program under mocks, in up and in preview mode."""

from __future__ import annotations

import json
import re
from typing import Any

import pulumi
import pytest
from mocks import (
    ACCOUNT_ID,
    DEPLOYER_ROLE_ARN,
    DEPLOYER_ROLE_NAME,
    KMS_ADMIN_ARN,
    PLANTED_ACCESS_KEY_SECRET,
    PLANTED_SECRETS,
    REGION,
    UNKNOWN,
    Invokes,
    Recording,
    RegisteredResource,
    StackOutput,
    Types,
    grants,
    plaintext_leaks,
    run_program,
)
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings

from components import key_policy as kp
from components.deployer import issuer_role_arn, lockout_warning

OUTPUTS = (
    "kmsKeyArn", "kmsKeyId", "kmsAliasName", "nodeRoleArn", "instanceProfileName",
    "onPremUserName", "onPremAccessKeyId", "clusterDataKeyCiphertext",
    "nodes", "galeraClusterAddress", "verification", "clusterCaCertificate",
)
COMPONENTS = {
    Types.ENCRYPTION_KEY: {Types.KMS_KEY, Types.KMS_ALIAS},
    Types.NODE_IDENTITY: {Types.IAM_ROLE, Types.IAM_INSTANCE_PROFILE},
    Types.ONPREM_IDENTITY: {Types.IAM_USER, Types.IAM_ACCESS_KEY},
    Types.CLUSTER_DATA_KEY: {Types.DATA_KEY},
}
MODES = pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])


def up(config: dict[str, Any], **kw: Any) -> Recording:
    return run_program(config, preview=False, **kw)


def key_policy_of(rec: Recording) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(rec.one(Types.KMS_KEY).input("policy"))
    return doc


def errors_about(rec: Recording, key: str) -> list[str]:
    return [e for e in rec.errors if re.match(rf"{re.escape(key)}(?![A-Za-z0-9])", e)]


def sid(doc: dict[str, Any], name: str) -> dict[str, Any]:
    [stmt] = [s for s in doc["Statement"] if s["Sid"] == name]
    return stmt


# -- shape -------------------------------------------------------------------


@MODES
def test_every_resource_in_its_component(full_config: dict[str, Any], preview: bool) -> None:
    rec = run_program(full_config, preview=preview)
    # The AWS-side components are exact here; the cluster's tree is tested in test_cluster_program.py.
    assert set(COMPONENTS) | set().union(*COMPONENTS.values()) <= {r.type for r in rec.resources}
    stack_urn = "urn:pulumi:dev::mariadb-kms::pulumi:pulumi:Stack::mariadb-kms-dev"
    for component_type, child_types in COMPONENTS.items():
        component = rec.one(component_type)
        assert component_type.startswith("mariadb-kms:index:")
        assert component.parent_urn == stack_urn
        assert component.options is not None and component.options.parent is None
        children = rec.children_of(component)
        assert {c.type for c in children} == child_types, component_type
        for child in children:
            # Parented by option (what the program said) and by registration (what the engine saw).
            assert child.options is not None and child.options.parent == component.urn, child.name
    for res in rec.resources:
        if not res.type.startswith("mariadb-kms:index:"):
            assert res.parent_urn != stack_urn, f"{res.type} {res.name} is not inside a component"


def test_preview_registers_what_up_registers(full_config: dict[str, Any]) -> None:
    # A resource created inside an apply would be missing here (its input is unknown in preview).
    assert run_program(full_config, preview=True).identities() == up(full_config).identities()


def test_key_properties(full_config: dict[str, Any]) -> None:
    rec = up(full_config)
    key = rec.one(Types.KMS_KEY)
    assert key.input("enableKeyRotation") is True
    assert key.input("rotationPeriodInDays") == 180
    assert key.input("deletionWindowInDays") == 21
    assert key.input("customerMasterKeySpec") == "SYMMETRIC_DEFAULT"
    assert key.input("keyUsage") == "ENCRYPT_DECRYPT"
    assert "dev" in key.input("description")
    assert key.input("tags") == {"owner": "dba-team", "cost-center": "db-42", "project": "mariadb-kms", "stack": "dev"}
    assert key.options is not None
    assert key.options.protect is True and key.options.retain_on_delete is True
    alias = rec.one(Types.KMS_ALIAS)
    assert alias.input("name") == "alias/mariadb-kms-dev"
    assert alias.input("targetKeyId") == key.state["keyId"]


def test_key_defaults_and_alias_per_stack(full_config: dict[str, Any]) -> None:
    del full_config["keyRotationPeriodDays"], full_config["keyDeletionWindowDays"]
    dev = up(full_config)
    assert dev.one(Types.KMS_KEY).input("rotationPeriodInDays") == 365
    assert dev.one(Types.KMS_KEY).input("deletionWindowInDays") == 30
    prod = up(full_config, stack="prod")
    # Two stacks in one account and region never collide on the alias.
    assert dev.one(Types.KMS_ALIAS).input("name") == "alias/mariadb-kms-dev"
    assert prod.one(Types.KMS_ALIAS).input("name") == "alias/mariadb-kms-prod"
    named = up({**full_config, "keyAlias": "alias/payments-db"})
    assert named.one(Types.KMS_ALIAS).input("name") == "alias/payments-db"
    assert named.outputs["kmsAliasName"].value == "alias/payments-db"


def test_node_role_trusts_ec2_and_has_no_policies(full_config: dict[str, Any]) -> None:
    rec = up(full_config)
    role = rec.one(Types.IAM_ROLE)
    trust = json.loads(role.input("assumeRolePolicy"))
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}]
    assert not {"managedPolicyArns", "inlinePolicies", "permissionsBoundary"} & set(role.inputs)
    assert rec.of_type(Types.IAM_ROLE_POLICY_ATTACHMENT) == []
    assert rec.one(Types.IAM_INSTANCE_PROFILE).input("role") == role.state["name"]


def test_ssm_switch_attaches_the_managed_policy(full_config: dict[str, Any]) -> None:
    rec = up({**full_config, "attachSsmManagedPolicy": True})
    [attachment] = rec.of_type(Types.IAM_ROLE_POLICY_ATTACHMENT)
    assert attachment.input("policyArn") == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    assert attachment.input("role") == rec.one(Types.IAM_ROLE).state["name"]
    assert attachment.options is not None
    assert attachment.options.parent == rec.one(Types.NODE_IDENTITY).urn


def test_onprem_user_and_access_key(full_config: dict[str, Any]) -> None:
    rec = up(full_config)
    user = rec.one(Types.IAM_USER)
    assert user.input("path") == "/mariadb-kms/"
    key = rec.one(Types.IAM_ACCESS_KEY)
    assert key.input("user") == user.state["name"]
    assert {"secret", "sesSmtpPasswordV4"} <= set(key.secret_outputs)
    assert rpc.is_rpc_secret(key.state["secret"])
    assert rec.outputs["onPremAccessKeyId"].value == {"dc-1": key.id} and key.id.startswith("AKIA")


def test_data_key_waits_for_the_key_and_outlives_the_stack(full_config: dict[str, Any]) -> None:
    rec = up(full_config)
    component = rec.one(Types.CLUSTER_DATA_KEY)
    key_component = rec.one(Types.ENCRYPTION_KEY)
    assert component.options is not None and key_component.urn in component.options.depends_on
    data_key = rec.one(Types.DATA_KEY)
    key = rec.one(Types.KMS_KEY)
    assert data_key.input("key_arn") == key.state["arn"]
    # The registration waited on the key (its ARN flows in, and its policy is part of the key).
    assert key.urn in data_key.dependencies or key_component.urn in data_key.dependencies
    assert data_key.options is not None
    assert data_key.options.protect is True and data_key.options.retain_on_delete is True


def test_escrow_switch_reaches_the_data_key(full_config: dict[str, Any]) -> None:
    assert up({**full_config, "escrowDataKeyInSsm": False}).one(Types.DATA_KEY).input("escrow_in_ssm") is False
    data_key = up({**full_config, "escrowDataKeyInSsm": True}).one(Types.DATA_KEY)
    assert data_key.input("escrow_in_ssm") is True
    assert "dev" in data_key.input("escrow_parameter_name")


# -- the key policy the program sends ----------------------------------------


def test_program_key_policy_names_the_real_identities(full_config: dict[str, Any]) -> None:
    rec = up(full_config)
    doc = key_policy_of(rec)
    role_arn = rec.one(Types.IAM_ROLE).state["arn"]
    user_arn = rec.one(Types.IAM_USER).state["arn"]
    context = {
        "kms:EncryptionContext:mariadb-kms:cluster": "mariadb-kms", "kms:EncryptionContext:mariadb-kms:stack": "dev"
    }
    assert grants(doc, role_arn, "kms:Decrypt") == [
        {"StringEquals": {"aws:SourceVpce": "vpce-0a1b2c3d4e5f60718", **context}}
    ]
    assert grants(doc, user_arn, "kms:Decrypt") == [
        {"IpAddress": {"aws:SourceIp": ["203.0.113.0/28", "203.0.113.7/32"]}, "StringEquals": context}
    ]
    assert sid(doc, kp.SID_ADMINS)["Principal"]["AWS"] == sorted([KMS_ADMIN_ARN, DEPLOYER_ROLE_ARN])
    assert kp.SID_ROOT not in {s["Sid"] for s in doc["Statement"]}


def test_deployer_is_the_role_with_its_path_not_the_session(full_config: dict[str, Any]) -> None:
    first = up(full_config, caller_session="ci-run-1")
    second = up(full_config, caller_session="ci-run-2")
    doc = key_policy_of(first)
    assert sid(doc, kp.SID_DEPLOYERS_WRAP)["Principal"]["AWS"] == [DEPLOYER_ROLE_ARN]
    assert "sts::" not in json.dumps(doc)
    # The naive rewrite of the session ARN loses the role's path.
    assert f"role/{DEPLOYER_ROLE_NAME}" not in json.dumps(doc)
    [session] = [i for i in first.invokes if i.token == Invokes.SESSION_CONTEXT]
    assert session.args["arn"].endswith(f"assumed-role/{DEPLOYER_ROLE_NAME}/ci-run-1")
    # A new session must not change the policy, or every up would show a diff.
    assert first.one(Types.KMS_KEY).input("policy") == second.one(Types.KMS_KEY).input("policy")


def test_configured_deployers_replace_the_deploying_identity(full_config: dict[str, Any]) -> None:
    other = f"arn:aws:iam::{ACCOUNT_ID}:role/release/deployer"
    doc = key_policy_of(up({**full_config, "deployers": [other]}))
    assert sid(doc, kp.SID_DEPLOYERS_WRAP)["Principal"]["AWS"] == [other]
    assert sid(doc, kp.SID_DEPLOYERS_EC2)["Principal"]["AWS"] == [other]


def test_root_delegation_switch_reaches_the_policy(full_config: dict[str, Any]) -> None:
    doc = key_policy_of(up({**full_config, "allowAccountRootIamDelegation": True}))
    assert sid(doc, kp.SID_ROOT)["Principal"]["AWS"] == [f"arn:aws:iam::{ACCOUNT_ID}:root"]


def test_policy_conditions_absent_when_not_configured(full_config: dict[str, Any]) -> None:
    full_config["onPremNodes"][0].pop("egressCidr")
    doc = key_policy_of(up({**full_config, "onPremEgressCidrs": [], "kmsVpcEndpointId": ""}))
    assert "Condition" not in sid(doc, kp.SID_EC2_NODES)
    assert "Condition" not in sid(doc, kp.SID_ONPREM_NODES)


def test_deployer_outside_key_admins_is_warned_about(full_config: dict[str, Any]) -> None:
    assert up(full_config).warnings == []
    rec = up({**full_config, "keyAdmins": [KMS_ADMIN_ARN, f"arn:aws:iam::{ACCOUNT_ID}:role/kms-breakglass"]})
    [warning] = rec.warnings
    assert DEPLOYER_ROLE_ARN in warning and "keyAdmins" in warning
    assert up({**full_config, "keyAdmins": [KMS_ADMIN_ARN], "allowAccountRootIamDelegation": True}).warnings == [
        "keyAdmins has one role: losing it leaves the key without an administrator; two are recommended"
    ]


def test_onprem_node_without_egress_cidr_is_warned_about(full_config: dict[str, Any]) -> None:
    nodes = [*full_config["onPremNodes"], {**full_config["onPremNodes"][0], "name": "dc-2", "address": "192.0.2.22"}]
    nodes[1].pop("egressCidr")
    rec = up({**full_config, "onPremNodes": nodes, "onPremEgressCidrs": []})
    assert any("dc-2" in w and "aws:SourceIp" in w for w in rec.warnings), rec.warnings


# -- outputs -----------------------------------------------------------------


@MODES
def test_outputs_are_the_contract(full_config: dict[str, Any], preview: bool) -> None:
    rec = run_program(full_config, preview=preview)
    assert tuple(rec.outputs) == OUTPUTS
    assert all(re.fullmatch(r"[a-z]+([A-Z][a-z0-9]*)*", name) for name in rec.outputs)
    assert not [name for name, out in rec.outputs.items() if out.secret]


def test_output_values_in_up(full_config: dict[str, Any]) -> None:
    rec = up(full_config)
    values = {name: out.value for name, out in rec.outputs.items()}
    assert all(out.known for out in rec.outputs.values())
    assert values["kmsKeyArn"] == rec.one(Types.KMS_KEY).state["arn"]
    assert values["kmsKeyArn"].startswith(f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/")
    assert values["kmsKeyId"] == rec.one(Types.KMS_KEY).state["keyId"]
    assert values["nodeRoleArn"] == rec.one(Types.IAM_ROLE).state["arn"]
    assert values["instanceProfileName"] == rec.one(Types.IAM_INSTANCE_PROFILE).state["name"]
    assert values["onPremUserName"] == {"dc-1": rec.one(Types.IAM_USER).state["name"]}
    assert values["clusterDataKeyCiphertext"] == rec.one(Types.DATA_KEY).state["ciphertext_blob"]


def test_preview_has_unknowns_where_a_real_preview_has_them(full_config: dict[str, Any]) -> None:
    rec = run_program(full_config, preview=True)
    assert rec.outputs["kmsKeyArn"] == StackOutput(UNKNOWN, secret=False, known=False)
    assert rec.outputs["clusterDataKeyCiphertext"].known is False
    assert rec.outputs["kmsAliasName"] == StackOutput("alias/mariadb-kms-dev", secret=False, known=True)
    key = rec.one(Types.KMS_KEY)
    # The policy names the node role, whose ARN AWS assigns at create time.
    assert key.inputs["policy"] is UNKNOWN
    assert key.input("rotationPeriodInDays") == 180 and key.options is not None and key.options.protect is True


def test_only_ec2_nodes(full_config: dict[str, Any]) -> None:
    rec = up({**full_config, "onPremNodes": []})
    assert rec.of_type(Types.ONPREM_IDENTITY) == rec.of_type(Types.IAM_USER) == rec.of_type(Types.IAM_ACCESS_KEY) == []
    assert tuple(rec.outputs) == OUTPUTS
    assert rec.outputs["onPremUserName"] == StackOutput(None, secret=False, known=True)
    assert rec.outputs["onPremAccessKeyId"] == StackOutput(None, secret=False, known=True)
    assert kp.SID_ONPREM_NODES not in {s["Sid"] for s in key_policy_of(rec)["Statement"]}


def test_only_onprem_nodes(full_config: dict[str, Any]) -> None:
    config = {k: v for k, v in full_config.items() if k not in ("vpcId", "amiId", "sshAuthorizedKey")}
    rec = up({**config, "ec2Nodes": []})
    assert rec.of_type(Types.NODE_IDENTITY) == rec.of_type(Types.IAM_ROLE) == []
    assert tuple(rec.outputs) == OUTPUTS
    assert rec.outputs["nodeRoleArn"].value is None and rec.outputs["instanceProfileName"].value is None
    assert kp.SID_EC2_NODES not in {s["Sid"] for s in key_policy_of(rec)["Statement"]}


# -- secrets -----------------------------------------------------------------


@MODES
def test_no_secret_in_plain_text(full_config: dict[str, Any], preview: bool) -> None:
    rec = run_program(full_config, preview=preview)
    assert plaintext_leaks(rec) == []


def test_the_planted_secret_is_really_there_as_a_secret(full_config: dict[str, Any]) -> None:
    # Otherwise the scan above would pass for want of anything to find.
    rec = up(full_config)
    state = rec.one(Types.IAM_ACCESS_KEY).state
    assert rpc.unwrap_rpc_secret(state["secret"]) == PLANTED_ACCESS_KEY_SECRET


def test_leak_scanner_finds_a_planted_leak(full_config: dict[str, Any]) -> None:
    rec = up(full_config)
    rec.outputs["extra"] = StackOutput({"nested": [f"key={PLANTED_SECRETS[1]}"]}, secret=False, known=True)
    rec.outputs["hidden"] = StackOutput(PLANTED_SECRETS[2], secret=True, known=True)
    user: RegisteredResource = rec.one(Types.IAM_USER)
    user.inputs["tags"] = {"note": PLANTED_SECRETS[0]}
    user.inputs["path"] = rpc.wrap_rpc_secret(PLANTED_SECRETS[2])
    rec.warnings.append(f"oops {PLANTED_SECRETS[2]}")
    leaks = plaintext_leaks(rec)
    assert len(leaks) == 3, leaks
    assert any(leak.startswith("output extra.nested[0]") for leak in leaks)
    assert any("input.tags.note" in leak for leak in leaks)
    assert any(leak.startswith("log") for leak in leaks)


# -- config errors -----------------------------------------------------------


@MODES
def test_bad_config_reports_every_error_and_registers_nothing(full_config: dict[str, Any], preview: bool) -> None:
    bad = {
        **full_config,
        "keyAlias": "payments-db",
        "encryptTables": "YES",
        "encryptionThreads": 0,
        "keyManagement": "vault",
        "keyAdmins": ["arn:aws:iam::123456789012:user/alice"],
    }
    rec = run_program(bad, preview=preview, expect_failure=True)
    assert isinstance(rec.exception, pulumi.RunError)
    assert "5 configuration error(s)" in str(rec.exception)
    for key in ("keyAlias", "encryptTables", "encryptionThreads", "keyManagement", "keyAdmins"):
        assert len(errors_about(rec, f"mariadb-kms:{key}")) == 1, (key, rec.errors)
    assert len(rec.errors) == 5
    assert rec.resources == [] and rec.invokes == []


def test_missing_region_is_a_config_error(full_config: dict[str, Any]) -> None:
    rec = run_program(full_config, preview=False, region=None, expect_failure=True)
    assert errors_about(rec, "aws:region"), rec.errors
    assert rec.resources == []


def test_misspelt_key_is_a_config_error(full_config: dict[str, Any]) -> None:
    rec = run_program({**full_config, "keyAdmin": [KMS_ADMIN_ARN]}, preview=False, expect_failure=True)
    assert errors_about(rec, "mariadb-kms:keyAdmin"), rec.errors


# -- the harness itself ------------------------------------------------------


def test_runs_do_not_leak_into_each_other(full_config: dict[str, Any]) -> None:
    with_ssm = up({**full_config, "attachSsmManagedPolicy": True})
    failed = run_program({**full_config, "encryptTables": "YES"}, preview=True, expect_failure=True)
    without = up(full_config)
    assert len(with_ssm.of_type(Types.IAM_ROLE_POLICY_ATTACHMENT)) == 1
    assert failed.resources == [] and failed.outputs == {}
    assert without.of_type(Types.IAM_ROLE_POLICY_ATTACHMENT) == []
    assert without.identities() | {(Types.IAM_ROLE_POLICY_ATTACHMENT, "node-identity-ssm")} == with_ssm.identities()
    assert without.warnings == [] and without.errors == []
    # Nothing of the runs is left in the test's own context.
    assert pulumi_settings.get_root_resource() is None


def test_harness_records_options_it_was_not_told_about(full_config: dict[str, Any]) -> None:
    # A control for the option recording: a resource given no options records the defaults, not True.
    user = up(full_config).one(Types.IAM_USER)
    assert user.options is not None
    assert user.options.protect is None and user.options.retain_on_delete is None
    assert user.options.depends_on == () and user.options.delete_before_replace is None


# -- the deploying identity --------------------------------------------------


def test_issuer_role_arn_rewrites_sessions_only() -> None:
    assert issuer_role_arn(f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/pulumi-deployer/ci-run-1") == (
        f"arn:aws:iam::{ACCOUNT_ID}:role/pulumi-deployer"
    )
    assert issuer_role_arn(f"arn:aws-cn:sts::{ACCOUNT_ID}:assumed-role/deployer/botocore-session-17") == (
        f"arn:aws-cn:iam::{ACCOUNT_ID}:role/deployer"
    )
    for arn in (DEPLOYER_ROLE_ARN, f"arn:aws:iam::{ACCOUNT_ID}:user/ops/alice"):
        assert issuer_role_arn(arn) == arn
    for arn in (f"arn:aws:iam::{ACCOUNT_ID}:root", f"arn:aws:sts::{ACCOUNT_ID}:federated-user/bob"):
        with pytest.raises(ValueError, match="not an IAM role or user"):
            issuer_role_arn(arn)


def test_lockout_warning_only_when_the_deployer_cannot_manage_the_key() -> None:
    assert lockout_warning(DEPLOYER_ROLE_ARN, [KMS_ADMIN_ARN, DEPLOYER_ROLE_ARN], False) is None
    assert lockout_warning(DEPLOYER_ROLE_ARN, [KMS_ADMIN_ARN], True) is None
    warning = lockout_warning(DEPLOYER_ROLE_ARN, [KMS_ADMIN_ARN], False)
    assert warning is not None and DEPLOYER_ROLE_ARN in warning


def test_a_plain_iam_user_deploys_as_itself(full_config: dict[str, Any]) -> None:
    alice = f"arn:aws:iam::{ACCOUNT_ID}:user/ops/alice"
    # keyAdmins takes roles only, so a user deployer can manage the key only through IAM delegation.
    rec = up({**full_config, "allowAccountRootIamDelegation": True}, caller_arn=alice)
    assert sid(key_policy_of(rec), kp.SID_DEPLOYERS_WRAP)["Principal"]["AWS"] == [alice]
    assert rec.warnings == []
    warned = up(full_config, caller_arn=alice)
    assert len(warned.warnings) == 1 and alice in warned.warnings[0]


def test_the_account_root_cannot_deploy(full_config: dict[str, Any]) -> None:
    rec = run_program(full_config, preview=True, caller_arn=f"arn:aws:iam::{ACCOUNT_ID}:root", expect_failure=True)
    assert "not an IAM role or user" in str(rec.exception)
