"""The IAM policy the identity running `pulumi up` needs for one stack, from that stack's config.

    python tools/deployer_policy.py [--stack dev] > deployer-policy.json

Pure at its core: ``resource_types(cfg)`` says which resource types and invokes
a config makes the program register, ``ACTIONS`` says which AWS API actions
each one needs (the pulumi-aws provider's create, read, update and delete, and
the cluster data key's dynamic provider), and ``deployer_policy`` turns the
union into statements scoped to the stack's account, region, IAM path
(``/mariadb-kms/``), key alias and escrow parameter. A unit test runs the
program under mocks for several configs and fails when it registers a type
``resource_types`` does not predict, or one without an entry here.

What the policy leaves out, on purpose:
- using the key for cryptography: the key policy names the deployers itself
  (GenerateDataKeyWithoutPlaintext, DescribeKey, and Decrypt/CreateGrant only
  through EC2 for the EBS volumes). Key-level management actions are listed
  here too, but take effect only when the key policy lets IAM grant them
  (``allowAccountRootIamDelegation``); otherwise the deploying role must be one
  of ``keyAdmins`` (the program warns when it is not).
- deleting the KMS key, its cluster data key and the EC2 data volumes: they
  are retained on delete, so ``pulumi destroy`` never asks for that.
- ``sts:GetCallerIdentity``: it needs no permission.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.cluster_data_key import default_escrow_parameter_name  # noqa: E402
from components.config import PROJECT, ClusterConfig, ConfigError, parse_config  # noqa: E402
from components.key_policy import PARTITION_DNS_SUFFIX  # noqa: E402

POLICY_VERSION = "2012-10-17"
IAM_PATH = "/mariadb-kms/"
SSM_MANAGED_POLICY = "AmazonSSMManagedInstanceCore"

# Resource types (and invoke tokens) the program registers, and the statements
# (by Sid) and actions each needs. Types that talk to no AWS API map to ().
ACTIONS: Mapping[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "aws:kms/key:Key": (
        ("KmsCreateKey", ("kms:CreateKey",)),
        ("KmsTheKey", (
            "kms:DescribeKey", "kms:EnableKeyRotation", "kms:GetKeyPolicy", "kms:GetKeyRotationStatus",
            "kms:ListResourceTags", "kms:PutKeyPolicy", "kms:TagResource", "kms:UntagResource",
            "kms:UpdateKeyDescription",
        )),
    ),
    "aws:kms/alias:Alias": (
        ("KmsListAliases", ("kms:ListAliases",)),
        # An alias action is authorised on both the alias and the key it points to.
        ("KmsTheAlias", ("kms:CreateAlias", "kms:DeleteAlias", "kms:UpdateAlias")),
    ),
    "pulumi-python:dynamic/mariadb-kms:ClusterDataKey": (
        ("KmsTheKey", ("kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext")),
    ),
    "ssm:escrow": (
        ("SsmEscrowParameter", ("ssm:AddTagsToResource", "ssm:GetParameter", "ssm:PutParameter")),
    ),
    "aws:iam/role:Role": (
        ("IamNodeRole", (
            "iam:CreateRole", "iam:DeleteRole", "iam:GetRole", "iam:ListAttachedRolePolicies",
            "iam:ListInstanceProfilesForRole", "iam:ListRolePolicies", "iam:TagRole", "iam:UntagRole",
            "iam:UpdateAssumeRolePolicy",
        )),
        ("IamPassNodeRoleToEc2", ("iam:PassRole",)),
    ),
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": (
        ("IamAttachSsmPolicy", ("iam:AttachRolePolicy", "iam:DetachRolePolicy")),
        ("IamNodeRole", ("iam:ListAttachedRolePolicies",)),
    ),
    "aws:iam/instanceProfile:InstanceProfile": (
        ("IamNodeInstanceProfile", (
            "iam:AddRoleToInstanceProfile", "iam:CreateInstanceProfile", "iam:DeleteInstanceProfile",
            "iam:GetInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:TagInstanceProfile",
            "iam:UntagInstanceProfile",
        )),
    ),
    "aws:iam/user:User": (
        ("IamOnPremUser", ("iam:CreateUser", "iam:DeleteUser", "iam:GetUser", "iam:TagUser", "iam:UntagUser")),
    ),
    "aws:iam/accessKey:AccessKey": (
        ("IamOnPremUser", ("iam:CreateAccessKey", "iam:DeleteAccessKey", "iam:ListAccessKeys")),
    ),
    "aws:iam/getSessionContext:getSessionContext": (
        # The deploying identity's own role, so the key policy can name the role, not the session.
        ("IamReadDeployerRole", ("iam:GetRole",)),
    ),
    "aws:ec2/securityGroup:SecurityGroup": (
        ("Ec2Describe", ("ec2:DescribeSecurityGroupRules", "ec2:DescribeSecurityGroups", "ec2:DescribeVpcs")),
        ("Ec2Change", (
            "ec2:CreateSecurityGroup", "ec2:CreateTags", "ec2:DeleteSecurityGroup", "ec2:DeleteTags",
            # pulumi-aws removes the default allow-all egress rule of a new group.
            "ec2:RevokeSecurityGroupEgress",
        )),
    ),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": (
        ("Ec2Describe", ("ec2:DescribeSecurityGroupRules",)),
        ("Ec2Change", (
            "ec2:AuthorizeSecurityGroupIngress", "ec2:CreateTags", "ec2:ModifySecurityGroupRules",
            "ec2:RevokeSecurityGroupIngress",
        )),
    ),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": (
        ("Ec2Describe", ("ec2:DescribeSecurityGroupRules",)),
        ("Ec2Change", (
            "ec2:AuthorizeSecurityGroupEgress", "ec2:CreateTags", "ec2:ModifySecurityGroupRules",
            "ec2:RevokeSecurityGroupEgress",
        )),
    ),
    "aws:ec2/networkInterface:NetworkInterface": (
        ("Ec2Describe", ("ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets")),
        ("Ec2Change", (
            "ec2:CreateNetworkInterface", "ec2:CreateTags", "ec2:DeleteNetworkInterface",
            "ec2:ModifyNetworkInterfaceAttribute",
        )),
    ),
    "aws:ebs/volume:Volume": (
        ("Ec2Describe", ("ec2:DescribeVolumes",)),
        ("Ec2Change", ("ec2:CreateTags", "ec2:CreateVolume", "ec2:ModifyVolume")),
    ),
    "aws:ec2/volumeAttachment:VolumeAttachment": (
        ("Ec2Describe", ("ec2:DescribeInstances", "ec2:DescribeVolumes")),
        ("Ec2Change", ("ec2:AttachVolume", "ec2:DetachVolume")),
    ),
    "aws:ec2/instance:Instance": (
        ("Ec2ReadInstances", ("ec2:DescribeInstanceAttribute",)),
        ("Ec2Describe", (
            "ec2:DescribeImages", "ec2:DescribeInstanceCreditSpecifications",
            "ec2:DescribeInstanceTypes", "ec2:DescribeInstances", "ec2:DescribeNetworkInterfaces",
            "ec2:DescribeTags", "ec2:DescribeVolumes",
        )),
        ("Ec2Change", (
            "ec2:CreateTags", "ec2:ModifyInstanceAttribute", "ec2:ModifyInstanceMetadataOptions",
            "ec2:RunInstances", "ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances",
        )),
    ),
    "aws:ec2/getSubnet:getSubnet": (("Ec2Describe", ("ec2:DescribeSubnets",)),),
    # Applies a new instance type in the node's turn: stop, wait, modify, start (components/instance_type_provider.py).
    "pulumi-python:dynamic/mariadb-kms:InstanceType": (
        ("Ec2Describe", ("ec2:DescribeInstances",)),
        ("Ec2Change", ("ec2:ModifyInstanceAttribute", "ec2:StartInstances", "ec2:StopInstances")),
    ),
    "aws:ec2/vpcEndpoint:VpcEndpoint": (
        ("Ec2Describe", ("ec2:DescribePrefixLists", "ec2:DescribeVpcEndpointServices", "ec2:DescribeVpcEndpoints")),
        ("Ec2Change", ("ec2:CreateTags", "ec2:CreateVpcEndpoint", "ec2:DeleteVpcEndpoints", "ec2:ModifyVpcEndpoint")),
        # Private DNS: EC2 associates the endpoint's private hosted zone with the VPC on the caller's behalf.
        ("Route53PrivateDnsForEndpoint", (
            "route53:AssociateVPCWithHostedZone", "route53:DisassociateVPCFromHostedZone",
        )),
    ),
    # No AWS API call, or one that needs no permission.
    "aws:index/getCallerIdentity:getCallerIdentity": (),
    "aws:index/getPartition:getPartition": (),
    "command:remote:Command": (),
    "tls:index/privateKey:PrivateKey": (),
    "tls:index/selfSignedCert:SelfSignedCert": (),
    "tls:index/certRequest:CertRequest": (),
    "tls:index/locallySignedCert:LocallySignedCert": (),
}


def resource_types(cfg: ClusterConfig) -> set[str]:
    """The resource types and invoke tokens a stack with this config registers (``ssm:escrow`` for the escrow)."""
    types = {
        "aws:kms/key:Key", "aws:kms/alias:Alias", "pulumi-python:dynamic/mariadb-kms:ClusterDataKey",
        "aws:index/getCallerIdentity:getCallerIdentity", "aws:index/getPartition:getPartition",
        "aws:iam/getSessionContext:getSessionContext", "command:remote:Command",
    }
    if cfg.key.escrow_in_ssm:
        types.add("ssm:escrow")
    if cfg.tls.any_channel:
        types |= {
            "tls:index/privateKey:PrivateKey", "tls:index/selfSignedCert:SelfSignedCert",
            "tls:index/certRequest:CertRequest", "tls:index/locallySignedCert:LocallySignedCert",
        }
    if cfg.ec2_nodes:
        types |= {
            "aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile",
            "aws:ec2/securityGroup:SecurityGroup", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule", "aws:ec2/networkInterface:NetworkInterface",
            "aws:ebs/volume:Volume", "aws:ec2/volumeAttachment:VolumeAttachment", "aws:ec2/instance:Instance",
            # EC2 host keys are made by the program (tls) whatever the TLS channels say.
            "tls:index/privateKey:PrivateKey",
            # The data volume takes its subnet's zone; an instance type changes in the node's turn.
            "aws:ec2/getSubnet:getSubnet", "pulumi-python:dynamic/mariadb-kms:InstanceType",
        }
        if cfg.attach_ssm_policy:
            types.add("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if cfg.network.create_kms_vpc_endpoint:
            types.add("aws:ec2/vpcEndpoint:VpcEndpoint")
    if cfg.onprem_nodes:
        types |= {"aws:iam/user:User", "aws:iam/accessKey:AccessKey"}
    return types


@dataclass(frozen=True)
class Scope:
    account_id: str
    partition: str
    region: str
    alias: str
    escrow_parameter: str


def _scopes(s: Scope) -> dict[str, tuple[list[str], dict[str, Any] | None]]:
    """Sid -> (resources, condition)."""
    p, r, a = s.partition, s.region, s.account_id
    in_region = {"StringEquals": {"aws:RequestedRegion": r}}
    ec2_service = f"ec2.{PARTITION_DNS_SUFFIX[p]}"
    path = IAM_PATH.strip("/")
    return {
        "KmsCreateKey": (["*"], in_region),
        "KmsListAliases": (["*"], in_region),
        "KmsTheKey": ([f"arn:{p}:kms:{r}:{a}:key/*"], None),
        "KmsTheAlias": ([f"arn:{p}:kms:{r}:{a}:{s.alias}", f"arn:{p}:kms:{r}:{a}:key/*"], None),
        "SsmEscrowParameter": ([f"arn:{p}:ssm:{r}:{a}:parameter{s.escrow_parameter}"], None),
        "IamNodeRole": ([f"arn:{p}:iam::{a}:role/{path}/*"], None),
        "IamPassNodeRoleToEc2": (
            [f"arn:{p}:iam::{a}:role/{path}/*"], {"StringEquals": {"iam:PassedToService": ec2_service}}
        ),
        "IamAttachSsmPolicy": (
            [f"arn:{p}:iam::{a}:role/{path}/*"],
            {"ArnEquals": {"iam:PolicyARN": f"arn:{p}:iam::aws:policy/{SSM_MANAGED_POLICY}"}},
        ),
        "IamNodeInstanceProfile": ([f"arn:{p}:iam::{a}:instance-profile/{path}/*"], None),
        "IamOnPremUser": ([f"arn:{p}:iam::{a}:user/{path}/*"], None),
        "IamReadDeployerRole": ([f"arn:{p}:iam::{a}:role/*"], None),
        "Ec2Describe": (["*"], in_region),
        "Ec2ReadInstances": ([f"arn:{p}:ec2:{r}:{a}:instance/*"], None),
        # RunInstances also names the AMI and its snapshots, which belong to no account of ours.
        "Ec2Change": ([f"arn:{p}:ec2:{r}:{a}:*", f"arn:{p}:ec2:{r}::image/*", f"arn:{p}:ec2:{r}::snapshot/*"], None),
        "Route53PrivateDnsForEndpoint": (["*"], None),
    }


def actions_needed(types: Iterable[str]) -> dict[str, set[str]]:
    """Sid -> actions, for these types; a type without an entry in ACTIONS is an error naming it."""
    unknown = sorted(t for t in types if t not in ACTIONS)
    if unknown:
        raise KeyError(f"no IAM actions known for {', '.join(unknown)}: add them to tools/deployer_policy.py")
    needed: dict[str, set[str]] = {}
    for t in types:
        for sid, actions in ACTIONS[t]:
            needed.setdefault(sid, set()).update(actions)
    return needed


def deployer_policy(cfg: ClusterConfig, *, account_id: str, partition: str) -> dict[str, Any]:
    """The deployer's identity policy for this stack: a plain IAM policy document."""
    scope = Scope(
        account_id=account_id, partition=partition, region=cfg.region, alias=cfg.key.alias,
        escrow_parameter=default_escrow_parameter_name(cfg.stack),
    )
    scopes = _scopes(scope)
    statements = []
    for sid, actions in sorted(actions_needed(resource_types(cfg)).items()):
        resources, condition = scopes[sid]
        statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}
        if condition:
            statement["Condition"] = condition
        statements.append(statement)
    return {"Version": POLICY_VERSION, "Statement": statements}


# --------------------------------------------------------------------------
# the command line: read a stack's config the way the CLI would hand it over
# --------------------------------------------------------------------------

_ROLE_ARN = re.compile(r"^arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role/")


def stack_config(stack: str, root: Path = ROOT) -> ClusterConfig:
    """Parse ``Pulumi.<stack>.yaml`` (secrets are not needed and not read)."""
    document = yaml.safe_load((root / f"Pulumi.{stack}.yaml").read_text()) or {}
    values: dict[str, Any] = document.get("config") or {}
    prefix = PROJECT + ":"
    raw = {
        k[len(prefix):]: v for k, v in values.items()
        if k.startswith(prefix) and not (isinstance(v, dict) and "secure" in v)
    }
    return parse_config(raw, stack=stack, region=values.get("aws:region"))


def account_of(cfg: ClusterConfig) -> tuple[str, str]:
    """(account id, partition) from the first key administrator's role ARN."""
    match = _ROLE_ARN.match(cfg.key.admins[0])
    if match is None:
        raise ValueError(f"keyAdmins[0] {cfg.key.admins[0]!r} is not an IAM role ARN")
    return match["account"], match["partition"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="dev", help="the stack whose Pulumi.<stack>.yaml to read (default dev)")
    args = parser.parse_args(argv)
    try:
        cfg = stack_config(args.stack)
    except ConfigError as err:
        for line in err.errors:
            print(f"error: {line}", file=sys.stderr)
        return 1
    account, partition = account_of(cfg)
    json.dump(deployer_policy(cfg, account_id=account, partition=partition), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
