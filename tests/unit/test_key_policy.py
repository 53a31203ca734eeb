"""The key policy and node trust policy as data: who may do what, under which conditions."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path
from typing import Any

import parliament
import pytest
from mocks import ACCOUNT_ID, allowed_actions, grants, statement_principals

from components import key_policy as kp

ADMIN_A = f"arn:aws:iam::{ACCOUNT_ID}:role/ops/kms-admin"
ADMIN_B = f"arn:aws:iam::{ACCOUNT_ID}:role/kms-breakglass"
DEPLOYER = f"arn:aws:iam::{ACCOUNT_ID}:role/ci/pulumi-deployer"
NODE_ROLE = f"arn:aws:iam::{ACCOUNT_ID}:role/mariadb-kms/node-identity-role-1a2b3c4"
ONPREM_USER = f"arn:aws:iam::{ACCOUNT_ID}:user/mariadb-kms/onprem-identity-user-5d6e7f8"
VPCE = "vpce-0a1b2c3d4e5f60718"
ROOT = f"arn:aws:iam::{ACCOUNT_ID}:root"

# Every KMS action AWS defines (from parliament's copy of the IAM reference),
# so "only these actions" is checked against all of them, not a hand list.
KMS_ACTIONS = sorted(
    "kms:" + p["privilege"] for s in parliament.iam_definition if s["prefix"] == "kms" for p in s["privileges"]
)
# Operations that touch key material or let someone else do so.
CRYPTO = {
    "kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext", "kms:GenerateDataKeyWithoutPlaintext", "kms:GenerateMac",
    "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:Sign", "kms:Verify", "kms:VerifyMac", "kms:DeriveSharedSecret",
    "kms:CreateGrant", "kms:RetireGrant",
}
GENERATE = {a for a in KMS_ACTIONS if a.startswith("kms:GenerateDataKey")}


def policy(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "account_id": ACCOUNT_ID,
        "partition": "aws",
        "region": "eu-west-1",
        "admins": [ADMIN_A, ADMIN_B],
        "deployers": [DEPLOYER],
        "node_role_arn": NODE_ROLE,
        "onprem_user_arns": [ONPREM_USER],
        "onprem_egress_cidrs": [],
        "kms_vpc_endpoint_id": None,
        "allow_account_root_iam_delegation": False,
    }
    args.update(changes)
    return kp.key_policy(**args)


def by_sid(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in doc["Statement"]}


def test_the_universe_is_real() -> None:
    # Guards the tests below: an empty or tiny universe would make "only" checks vacuous.
    assert len(KMS_ACTIONS) > 40
    assert {"kms:Decrypt", "kms:PutKeyPolicy", "kms:GenerateDataKeyWithoutPlaintext"} <= set(KMS_ACTIONS)


def test_admins_get_administrative_actions_only() -> None:
    doc = policy()
    admins = by_sid(doc)[kp.SID_ADMINS]
    assert statement_principals(admins) == sorted([ADMIN_A, ADMIN_B])
    assert "Condition" not in admins
    for admin in (ADMIN_A, ADMIN_B):
        got = allowed_actions(doc, admin, KMS_ACTIONS)
        assert got & CRYPTO == set(), f"{admin} may {sorted(got & CRYPTO)}"
        assert {"kms:PutKeyPolicy", "kms:EnableKeyRotation", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
                "kms:TagResource", "kms:CreateAlias", "kms:DescribeKey"} <= got
        assert got == set(kp.ADMIN_ACTIONS)


def test_admin_actions_contain_no_wildcards() -> None:
    # kms:Create* would include CreateGrant, through which an admin could grant itself Decrypt.
    assert all("*" not in a for a in kp.ADMIN_ACTIONS)
    assert "kms:CreateGrant" not in kp.ADMIN_ACTIONS


def test_deployers_wrap_without_condition_and_never_read() -> None:
    doc = policy()
    assert allowed_actions(doc, DEPLOYER, KMS_ACTIONS, unconditional=True) == {
        "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey",
    }
    for action in ("kms:GenerateDataKey", "kms:GenerateDataKeyPair", "kms:Encrypt", "kms:PutKeyPolicy"):
        assert grants(doc, DEPLOYER, action) == [], action


def test_deployers_decrypt_only_through_ec2_in_this_account() -> None:
    doc = policy()
    through_ec2 = {"kms:ViaService": "ec2.eu-west-1.amazonaws.com", "kms:CallerAccount": ACCOUNT_ID}
    for action in ("kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"):
        conditions = grants(doc, DEPLOYER, action)
        assert conditions, action
        for cond in conditions:
            assert cond is not None and cond["StringEquals"] == through_ec2, (action, cond)
    everything_via_ec2 = allowed_actions(doc, DEPLOYER, KMS_ACTIONS)
    assert everything_via_ec2 == {
        "kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
        "kms:ReEncryptFrom", "kms:ReEncryptTo",
    }


def test_deployers_grant_only_to_aws_resources_through_ec2() -> None:
    doc = policy()
    [cond] = grants(doc, DEPLOYER, "kms:CreateGrant")
    assert cond == {
        "Bool": {"kms:GrantIsForAWSResource": "true"},
        "StringEquals": {"kms:ViaService": "ec2.eu-west-1.amazonaws.com", "kms:CallerAccount": ACCOUNT_ID},
    }


@pytest.mark.parametrize("node", [NODE_ROLE, ONPREM_USER])
def test_nodes_unwrap_and_describe_only(node: str) -> None:
    doc = policy()
    assert allowed_actions(doc, node, KMS_ACTIONS) == {"kms:Decrypt", "kms:DescribeKey"}
    for action in sorted(GENERATE | set(kp.ADMIN_ACTIONS) - {"kms:DescribeKey"}):
        assert grants(doc, node, action) == [], action


def test_nobody_but_nodes_decrypts_outside_ec2() -> None:
    doc = policy(allow_account_root_iam_delegation=False)
    principals = {p for s in doc["Statement"] for p in statement_principals(s)}
    for principal in principals - {NODE_ROLE, ONPREM_USER}:
        for cond in grants(doc, principal, "kms:Decrypt"):
            assert cond is not None and cond["StringEquals"]["kms:ViaService"].startswith("ec2."), principal


def test_node_conditions_absent_unless_configured() -> None:
    sids = by_sid(policy())
    assert "Condition" not in sids[kp.SID_EC2_NODES]
    assert "Condition" not in sids[kp.SID_ONPREM_NODES]


def test_ec2_role_limited_to_the_vpc_endpoint() -> None:
    sids = by_sid(policy(kms_vpc_endpoint_id=VPCE))
    assert sids[kp.SID_EC2_NODES]["Condition"] == {"StringEquals": {"aws:SourceVpce": VPCE}}
    assert "Condition" not in sids[kp.SID_ONPREM_NODES]


def test_onprem_user_limited_to_egress_cidrs() -> None:
    sids = by_sid(policy(onprem_egress_cidrs=["203.0.113.7/32", "198.51.100.0/28", "203.0.113.7/32"]))
    assert sids[kp.SID_ONPREM_NODES]["Condition"] == {
        "IpAddress": {"aws:SourceIp": ["198.51.100.0/28", "203.0.113.7/32"]}
    }
    assert "Condition" not in sids[kp.SID_EC2_NODES]


def test_node_statements_only_for_identities_that_exist() -> None:
    assert kp.SID_EC2_NODES not in by_sid(policy(node_role_arn=None, kms_vpc_endpoint_id=VPCE))
    assert kp.SID_ONPREM_NODES not in by_sid(policy(onprem_user_arns=(), onprem_egress_cidrs=["203.0.113.0/28"]))


def test_account_root_statement_only_with_the_switch() -> None:
    off = policy()
    assert kp.SID_ROOT not in by_sid(off)
    assert not any(p.endswith(":root") for s in off["Statement"] for p in statement_principals(s))
    assert not any("kms:*" in s["Action"] for s in off["Statement"])

    on = policy(allow_account_root_iam_delegation=True)
    root = by_sid(on)[kp.SID_ROOT]
    assert statement_principals(root) == [ROOT]
    assert root["Action"] == ["kms:*"] and "Condition" not in root
    # The switch adds delegation and changes nothing else.
    assert [s for s in on["Statement"] if s["Sid"] != kp.SID_ROOT] == off["Statement"]


def test_partition_and_region_reach_arns_and_service_names() -> None:
    doc = policy(partition="aws-cn", region="cn-north-1", allow_account_root_iam_delegation=True)
    sids = by_sid(doc)
    assert statement_principals(sids[kp.SID_ROOT]) == [f"arn:aws-cn:iam::{ACCOUNT_ID}:root"]
    assert sids[kp.SID_DEPLOYERS_EC2]["Condition"]["StringEquals"]["kms:ViaService"] == (
        "ec2.cn-north-1.amazonaws.com.cn"
    )
    with pytest.raises(ValueError, match="partition"):
        policy(partition="aws-moon")


def test_every_principal_kind_required() -> None:
    with pytest.raises(ValueError, match="administrator"):
        policy(admins=[])
    with pytest.raises(ValueError, match="deployer"):
        policy(deployers=[])


def test_stable_sids_and_order() -> None:
    doc = policy(allow_account_root_iam_delegation=True)
    assert [s["Sid"] for s in doc["Statement"]] == [
        kp.SID_ROOT, kp.SID_ADMINS, kp.SID_DEPLOYERS_WRAP, kp.SID_DEPLOYERS_EC2, kp.SID_DEPLOYERS_EC2_GRANT,
        kp.SID_EC2_NODES, kp.SID_ONPREM_NODES,
    ]
    assert len({s["Sid"] for s in doc["Statement"]}) == len(doc["Statement"])
    assert all(s["Resource"] == "*" and s["Effect"] == "Allow" for s in doc["Statement"])


def test_same_inputs_same_bytes_whatever_the_order() -> None:
    full: dict[str, Any] = {
        "admins": [ADMIN_A, ADMIN_B, ADMIN_A],
        "deployers": [DEPLOYER, ADMIN_B],
        "onprem_egress_cidrs": ["203.0.113.7/32", "198.51.100.0/28"],
        "kms_vpc_endpoint_id": VPCE,
        "allow_account_root_iam_delegation": True,
    }
    first = kp.render_policy(policy(**full))
    rng = random.Random(7)
    for _ in range(5):
        shuffled = {k: (rng.sample(v, len(v)) if isinstance(v, list) else v) for k, v in full.items()}
        assert kp.render_policy(policy(**shuffled)) == first
    assert json.loads(first) == policy(**full)
    assert kp.render_policy(policy(**{**full, "admins": [ADMIN_A]})) != first


def test_node_trust_policy_trusts_ec2_only() -> None:
    doc = kp.node_trust_policy("aws")
    [stmt] = doc["Statement"]
    assert stmt["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert stmt["Action"] == "sts:AssumeRole" and stmt["Effect"] == "Allow"
    assert "Condition" not in stmt
    assert kp.node_trust_policy("aws-cn")["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com.cn"}
    assert kp.render_policy(kp.node_trust_policy("aws")) == kp.render_policy(kp.node_trust_policy("aws"))


def test_onprem_source_cidrs_joins_shared_and_per_node() -> None:
    cidrs, warnings = kp.onprem_source_cidrs(["198.51.100.0/28"], {"dc-1": "203.0.113.7/32", "dc-2": None})
    assert cidrs == ("198.51.100.0/28", "203.0.113.7/32")
    assert warnings == ()  # dc-2 is covered by the shared list
    cidrs, warnings = kp.onprem_source_cidrs([], {"dc-1": "203.0.113.7/32", "dc-2": None})
    assert cidrs == ("203.0.113.7/32",)
    assert len(warnings) == 1 and "dc-2" in warnings[0] and "dc-1" not in warnings[0]
    assert kp.onprem_source_cidrs([], {"dc-1": None}) == ((), ())


def test_policy_module_is_pure() -> None:
    tree = ast.parse(Path(kp.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"pulumi", "pulumi_aws", "boto3", "botocore"}, imported
