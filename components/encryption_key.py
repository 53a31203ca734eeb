"""The cluster's KMS key, its alias and its key policy.

The policy's ``aws:SourceVpce`` condition names the configured endpoint and the
one the program creates (``created_vpc_endpoint_id``). That endpoint belongs to
the cluster component, which is built after the key; ``__main__`` hands the key
a deferred output for its id, so the key is created with the final policy once
the endpoint exists, and nothing moves to another URN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws

from components.config import KeyConfig
from components.key_policy import (
    SID_ADMINS,
    SID_DEPLOYERS_WRAP,
    SID_EC2_NODES,
    SID_ONPREM_NODES,
    SID_RESTORE,
    key_policy,
    render_policy,
    rewrap_grant_statement,
    rewrap_statement,
    with_encryption_context,
)

# Whose Decrypt the encryption context conditions: every principal that unwraps the cluster's blob.
CONTEXT_BOUND_SIDS = (SID_EC2_NODES, SID_ONPREM_NODES, SID_RESTORE)


def cluster_key_policy(document: Mapping[str, Any], encryption_context: Mapping[str, str] | None) -> dict[str, Any]:
    """The key policy with the context bound: Decrypt only with it, and the deployers' same-key re-wrap.

    The re-wrap statement lets ``up`` move an existing blob under the context (and
    stays: it can only change a blob's context on this key, never move it to another).
    The admins' grant statement lets them make the temporary, context-bound grant a
    move to another key needs (docs/runbooks/key-lifecycle.md), to a deployer only.
    With no context (aws-plugin mode) the document is returned as it was.
    """
    if not encryption_context:
        return dict(document)
    bound = with_encryption_context(document, encryption_context, condition_sids=CONTEXT_BOUND_SIDS)
    [deployers] = [s["Principal"]["AWS"] for s in document["Statement"] if s["Sid"] == SID_DEPLOYERS_WRAP]
    [admins] = [s["Principal"]["AWS"] for s in document["Statement"] if s["Sid"] == SID_ADMINS]
    bound["Statement"].append(rewrap_statement(deployers))
    bound["Statement"].append(rewrap_grant_statement(admins, deployers, encryption_context))
    return bound


class EncryptionKey(pulumi.ComponentResource):
    """Symmetric KMS key (rotation on) that wraps the cluster data key.

    The key is protected and retained on delete: losing it loses every byte of
    the cluster's data, so neither ``destroy`` nor a replacement may delete it.
    """

    arn: pulumi.Output[str]
    key_id: pulumi.Output[str]
    alias_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        config: KeyConfig,
        description: str,
        account_id: pulumi.Input[str],
        partition: pulumi.Input[str],
        region: str,
        deployers: pulumi.Input[Sequence[str]],
        node_role_arn: pulumi.Input[str] | None,
        onprem_user_arns: Sequence[pulumi.Input[str]],
        onprem_egress_cidrs: Sequence[str],
        tags: Mapping[str, str],
        created_vpc_endpoint_id: pulumi.Input[str] | None = None,
        encryption_context: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mariadb-kms:index:EncryptionKey", name, None, opts)

        def render(values: list[Any]) -> str:
            account, part, deployer_list, role_arn, user_arns, created_vpce = values
            endpoints = [e for e in (config.kms_vpc_endpoint_id, created_vpce) if e]
            return render_policy(cluster_key_policy(
                key_policy(
                    account_id=str(account),
                    partition=str(part),
                    region=region,
                    admins=config.admins,
                    deployers=[str(d) for d in deployer_list],
                    node_role_arn=None if role_arn is None else str(role_arn),
                    onprem_user_arns=[str(a) for a in user_arns],
                    onprem_egress_cidrs=onprem_egress_cidrs,
                    kms_vpc_endpoint_id=[str(e) for e in endpoints],
                    allow_account_root_iam_delegation=config.allow_account_root_iam_delegation,
                    restore_principals=config.restore_principals,
                ),
                encryption_context,
            ))

        policy = pulumi.Output.all(
            account_id, partition, deployers, node_role_arn, pulumi.Output.all(*onprem_user_arns),
            created_vpc_endpoint_id,
        ).apply(render)

        key = aws.kms.Key(
            f"{name}-key",
            description=description,
            key_usage="ENCRYPT_DECRYPT",
            customer_master_key_spec="SYMMETRIC_DEFAULT",
            enable_key_rotation=True,
            rotation_period_in_days=config.rotation_period_days,
            deletion_window_in_days=config.deletion_window_days,
            policy=policy,
            tags=dict(tags),
            opts=pulumi.ResourceOptions(parent=self, protect=True, retain_on_delete=True),
        )
        alias = aws.kms.Alias(
            f"{name}-alias",
            name=config.alias,
            target_key_id=key.key_id,
            opts=pulumi.ResourceOptions(parent=self),
        )

        self.arn = key.arn
        self.key_id = key.key_id
        self.alias_name = alias.name
        self.register_outputs({"arn": self.arn, "keyId": self.key_id, "aliasName": self.alias_name})
