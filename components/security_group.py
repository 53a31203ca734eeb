"""The EC2 nodes' security group: one group, one rule resource per rule.

The rules are decided by ``components.security_group_rules`` (pure, tested
as data); this component only creates them. Rules are separate
``aws.vpc.SecurityGroupIngressRule`` / ``EgressRule`` resources, never inline
blocks: pulumi-aws recommends it, and a rule added or removed then changes one
resource instead of the whole group. pulumi-aws removes the allow-all egress
rule AWS puts in every new group, so egress is exactly the rules below.

While an EC2 node is being decommissioned, a second group (SSH from
``adminCidrs`` only) exists for it to switch to: its network interface leaves
the node group, whose SELF rules would otherwise keep admitting it (an
in-place update of the interface's ``securityGroups``). It goes with the
node's interface in the `up` that drops the node from config.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components.config import PROJECT, ClusterConfig
from components.security_group_rules import (
    SecurityGroupRule,
    exposure_warnings,
    leaving_security_group_rules,
    node_security_group_rules,
)

COMPONENT_TYPE = "mariadb-kms:index:NodeSecurityGroup"


class NodeSecurityGroup(pulumi.ComponentResource):
    """The security group every EC2 node's network interface carries."""

    id: pulumi.Output[str]
    leaving_id: pulumi.Output[str] | None
    """The group a decommissioned EC2 node's interface switches to; None while no EC2 node is leaving."""

    def __init__(self, name: str, *, cluster: ClusterConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        if cluster.network.vpc_id is None:
            raise ValueError("NodeSecurityGroup needs vpcId (the EC2 nodes' VPC)")
        for warning in exposure_warnings(cluster):
            pulumi.log.warn(warning, resource=self)

        group = aws.ec2.SecurityGroup(
            f"{name}-group",
            vpc_id=cluster.network.vpc_id,
            # Changing a group's description replaces it, so it names nothing that may change.
            description=f"{PROJECT} {cluster.stack}: MariaDB Galera nodes",
            tags={**cluster.tags, "Name": f"{PROJECT}-{cluster.stack}-nodes"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.id = group.id
        self.rules = [self._rule(name, group, rule, cluster) for rule in node_security_group_rules(cluster)]
        self.leaving_id = None
        if any(n.decommission for n in cluster.ec2_nodes):
            leaving = aws.ec2.SecurityGroup(
                f"{name}-leaving-group",
                vpc_id=cluster.network.vpc_id,
                description=f"{PROJECT} {cluster.stack}: nodes being decommissioned (SSH only)",
                tags={**cluster.tags, "Name": f"{PROJECT}-{cluster.stack}-leaving"},
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.leaving_id = leaving.id
            self.rules += [
                self._rule(f"{name}-leaving", leaving, rule, cluster) for rule in leaving_security_group_rules(cluster)
            ]
        self.register_outputs({"id": self.id})

    def _rule(
        self, name: str, group: aws.ec2.SecurityGroup, rule: SecurityGroupRule, cluster: ClusterConfig
    ) -> pulumi.CustomResource:
        resource = aws.vpc.SecurityGroupIngressRule if rule.direction == "ingress" else aws.vpc.SecurityGroupEgressRule
        return resource(
            f"{name}-{rule.key}",
            security_group_id=group.id,
            ip_protocol=rule.protocol,
            from_port=rule.port,
            to_port=rule.port,
            description=rule.description,
            cidr_ipv4=rule.cidr_ipv4,
            cidr_ipv6=rule.cidr_ipv6,
            referenced_security_group_id=group.id if rule.is_self else None,
            tags=dict(cluster.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
