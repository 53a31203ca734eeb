"""The KMS key policy and the EC2 node trust policy, as plain data.

Pure: no pulumi import, same inputs give the same dict (and, through
``render_policy``, byte-identical JSON), because the key policy is an input of
``aws.kms.Key`` and any reordering would show up as a diff on every ``up``.

Who may do what (DESIGN.md section 2):
- administrators manage the key and can never use it for cryptography;
- deployers may wrap new data keys (never see plaintext) and may use the key
  only through EC2, which needs it to create the encrypted EBS volumes;
- nodes may only unwrap (``Decrypt``) and look at the key, so a node that
  loses its blob fails instead of minting a second key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

POLICY_VERSION = "2012-10-17"

# Every administrative action that takes a key as its resource, listed one by
# one rather than as ``kms:Create*``/``kms:Put*`` wildcards: ``kms:Create*``
# would include ``kms:CreateGrant``, and a grant can hand its creator Decrypt.
# ``kms:ListAliases`` is left out because it is not a key-level action.
ADMIN_ACTIONS: tuple[str, ...] = (
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:RevokeGrant",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
)

# Wrapping only: GenerateDataKeyWithoutPlaintext returns the ciphertext blob
# and never the plaintext, so the deployer can make the cluster data key but
# not read it.
DEPLOYER_WRAP_ACTIONS: tuple[str, ...] = (
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
)

# What EC2 does with the key on the deployer's behalf when it launches an
# instance with a CMK-encrypted EBS volume; without these EC2 terminates the
# instance right after launch. Decrypt appears only here, behind kms:ViaService.
DEPLOYER_EC2_ACTIONS: tuple[str, ...] = (
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncrypt*",
)
DEPLOYER_EC2_GRANT_ACTIONS: tuple[str, ...] = ("kms:CreateGrant",)

NODE_ACTIONS: tuple[str, ...] = ("kms:Decrypt", "kms:DescribeKey")
# A restore host unwraps the backup's blob and does nothing else with the key; the unwrap
# treats a refused DescribeKey as "go on, Decrypt decides", so Decrypt alone is enough.
RESTORE_ACTIONS: tuple[str, ...] = ("kms:Decrypt",)

SID_ROOT = "AccountRootIamDelegation"
SID_ADMINS = "KeyAdministrators"
SID_DEPLOYERS_WRAP = "DeployersWrapDataKeys"
SID_DEPLOYERS_EC2 = "DeployersUseKeyThroughEc2"
SID_DEPLOYERS_EC2_GRANT = "DeployersLetEc2CreateGrants"
SID_EC2_NODES = "Ec2NodesUnwrap"
SID_ONPREM_NODES = "OnPremNodesUnwrap"
SID_RESTORE = "RestorePrincipalsUnwrap"

# Service endpoints and principals live under the partition's DNS suffix
# (what aws.get_partition() calls dns_suffix).
PARTITION_DNS_SUFFIX: Mapping[str, str] = {
    "aws": "amazonaws.com",
    "aws-us-gov": "amazonaws.com",
    "aws-cn": "amazonaws.com.cn",
    "aws-iso": "c2s.ic.gov",
    "aws-iso-b": "sc2s.sgov.gov",
}


def _dns_suffix(partition: str) -> str:
    try:
        return PARTITION_DNS_SUFFIX[partition]
    except KeyError:
        raise ValueError(f"unknown AWS partition {partition!r}") from None


def _principals(arns: Iterable[str]) -> list[str]:
    # Sorted and de-duplicated: config order must not change the document.
    return sorted(set(arns))


def _statement(
    sid: str, principals: list[str], actions: Iterable[str], condition: dict[str, Any] | None = None
) -> dict[str, Any]:
    stmt: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": principals},
        "Action": sorted(actions),
        # In a key policy the resource is always the key the policy is attached to.
        "Resource": "*",
    }
    if condition:
        stmt["Condition"] = condition
    return stmt


def _endpoint_ids(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return sorted({v for v in value if v})


# ReEncrypt from and to this same key only: a same-key re-wrap changes the blob's
# encryption context and never lets the caller move the data key under a key it controls.
DEPLOYER_REWRAP_ACTIONS: tuple[str, ...] = ("kms:ReEncryptFrom", "kms:ReEncryptTo")
SID_DEPLOYERS_REWRAP = "DeployersRewrapOnSameKey"


# What a key administrator may grant, and to whom, for a move of the data key to another KMS key
# (docs/runbooks/key-lifecycle.md): ReEncrypt from or to this key, to a deployer, bound to the context.
# A standing permission to make the temporary grant, never the cross-key permission itself.
REWRAP_GRANT_OPERATIONS: tuple[str, ...] = ("ReEncryptFrom", "ReEncryptTo")
SID_ADMINS_REWRAP_GRANT = "KeyAdministratorsGrantRewrapToDeployers"


def rewrap_grant_statement(
    admins: Iterable[str], deployers: Iterable[str], context: Mapping[str, str]
) -> dict[str, Any]:
    """Admins may ``CreateGrant`` only for ReEncryptFrom/ReEncryptTo, only to a deployer, only bound to ``context``.

    ``kms:GrantOperations`` is multivalued, hence ``ForAllValues``; the
    ``Null`` condition refuses a request that names no operations (for which
    ``ForAllValues`` alone would be true). ``kms:GrantConstraintType`` makes the
    grant carry an encryption-context constraint; the runbook gives it
    ``EncryptionContextEquals`` with the cluster's context, so the grant re-wraps
    this cluster's blob and nothing else wrapped by the key.
    """
    return _statement(
        SID_ADMINS_REWRAP_GRANT, _principals(admins), ["kms:CreateGrant"],
        {
            "ForAllValues:StringEquals": {"kms:GrantOperations": list(REWRAP_GRANT_OPERATIONS)},
            "Null": {"kms:GrantOperations": "false"},
            "StringEquals": {
                "kms:GranteePrincipal": _principals(deployers),
                "kms:GrantConstraintType": "EncryptionContextEquals",
                # For CreateGrant these keys are the grant's constraint (the AWS KMS developer guide,
                # "kms:EncryptionContext:context-key"): the grant may re-wrap this cluster's blob only.
                **context_condition(context)["StringEquals"],
            },
        },
    )


def wrapping_key_identity_policy(key_arn: str, context: Mapping[str, str] | None) -> dict[str, Any]:
    """The IAM policy a node identity gets when another key (``kmsKeyArn``) wraps the data key.

    The key's own policy must allow the node as well (for a key of another
    account both are needed; in the same account the key policy alone decides
    unless it delegates to IAM). Only Decrypt, with the cluster's context when
    there is one, and DescribeKey, on that one key.
    """
    decrypt: dict[str, Any] = {
        "Sid": "UnwrapClusterDataKey", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": key_arn,
    }
    if context:
        decrypt["Condition"] = context_condition(context)
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            decrypt,
            {"Sid": "DescribeWrappingKey", "Effect": "Allow", "Action": ["kms:DescribeKey"], "Resource": key_arn},
        ],
    }


def context_condition(context: Mapping[str, str]) -> dict[str, Any]:
    """``kms:EncryptionContext:<key>`` equal to each value: Decrypt of a blob made for another cluster is refused."""
    return {"StringEquals": {f"kms:EncryptionContext:{k}": v for k, v in sorted(context.items())}}


def rewrap_statement(deployers: Iterable[str]) -> dict[str, Any]:
    """The deployers' same-key re-wrap (adding the encryption context to an existing blob)."""
    return _statement(
        SID_DEPLOYERS_REWRAP, _principals(deployers), DEPLOYER_REWRAP_ACTIONS,
        {"Bool": {"kms:ReEncryptOnSameKey": "true"}},
    )


def with_encryption_context(
    document: Mapping[str, Any], context: Mapping[str, str], *, condition_sids: Iterable[str]
) -> dict[str, Any]:
    """A copy of ``document`` whose statements ``condition_sids`` allow Decrypt only with ``context``.

    Decrypt moves to a statement of its own (``<Sid>WithContext``), carrying the
    original conditions plus the context's: ``kms:EncryptionContext:*`` does not
    exist for DescribeKey, so a shared condition would refuse it (parliament:
    UNKNOWN_CONDITION_FOR_ACTION). Kept apart from ``key_policy`` so the policy of
    a stack without a context stays byte-identical. aws-plugin mode must not use
    it for the node statements: MariaDB's aws_key_management plugin calls Decrypt
    with no encryption context.
    """
    wanted = set(condition_sids)
    statements: list[dict[str, Any]] = []
    for original in document["Statement"]:
        stmt: dict[str, Any] = json.loads(json.dumps(original))
        if stmt["Sid"] not in wanted or "kms:Decrypt" not in stmt["Action"]:
            statements.append(stmt)
            continue
        rest = [a for a in stmt["Action"] if a != "kms:Decrypt"]
        if rest:
            statements.append({**stmt, "Action": rest})
        condition = dict(stmt.get("Condition", {}))
        condition["StringEquals"] = {
            **dict(condition.get("StringEquals", {})), **context_condition(context)["StringEquals"]
        }
        statements.append({**stmt, "Sid": f"{stmt['Sid']}WithContext", "Action": ["kms:Decrypt"],
                           "Condition": condition})
    return {**document, "Statement": statements}


def key_policy(
    *,
    account_id: str,
    partition: str,
    region: str,
    admins: Iterable[str],
    deployers: Iterable[str],
    node_role_arn: str | None,
    onprem_user_arns: Iterable[str],
    onprem_egress_cidrs: Iterable[str] = (),
    kms_vpc_endpoint_id: str | Iterable[str] | None = None,
    allow_account_root_iam_delegation: bool = False,
    restore_principals: Iterable[str] = (),
) -> dict[str, Any]:
    """The key policy document for the cluster's KMS key.

    ``node_role_arn`` is None when the cluster has no EC2 nodes, and
    ``onprem_user_arns`` (one IAM user per on-prem node) is empty without
    on-prem nodes; their statement is then left out. Conditions appear only
    when configured: ``aws:SourceIp`` (on-prem egress CIDRs, the public address
    KMS sees; absent through VPC endpoints) and ``aws:SourceVpce`` (EC2 role).
    ``kms_vpc_endpoint_id`` is one endpoint id or several (a configured one and
    the one the program creates); one stays a plain string in the document.


    ``restore_principals`` (restore hosts outside the cluster) get Decrypt only,
    in a statement of their own.
    """
    admin_list = _principals(admins)
    deployer_list = _principals(deployers)
    if not admin_list:
        raise ValueError("a key policy needs at least one administrator")
    if not deployer_list:
        raise ValueError("a key policy needs at least one deployer")
    ec2_service = f"ec2.{region}.{_dns_suffix(partition)}"

    statements: list[dict[str, Any]] = []
    if allow_account_root_iam_delegation:
        root = f"arn:{partition}:iam::{account_id}:root"
        statements.append(_statement(SID_ROOT, [root], ["kms:*"]))
    statements.append(_statement(SID_ADMINS, admin_list, ADMIN_ACTIONS))
    statements.append(_statement(SID_DEPLOYERS_WRAP, deployer_list, DEPLOYER_WRAP_ACTIONS))
    through_ec2 = {"kms:CallerAccount": account_id, "kms:ViaService": ec2_service}
    statements.append(_statement(SID_DEPLOYERS_EC2, deployer_list, DEPLOYER_EC2_ACTIONS, {"StringEquals": through_ec2}))
    statements.append(
        _statement(
            SID_DEPLOYERS_EC2_GRANT,
            deployer_list,
            DEPLOYER_EC2_GRANT_ACTIONS,
            {"Bool": {"kms:GrantIsForAWSResource": "true"}, "StringEquals": dict(through_ec2)},
        )
    )
    if node_role_arn is not None:
        endpoints = _endpoint_ids(kms_vpc_endpoint_id)
        source_vpce: str | list[str] = endpoints[0] if len(endpoints) == 1 else endpoints
        vpce = {"StringEquals": {"aws:SourceVpce": source_vpce}} if endpoints else None
        statements.append(_statement(SID_EC2_NODES, [node_role_arn], NODE_ACTIONS, vpce))
    onprem_users = _principals(onprem_user_arns)
    if onprem_users:
        cidrs = sorted(set(onprem_egress_cidrs))
        source_ip = {"IpAddress": {"aws:SourceIp": cidrs}} if cidrs else None
        statements.append(_statement(SID_ONPREM_NODES, onprem_users, NODE_ACTIONS, source_ip))
    restorers = _principals(restore_principals)
    if restorers:
        statements.append(_statement(SID_RESTORE, restorers, RESTORE_ACTIONS))
    return {"Version": POLICY_VERSION, "Statement": statements}


def node_trust_policy(partition: str) -> dict[str, Any]:
    """Trust policy of the EC2 node role: only the EC2 service may assume it."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Sid": "Ec2AssumesNodeRole",
                "Effect": "Allow",
                "Principal": {"Service": f"ec2.{_dns_suffix(partition)}"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def onprem_source_cidrs(
    egress_cidrs: Iterable[str], node_egress: Mapping[str, str | None]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``aws:SourceIp`` CIDRs for the on-prem user, and warnings.

    The stack-wide ``onPremEgressCidrs`` and every node's own ``egressCidr``
    are joined. When only per-node CIDRs are set, a node without one would be
    denied by the condition; say so rather than lock it out silently.
    """
    shared = set(egress_cidrs)
    per_node = {c for c in node_egress.values() if c}
    warnings: list[str] = []
    if per_node and not shared:
        for name, cidr in sorted(node_egress.items()):
            if not cidr:
                warnings.append(
                    f"on-prem node {name} has no egressCidr and onPremEgressCidrs is empty: the key policy's "
                    "aws:SourceIp condition will deny its Decrypt calls"
                )
    return tuple(sorted(shared | per_node)), tuple(warnings)


def render_policy(document: Mapping[str, Any]) -> str:
    """JSON text of a policy; stable for a given document."""
    return json.dumps(document, indent=2)
