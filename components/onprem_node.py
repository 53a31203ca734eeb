"""An on-premises node: a host the program reaches over SSH, with no cloud resources of its own."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi

from components.config import OnPremNodeConfig

COMPONENT_TYPE = "mariadb-kms:index:OnPremNode"


class OnPremNode(pulumi.ComponentResource):
    """What the cluster needs to know about an on-prem host, as the counterpart of ``Ec2Node``.

    Its children are the node's SSH path (``NodeSshPath``), added by the
    cluster. The host key comes from config and is pinned on every connection;
    it also stands for the machine's identity: a reinstalled host has a new
    key, and every step of its path runs again. A ``Machine`` (``components/node_path``).
    """

    address: pulumi.Output[str]
    host_public_key: pulumi.Output[str]
    ssh_user: pulumi.Output[str]
    ssh_port: int
    identity: pulumi.Output[str]
    prerequisites: Sequence[pulumi.Resource] = ()  # the host exists before the program runs

    def __init__(self, name: str, *, node: OnPremNodeConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        self.node = node
        self.address = pulumi.Output.from_input(node.address)
        self.host_public_key = pulumi.Output.from_input(node.host_key)
        self.ssh_user = pulumi.Output.from_input(node.ssh_user)
        self.ssh_port = node.ssh_port
        self.identity = self.host_public_key
        self.prerequisites = ()
        self.register_outputs({"address": self.address, "kind": node.kind, "sshUser": self.ssh_user})

    @property
    def resource(self) -> pulumi.Resource:
        return self
