"""An optional KMS interface VPC endpoint, for nodes in private subnets.

Nodes must reach KMS on 443 before MariaDB can start (the unwrap unit, or the
aws_key_management plugin). In a private subnet without a NAT gateway that
takes an interface endpoint; with private DNS on, the regional name
``kms.<region>.amazonaws.com`` resolves to the endpoint inside the VPC, so the
nodes need no endpoint URL of their own. The endpoint gets a group of its own
that admits 443 only from the node security group.

On-prem nodes keep using KMS's public endpoint: the key policy's
``aws:SourceIp`` condition is not seen through a VPC endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi
import pulumi_aws as aws

from components.config import PROJECT, Ec2NodeConfig

COMPONENT_TYPE = "mariadb-kms:index:KmsVpcEndpoint"
HTTPS_PORT = 443


def kms_service_name(region: str) -> str:
    """The endpoint service name; the China regions use a reversed-domain prefix of their own."""
    prefix = "cn.com.amazonaws" if region.startswith("cn-") else "com.amazonaws"
    return f"{prefix}.{region}.kms"


def endpoint_subnets(nodes: Sequence[Ec2NodeConfig], configured: Sequence[str] = ()) -> tuple[str, ...]:
    """The subnets to place the endpoint in: those configured, else the first node subnet of each zone.

    An interface endpoint takes at most one subnet per availability zone.
    """
    if configured:
        return tuple(dict.fromkeys(configured))
    by_zone: dict[str, str] = {}
    for node in nodes:
        by_zone.setdefault(node.availability_zone, node.subnet_id)
    if not by_zone:
        raise ValueError("a KMS VPC endpoint needs subnets: configure kmsEndpointSubnetIds or add ec2Nodes")
    return tuple(by_zone.values())


class KmsVpcEndpoint(pulumi.ComponentResource):
    """Interface endpoint for KMS with private DNS, reachable from the node security group only."""

    id: pulumi.Output[str]
    security_group_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        vpc_id: str,
        region: str,
        subnet_ids: Sequence[str],
        node_security_group_id: pulumi.Input[str],
        stack: str,
        tags: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        if not subnet_ids:
            raise ValueError("KmsVpcEndpoint needs at least one subnet")
        child = pulumi.ResourceOptions(parent=self)
        group = aws.ec2.SecurityGroup(
            f"{name}-group",
            vpc_id=vpc_id,
            description=f"{PROJECT} {stack}: KMS interface endpoint",
            tags={**tags, "Name": f"{PROJECT}-{stack}-kms-endpoint"},
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-in-tcp-{HTTPS_PORT}-nodes",
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=HTTPS_PORT,
            to_port=HTTPS_PORT,
            referenced_security_group_id=node_security_group_id,
            description="HTTPS to KMS from the MariaDB nodes",
            tags=dict(tags),
            opts=child,
        )
        endpoint = aws.ec2.VpcEndpoint(
            f"{name}-endpoint",
            vpc_id=vpc_id,
            service_name=kms_service_name(region),
            vpc_endpoint_type="Interface",
            private_dns_enabled=True,
            subnet_ids=list(subnet_ids),
            security_group_ids=[group.id],
            tags={**tags, "Name": f"{PROJECT}-{stack}-kms"},
            opts=child,
        )
        self.id = endpoint.id
        self.security_group_id = group.id
        self.register_outputs({"id": self.id, "securityGroupId": self.security_group_id})
