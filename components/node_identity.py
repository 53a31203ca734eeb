"""IAM role and instance profile of the EC2 nodes."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_aws as aws

from components.key_policy import node_trust_policy, render_policy

IAM_PATH = "/mariadb-kms/"


class NodeIdentity(pulumi.ComponentResource):
    """The EC2 nodes' AWS identity.

    It carries no policy of its own while the stack's own key wraps the data key:
    the key policy grants the role Decrypt and DescribeKey on the one key, which is
    all a node needs. With ``kmsKeyArn`` it gets those two on that key in IAM too
    (a key of another account needs both sides). SSM is opt-in.
    """

    role_arn: pulumi.Output[str]
    role_name: pulumi.Output[str]
    instance_profile_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        partition: pulumi.Input[str],
        attach_ssm_policy: bool,
        tags: Mapping[str, str],
        wrapping_key_policy: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``wrapping_key_policy``: the role's own IAM policy on a key the stack does not own (``kmsKeyArn``),
        ``key_policy.wrapping_key_identity_policy``; None while the stack's own key wraps the data key."""
        super().__init__("mariadb-kms:index:NodeIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        trust = pulumi.Output.from_input(partition).apply(lambda p: render_policy(node_trust_policy(p)))
        role = aws.iam.Role(
            f"{name}-role",
            path=IAM_PATH,
            description="MariaDB Galera EC2 nodes: unwraps the cluster data key (granted by the key policy)",
            assume_role_policy=trust,
            tags=dict(tags),
            opts=child,
        )
        if attach_ssm_policy:
            aws.iam.RolePolicyAttachment(
                f"{name}-ssm",
                role=role.name,
                policy_arn=pulumi.Output.from_input(partition).apply(
                    lambda p: f"arn:{p}:iam::aws:policy/AmazonSSMManagedInstanceCore"
                ),
                opts=child,
            )
        if wrapping_key_policy is not None:
            aws.iam.RolePolicy(f"{name}-wrapping-key", role=role.id, policy=wrapping_key_policy, opts=child)
        profile = aws.iam.InstanceProfile(
            f"{name}-profile",
            path=IAM_PATH,
            role=role.name,
            tags=dict(tags),
            opts=child,
        )

        self.role_arn = role.arn
        self.role_name = role.name
        self.instance_profile_name = profile.name
        self.register_outputs(
            {"roleArn": self.role_arn, "roleName": self.role_name, "instanceProfileName": self.instance_profile_name}
        )
