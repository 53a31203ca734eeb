"""Who is running ``pulumi up``: account, partition, and the deploying principal.

The caller ARN of an assumed role is a session ARN
(``arn:aws:sts::123456789012:assumed-role/Name/session``) whose session part
changes from run to run; put into the key policy it would change the policy on
every ``up`` and name a principal that no longer exists by the next deploy. So
the deployer is normalised to the role itself. The STS ARN drops the role's
path, so the program asks IAM (``get_session_context``) for the issuer ARN;
``issuer_role_arn`` is the pure rewrite, correct only for roles without a path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

_ASSUMED_ROLE = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):sts::(?P<account>\d{12}):assumed-role/(?P<role>[\w+=,.@-]{1,64})/[\w+=,.@-]+$"
)
_IAM_PRINCIPAL = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]{1,512}$")


def issuer_role_arn(caller_arn: str) -> str:
    """The role ARN behind an assumed-role session ARN; IAM role/user ARNs unchanged.

    The role path is not in the session ARN, so a role at ``/ci/deployer``
    comes back as ``role/deployer``; use ``get_session_context`` for the truth.
    """
    m = _ASSUMED_ROLE.match(caller_arn)
    if m:
        return f"arn:{m['partition']}:iam::{m['account']}:role/{m['role']}"
    return deployer_principal(caller_arn)


def deployer_principal(issuer_arn: str) -> str:
    """``issuer_arn`` if it can be a key-policy deployer, else a ValueError naming the fix.

    The account root or a federated user would turn the deployer statements
    into IAM delegation or name a principal KMS rejects.
    """
    if _IAM_PRINCIPAL.match(issuer_arn):
        return issuer_arn
    raise ValueError(
        f"the identity running pulumi ({issuer_arn}) is not an IAM role or user; "
        "run as a role, or set mariadb-kms:deployers"
    )


def lockout_warning(issuer_arn: str, admins: Sequence[str], root_delegation: bool) -> str | None:
    """Why CreateKey/PutKeyPolicy will be refused, if it will.

    KMS's policy lock-out safety check rejects a key policy that would not let
    the caller itself change the policy later. Deployers cannot (by design), so
    the identity running ``up`` must also be a key administrator, unless the
    account-root statement lets IAM grant it.
    """
    if root_delegation or issuer_arn in admins:
        return None
    return (
        f"the identity running pulumi ({issuer_arn}) is not in keyAdmins and allowAccountRootIamDelegation is off: "
        "KMS will refuse the key policy (lock-out safety check) and later policy updates; add it to keyAdmins"
    )


@dataclass(frozen=True)
class DeployingIdentity:
    account_id: pulumi.Output[str]
    partition: pulumi.Output[str]
    issuer_arn: pulumi.Output[str]


def deploying_identity() -> DeployingIdentity:
    caller = aws.get_caller_identity_output()
    partition = aws.get_partition_output()
    session = aws.iam.get_session_context_output(arn=caller.arn)
    return DeployingIdentity(
        account_id=caller.account_id,
        partition=partition.partition,
        issuer_arn=session.issuer_arn,
    )


def deployer_arns(
    identity: DeployingIdentity, configured: Sequence[str], admins: Sequence[str], root_delegation: bool
) -> pulumi.Output[list[str]]:
    """The key policy's deployers: configured ones, else the deploying identity."""

    def check(issuer: str) -> list[str]:
        # Runs in preview too (invokes resolve there), so the warning comes before the failing update.
        warning = lockout_warning(issuer, admins, root_delegation)
        if warning:
            pulumi.log.warn(warning)
        return list(configured) if configured else [deployer_principal(issuer)]

    return identity.issuer_arn.apply(check)
