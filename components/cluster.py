"""MariaDbCluster: the nodes, and the cluster plan run as pulumi-command resources.

Wiring only: the order is ``cluster_plan`` (``components/plan/order.py``);
this component creates one ``remote.Command`` per plan entry, in the plan's
order, waiting for exactly the entries the plan names.

- EC2 nodes (``Ec2Node``, one security group, the optional KMS VPC endpoint)
  and on-prem nodes (``OnPremNode``), both ``Machine``s;
  the member list is every node's address, known before any instance exists
  (EC2 nodes have their own network interfaces);
- the cluster CA (``ClusterCa``) and each node's certificate, when any TLS
  channel is on; the key reaches its node on stdin only;
- per node a ``NodeSshPath`` holding its steps, ``galera_new_cluster`` once
  (create-only) and a ``Verification`` per node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pulumi
import pulumi_command as command

from components.cluster_ca import ClusterCa
from components.config import ClusterConfig, Ec2NodeConfig, JumpHost, NodeConfig
from components.encryption_context import cluster_context
from components.member_firewall import render_member_firewall
from components.mycnf import GALERA_PORT
from components.node_files import load_node_files, render_unwrap_conf
from components.node_path import (
    COMMAND_INPUTS,
    Machine,
    NodeSshPath,
    StepInputs,
    remote_command,
    ssh_connection,
)
from components.onprem_node import OnPremNode
from components.plan import Role, cluster_plan
from components.plan.files import (
    config_files,
    credentials_files,
    galera_cluster_address,
    restart_digest,
    seed_files,
)
from components.plan.order import login_keys_stdin
from components.plan.steps import FileSpec, files_digest, put_payload
from components.tls_material import tls_files
from components.verification import Verification

COMPONENT_TYPE = "mariadb-kms:index:MariaDbCluster"

# The bootstrap command ignores a change of every input it has: it is never
# updated or replaced, so it never runs galera_new_cluster a second time. Its
# connection changes when the bootstrap node is replaced (a new host key or
# address), or when bootstrapNode names another node later; without this, the
# replacement would bootstrap a second cluster next to the running one, a
# split brain. The node-side script refuses too when another member answers;
# this makes sure it is never asked.
BOOTSTRAP_IGNORE_CHANGES = COMMAND_INPUTS


def node_files_payload(mode: str) -> tuple[str, str]:
    """The put payload of ``node/`` for ``mode`` and its digest (read from disk once, by the one loader)."""
    files: dict[str, FileSpec] = {dest: spec for dest, spec in load_node_files(mode).items()}
    return put_payload(files), files_digest(files)


def _tls_payload(pems: list[Any]) -> str:
    ca_cert_pem, cert_pem, key_pem = (str(p) for p in pems)
    return put_payload(tls_files(ca_cert_pem, cert_pem, key_pem))


def _digest_of(node_files_digest: str, version: str, machine: str) -> Callable[[dict[str, FileSpec]], str]:
    def digest(files: dict[str, FileSpec]) -> str:
        return restart_digest(files, node_files_digest, version=version, machine=machine)

    return digest


class MariaDbCluster(pulumi.ComponentResource):
    nodes: pulumi.Output[list[dict[str, str]]]
    """[{name, kind, address}] in configuration order: a public output."""
    galera_cluster_address: pulumi.Output[str]
    verification: pulumi.Output[dict[str, Any]]
    """{node name: the verify tool's report}."""
    ca_cert_pem: pulumi.Output[str] | None
    """The cluster CA certificate clients verify nodes against; None when every TLS channel is off."""

    def __init__(
        self,
        name: str,
        *,
        cluster: ClusterConfig,
        key_arn: pulumi.Input[str],
        data_key_blob: pulumi.Input[str],
        ssh_private_key: pulumi.Input[str] | None,
        instance_profile_name: pulumi.Input[str] | None = None,
        onprem_credentials: Mapping[str, tuple[pulumi.Input[str], pulumi.Input[str]]] | None = None,
        jump_host: JumpHost | None = None,
        volume_key_arn: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``key_arn`` wraps the data key (unwrap.conf names it); ``volume_key_arn`` encrypts the EC2 EBS
        volumes, by default the same key. They differ once the data key has moved to another key
        (``kmsKeyArn``): a volume's key cannot change in place, so the volumes stay under the stack's own key.
        """
        super().__init__(COMPONENT_TYPE, name, None, opts)
        # Each on-prem member's own access key (id, secret); a leaving node has none and needs none.
        onprem_credentials = dict(onprem_credentials or {})
        lacking = [n.name for n in cluster.onprem_nodes if not n.decommission and n.name not in onprem_credentials]
        if lacking:
            raise ValueError(f"on-prem nodes {lacking} need their own access key id and secret")
        plan = cluster_plan(cluster)
        self._cfg = cluster
        self._key_arn = pulumi.Output.from_input(key_arn)
        self._volume_key_arn = pulumi.Output.from_input(volume_key_arn) if volume_key_arn is not None else self._key_arn
        self._blob = pulumi.Output.from_input(data_key_blob)
        self.kms_vpc_endpoint_id: pulumi.Output[str] | None = None  # the key policy's aws:SourceVpce
        child = pulumi.ResourceOptions(parent=self)

        machines: dict[str, Machine] = {}
        machines.update(self._ec2_nodes(name, instance_profile_name, child))
        for onprem_node in cluster.onprem_nodes:
            machines[onprem_node.name] = OnPremNode(onprem_node.name, node=onprem_node, opts=child)

        addresses = {n.name: pulumi.Output.from_input(machines[n.name].address) for n in cluster.nodes}
        # A node being decommissioned is no member: no config lists it, no verification counts it.
        members = pulumi.Output.all(*(addresses[n.name] for n in cluster.members)).apply(
            lambda values: [str(v) for v in values]
        )
        # The Galera ports' allowlist: a leaving node stays in it until it has left (then shut-out).
        leaving = pulumi.Output.all(*(addresses[n.name] for n in cluster.leaving)).apply(
            lambda values: [str(v) for v in values]
        )
        firewall = pulumi.Output.all(members, leaving).apply(lambda v: render_member_firewall([*v[0], *v[1]]))
        firewall_closed = members.apply(render_member_firewall)
        self.ca: ClusterCa | None = None
        if cluster.tls.any_channel:
            self.ca = ClusterCa(
                f"{name}-ca", cluster_name=cluster.mariadb.cluster_name, stack=cluster.stack, nodes=addresses,
                settings=cluster.tls, opts=child,
            )
        self.ca_cert_pem = self.ca.ca_cert_pem if self.ca is not None else None
        node_files, node_files_digest = node_files_payload(cluster.mariadb.key_management)
        credentials: dict[str, pulumi.Output[str]] = {
            node: pulumi.Output.secret(
                pulumi.Output.all(key_id, secret).apply(
                    lambda v: put_payload(credentials_files(cluster, access_key_id=v[0], secret_access_key=v[1]))
                )
            )
            for node, (key_id, secret) in onprem_credentials.items()
        }
        run_stamp = datetime.now(UTC).isoformat() if cluster.verify_on_every_up else None
        version = cluster.mariadb.version
        # What the escrow copy holds: the blob (ciphertext) and unwrap.conf (key ARN, region, mode).
        escrowed = f"{cluster.region}\0{cluster.mariadb.key_management}"
        key_digest = pulumi.Output.all(self._key_arn, self._blob).apply(
            lambda v: hashlib.sha256(f"{v[0]}\0{v[1]}\0{escrowed}".encode()).hexdigest()
        )

        connections: dict[str, command.remote.ConnectionArgs] = {}
        inputs: dict[str, StepInputs] = {}
        paths: dict[str, NodeSshPath] = {}
        for n in cluster.nodes:
            machine = machines[n.name]
            onprem = n.kind == "onprem"
            connections[n.name] = ssh_connection(
                host=machine.address,
                port=machine.ssh_port,
                user=machine.ssh_user,
                host_key=machine.host_public_key,
                private_key=ssh_private_key,
                jump_host=jump_host,
            )
            rendered = None if n.decommission else self._config_files(n, addresses[n.name], members)
            # An EC2 node's type is applied by a stop and start, so its roll runs again after a change.
            machine_settings = f"instanceType={n.instance_type}" if isinstance(n, Ec2NodeConfig) else ""
            tls_payload, tls_digest = self._tls_inputs(n.name)
            inputs[n.name] = StepInputs(
                identity=machine.identity,
                node_files=node_files,
                node_files_digest=node_files_digest,
                config_files=rendered.apply(put_payload) if rendered is not None else None,
                config_digest=(
                    rendered.apply(_digest_of(node_files_digest, version, machine_settings))
                    if rendered is not None else None
                ),
                members=members,
                seed_files=self._seed_payload(on_premises=onprem),
                credentials=credentials.get(n.name) if onprem else None,
                credentials_version=onprem_credentials[n.name][0] if n.name in onprem_credentials else None,
                tls_files=tls_payload,
                tls_digest=tls_digest,
                run_stamp=run_stamp,
                version=version or None,
                key_digest=key_digest,
                login_keys=login_keys_stdin(cluster),
                member_firewall=firewall,
                member_firewall_closed=firewall_closed,
            )
            paths[n.name] = NodeSshPath(
                f"{n.name}-ssh", connection=connections[n.name], inputs=inputs[n.name],
                opts=pulumi.ResourceOptions(parent=machine.resource),
            )

        # The executor: one command per entry, in the plan's order, after what the entry names.
        created: dict[str, pulumi.Resource] = {}
        reports: dict[str, pulumi.Output[Any]] = {}
        self.bootstrap: command.remote.Command | None = None
        for entry in plan:
            machine = machines[entry.node]
            depends_on: list[pulumi.Resource] = [created[k] for k in entry.after]
            if entry.after_machine:
                depends_on += machine.prerequisites
            if entry.role is Role.NODE_STEP:
                created[entry.key] = paths[entry.node].add(entry.step, depends_on=depends_on)
            elif entry.role is Role.INSTANCE_TYPE:
                created[entry.key] = self._instance_type(entry.node, machine, depends_on)
            elif entry.role is Role.BOOTSTRAP:
                self.bootstrap = created[entry.key] = remote_command(
                    f"{name}-bootstrap", entry.step, connection=connections[entry.node],
                    inputs=inputs[entry.node], depends_on=depends_on, parent=self, create_only=entry.create_only,
                )
            else:
                verification = Verification(
                    f"{entry.node}-verification", step=entry.step, connection=connections[entry.node],
                    inputs=inputs[entry.node], after=depends_on,
                    opts=pulumi.ResourceOptions(parent=machine.resource),
                )
                created[entry.key] = verification.command
                reports[entry.node] = verification.report
        for path in paths.values():
            path.finish()

        names = [n.name for n in cluster.members]
        kinds = [n.kind for n in cluster.members]
        self.nodes = members.apply(
            lambda addrs: [{"name": nm, "kind": k, "address": a} for nm, k, a in zip(names, kinds, addrs, strict=True)]
        )
        self.galera_cluster_address = members.apply(lambda addrs: galera_cluster_address(addrs, GALERA_PORT))
        self.verification = pulumi.Output.all(*(reports[nm] for nm in names)).apply(
            lambda values: dict(zip(names, values, strict=True))
        )
        self.register_outputs({
            "nodes": self.nodes,
            "galeraClusterAddress": self.galera_cluster_address,
            "verification": self.verification,
            "caCertPem": self.ca_cert_pem,
        })

    def _instance_type(
        self, node: str, machine: Machine, depends_on: list[pulumi.Resource]
    ) -> pulumi.Resource:
        from components.ec2_node import Ec2Node
        from components.instance_type_provider import InstanceTypeResource

        [config] = [n for n in self._cfg.ec2_nodes if n.name == node]
        assert isinstance(machine, Ec2Node)
        return InstanceTypeResource(
            f"{node}-instance-type", instance_id=machine.instance_id, instance_type=config.instance_type,
            region=self._cfg.region, opts=pulumi.ResourceOptions(parent=machine, depends_on=depends_on),
        )

    def _tls_inputs(self, node: str) -> tuple[pulumi.Output[str] | None, pulumi.Output[str] | None]:
        """The node's TLS put payload (secret: it holds the key) and a digest of its certificates only."""
        if self.ca is None:
            return None, None
        cert = self.ca.certificates[node]
        payload: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(self.ca.ca_cert_pem, cert.cert_pem, cert.key_pem).apply(_tls_payload)
        )
        digest = pulumi.Output.all(self.ca.ca_cert_pem, cert.cert_pem).apply(
            lambda v: hashlib.sha256(f"{v[0]}\0{v[1]}".encode()).hexdigest()
        )
        return payload, digest

    def _config_files(
        self, node: NodeConfig, address: pulumi.Output[str], members: pulumi.Output[list[str]]
    ) -> pulumi.Output[dict[str, FileSpec]]:
        cfg = self._cfg

        def render(values: list[Any]) -> dict[str, FileSpec]:
            key_arn, blob, node_address, member_addresses = values
            return config_files(
                node, cfg, key_arn=str(key_arn), blob_b64=str(blob), node_address=str(node_address),
                member_addresses=[str(m) for m in member_addresses],
            )

        return pulumi.Output.all(self._key_arn, self._blob, address, members).apply(render)

    def _seed_payload(self, *, on_premises: bool) -> pulumi.Output[str]:
        cfg = self._cfg
        return pulumi.Output.all(self._key_arn, self._blob).apply(
            lambda v: put_payload(seed_files(cfg, key_arn=v[0], blob_b64=v[1], on_premises=on_premises))
        )

    def _ec2_nodes(
        self, name: str, instance_profile_name: pulumi.Input[str] | None, child: pulumi.ResourceOptions
    ) -> dict[str, Machine]:
        cfg = self._cfg
        if not cfg.ec2_nodes:
            return {}
        if instance_profile_name is None:
            raise ValueError("EC2 nodes need the node instance profile")
        # Imported here so a stack of on-prem nodes only never loads the EC2 half.
        from components.ec2_node import Ec2Node
        from components.security_group import NodeSecurityGroup

        group = NodeSecurityGroup(f"{name}-nodes", cluster=cfg, opts=child)
        kms_path: list[pulumi.Resource] = []
        if cfg.network.create_kms_vpc_endpoint and cfg.network.vpc_id is not None:
            from components.kms_endpoint import KmsVpcEndpoint, endpoint_subnets

            endpoint = KmsVpcEndpoint(
                f"{name}-kms",
                vpc_id=cfg.network.vpc_id,
                region=cfg.region,
                subnet_ids=endpoint_subnets(cfg.ec2_nodes, cfg.network.kms_endpoint_subnet_ids),
                node_security_group_id=group.id,
                stack=cfg.stack,
                tags=cfg.tags,
                opts=child,
            )
            kms_path.append(endpoint)
            self.kms_vpc_endpoint_id = endpoint.id
        # The same unwrap.conf the SSH path's config step installs, so first boot and later runs agree.
        unwrap_conf = self._key_arn.apply(
            lambda arn: render_unwrap_conf(
                mode=cfg.mariadb.key_management, key_arn=arn, region=cfg.region, on_premises=False,
                encryption_context=cluster_context(
                    cfg.stack, cfg.mariadb.cluster_name, cfg.mariadb.key_management,
                    enabled=cfg.key.encryption_context,
                ),
            )
        )
        return {
            n.name: Ec2Node(
                n.name,
                node=n,
                cluster=cfg,
                key_arn=self._volume_key_arn,
                data_key_blob=self._blob,
                instance_profile_name=instance_profile_name,
                # A leaving node leaves the node group: its SELF rules would keep admitting it.
                security_group_id=group.leaving_id if n.decommission and group.leaving_id is not None else group.id,
                unwrap_conf=unwrap_conf,
                kms_path=kms_path,
                opts=child,
            )
            for n in cfg.ec2_nodes
        }

