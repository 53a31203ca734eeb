"""One IAM user and access key per on-prem node: the nodes have no instance profile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi
import pulumi_aws as aws

from components.config import OnPremNodeConfig

IAM_PATH = "/mariadb-kms/"
NODE_TAG = "mariadb-kms:node"


def access_key_resource_name(component: str, node: str, generation: int) -> str:
    """The access key's logical name: a new ``accessKeyGeneration`` is a new resource, not an update.

    A new name makes the engine create the new key before anything that reads it
    (the node's credentials step, its pre-flight) and delete the old key only
    after every create and update of the run, the engine's order for a resource
    that left the program. Generation 1 has no suffix.
    """
    return f"{component}-{node}-key" if generation == 1 else f"{component}-{node}-key-{generation}"


class OnPremIdentity(pulumi.ComponentResource):
    """The on-prem nodes' AWS identities: per node an IAM user and its one current access key.

    Removing or rotating one node's key touches that node only. A node with
    ``decommission: true`` gets none: its user and key leave the program and
    the engine deletes them after everything else ran, the decommission step
    included (which needs no KMS: it stops the node and wipes its key material).

    ``secret_access_keys`` are secret Outputs for the node configuration to send
    over SSH stdin. They are deliberately not among the component's registered
    outputs and must never be exported: every StackReference reader would get them.
    """

    user_arns: dict[str, pulumi.Output[str]]
    user_names: dict[str, pulumi.Output[str]]
    access_key_ids: dict[str, pulumi.Output[str]]
    secret_access_keys: dict[str, pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        *,
        nodes: Sequence[OnPremNodeConfig],
        tags: Mapping[str, str],
        wrapping_key_policy: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``wrapping_key_policy``: as ``NodeIdentity``'s, the user's IAM policy on a key set by ``kmsKeyArn``."""
        super().__init__("mariadb-kms:index:OnPremIdentity", name, None, opts)
        self.user_arns, self.user_names, self.access_key_ids, self.secret_access_keys = {}, {}, {}, {}
        for node in nodes:
            if node.decommission:
                continue
            user = aws.iam.User(
                f"{name}-{node.name}-user",
                path=IAM_PATH,
                tags={**tags, NODE_TAG: node.name},
                opts=pulumi.ResourceOptions(parent=self),
            )
            if wrapping_key_policy is not None:
                aws.iam.UserPolicy(
                    f"{name}-{node.name}-wrapping-key", user=user.name, policy=wrapping_key_policy,
                    opts=pulumi.ResourceOptions(parent=self),
                )
            # The provider already marks these secret; saying it here keeps it true
            # whatever a future provider version does. The SES SMTP password is
            # derived from the secret key, so it is just as sensitive.
            key = aws.iam.AccessKey(
                access_key_resource_name(name, node.name, node.access_key_generation),
                user=user.name,
                opts=pulumi.ResourceOptions(
                    parent=self, additional_secret_outputs=["secret", "ses_smtp_password_v4"]
                ),
            )
            self.user_arns[node.name] = user.arn
            self.user_names[node.name] = user.name
            self.access_key_ids[node.name] = key.id
            self.secret_access_keys[node.name] = pulumi.Output.secret(key.secret)
        self.register_outputs({
            "userArns": dict(self.user_arns),
            "userNames": dict(self.user_names),
            "accessKeyIds": dict(self.access_key_ids),
        })
