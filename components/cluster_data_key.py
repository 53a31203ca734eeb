"""ClusterDataKey: the one data key every node of the cluster shares, as a component.

The work is done by the dynamic provider in ``components.data_key_provider``
(a stable import path, see there). This component only wires it: the child is
protected and retained, because losing the blob loses the data.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components.data_key_provider import DataKeyResource

COMPONENT_TYPE = "mariadb-kms:index:ClusterDataKey"


def default_escrow_parameter_name(stack: str) -> str:
    """One escrow per stack, so two stacks in one account and region never share a parameter."""
    return f"/mariadb-kms/{stack}/cluster-data-key"


class ClusterDataKey(pulumi.ComponentResource):
    ciphertext_blob: pulumi.Output[str]
    """The data key's KMS ciphertext blob, base64. Ciphertext only: it is not a secret by itself."""
    key_arn: pulumi.Output[str]
    """The KMS key that wrapped the blob, as KMS reports it."""

    def __init__(
        self,
        name: str,
        *,
        key_arn: pulumi.Input[str],
        escrow_in_ssm: bool,
        tags: Mapping[str, str],
        escrow_parameter_name: str | None = None,
        endpoint_url: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``endpoint_url`` points boto3 at a local KMS stand-in (moto) for tests and the rehearsal only.

        ``encryption_context`` binds the blob to the cluster; changing it (an existing
        stack gaining one) re-wraps the same data key in place, never a new key.
        """
        super().__init__(COMPONENT_TYPE, name, None, opts)
        if escrow_in_ssm and escrow_parameter_name is None:
            escrow_parameter_name = default_escrow_parameter_name(pulumi.get_stack())
        data_key = DataKeyResource(
            name,
            key_arn=key_arn,
            escrow_in_ssm=escrow_in_ssm,
            escrow_parameter_name=escrow_parameter_name if escrow_in_ssm else None,
            tags=tags,
            endpoint_url=endpoint_url,
            encryption_context=encryption_context,
            # The caller's depends_on (the key policy) is repeated on the child so the engine, not
            # only the SDK's ordering, knows the data key must wait for it: KMS refuses the deployer
            # GenerateDataKeyWithoutPlaintext until the policy grants it.
            opts=pulumi.ResourceOptions(
                parent=self,
                protect=True,
                retain_on_delete=True,
                depends_on=opts.depends_on if opts is not None else None,
            ),
        )
        self.ciphertext_blob = data_key.ciphertext_blob
        self.key_arn = data_key.key_arn
        self.register_outputs({"ciphertextBlob": self.ciphertext_blob, "keyArn": self.key_arn})
