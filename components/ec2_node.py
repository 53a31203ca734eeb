"""One EC2 node: host key, network interface, data volume, instance, volume attachment.

The component only wires: it resolves Outputs, hands plain values to the pure
``render_cloud_config`` / ``render_user_data``, and creates its children.

Why it is shaped like this:
- The network interface is a resource of its own, so every member's address is
  known before any instance exists, and survives the instance being replaced.
- The data volume (``/var/lib/mysql``) is its own resource too, encrypted under
  the cluster key by ARN (an alias makes a perpetual diff that replaces the
  volume), protected and retained on delete: replacing or destroying the
  instance never loses data. A node marked ``decommission`` drops the
  protection (never the retention), so removing it from config later works.
- User-data is first boot only, and the instance ignores later changes to it
  (``ignore_changes``): pulumi-aws would otherwise stop and start every
  instance whose user-data changed, and one change (say a new login key)
  changes every node's. ``user_data_replace_on_change=False`` keeps a change
  from replacing instances too. Changes reach nodes over SSH, one at a time.
- The AMI is pinned in config, and later changes to it are ignored for the
  same reason: a new ``amiId`` would replace every instance at once. It
  applies to nodes created afterwards. A replacement (``pulumi up --replace``)
  would not take it either: the engine creates a replacement with the state's
  value of every ignored input. So a node may carry its own ``amiId``: its
  instance then does not ignore ``ami``, and a change of it replaces that node
  alone, launched from the new AMI (a rolling replace, one node per up). The
  user-data stays ignored, so the replacement boots the user-data of the
  node's first launch, and the SSH path brings the node up to date from there
  (docs/runbooks/day-2.md says when that first user-data no longer suffices).
- ``instanceType`` is ignored after launch too: pulumi-aws applies it by a
  stop and a start, to every changed instance at once. The cluster applies it
  one node at a time instead (``components/instance_type_provider.py``).
- Instance and attachment are ``delete_before_replace``: the network interface
  and the volume can each belong to one instance only, so a replacement must
  let go of them first (the attachment stops the old instance before
  detaching, so MariaDB shuts down cleanly).
- The SSH host key is made here (pulumi-tls) and pinned by every connection;
  the private half is in user-data and in (secret) state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from components.cloud_config import LOGIN_USER, first_boot_files, render_cloud_config, render_user_data
from components.config import PROJECT, ClusterConfig, Ec2NodeConfig
from components.node_files import node_files

COMPONENT_TYPE = "mariadb-kms:index:Ec2Node"
DATA_DEVICE_NAME = "/dev/xvdf"  # mariadb-kms-data-volume finds it by volume id; xvdf only on Xen types
ROOT_VOLUME_GIB = 16


def require_key_arn(value: str) -> str:
    """The key ARN, refusing an alias (EBS stores the key ARN; an alias would diff, and replace, forever)."""
    if not value.startswith("arn:") or ":key/" not in value:
        raise ValueError(f"the data volume needs the KMS key ARN (arn:...:key/...), not {value!r}")
    return value


class Ec2Node(pulumi.ComponentResource):
    """A MariaDB Galera node on EC2, first booted by cloud-init; a ``Machine`` (``components/node_path``)."""

    address: pulumi.Output[str]
    host_public_key: pulumi.Output[str]
    ssh_user: str
    ssh_port: int
    identity: pulumi.Output[str]
    prerequisites: Sequence[pulumi.Resource]
    instance: aws.ec2.Instance
    instance_id: pulumi.Output[str]
    data_volume_id: pulumi.Output[str]
    data_volume_attachment: aws.ec2.VolumeAttachment

    def __init__(
        self,
        name: str,
        *,
        node: Ec2NodeConfig,
        cluster: ClusterConfig,
        key_arn: pulumi.Input[str],
        data_key_blob: pulumi.Input[str],
        instance_profile_name: pulumi.Input[str],
        security_group_id: pulumi.Input[str],
        unwrap_conf: pulumi.Input[str],
        kms_path: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``unwrap_conf``: the same file the SSH path's config step installs, so first boot and later
        runs agree. ``kms_path``: what the node's way to KMS needs (a VPC endpoint the program makes);
        the SSH path waits for it, since the install unwraps the key."""
        super().__init__(COMPONENT_TYPE, name, None, opts)
        ami_id = node.ami_id or cluster.network.ami_id
        if ami_id is None:
            raise ValueError("EC2 nodes need a pinned AMI (amiId)")
        if cluster.ssh_authorized_key is None:
            raise ValueError("EC2 nodes need sshAuthorizedKey (the login key of the program's SSH path)")
        authorized_key = cluster.ssh_authorized_key
        mode = cluster.mariadb.key_management
        files = first_boot_files(node_files(mode))
        tags = {**cluster.tags, "Name": f"{PROJECT}-{cluster.stack}-{node.name}", "mariadb-kms:node": node.name}
        child = pulumi.ResourceOptions(parent=self)
        checked_key_arn = pulumi.Output.from_input(key_arn).apply(require_key_arn)

        host_key = tls.PrivateKey(f"{name}-host-key", algorithm="ED25519", opts=child)

        eni = aws.ec2.NetworkInterface(
            f"{name}-eni",
            subnet_id=node.subnet_id,
            private_ips=[node.private_ip] if node.private_ip else None,
            security_groups=[security_group_id],
            description=f"{PROJECT} {cluster.stack}: Galera member {node.name}",
            tags=tags,
            opts=child,
        )

        # The instance lands in its interface's subnet's zone; the volume must be in the same one
        # (else the attachment fails with InvalidVolume.ZoneMismatch), so it takes that zone too.
        zone = aws.ec2.get_subnet_output(id=node.subnet_id).availability_zone
        volume = aws.ebs.Volume(
            f"{name}-data",
            availability_zone=zone,
            size=node.data_volume_gib,
            type="gp3",
            encrypted=True,
            kms_key_id=checked_key_arn,
            tags={**tags, "Name": f"{PROJECT}-{cluster.stack}-{node.name}-data"},
            # A decommissioned node's volume is no longer protected, so the later `pulumi up` that drops the
            # node from config can remove it from the stack; retain_on_delete still leaves it in AWS.
            opts=pulumi.ResourceOptions(parent=self, protect=not node.decommission, retain_on_delete=True),
        )

        def user_data(values: list[Any]) -> str:
            private_key, public_key, blob, conf, volume_id = values
            return render_user_data(
                render_cloud_config(
                    node_name=node.name,
                    files=files,
                    data_key_blob=str(blob),
                    unwrap_conf=str(conf),
                    host_private_key=str(private_key),
                    host_public_key=str(public_key),
                    authorized_key=authorized_key,
                    data_volume_id=str(volume_id),
                    debian_mirror=cluster.network.debian_mirror,
                )
            )

        rendered: pulumi.Output[str] = pulumi.Output.all(
            host_key.private_key_openssh, host_key.public_key_openssh, data_key_blob, unwrap_conf, volume.id
        ).apply(user_data)
        # Secret: it holds the SSH host private key.
        user_data_base64: pulumi.Output[str] = pulumi.Output.secret(rendered)

        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=ami_id,
            instance_type=node.instance_type,
            iam_instance_profile=instance_profile_name,
            primary_network_interface=aws.ec2.InstancePrimaryNetworkInterfaceArgs(network_interface_id=eni.id),
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                # 1: a container on the node (one more hop) never gets the role's credentials.
                http_put_response_hop_limit=1,
                instance_metadata_tags="disabled",
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True,
                kms_key_id=checked_key_arn,
                volume_type="gp3",
                volume_size=ROOT_VOLUME_GIB,
                delete_on_termination=True,
                tags={**tags, "Name": f"{PROJECT}-{cluster.stack}-{node.name}-root"},
            ),
            user_data_base64=user_data_base64,
            user_data_replace_on_change=False,
            tags=tags,
            opts=pulumi.ResourceOptions(
                parent=self,
                delete_before_replace=True,
                # instanceType: pulumi-aws would stop and start every changed instance at once; the cluster's
                # InstanceTypeResource applies it one node at a time (components/instance_type_provider.py).
                # ami: unless the node names its own (a rolling replace); see the module docstring.
                ignore_changes=[*([] if node.ami_id else ["ami"]), "userDataBase64", "instanceType"],
                additional_secret_outputs=["userData", "userDataBase64"],
            ),
        )

        attachment = aws.ec2.VolumeAttachment(
            f"{name}-data-attachment",
            device_name=DATA_DEVICE_NAME,
            volume_id=volume.id,
            instance_id=instance.id,
            stop_instance_before_detaching=True,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )

        self.address = eni.private_ip
        self.host_public_key = host_key.public_key_openssh.apply(lambda key: key.strip())
        self.ssh_user = LOGIN_USER
        self.ssh_port = 22
        self.instance = instance
        self.instance_id = instance.id
        self.identity = instance.id
        self.prerequisites = (instance, *kms_path)
        self.data_volume_id = volume.id
        self.data_volume_attachment = attachment
        self.register_outputs(
            {
                "address": self.address,
                "hostPublicKey": self.host_public_key,
                "sshUser": self.ssh_user,
                "instanceId": self.instance_id,
                "dataVolumeId": self.data_volume_id,
            }
        )

    @property
    def resource(self) -> pulumi.Resource:
        return self
