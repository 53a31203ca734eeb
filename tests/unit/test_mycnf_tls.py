"""Encryption in transit in the rendered node config, read back as data, per channel and per switch.

The [sst] group is also fed to the SST option resolution of ``mariadb-kms-tls`` (which follows
wsrep_sst_mariabackup 10.11), so what the renderer writes is checked as the SST script will read it.
"""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import pytest
from node_scripts import load_node_script

from components.config import ClusterConfig, parse_config
from components.mycnf import render_mycnf, render_node_cnf
from components.node_files import MYCNF_ENCRYPTION_PATH, MYCNF_NODE_PATH
from components.tls_material import CA_CERT_PATH, CERT_PATH, KEY_PATH, TLS_DIR

REPO = Path(__file__).resolve().parents[2]
MEMBERS = ["10.20.1.10", "10.20.2.10", "192.0.2.21"]


tls_tool = load_node_script("mariadb_kms_tls", REPO / "node" / "mariadb_kms_tls.py")


def _cluster(full_config: dict[str, Any], **changes: Any) -> ClusterConfig:
    raw = {**full_config, **changes}
    raw.pop("sshPrivateKey", None)
    return parse_config(raw, stack="dev", region="eu-west-1")


def _groups(cluster: ClusterConfig, index: int = 0) -> configparser.ConfigParser:
    text = render_node_cnf(cluster.nodes[index], cluster, node_address=MEMBERS[index], member_addresses=MEMBERS)
    cp = configparser.ConfigParser(allow_no_value=True, strict=True, interpolation=None)
    cp.read_string(text)
    return cp


def _provider(cp: configparser.ConfigParser) -> dict[str, str]:
    options = cp["mariadb"]["wsrep_provider_options"].strip('"')
    return dict(item.strip().split("=", 1) for item in options.split(";"))


def _as_sst_script_reads(cp: configparser.ConfigParser) -> dict[str, Any]:
    """[mariadb] is one of the groups ``my_print_defaults --mysqld`` prints; [sst] is read as itself."""
    groups = {
        "--mysqld": {k.replace("_", "-"): v for k, v in cp["mariadb"].items()},
        "sst": {k.replace("_", "-"): v for k, v in cp["sst"].items()} if cp.has_section("sst") else {},
    }
    result: dict[str, Any] = tls_tool.resolve_sst(groups)
    return result


def test_every_channel_is_encrypted_by_default_with_one_certificate(full_config: dict[str, Any]) -> None:
    cp = _groups(_cluster(full_config))
    server, sst, provider = cp["mariadb"], cp["sst"], _provider(cp)
    assert (server["ssl_ca"], server["ssl_cert"], server["ssl_key"]) == (CA_CERT_PATH, CERT_PATH, KEY_PATH)
    assert server["tls_version"] == "TLSv1.2,TLSv1.3"
    assert server["require_secure_transport"] == "ON"
    assert provider["socket.ssl"] == "YES"
    assert (provider["socket.ssl_ca"], provider["socket.ssl_cert"], provider["socket.ssl_key"]) == (
        CA_CERT_PATH, CERT_PATH, KEY_PATH)
    assert "socket.dynamic" not in provider, "a dynamic socket would accept plaintext peers"
    assert sst["ssl-mode"] == "VERIFY_IDENTITY"
    assert (sst["ssl-ca"], sst["ssl-cert"], sst["ssl-key"]) == (CA_CERT_PATH, CERT_PATH, KEY_PATH)
    assert all(p.startswith(TLS_DIR + "/") for p in (CA_CERT_PATH, CERT_PATH, KEY_PATH))


def test_the_sst_script_reads_a_verified_tls_transfer(full_config: dict[str, Any]) -> None:
    sst = _as_sst_script_reads(_groups(_cluster(full_config)))
    assert sst["tls"] is True and sst["verifies_peer"] is True and sst["error"] == ""
    assert (sst["ca"], sst["cert"], sst["key"]) == (CA_CERT_PATH, CERT_PATH, KEY_PATH)
    assert sst["method"] == "mariabackup"


def test_sst_keeps_its_tls_when_clients_are_plaintext(full_config: dict[str, Any]) -> None:
    # [sst] names the files itself: it must not depend on the server's ssl_* lines.
    cp = _groups(_cluster(full_config, tlsClients=False, requireSecureTransport=False))
    assert "ssl_cert" not in cp["mariadb"]
    sst = _as_sst_script_reads(cp)
    assert sst["tls"] is True and sst["verifies_peer"] is True and sst["cert"] == CERT_PATH


def test_replication_switch_drops_only_galera_tls(full_config: dict[str, Any]) -> None:
    cp = _groups(_cluster(full_config, tlsReplication=False))
    assert not any(k.startswith("socket.") for k in _provider(cp))
    assert cp["mariadb"]["ssl_cert"] == CERT_PATH
    assert cp["sst"]["ssl-mode"] == "VERIFY_IDENTITY"


def test_sst_switch_disables_sst_tls_explicitly(full_config: dict[str, Any]) -> None:
    cp = _groups(_cluster(full_config, tlsSst=False))
    assert dict(cp["sst"]) == {"ssl-mode": "DISABLED"}
    sst = _as_sst_script_reads(cp)
    # The server's own ssl_* stay for clients; the SST script reads none of them with ssl-mode DISABLED.
    assert sst["tls"] is False and sst["error"] == ""
    assert _provider(cp)["socket.ssl"] == "YES"


def test_client_switches(full_config: dict[str, Any]) -> None:
    relaxed = _groups(_cluster(full_config, requireSecureTransport=False))["mariadb"]
    assert relaxed["ssl_cert"] == CERT_PATH and relaxed["require_secure_transport"] == "OFF"
    plain = _groups(_cluster(full_config, tlsClients=False, requireSecureTransport=False))["mariadb"]
    assert not {"ssl_ca", "ssl_cert", "ssl_key", "tls_version"} & set(plain)
    assert plain["require_secure_transport"] == "OFF"


def test_everything_off_renders_no_tls_at_all(full_config: dict[str, Any]) -> None:
    cluster = _cluster(full_config, tlsReplication=False, tlsSst=False, tlsClients=False,
                       requireSecureTransport=False)
    text = render_node_cnf(cluster.nodes[0], cluster, node_address=MEMBERS[0], member_addresses=MEMBERS)
    assert TLS_DIR not in text
    assert "tlsReplication" not in text  # only the channels rendered at all are explained
    assert "tlsSst is false" in text and "tlsClients is false" in text


@pytest.mark.parametrize("index", [0, 1, 2])
def test_tls_is_the_same_on_every_node_and_stays_out_of_the_encryption_file(
    full_config: dict[str, Any], index: int
) -> None:
    cluster = _cluster(full_config)
    files = render_mycnf(cluster.nodes[index], cluster, node_address=MEMBERS[index], member_addresses=MEMBERS,
                         key_arn="arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")
    assert TLS_DIR not in files[MYCNF_ENCRYPTION_PATH], "first boot places that file, before any certificate exists"
    node = configparser.ConfigParser(allow_no_value=True, interpolation=None)
    node.read_string(files[MYCNF_NODE_PATH])
    assert node["mariadb"]["ssl_cert"] == CERT_PATH and node["sst"]["ssl-cert"] == CERT_PATH
