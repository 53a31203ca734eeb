"""Ec2Node (and the KMS VPC endpoint) as Pulumi registers them, under the shared mocks harness, up and preview."""

from __future__ import annotations

import base64
import configparser
from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_aws as aws
import pytest
import yaml
from mocks import (
    ACCOUNT_ID,
    REGION,
    SUBNET_ZONES,
    UNKNOWN,
    Recording,
    RegisteredResource,
    Types,
    _ed25519_line,
    fake_ciphertext_blob,
    full_config,
    plaintext_leaks,
    run_program,
)
from pulumi.runtime import rpc

from components import cloud_config as cc
from components.config import ClusterConfig, parse_config
from components.ec2_node import COMPONENT_TYPE, DATA_DEVICE_NAME, Ec2Node
from components.kms_endpoint import KmsVpcEndpoint, endpoint_subnets, kms_service_name
from components.node_files import BLOB_PATH, UNWRAP_CONF_PATH, render_unwrap_conf
from components.security_group import NodeSecurityGroup
from rehearsal.aws_values import GET_SUBNET

MODES = pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BLOB = fake_ciphertext_blob(KEY_ARN)
PROFILE = "mariadb-kms-node-profile"
CHILD_TYPES = {
    Types.TLS_PRIVATE_KEY, Types.EC2_NETWORK_INTERFACE, Types.EBS_VOLUME, Types.EC2_INSTANCE,
    Types.EC2_VOLUME_ATTACHMENT,
}


def cluster_config(config: dict[str, Any]) -> ClusterConfig:
    return parse_config(config, stack="dev", region=REGION)


def nodes_program(cfg: ClusterConfig, *, key_arn: Any = KEY_ARN, **kw: Any) -> Callable[[], None]:
    """A program with the security group and one Ec2Node per configured EC2 node; exports each node's outputs."""

    def program() -> None:
        group = NodeSecurityGroup("nodes", cluster=cfg)
        arn = key_arn() if callable(key_arn) else key_arn
        # What the cluster hands every EC2 node: the unwrap.conf its SSH path installs too.
        options = {"unwrap_conf": pulumi.Output.from_input(arn).apply(
            lambda a: render_unwrap_conf(
                mode=cfg.mariadb.key_management, key_arn=a, region=cfg.region, on_premises=False
            )
        ), **kw}
        for n in cfg.ec2_nodes:
            node = Ec2Node(
                n.name, node=n, cluster=cfg, key_arn=arn, data_key_blob=BLOB,
                instance_profile_name=PROFILE, security_group_id=group.id, **options,
            )
            pulumi.export(f"{n.name}.address", node.address)
            pulumi.export(f"{n.name}.hostPublicKey", node.host_public_key)
            pulumi.export(f"{n.name}.sshUser", node.ssh_user)
            pulumi.export(f"{n.name}.instanceId", node.instance_id)
            pulumi.export(f"{n.name}.instanceUrn", node.instance.urn)

    return program


def run(config: dict[str, Any] | None = None, *, preview: bool = False, **kw: Any) -> Recording:
    config = config if config is not None else full_config()
    return run_program(config, preview=preview, program=nodes_program(cluster_config(config), **kw))


def child(rec: Recording, type_: str, node: str) -> RegisteredResource:
    found = [r for r in rec.of_type(type_) if r.name.startswith(f"{node}-")]
    assert len(found) == 1, (type_, node, [r.name for r in found])
    return found[0]


def user_data_of(rec: Recording, node: str) -> str:
    value = child(rec, Types.EC2_INSTANCE, node).input("userDataBase64")
    assert isinstance(value, str), value
    return value


def cloud_config_of(rec: Recording, node: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(cc.decode_user_data(user_data_of(rec, node)))
    return config


def written(config: dict[str, Any], path: str) -> bytes:
    [entry] = [f for f in config["write_files"] if f["path"] == path]
    if entry.get("encoding") == "b64":
        return base64.b64decode(entry["content"])
    return str(entry["content"]).encode()


# -- shape ---------------------------------------------------------------------


@MODES
def test_each_node_is_a_component_with_its_own_children(preview: bool) -> None:
    rec = run(preview=preview)
    components = rec.of_type(Types.EC2_NODE)
    assert COMPONENT_TYPE == Types.EC2_NODE
    assert sorted(c.name for c in components) == ["aws-a", "aws-b"]
    for component in components:
        children = rec.children_of(component)
        assert sorted(c.type for c in children) == sorted(CHILD_TYPES)
        for c in children:
            assert c.options is not None and c.options.parent == component.urn


def test_preview_registers_what_up_registers() -> None:
    # A resource created inside an apply would be missing in preview, where the apply never runs.
    assert run(preview=True).identities() == run().identities()


def test_network_interface_is_its_own_resource_and_the_instance_uses_it() -> None:
    rec = run()
    group = rec.one(Types.EC2_SECURITY_GROUP)
    for name, subnet in (("aws-a", "subnet-0a1b2c3d4e5f60718"), ("aws-b", "subnet-0f1e2d3c4b5a69788")):
        eni = child(rec, Types.EC2_NETWORK_INTERFACE, name)
        instance = child(rec, Types.EC2_INSTANCE, name)
        assert eni.input("subnetId") == subnet
        assert eni.input("securityGroups") == [group.id]
        assert instance.input("primaryNetworkInterface") == {"networkInterfaceId": eni.id}
        # Everything network-related lives on the interface, none of it on the instance.
        assert not {"subnetId", "vpcSecurityGroupIds", "securityGroups", "privateIp", "networkInterfaces"} & set(
            instance.inputs
        )
        assert rec.outputs[f"{name}.address"].value == eni.state["privateIp"]
    assert child(rec, Types.EC2_NETWORK_INTERFACE, "aws-b").input("privateIps") == ["10.20.2.10"]
    assert rec.outputs["aws-b.address"].value == "10.20.2.10"
    assert "privateIps" not in child(rec, Types.EC2_NETWORK_INTERFACE, "aws-a").inputs


def test_data_volume_is_encrypted_by_key_arn_protected_and_retained() -> None:
    rec = run()
    for name, zone, size in (("aws-a", "eu-west-1a", 50), ("aws-b", "eu-west-1b", 200)):
        volume = child(rec, Types.EBS_VOLUME, name)
        assert volume.input("encrypted") is True
        assert volume.input("kmsKeyId") == KEY_ARN
        assert volume.input("availabilityZone") == zone and volume.input("size") == size
        assert volume.input("type") == "gp3"
        assert volume.options is not None
        assert volume.options.protect is True and volume.options.retain_on_delete is True


@MODES
def test_the_data_volume_lands_in_its_subnets_zone_whatever_config_says(preview: bool) -> None:
    # EC2 attaches a volume only to an instance in its own zone ("The volume and instance must be within
    # the same Availability Zone": https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_AttachVolume.html),
    # and the instance is where its network interface's subnet is. So the zone comes from the subnet.
    config = full_config()
    subnet = config["ec2Nodes"][0]["subnetId"]
    config["ec2Nodes"][0]["availabilityZone"] = "eu-west-1c"  # a typo: the subnet is in eu-west-1a
    rec = run(config, preview=preview)
    volume = child(rec, Types.EBS_VOLUME, "aws-a")
    assert volume.input("availabilityZone") == SUBNET_ZONES[subnet] == "eu-west-1a"
    assert {"id": subnet} in [i.args for i in rec.invokes if i.token == GET_SUBNET]
    # Control: the configured zone, where the volume went before, is not the subnet's.
    assert cluster_config(config).ec2_nodes[0].availability_zone != volume.input("availabilityZone")


def test_data_volume_takes_the_key_arn_from_the_key_resource() -> None:
    def key_arn() -> pulumi.Output[str]:
        return aws.kms.Key("key", description="test").arn

    rec = run(key_arn=key_arn)
    key = rec.one(Types.KMS_KEY)
    assert child(rec, Types.EBS_VOLUME, "aws-a").input("kmsKeyId") == key.state["arn"]
    assert key.state["arn"].startswith(f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/")


def test_an_alias_is_refused_for_the_data_volume() -> None:
    config = full_config()
    rec = run_program(
        config, preview=False, expect_failure=True,
        program=nodes_program(cluster_config(config), key_arn="alias/mariadb-kms-dev"),
    )
    assert "not 'alias/mariadb-kms-dev'" in str(rec.exception) + " ".join(rec.errors)


def test_instance_settings() -> None:
    rec = run()
    instance = child(rec, Types.EC2_INSTANCE, "aws-b")
    assert instance.input("ami") == "ami-0abcdef1234567890"
    assert instance.input("instanceType") == "r6i.large"
    assert instance.input("iamInstanceProfile") == PROFILE
    assert instance.input("metadataOptions") == {
        "httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1,
        "instanceMetadataTags": "disabled",
    }
    root = instance.input("rootBlockDevice")
    assert root["encrypted"] is True and root["kmsKeyId"] == KEY_ARN
    assert instance.input("userDataReplaceOnChange") is False
    assert instance.input_is_secret("userDataBase64"), "user-data holds the SSH host private key"
    assert {"userData", "userDataBase64"} <= set(instance.secret_outputs)
    tags = instance.input("tags")
    assert tags["Name"] == "mariadb-kms-dev-aws-b" and tags["owner"] == "dba-team"
    assert instance.options is not None
    assert instance.options.delete_before_replace is True
    assert set(instance.options.ignore_changes) == {"ami", "userDataBase64", "instanceType"}


def test_volume_attachment() -> None:
    rec = run()
    attachment = child(rec, Types.EC2_VOLUME_ATTACHMENT, "aws-a")
    assert attachment.input("deviceName") == DATA_DEVICE_NAME == "/dev/xvdf"
    assert attachment.input("volumeId") == child(rec, Types.EBS_VOLUME, "aws-a").id
    assert attachment.input("instanceId") == child(rec, Types.EC2_INSTANCE, "aws-a").id
    assert attachment.input("stopInstanceBeforeDetaching") is True
    assert attachment.options is not None and attachment.options.delete_before_replace is True


# -- outputs ----------------------------------------------------------------------


def test_outputs_in_up() -> None:
    rec = run()
    instance = child(rec, Types.EC2_INSTANCE, "aws-a")
    host_key = child(rec, Types.TLS_PRIVATE_KEY, "aws-a")
    assert host_key.input("algorithm") == "ED25519"
    assert rec.outputs["aws-a.sshUser"].value == "admin"
    assert rec.outputs["aws-a.instanceId"].value == instance.id and instance.id.startswith("i-")
    assert rec.outputs["aws-a.instanceUrn"].value == instance.urn
    pinned = rec.outputs["aws-a.hostPublicKey"].value
    assert pinned == host_key.state["publicKeyOpenssh"].strip() and pinned.startswith("ssh-ed25519 ")
    assert not rec.outputs["aws-a.hostPublicKey"].secret
    # The key the program pins is the key first boot installs.
    assert cloud_config_of(rec, "aws-a")["ssh_keys"]["ed25519_public"] == pinned


def test_outputs_in_preview_are_unknown_not_missing() -> None:
    rec = run(preview=True)
    assert rec.outputs["aws-a.address"].known is False
    assert rec.outputs["aws-a.hostPublicKey"].known is False
    assert rec.outputs["aws-a.sshUser"].value == "admin"
    instance = child(rec, Types.EC2_INSTANCE, "aws-a")
    assert instance.input("userDataBase64") is UNKNOWN and instance.input_is_secret("userDataBase64")


def test_host_private_key_never_in_plain_text() -> None:
    rec = run()
    host_key = child(rec, Types.TLS_PRIVATE_KEY, "aws-a")
    private = rpc.unwrap_rpc_secret(host_key.state["privateKeyOpenssh"])
    needle = private.splitlines()[2]
    assert rpc.is_rpc_secret(host_key.state["privateKeyOpenssh"]), "the control: it is there, as a secret"
    assert plaintext_leaks(rec, needles=(needle,)) == []


# -- user-data ---------------------------------------------------------------------


def test_user_data_places_the_blob_unwrap_conf_and_volume_id() -> None:
    rec = run()
    config = cloud_config_of(rec, "aws-a")
    assert written(config, BLOB_PATH) == base64.b64decode(BLOB)
    unwrap = configparser.ConfigParser()
    unwrap.read_string(written(config, UNWRAP_CONF_PATH).decode())
    assert unwrap["unwrap"]["key_arn"] == KEY_ARN and unwrap["unwrap"]["mode"] == "kms-envelope"
    assert unwrap["unwrap"]["region"] == REGION and "credentials_file" not in unwrap["unwrap"]
    volume_id = child(rec, Types.EBS_VOLUME, "aws-a").id
    assert f"volume_id={volume_id}\n".encode() in written(config, cc.DATA_VOLUME_CONF_PATH)
    assert config["hostname"] == "aws-a"
    assert config["users"][0]["ssh_authorized_keys"] == [full_config()["sshAuthorizedKey"]]


def test_given_unwrap_conf_is_used_verbatim() -> None:
    conf = "[unwrap]\nmode = kms-envelope\nkey_arn = x\nregion = y\nblob = /etc/mariadb-kms/datakey.blob\n"
    rec = run(unwrap_conf=conf)
    assert written(cloud_config_of(rec, "aws-a"), UNWRAP_CONF_PATH) == conf.encode()


def test_user_data_is_deterministic() -> None:
    assert user_data_of(run(), "aws-a") == user_data_of(run(), "aws-a")


def _five_members(config: dict[str, Any]) -> dict[str, Any]:
    extra = [
        {"name": f"aws-{c}", "subnetId": "subnet-0a1b2c3d4e5f60718", "availabilityZone": "eu-west-1a"} for c in "cd"
    ]
    dc2 = {**config["onPremNodes"][0], "name": "dc-2", "address": "192.0.2.22"}
    return {**config, "ec2Nodes": [*config["ec2Nodes"], *extra], "onPremNodes": [*config["onPremNodes"], dc2]}


def test_user_data_ignores_membership_and_settings() -> None:
    three = run()
    five = run(
        {
            **_five_members(full_config()),
            "encryptionThreads": 16, "gcacheSize": "2G", "encryptTables": "ON", "generalLog": True,
            "clusterName": "payments", "clientCidrs": ["10.30.0.0/16"], "bootstrapNode": "aws-b",
        }
    )
    assert len(five.of_type(Types.EC2_NODE)) == 4
    for name in ("aws-a", "aws-b"):
        assert user_data_of(three, name) == user_data_of(five, name), name


def test_user_data_does_change_with_what_it_carries() -> None:
    # The control for the test above: the comparison can fail.
    other_key = _ed25519_line("another deploy key", "rotated")
    assert user_data_of(run(), "aws-a") != user_data_of(run(full_config(sshAuthorizedKey=other_key)), "aws-a")


def test_aws_plugin_mode_user_data() -> None:
    rec = run(full_config(keyManagement="aws-plugin", awsPluginSource="https://example.com/aws_key_management.so",
                          onPremDatadirEncryption="luks"))
    config = cloud_config_of(rec, "aws-a")
    assert b"mode = aws-plugin" in written(config, UNWRAP_CONF_PATH)
    assert {f["path"] for f in config["write_files"]} == {f["path"] for f in cloud_config_of(run(), "aws-a")[
        "write_files"]}


def test_27_nodes_with_long_names_fit_and_share_one_shape() -> None:
    names = [f"{'node' * 7}{i:02d}"[-32:] for i in range(27)]  # 32 characters each
    ec2 = [{"name": n, "subnetId": "subnet-0a1b2c3d4e5f60718", "availabilityZone": "eu-west-1a"} for n in names]
    config = full_config(
        ec2Nodes=ec2, keyManagement="aws-plugin", awsPluginSource="https://example.com/aws_key_management.so",
        onPremDatadirEncryption="luks"
    )
    rec = run(config)
    sizes = {n: len(base64.b64decode(user_data_of(rec, n))) for n in names}
    assert max(sizes.values()) <= cc.USER_DATA_LIMIT
    # Per node only the name, host key and volume id differ: sizes stay within a few bytes.
    assert max(sizes.values()) - min(sizes.values()) < 64, sizes
    print(f"27 nodes: user-data {min(sizes.values())}..{max(sizes.values())} bytes gzipped")


# -- the KMS VPC endpoint --------------------------------------------------------------


def test_endpoint_subnets_one_per_zone_unless_configured() -> None:
    cfg = cluster_config(_five_members(full_config()))
    # aws-a, aws-c, aws-d share eu-west-1a: one subnet per zone, the first node's.
    assert endpoint_subnets(cfg.ec2_nodes) == ("subnet-0a1b2c3d4e5f60718", "subnet-0f1e2d3c4b5a69788")
    assert endpoint_subnets(cfg.ec2_nodes, ["subnet-0aaaaaaaaaaaaaaaa"]) == ("subnet-0aaaaaaaaaaaaaaaa",)
    with pytest.raises(ValueError, match="kmsEndpointSubnetIds"):
        endpoint_subnets(())
    assert kms_service_name("eu-west-1") == "com.amazonaws.eu-west-1.kms"
    assert kms_service_name("cn-north-1") == "cn.com.amazonaws.cn-north-1.kms"


@MODES
def test_kms_endpoint_with_private_dns_and_its_own_group(preview: bool) -> None:
    cfg = cluster_config(full_config())

    def program() -> None:
        nodes = NodeSecurityGroup("nodes", cluster=cfg)
        KmsVpcEndpoint(
            "kms-endpoint", vpc_id="vpc-0123456789abcdef0", region=REGION,
            subnet_ids=endpoint_subnets(cfg.ec2_nodes), node_security_group_id=nodes.id, stack="dev", tags=cfg.tags,
        )

    rec = run_program(full_config(), preview=preview, program=program)
    component = rec.one(Types.KMS_VPC_ENDPOINT)
    endpoint = rec.one(Types.EC2_VPC_ENDPOINT)
    assert endpoint.parent_urn == component.urn
    assert endpoint.input("serviceName") == "com.amazonaws.eu-west-1.kms"
    assert endpoint.input("vpcEndpointType") == "Interface" and endpoint.input("privateDnsEnabled") is True
    assert endpoint.input("subnetIds") == ["subnet-0a1b2c3d4e5f60718", "subnet-0f1e2d3c4b5a69788"]
    [group] = [g for g in rec.of_type(Types.EC2_SECURITY_GROUP) if g.parent_urn == component.urn]
    [rule] = [r for r in rec.of_type(Types.SG_INGRESS_RULE) if r.parent_urn == component.urn]
    assert (rule.input("ipProtocol"), rule.input("fromPort"), rule.input("toPort")) == ("tcp", 443, 443)
    assert rule.input("cidrIpv4") is None and rule.input("cidrIpv6") is None
    if not preview:
        [node_group] = [g for g in rec.of_type(Types.EC2_SECURITY_GROUP) if g is not group]
        assert rule.input("referencedSecurityGroupId") == node_group.id
        assert endpoint.input("securityGroupIds") == [group.id]
