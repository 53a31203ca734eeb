"""IAM user and access key of the on-prem nodes, which have no instance profile."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_aws as aws

IAM_PATH = "/mariadb-kms/"


class OnPremIdentity(pulumi.ComponentResource):
    """The on-prem nodes' AWS identity.

    ``secret_access_key`` is a secret Output for the node configuration to send
    over SSH stdin. It is deliberately not among the component's registered
    outputs and must never be exported: every StackReference reader would get it.
    """

    user_arn: pulumi.Output[str]
    user_name: pulumi.Output[str]
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        tags: Mapping[str, str],
        wrapping_key_policy: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``wrapping_key_policy``: as ``NodeIdentity``'s, the user's IAM policy on a key set by ``kmsKeyArn``."""
        super().__init__("mariadb-kms:index:OnPremIdentity", name, None, opts)

        user = aws.iam.User(
            f"{name}-user",
            path=IAM_PATH,
            tags=dict(tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        if wrapping_key_policy is not None:
            aws.iam.UserPolicy(
                f"{name}-wrapping-key", user=user.name, policy=wrapping_key_policy,
                opts=pulumi.ResourceOptions(parent=self),
            )
        # The provider already marks these secret; saying it here keeps it true
        # whatever a future provider version does. The SES SMTP password is
        # derived from the secret key, so it is just as sensitive.
        key = aws.iam.AccessKey(
            f"{name}-key",
            user=user.name,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["secret", "ses_smtp_password_v4"]),
        )

        self.user_arn = user.arn
        self.user_name = user.name
        self.access_key_id = key.id
        self.secret_access_key = pulumi.Output.secret(key.secret)
        self.register_outputs({"userArn": self.user_arn, "userName": self.user_name, "accessKeyId": self.access_key_id})
