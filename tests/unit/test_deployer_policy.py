"""The deployer's IAM policy (tools/deployer_policy.py) covers every resource the program registers, and no more.

The program runs under mocks for several configs; every resource type and
invoke it registers must be one ``resource_types`` predicts from the config and
one ``ACTIONS`` has IAM actions for, and the generated policy must grant them.
A type the program starts to register without an entry fails here (the
control shows the check finds one). The document passes parliament but for a
short allow-list, each entry with its reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from mocks import ACCOUNT_ID, PARTITION, REGION, SECRET_CONFIG_KEYS, STACK, Recording, full_config, run_program
from parliament import analyze_policy_string

from components.config import parse_config
from tools import deployer_policy as dp

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "deployer_policy.py"

DATA_KEY = "pulumi-python:dynamic/mariadb-kms:ClusterDataKey"

CONFIGS: dict[str, dict[str, Any]] = {
    "full": full_config(),
    "everything-on": full_config(
        createKmsVpcEndpoint=True, escrowDataKeyInSsm=True, attachSsmManagedPolicy=True
    ),
    "ec2-only": full_config(onPremNodes=[], onPremEgressCidrs=[], onPremCidrs=[]),
    "onprem-only": full_config(ec2Nodes=[], bootstrapNode="dc-1", kmsVpcEndpointId=""),
}


def _parsed(config: Mapping[str, Any]) -> Any:
    raw = {k: v for k, v in config.items() if k not in SECRET_CONFIG_KEYS}
    return parse_config(raw, stack=STACK, region=REGION)


def registered(rec: Recording) -> set[str]:
    """What the program asked AWS (and the other providers) for: custom resource types, invokes, the escrow."""
    found = {r.type for r in rec.resources if r.custom} | {i.token for i in rec.invokes}
    if any(r.type == DATA_KEY and r.input("escrow_in_ssm") for r in rec.resources):
        found.add("ssm:escrow")
    return found


def coverage_problems(types: set[str], cfg: Any) -> list[str]:
    """Why the deployer policy for ``cfg`` would not cover ``types``; empty when it does."""
    unpredicted = sorted(types - dp.resource_types(cfg))
    problems = [f"{t}: registered, but resource_types does not predict it" for t in unpredicted]
    problems += [f"{t}: no IAM actions in ACTIONS" for t in sorted(types) if t not in dp.ACTIONS]
    if problems:
        return problems
    policy = dp.deployer_policy(cfg, account_id=ACCOUNT_ID, partition=PARTITION)
    granted = {(s["Sid"], a) for s in policy["Statement"] for a in s["Action"]}
    for t in sorted(types):
        for sid, actions in dp.ACTIONS[t]:
            problems += [f"{t}: {sid} lacks {a}" for a in actions if (sid, a) not in granted]
    return problems


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def run(request: pytest.FixtureRequest) -> tuple[str, Recording, Any]:
    name = str(request.param)
    config = CONFIGS[name]
    return name, run_program(config, preview=False), _parsed(config)


def test_the_policy_covers_every_type_the_program_registers(run: tuple[str, Recording, Any]) -> None:
    name, rec, cfg = run
    types = registered(rec)
    assert coverage_problems(types, cfg) == [], name
    # And predicts nothing the program does not register: the policy is no wider than the stack.
    assert dp.resource_types(cfg) == types, name


def test_control_a_new_resource_type_without_a_permission_is_found(run: tuple[str, Recording, Any]) -> None:
    _name, rec, cfg = run
    types = registered(rec) | {"aws:s3/bucket:Bucket"}
    problems = coverage_problems(types, cfg)
    assert any(p.startswith("aws:s3/bucket:Bucket: registered") for p in problems)
    assert any(p == "aws:s3/bucket:Bucket: no IAM actions in ACTIONS" for p in problems)
    with pytest.raises(KeyError, match="aws:s3/bucket:Bucket"):
        dp.actions_needed(types)


def _actions(config_name: str) -> set[str]:
    policy = dp.deployer_policy(_parsed(CONFIGS[config_name]), account_id=ACCOUNT_ID, partition=PARTITION)
    return {a for s in policy["Statement"] for a in s["Action"]}


def test_the_policy_grants_only_what_the_config_needs() -> None:
    onprem, ec2, full, everything = (_actions(n) for n in ("onprem-only", "ec2-only", "full", "everything-on"))
    assert not {a for a in onprem if a.startswith("ec2:")} and "iam:PassRole" not in onprem
    assert "iam:CreateUser" not in ec2 and "iam:CreateAccessKey" not in ec2
    assert not {a for a in full if a.startswith("route53:")} and "iam:AttachRolePolicy" not in full
    assert "ssm:PutParameter" in full  # the escrow in SSM is on by default
    assert {"ssm:PutParameter", "ec2:CreateVpcEndpoint", "iam:AttachRolePolicy"} <= everything
    assert "kms:ScheduleKeyDeletion" not in everything  # the key is retained, never deleted by the program
    assert {"kms:CreateKey", "kms:CreateAlias", "kms:PutKeyPolicy", "kms:TagResource", "iam:GetRole"} <= onprem


def test_the_policy_is_scoped_to_the_stack() -> None:
    policy = dp.deployer_policy(_parsed(CONFIGS["everything-on"]), account_id=ACCOUNT_ID, partition=PARTITION)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["IamNodeRole"]["Resource"] == [f"arn:aws:iam::{ACCOUNT_ID}:role/mariadb-kms/*"]
    assert by_sid["IamPassNodeRoleToEc2"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}
    }
    assert by_sid["SsmEscrowParameter"]["Resource"] == [
        f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/mariadb-kms/{STACK}/cluster-data-key"
    ]
    assert f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:alias/mariadb-kms-{STACK}" in by_sid["KmsTheAlias"]["Resource"]
    stars = [s["Sid"] for s in policy["Statement"] if s["Resource"] == ["*"]]
    assert all("Condition" in by_sid[sid] or sid.startswith("Route53") for sid in stars), stars


# --------------------------------------------------------------------------
# parliament
# --------------------------------------------------------------------------

# (issue, Sid or "*") -> why it is accepted.
ALLOWED: dict[tuple[str, str], str] = {
    ("PERMISSIONS_MANAGEMENT_ACTIONS", "*"):
        "The program creates the KMS key with its policy, the node role and its instance profile, and the "
        "on-prem user with its access key; each is scoped to the stack's key, alias or IAM path /mariadb-kms/.",
    ("CREDENTIALS_EXPOSURE", "IamOnPremUser"):
        "On-prem nodes have no instance profile: the program makes their access key (user/mariadb-kms/* only).",
    ("PRIVILEGE_ESCALATION", "*"):
        "CreateAccessKey (on-prem user) and PassRole+RunInstances (node role, to EC2 only) are what the "
        "program does; both are limited to the IAM path /mariadb-kms/ it owns.",
}


def lint(policy: dict[str, Any]) -> list[str]:
    problems = []
    for statement in policy["Statement"]:
        found = analyze_policy_string(
            json.dumps({**policy, "Statement": [statement]}), include_community_auditors=True
        ).findings
        problems += [
            f"{statement['Sid']}: {f.issue} {f.detail}" for f in found
            if (f.issue, statement["Sid"]) not in ALLOWED and (f.issue, "*") not in ALLOWED
        ]
    return problems


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parliament_finds_nothing_outside_the_allow_list(name: str) -> None:
    policy = dp.deployer_policy(_parsed(CONFIGS[name]), account_id=ACCOUNT_ID, partition=PARTITION)
    assert lint(policy) == []


def test_control_parliament_flags_a_resource_star_and_a_misspelt_action() -> None:
    policy = dp.deployer_policy(_parsed(CONFIGS["full"]), account_id=ACCOUNT_ID, partition=PARTITION)
    policy["Statement"] += [
        {"Sid": "Star", "Effect": "Allow", "Action": ["ec2:DescribeInstanceAttribute"], "Resource": "*"},
        {"Sid": "Typo", "Effect": "Allow", "Action": ["kms:CreateKeys"], "Resource": "*"},
    ]
    problems = lint(policy)
    assert any(p.startswith("Star: RESOURCE_STAR") for p in problems), problems
    assert any(p.startswith("Typo: UNKNOWN_ACTION") for p in problems), problems


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------


def test_the_tool_prints_the_dev_stacks_policy() -> None:
    done = subprocess.run([sys.executable, str(TOOL), "--stack", "dev"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    cfg = dp.stack_config("dev", REPO)
    account, partition = dp.account_of(cfg)
    assert json.loads(done.stdout) == dp.deployer_policy(cfg, account_id=account, partition=partition)
    assert account == "123456789012" and partition == "aws"


def test_the_tool_names_config_errors(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.bad.yaml").write_text("config:\n  aws:region: eu-west-1\n  mariadb-kms:keyAdmins: []\n")
    with pytest.raises(dp.ConfigError) as caught:
        dp.stack_config("bad", tmp_path)
    assert any("keyAdmins" in e for e in caught.value.errors)
