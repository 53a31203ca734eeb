"""The MariaDB config renderer, read back as data (configparser), in both key-management modes."""

from __future__ import annotations

import configparser
from typing import Any

import pytest

from components.config import ClusterConfig, parse_config
from components.mycnf import (
    ENCRYPTION_FLAGS_ON,
    ERROR_LOG,
    LOG_FLAGS,
    MAX_WRITE_SET_BYTES,
    SECURE_FILE_PRIV_DIR,
    VOLUME_DATADIR,
    VOLUME_ROOT,
    gcache_tmpfs_bytes,
    render_datadir_conf,
    render_encryption_cnf,
    render_mycnf,
    render_node_cnf,
    size_bytes,
    verify_datadir_args,
)
from components.node_files import (
    DATADIR,
    GALERA_PROVIDER,
    GCACHE_DIR,
    KEYFILE_PATH,
    MYCNF_ENCRYPTION_PATH,
    MYCNF_NODE_PATH,
)

KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _cluster(full_config: dict[str, Any], **changes: Any) -> ClusterConfig:
    raw = {**full_config, **changes}
    raw.pop("sshPrivateKey", None)  # secret keys never reach parse_config
    return parse_config(raw, stack="dev", region="eu-west-1")


def _parse(text: str) -> configparser.SectionProxy:
    cp = configparser.ConfigParser(allow_no_value=True, strict=True, interpolation=None)
    cp.read_string(text)
    # Everything goes in [mariadb], the group only MariaDB servers read; the SST script's TLS settings
    # for encryption in transit go in [sst], the group it reads them from (tests/unit/test_mycnf_tls.py).
    assert cp.sections() in (["mariadb"], ["mariadb", "sst"]), cp.sections()
    return cp["mariadb"]


MEMBERS = ["10.20.1.10", "10.20.2.10", "192.0.2.21"]  # aws-a, aws-b, dc-1 in the full config


def _members(cluster: ClusterConfig) -> list[str]:
    assert [n.name for n in cluster.nodes] == ["aws-a", "aws-b", "dc-1"]
    return list(MEMBERS)


def _all(cluster: ClusterConfig, node_index: int = 0) -> dict[str, configparser.SectionProxy]:
    members = _members(cluster)
    files = render_mycnf(
        cluster.nodes[node_index], cluster, node_address=members[node_index], member_addresses=members, key_arn=KEY_ARN
    )
    assert set(files) == {MYCNF_ENCRYPTION_PATH, MYCNF_NODE_PATH}
    return {path: _parse(text) for path, text in files.items()}


def test_kms_envelope_loads_file_key_management_for_good_with_aes_ctr(full_config: dict[str, Any]) -> None:
    enc = _parse(render_encryption_cnf(_cluster(full_config), key_arn=KEY_ARN))
    assert enc["plugin_load_add"] == "file_key_management"
    assert enc["file_key_management"] == "FORCE_PLUS_PERMANENT"
    assert enc["file_key_management_filename"] == KEYFILE_PATH
    assert KEYFILE_PATH.startswith("/run/")
    assert enc["file_key_management_encryption_algorithm"] == "AES_CTR"
    assert not any(k.startswith("aws_key_management") for k in enc)


@pytest.mark.parametrize("mode", ["kms-envelope", "aws-plugin"])
def test_every_encryption_flag_is_on_in_both_modes(full_config: dict[str, Any], mode: str) -> None:
    plugin = {"awsPluginSource": "/opt/aws_key_management.so", "onPremDatadirEncryption": "luks"}
    extra = plugin if mode == "aws-plugin" else {}
    cluster = _cluster(full_config, keyManagement=mode, **extra)
    enc = _parse(render_encryption_cnf(cluster, key_arn=KEY_ARN))
    for flag in ENCRYPTION_FLAGS_ON:
        assert enc[flag] == "ON", flag
    assert enc["innodb_encrypt_tables"] == "FORCE"  # the config default
    assert enc["innodb_encryption_threads"] == "4"


def test_encrypt_tables_and_threads_come_from_config(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config, encryptTables="ON", encryptionThreads=9)
    enc = _parse(render_encryption_cnf(cluster, key_arn=KEY_ARN))
    assert enc["innodb_encrypt_tables"] == "ON"
    assert enc["innodb_encryption_threads"] == "9"


def test_aws_plugin_mode_has_key_spec_arn_region_and_no_file_key_management(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config, keyManagement="aws-plugin", awsPluginSource="/opt/aws_key_management.so",
                       onPremDatadirEncryption="luks")
    enc = _parse(render_encryption_cnf(cluster, key_arn=KEY_ARN))
    assert enc["plugin_load_add"] == "aws_key_management"
    assert enc["aws_key_management"] == "FORCE_PLUS_PERMANENT"
    assert enc["aws_key_management_key_spec"] == "AES_256"
    assert enc["aws_key_management_master_key_id"] == KEY_ARN
    assert enc["aws_key_management_region"] == "eu-west-1"
    assert "aws_key_management_endpoint_url" not in enc
    assert not any(k.startswith("file_key_management") for k in enc)
    # rotate_key is an action variable, never configuration
    assert "aws_key_management_rotate_key" not in enc


def test_aws_plugin_needs_the_key_arn(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config, keyManagement="aws-plugin", awsPluginSource="/opt/aws_key_management.so",
                       onPremDatadirEncryption="luks")
    with pytest.raises(ValueError, match="key ARN"):
        render_encryption_cnf(cluster, key_arn=None)


def test_gcache_on_tmpfs_with_configured_size_and_no_recovery(full_config: dict[str, Any]) -> None:
    files = _all(_cluster(full_config, gcacheSize="1G"))
    options = files[MYCNF_NODE_PATH]["wsrep_provider_options"].strip('"')
    pairs = dict(item.strip().split("=", 1) for item in options.split(";"))
    assert pairs["gcache.dir"] == GCACHE_DIR
    assert GCACHE_DIR.startswith("/run/")
    assert pairs["gcache.size"] == "1G"
    assert pairs["gcache.recover"] == "no"


@pytest.mark.parametrize(("index", "segment"), [(0, "0"), (1, "0"), (2, "1")])
def test_segment_per_site(full_config: dict[str, Any], index: int, segment: str) -> None:
    # the full config has two EC2 nodes then one on-prem node
    node_cnf = _all(_cluster(full_config), index)[MYCNF_NODE_PATH]
    options = node_cnf["wsrep_provider_options"].strip('"')
    assert f"gmcast.segment={segment}" in [o.strip() for o in options.split(";")]


def test_galera_members_node_identity_and_sst(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config)
    members = _members(cluster)
    node_cnf = _all(cluster, 2)[MYCNF_NODE_PATH]
    assert node_cnf["wsrep_on"] == "ON"
    assert node_cnf["wsrep_provider"] == GALERA_PROVIDER == "/usr/lib/galera/libgalera_smm.so"
    assert node_cnf["wsrep_cluster_name"] == "mariadb-kms"
    assert node_cnf["wsrep_cluster_address"] == "gcomm://" + ",".join(f"{a}:4567" for a in members)
    assert node_cnf["wsrep_node_address"] == "192.0.2.21" == node_cnf["bind_address"]
    assert "gmcast.listen_addr=tcp://192.0.2.21:4567" in node_cnf["wsrep_provider_options"]
    assert node_cnf["wsrep_node_name"] == "dc-1"
    assert node_cnf["wsrep_sst_method"] == "mariabackup"
    assert node_cnf["wsrep_sst_auth"] == "mysql:"  # unix_socket account: no password anywhere
    assert node_cnf["binlog_format"] == "ROW"
    assert node_cnf["innodb_autoinc_lock_mode"] == "2"
    assert node_cnf["log_bin"]  # on, so encrypt_binlog has something to encrypt
    assert "wsrep_new_cluster" not in node_cnf  # bootstrapping is never a config decision


def test_query_logs_off_by_default_and_on_when_configured(full_config: dict[str, Any]) -> None:
    off = _all(_cluster(full_config))[MYCNF_NODE_PATH]
    assert (off["general_log"], off["slow_query_log"], off["log_output"]) == ("OFF", "OFF", "FILE")
    assert "general_log_file" not in off
    on = _all(_cluster(full_config, generalLog=True, slowQueryLog=True))[MYCNF_NODE_PATH]
    assert (on["general_log"], on["slow_query_log"]) == ("ON", "ON")
    assert on["general_log_file"].startswith("/var/log/mysql/")
    assert on["slow_query_log_file"].startswith("/var/log/mysql/")


def test_encryption_file_holds_nothing_about_membership(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config)
    text = render_encryption_cnf(cluster, key_arn=KEY_ARN)
    for node in cluster.nodes:
        assert node.name not in text
    assert "gcomm://" not in text and "wsrep" not in text


def test_header_states_what_is_and_is_never_encrypted(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config)
    files = render_mycnf(cluster.nodes[0], cluster, node_address=MEMBERS[0], member_addresses=MEMBERS, key_arn=KEY_ARN)
    for text in files.values():
        head = text.split("[mariadb]")[0]
        assert "Never encrypted" in head
        assert ".frm" in head and "error log" in head and "aria_log" in head


def test_output_is_deterministic(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config)
    args: dict[str, Any] = {"node_address": "10.20.2.10", "member_addresses": ["10.20.1.10", "10.20.2.10"]}
    first = render_mycnf(cluster.nodes[1], cluster, key_arn=KEY_ARN, **args)
    second = render_mycnf(cluster.nodes[1], _cluster(full_config), key_arn=KEY_ARN, **args)
    assert first == second


def test_node_must_be_a_member(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config)
    with pytest.raises(ValueError, match="not among"):
        render_node_cnf(cluster.nodes[0], cluster, node_address="10.9.9.9", member_addresses=["10.20.1.10"])
    with pytest.raises(ValueError, match="empty"):
        render_node_cnf(cluster.nodes[0], cluster, node_address="10.9.9.9", member_addresses=[])


def test_ipv6_members_are_bracketed(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config)
    node_cnf = _parse(render_node_cnf(
        cluster.nodes[0], cluster, node_address="fd00::1", member_addresses=["fd00::1", "fd00::2"]
    ))
    assert node_cnf["wsrep_cluster_address"] == "gcomm://[fd00::1]:4567,[fd00::2]:4567"


@pytest.mark.parametrize("mode", ["kms-envelope", "aws-plugin"])
def test_no_sql_path_to_the_key_in_both_modes(full_config: dict[str, Any], mode: str) -> None:
    plugin = {"awsPluginSource": "/opt/aws_key_management.so", "onPremDatadirEncryption": "luks"}
    extra = plugin if mode == "aws-plugin" else {}
    node = _all(_cluster(full_config, keyManagement=mode, **extra), 2)[MYCNF_NODE_PATH]
    # An empty secure_file_priv lets any FILE-privileged account LOAD DATA INFILE the keyfile (measured).
    assert node["secure_file_priv"] == SECURE_FILE_PRIV_DIR != ""
    assert node["log_error"] == ERROR_LOG


def test_the_volume_layout_keeps_ours_beside_the_datadir_never_inside() -> None:
    assert VOLUME_DATADIR.startswith(VOLUME_ROOT + "/") and VOLUME_DATADIR != VOLUME_ROOT  # ext4: no policy on a root
    for ours in (SECURE_FILE_PRIV_DIR, ERROR_LOG):
        assert ours.startswith(VOLUME_ROOT + "/")
        for datadir in (VOLUME_DATADIR, DATADIR):
            assert not ours.startswith(datadir + "/")  # an SST joiner deletes unknown files in the datadir


def test_datadir_encryption_per_node_kind(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config, onPremDatadirEncryption="luks")
    ec2, onprem = cluster.nodes[0], cluster.nodes[2]
    assert (ec2.kind, onprem.kind) == ("ec2", "onprem")
    assert render_datadir_conf(onprem, cluster).splitlines()[-1] == "encryption=luks"
    assert render_datadir_conf(ec2, cluster).splitlines()[-1] == "encryption=none"  # EBS encrypts below the node
    assert verify_datadir_args(ec2, cluster) == ["--datadir-encryption", "ebs"]
    assert verify_datadir_args(onprem, cluster) == ["--datadir-encryption", "luks"]
    default = _cluster(full_config)
    assert verify_datadir_args(default.nodes[2], default) == ["--datadir-encryption", "fscrypt"]
    # none is a gap unless the stack config accepts it; the allowance changes nothing else.
    plain = _cluster(full_config, onPremDatadirEncryption="none")
    assert verify_datadir_args(plain.nodes[2], plain) == ["--datadir-encryption", "none"]
    allowed = _cluster(full_config, onPremDatadirEncryption="none", allowPlainDatadir=True)
    assert verify_datadir_args(allowed.nodes[2], allowed) == ["--datadir-encryption", "none", "--allow-plain-datadir"]
    assert verify_datadir_args(allowed.nodes[0], allowed) == ["--datadir-encryption", "ebs"]
    fscrypt_allowed = _cluster(full_config, allowPlainDatadir=True)
    assert verify_datadir_args(fscrypt_allowed.nodes[2], fscrypt_allowed) == ["--datadir-encryption", "fscrypt"]


def test_the_gcache_tmpfs_has_room_for_the_ring_buffer_and_two_of_the_largest_write_sets(
    full_config: dict[str, Any],
) -> None:
    cluster = _cluster(full_config, gcacheSize="256M")
    assert size_bytes("256M") == 256 << 20 and size_bytes("2G") == 2 << 30 and size_bytes("4096") == 4096
    assert gcache_tmpfs_bytes(cluster) == (256 << 20) + 2 * MAX_WRITE_SET_BYTES
    node_cnf = render_node_cnf(cluster.nodes[2], cluster, node_address="10.0.0.3", member_addresses=["10.0.0.3"])
    assert f"wsrep_max_ws_size = {MAX_WRITE_SET_BYTES}\n" in node_cnf  # what the tmpfs size counts on
    # The roll reads both from the node's config to size the tmpfs (node/mariadb-kms-roll).
    assert "gcache.size=256M;" in node_cnf


def test_log_encryption_kernel_turns_off_the_two_log_flags_only(full_config: dict[str, Any]) -> None:
    default = _cluster(full_config)
    kernel = _cluster(full_config, logEncryption="kernel")
    on = _parse(render_encryption_cnf(default, key_arn=KEY_ARN))
    off = _parse(render_encryption_cnf(kernel, key_arn=KEY_ARN))
    assert (off["innodb_encrypt_log"], off["encrypt_binlog"]) == ("OFF", "OFF")
    assert (on["innodb_encrypt_log"], on["encrypt_binlog"]) == ("ON", "ON")  # control: the default keeps both
    # Everything else as the default renders it, in the same order.
    assert [k for k in off] == [k for k in on]
    assert {k: v for k, v in off.items() if k not in ("innodb_encrypt_log", "encrypt_binlog")} == \
        {k: v for k, v in on.items() if k not in ("innodb_encrypt_log", "encrypt_binlog")}
    # The file says why, in words an operator on the node reads.
    assert "logEncryption" in render_encryption_cnf(kernel, key_arn=KEY_ARN)
    assert "logEncryption" not in render_encryption_cnf(default, key_arn=KEY_ARN)
    # The node file is the same bytes: only the encryption file changes.
    members = _members(default)
    assert render_node_cnf(kernel.nodes[2], kernel, node_address=members[2], member_addresses=members) == \
        render_node_cnf(default.nodes[2], default, node_address=members[2], member_addresses=members)


def test_log_encryption_kernel_tells_verify_on_every_node_kind(full_config: dict[str, Any]) -> None:
    kernel = _cluster(full_config, logEncryption="kernel")
    assert verify_datadir_args(kernel.nodes[0], kernel) == ["--datadir-encryption", "ebs", "--log-encryption",
                                                            "kernel"]
    assert verify_datadir_args(kernel.nodes[2], kernel) == ["--datadir-encryption", "fscrypt", "--log-encryption",
                                                            "kernel"]
    default = _cluster(full_config)
    assert "--log-encryption" not in verify_datadir_args(default.nodes[2], default)  # control


def test_the_log_flags_mycnf_turns_off_are_among_the_flags_verify_checks() -> None:
    assert set(LOG_FLAGS) == {"innodb_encrypt_log", "encrypt_binlog"}
    assert set(LOG_FLAGS) <= set(ENCRYPTION_FLAGS_ON)
