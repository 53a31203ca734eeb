"""Every IAM document the program sends passes parliament, except for a short, justified allow-list."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from mocks import Types, run_program
from mocks import full_config as make_config
from parliament import analyze_policy_string

from components import key_policy as kp

KEY = "key policy"
TRUST = "trust policy"
TRUST_PROBE = "trust policy with a placeholder Resource"
TRUST_NO_RESOURCE = "Statement contains neither Resource nor NotResource"

# (document kind, statement Sid or "*", parliament issue, required detail or None) -> why it is accepted.
ALLOWED: dict[tuple[str, str, str, str | None], str] = {
    (KEY, "*", "RESOURCE_STAR", None):
        'A key policy is attached to one key, and its Resource must be "*", meaning that key.',
    (KEY, kp.SID_ADMINS, "PERMISSIONS_MANAGEMENT_ACTIONS", None):
        "Administrators exist to manage the key policy (PutKeyPolicy) and grants (RevokeGrant).",
    (KEY, kp.SID_ROOT, "PERMISSIONS_MANAGEMENT_ACTIONS", None):
        "The account-root statement is the opt-in IAM delegation switch; its trade-off is documented with it.",
    (KEY, kp.SID_DEPLOYERS_EC2_GRANT, "PERMISSIONS_MANAGEMENT_ACTIONS", None):
        "EC2 needs a grant to use the key for EBS volumes; the grant is limited to AWS resources via EC2.",
    (KEY, kp.SID_ADMINS_REWRAP_GRANT, "PERMISSIONS_MANAGEMENT_ACTIONS", None):
        "Admins make the temporary grant a move to another key needs: ReEncrypt only, to a deployer only, bound to "
        "the cluster's encryption context.",
    (TRUST, "*", "MALFORMED", TRUST_NO_RESOURCE):
        "A trust policy has no Resource: the role it is attached to is the resource.",
    (TRUST_PROBE, "*", "RESOURCE_STAR", None):
        "The Resource is the placeholder this test adds so parliament checks actions and conditions.",
    (TRUST_PROBE, "*", "CREDENTIALS_EXPOSURE", None):
        "sts:AssumeRole hands out credentials; letting EC2 do that for the node role is the trust policy's job.",
}


def _accepted(kind: str, sid: str, issue: str, detail: Any) -> bool:
    for (k, s, i, d), _reason in ALLOWED.items():
        if k == kind and s in ("*", sid) and i == issue and (d is None or d == detail):
            return True
    return False


def _findings(document: dict[str, Any]) -> list[tuple[str, Any]]:
    policy = analyze_policy_string(json.dumps(document), include_community_auditors=True)
    return [(f.issue, f.detail) for f in policy.findings]


def lint(document: dict[str, Any], kind: str) -> list[str]:
    """Findings outside the allow-list, each as 'Sid: ISSUE detail'.

    Each statement is analysed on its own so a finding can be traced to its
    Sid; the whole document is analysed too, and may add nothing new.
    """
    problems: list[str] = []
    per_statement: list[tuple[str, Any]] = []
    for index, statement in enumerate(document["Statement"]):
        sid = statement.get("Sid", f"#{index}")
        for issue, detail in _findings({**document, "Statement": [statement]}):
            per_statement.append((issue, str(detail)))
            if not _accepted(kind, sid, issue, detail):
                problems.append(f"{sid}: {issue} {detail}")
    for issue, detail in _findings(document):
        if (issue, str(detail)) not in per_statement:
            problems.append(f"document: {issue} {detail}")
    return problems


def probe(trust: dict[str, Any]) -> dict[str, Any]:
    # Parliament stops at MALFORMED when a statement has no Resource, so a
    # misspelt action in a trust policy would go unseen without this copy.
    doc = copy.deepcopy(trust)
    for statement in doc["Statement"]:
        statement["Resource"] = "*"
    return doc


@pytest.fixture(scope="module")
def program_documents() -> dict[str, dict[str, Any]]:
    # The documents exactly as the program sends them, with every optional statement and condition on.
    rec = run_program(make_config(allowAccountRootIamDelegation=True), preview=False)
    return {
        KEY: json.loads(rec.one(Types.KMS_KEY).input("policy")),
        TRUST: json.loads(rec.one(Types.IAM_ROLE).input("assumeRolePolicy")),
    }


def test_allow_list_entries_all_have_reasons() -> None:
    assert len(ALLOWED) <= 8
    assert all(len(reason) > 30 for reason in ALLOWED.values())


def test_program_key_policy_is_clean(program_documents: dict[str, dict[str, Any]]) -> None:
    doc = program_documents[KEY]
    assert {s["Sid"] for s in doc["Statement"]} >= {kp.SID_ROOT, kp.SID_EC2_NODES, kp.SID_ONPREM_NODES}
    assert lint(doc, KEY) == []


def test_program_trust_policy_is_clean(program_documents: dict[str, dict[str, Any]]) -> None:
    assert lint(program_documents[TRUST], TRUST) == []
    assert lint(probe(program_documents[TRUST]), TRUST_PROBE) == []


@pytest.mark.parametrize("partition,region", [("aws", "us-east-1"), ("aws-us-gov", "us-gov-west-1")])
def test_rendered_policies_are_clean_in_other_partitions(partition: str, region: str) -> None:
    doc = kp.key_policy(
        account_id="123456789012", partition=partition, region=region,
        admins=[f"arn:{partition}:iam::123456789012:role/kms-admin"],
        deployers=[f"arn:{partition}:iam::123456789012:role/deployer"],
        node_role_arn=f"arn:{partition}:iam::123456789012:role/node", onprem_user_arns=(),
        kms_vpc_endpoint_id="vpce-0a1b2c3d4e5f60718",
    )
    assert lint(doc, KEY) == []
    assert lint(kp.node_trust_policy(partition), TRUST) == []


# -- controls: the lint can fail ----------------------------------------------


def test_control_misspelt_action_is_flagged(program_documents: dict[str, dict[str, Any]]) -> None:
    doc = copy.deepcopy(program_documents[KEY])
    [nodes] = [s for s in doc["Statement"] if s["Sid"] == kp.SID_EC2_NODES]
    nodes["Action"] = ["kms:Decrpyt", "kms:DescribeKey"]
    problems = lint(doc, KEY)
    assert problems == [f"{kp.SID_EC2_NODES}: UNKNOWN_ACTION Unknown action kms:Decrpyt"]


def test_control_misspelt_condition_key_is_flagged(program_documents: dict[str, dict[str, Any]]) -> None:
    doc = copy.deepcopy(program_documents[KEY])
    [ec2] = [s for s in doc["Statement"] if s["Sid"] == kp.SID_DEPLOYERS_EC2]
    ec2["Condition"]["StringEquals"]["kms:ViaServices"] = ec2["Condition"]["StringEquals"].pop("kms:ViaService")
    problems = lint(doc, KEY)
    assert problems and all(p.startswith(f"{kp.SID_DEPLOYERS_EC2}: UNKNOWN_CONDITION_FOR_ACTION") for p in problems)


def test_control_allow_list_is_not_a_blanket(program_documents: dict[str, dict[str, Any]]) -> None:
    # MALFORMED is accepted for trust policies only for the missing Resource.
    doc = copy.deepcopy(program_documents[TRUST])
    doc["Statement"][0]["Effect"] = "Allowed"
    assert any("MALFORMED" in p and "Effect" in p for p in lint(doc, TRUST))
    # Permissions-management actions are accepted for administrators, not for nodes.
    key = copy.deepcopy(program_documents[KEY])
    [nodes] = [s for s in key["Statement"] if s["Sid"] == kp.SID_ONPREM_NODES]
    nodes["Action"] = [*nodes["Action"], "kms:PutKeyPolicy"]
    assert lint(key, KEY) == [f"{kp.SID_ONPREM_NODES}: PERMISSIONS_MANAGEMENT_ACTIONS "]


def test_control_misspelt_trust_action_is_flagged(program_documents: dict[str, dict[str, Any]]) -> None:
    doc = copy.deepcopy(program_documents[TRUST])
    doc["Statement"][0]["Action"] = "sts:AssumeRoles"
    assert lint(doc, TRUST) == []  # why the probe exists: parliament stops at the missing Resource
    assert lint(probe(doc), TRUST_PROBE) == ["Ec2AssumesNodeRole: UNKNOWN_ACTION Unknown action sts:AssumeRoles"]
