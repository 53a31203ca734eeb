"""The rehearsal's parts that need no hosts: overlay, plan reading, stack sizing, real TLS values, translator.

The end-to-end run is tests/rehearsal/test_rehearsal.py; these run in seconds
(the translator test talks to moto's server on loopback only).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from mocks import Types, full_config, run_program

from components.cloud_config import decode_user_data
from components.node_files import UNWRAP_CONF_PATH
from components.remote_steps import put_payload
from rehearsal import overlay as ov
from rehearsal import tls_values
from rehearsal.plan import decode_put, recorded_commands
from rehearsal.report import node_summary
from rehearsal.stack import StackError, load_file, prepare, with_node_count

SETTINGS = ov.Settings(kms_endpoint_url="http://10.231.5.1:8232")
CONF = (
    "# mariadb-kms unwrap settings; rendered by the program, do not edit on the node.\n"
    "[unwrap]\nmode = kms-envelope\nkey_arn = arn:aws:kms:eu-west-1:123456789012:key/k\nregion = eu-west-1\n\n"
)


# -- overlay ------------------------------------------------------------------


def test_unwrap_conf_gains_the_endpoint_and_on_ec2_the_credentials_file() -> None:
    onprem = ov.unwrap_conf(CONF, SETTINGS, ec2=False)
    assert onprem == CONF.rstrip("\n") + "\nendpoint_url = http://10.231.5.1:8232\n\n"
    ec2 = ov.unwrap_conf(CONF, SETTINGS, ec2=True)
    assert "credentials_file = /etc/mariadb-kms/aws-credentials\nprofile = mariadb-kms\n" in ec2
    with pytest.raises(ValueError, match="already sets endpoint_url"):
        ov.unwrap_conf(onprem, SETTINGS, ec2=False)


def test_a_payload_without_unwrap_conf_is_sent_as_recorded() -> None:
    payload = put_payload({"/etc/x": ("x", 0o644, "root:root")})
    assert ov.put_stdin(payload, SETTINGS, ec2=True) is payload


def test_file_changes_classify_declared_and_flag_the_rest() -> None:
    before = {UNWRAP_CONF_PATH: (CONF.encode(), 0o644, "root:root"), "/etc/other": (b"a\n", 0o644, "root:root")}
    sent = decode_put(ov.put_stdin(put_payload(before), SETTINGS, ec2=False))
    [change] = ov.file_changes("stdin x", before, sent, ec2=False, secret=False)
    assert (change.path, change.item) == (UNWRAP_CONF_PATH, "kms-endpoint")
    # Control: anything else that differs is UNDECLARED, and so is an EC2-only key on premises.
    tampered = {**sent, "/etc/other": (b"b\n", 0o644, "root:root")}
    items = {c.path: c.item for c in ov.file_changes("stdin x", before, tampered, ec2=False, secret=False)}
    assert items["/etc/other"] == "UNDECLARED"
    ec2_conf = ov.unwrap_conf(CONF, SETTINGS, ec2=True).encode()
    onprem_got_ec2 = {**before, UNWRAP_CONF_PATH: (ec2_conf, 0o644, "root:root")}
    [wrong] = ov.file_changes("stdin x", before, onprem_got_ec2, ec2=False, secret=False)
    assert wrong.item == "UNDECLARED"
    mode = {**before, "/etc/other": (b"a\n", 0o600, "root:root")}
    assert [c.item for c in ov.file_changes("s", before, mode, ec2=False, secret=False)] == ["UNDECLARED"]


def test_secret_content_is_never_in_a_diff() -> None:
    before = {"/etc/mariadb-kms/aws-credentials": (b"secret=abc\n", 0o600, "root:root")}
    after = {"/etc/mariadb-kms/aws-credentials": (b"secret=xyz\n", 0o600, "root:root")}
    [change] = ov.file_changes("stdin c", before, after, ec2=False, secret=True)
    assert "abc" not in change.diff and "xyz" not in change.diff and ov.REDACTED in change.diff


def recorded_user_data() -> str:
    rec = run_program(full_config(), preview=False)
    instance = next(r for r in rec.of_type(Types.EC2_INSTANCE) if r.name == "aws-a-instance")
    return decode_user_data(instance.input("userDataBase64"))


def test_user_data_overlay_changes_only_the_declared_files() -> None:
    recorded = recorded_user_data()
    sent = ov.user_data(recorded, SETTINGS)
    changes = ov.user_data_changes("aws-a", recorded, sent)
    assert {(c.path, c.kind, c.item) for c in changes} == {
        (UNWRAP_CONF_PATH, "modified", "kms-endpoint+ec2-credentials"),
        (ov.DATA_VOLUME_OVERRIDE_PATH, "added", "data-volume"),
    }
    # The host's private SSH key is in the user-data; no diff shows it.
    assert "PRIVATE KEY" in recorded and not any("PRIVATE KEY" in c.diff for c in changes)
    # Control: a change elsewhere in the cloud-config is flagged, by key name only.
    tampered = sent.replace("ssh_pwauth: false", "ssh_pwauth: true")
    flagged = [c for c in ov.user_data_changes("aws-a", recorded, tampered) if c.item == "UNDECLARED"]
    assert [c.path for c in flagged] == ["ssh_pwauth"]


# -- reading the plan -----------------------------------------------------------


def test_recorded_commands_keep_the_order_and_carry_what_the_replay_needs() -> None:
    rec = run_program(full_config(), preview=False)
    commands = recorded_commands(rec)
    names = [c.name for c in commands]
    position = {n: i for i, n in enumerate(names)}
    for c in commands:
        assert all(position[d] < position[c.name] for d in c.after), c.name
        assert c.host_key and c.private_key and c.create.startswith("sudo -n ")
    by_name = {c.name: c for c in commands}
    assert "cluster-bootstrap" in by_name["aws-b-ssh-roll"].after
    assert {"aws-a-ssh-roll", "aws-b-ssh-roll", "dc-1-ssh-roll"} <= set(by_name["aws-a-verification-run"].after)
    assert by_name["dc-1-ssh-credentials"].stdin_secret and by_name["dc-1-ssh-credentials"].secret_output


# -- the stack ------------------------------------------------------------------


def test_node_count_adds_and_drops_ec2_nodes_and_keeps_onprem() -> None:
    raw, region = load_file()
    assert [n["name"] for n in with_node_count(raw, 5)["ec2Nodes"]] == ["aws-a", "aws-b", "aws-c", "aws-d"]
    assert with_node_count(raw, 1)["ec2Nodes"] == [] and with_node_count(raw, 1)["onPremNodes"]
    with pytest.raises(StackError):
        with_node_count(raw, 0)
    subnet = ipaddress.IPv4Network("10.231.9.0/24")
    stack = prepare(raw, region, address_of=lambda i: str(subnet.network_address + 10 + i), nodes=4)
    assert [(n.name, n.kind, n.address) for n in stack.nodes] == [
        ("aws-a", "ec2", "10.231.9.11"), ("aws-b", "ec2", "10.231.9.12"), ("aws-c", "ec2", "10.231.9.13"),
        ("dc-1", "onprem", "10.231.9.14"),
    ]
    assert stack.config["onPremNodes"][0]["hostKey"] == stack.onprem_host_keys["dc-1"].public_line
    assert stack.cluster.warnings == ()


def test_the_stack_refuses_what_the_rehearsal_fills_in(tmp_path: Path) -> None:
    raw, region = load_file()
    with pytest.raises(StackError, match="sshPrivateKey"):
        prepare({**raw, "sshPrivateKey": "x"}, region, address_of=lambda i: f"10.0.0.{i}")
    with pytest.raises(StackError, match="kms-envelope"):
        prepare({**raw, "keyManagement": "aws-plugin"}, region, address_of=lambda i: f"10.0.0.{i}")


# -- real pulumi-tls values -----------------------------------------------------


def test_tls_values_make_a_ca_and_a_node_certificate_that_verify() -> None:
    ca_key = tls_values.private_key({"algorithm": "ECDSA", "ecdsaCurve": "P256"})
    assert ca_key["privateKeyPem"].startswith("-----BEGIN EC PRIVATE KEY-----")
    subject = {"commonName": "rehearsal CA", "organization": "mariadb-kms"}
    ca = tls_values.self_signed_cert({
        "privateKeyPem": ca_key["privateKeyPem"], "subject": subject, "isCaCertificate": True, "maxPathLength": 0,
        "validityPeriodHours": 48, "allowedUses": ["cert_signing", "crl_signing", "digital_signature"],
    })
    node_key = tls_values.private_key({"algorithm": "ECDSA", "ecdsaCurve": "P256"})
    csr = tls_values.cert_request({"privateKeyPem": node_key["privateKeyPem"], "subject": {"commonName": "aws-a"},
                                   "dnsNames": ["aws-a"], "ipAddresses": ["10.231.5.11"]})
    leaf = tls_values.locally_signed_cert({
        "certRequestPem": csr["certRequestPem"], "caPrivateKeyPem": ca_key["privateKeyPem"],
        "caCertPem": ca["certPem"], "validityPeriodHours": 24,
        "allowedUses": ["server_auth", "client_auth", "digital_signature", "key_encipherment"],
    })
    ca_cert = x509.load_pem_x509_certificate(ca["certPem"].encode())
    cert = x509.load_pem_x509_certificate(leaf["certPem"].encode())
    cert.verify_directly_issued_by(ca_cert)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.231.5.11")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(hours=24)
    # Control: a certificate from another CA does not verify against this one.
    other_key = tls_values.private_key({"algorithm": "ECDSA", "ecdsaCurve": "P256"})
    other = tls_values.self_signed_cert({"privateKeyPem": other_key["privateKeyPem"], "subject": subject,
                                         "isCaCertificate": True, "validityPeriodHours": 48,
                                         "allowedUses": ["cert_signing"]})
    with pytest.raises(Exception):  # noqa: B017 - cryptography raises InvalidSignature or ValueError
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other["certPem"].encode()))


def test_ed25519_keys_are_real_openssh_keys() -> None:
    a = tls_values.private_key({"algorithm": "ED25519"})
    b = tls_values.private_key({"algorithm": "ED25519"})
    assert a["publicKeyOpenssh"].startswith("ssh-ed25519 ") and a["publicKeyOpenssh"].endswith("\n")
    assert a["privateKeyOpenssh"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert a["publicKeyOpenssh"] != b["publicKeyOpenssh"]  # fresh, not derived from a name


# -- the report -----------------------------------------------------------------


def test_a_node_without_a_report_or_with_a_gap_is_failed() -> None:
    assert node_summary(None, key_arn=None)["ok"] is False
    report: dict[str, Any] = {"ok": True, "gaps": [], "galera": {"local_state": "Synced"},
                              "innodb": {"tablespaces": 3, "encrypted": 3}, "canary": {"found_in": []}}
    assert node_summary(report, key_arn=None)["ok"] is True
    assert node_summary({**report, "gaps": ["innodb: x"]}, key_arn=None)["ok"] is False


# -- the translator, against moto's server on loopback ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_translator_makes_the_recorded_key_and_a_data_key_that_decrypts(tmp_path: Path) -> None:
    import boto3

    from rehearsal.emulator import KmsEmulator, emulator_credentials
    from rehearsal.kms_server import KmsServer

    policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Sid": "x", "Effect": "Allow", "Principal": {
        "AWS": "arn:aws:iam::123456789012:role/a"}, "Action": "kms:*", "Resource": "*"}]})
    inputs = {"description": "rehearsal key", "keyUsage": "ENCRYPT_DECRYPT", "customerMasterKeySpec":
              "SYMMETRIC_DEFAULT", "enableKeyRotation": True, "rotationPeriodInDays": 180, "policy": policy,
              "tags": {"owner": "dba"}}
    with KmsServer("127.0.0.1", _free_port(), state_dir=tmp_path, region="eu-west-1") as server, \
            emulator_credentials():
        emulator = KmsEmulator(server.endpoint_url, "eu-west-1")
        metadata = emulator.create_key(inputs)
        emulator.create_alias({"name": "alias/rehearsal", "targetKeyId": metadata["KeyId"]})
        data_id, outs = emulator.make_data_key({"key_arn": metadata["Arn"], "escrow_in_ssm": False,
                                                "escrow_parameter_name": None, "endpoint_url": None, "tags": {}})
        kms = boto3.session.Session(region_name="eu-west-1").client("kms", endpoint_url=server.endpoint_url)
        described = kms.describe_key(KeyId="alias/rehearsal")["KeyMetadata"]
        assert described["Arn"] == metadata["Arn"] and described["Description"] == "rehearsal key"
        assert json.loads(kms.get_key_policy(KeyId=metadata["KeyId"], PolicyName="default")["Policy"]) == \
            json.loads(policy)
        assert kms.get_key_rotation_status(KeyId=metadata["KeyId"])["KeyRotationEnabled"] is True
        plaintext = kms.decrypt(CiphertextBlob=base64.b64decode(outs["ciphertext_blob"]))["Plaintext"]
        assert len(plaintext) == 32 and outs["endpoint_url"] == server.endpoint_url and data_id
