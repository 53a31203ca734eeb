"""Encryption in transit in the verify tool: facts in, per-channel state and gaps out.

``check_tls`` judges the server's variables plus the facts ``mariadb-kms-tls inspect`` gathers. Every
check has a case that passes and a case that must be reported as a gap, and a channel turned off by
config (``--tls-off``) is the only way a plaintext channel passes. The fact gathering of
``mariadb-kms-tls`` is tested against real certificate files (the ClusterCa shape, rehearsal/tls_certs.py)
with the machine's openssl, as on a node.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import test_verify_logic as logic
from test_mycnf_tls import tls_tool

from rehearsal.tls_certs import LocalCa

verify = logic.verify

CA, CERT, KEY = "/etc/mysql/tls/ca.pem", "/etc/mysql/tls/node-cert.pem", "/etc/mysql/tls/node-key.pem"
SHA = "5d41402abc4b2a76b9719d911017c592" * 2
NOT_AFTER = "Nov 29 15:34:47 2027 GMT"

GOOD_VARIABLES = {
    "have_ssl": "YES",
    "ssl_ca": CA,
    "ssl_cert": CERT,
    "ssl_key": KEY,
    "tls_version": "TLSv1.2,TLSv1.3",
    "require_secure_transport": "ON",
    "wsrep_sst_method": "mariabackup",
    # As SHOW VARIABLES prints it (spaces around '=').
    "wsrep_provider_options": f"gcache.dir = /run/galera; socket.ssl = YES; socket.ssl_ca = {CA}; "
                              f"socket.ssl_cert = {CERT}; socket.ssl_cipher = ; socket.ssl_key = {KEY}; ",
}
GOOD_STATUS = {"ssl_server_not_after": NOT_AFTER, "ssl_server_not_before": "Nov 29 15:34:47 2026 GMT"}
GOOD_FACTS: dict[str, Any] = {
    "server_running": True,
    "files": {
        CERT: {"path": CERT, "exists": True, "ca": CA, "chain_ok": True, "days_left": 300.0, "sha256": SHA,
               "not_after": NOT_AFTER, "subject": "OU=c,O=mariadb-kms,CN=node1"},
        KEY: {"path": KEY, "exists": True, "mode": "0600", "owner": "mysql", "matches_cert": True},
    },
    "served": {
        "clients": {"ok": True, "matches_file": True, "not_after": NOT_AFTER},
        "replication": {"ok": True, "sha256": SHA, "address": "10.0.0.11:4567"},
    },
    "sst": {"method": "mariabackup", "ssl_mode": "VERIFY_IDENTITY", "encrypt": 0, "tls": True,
            "verifies_peer": True, "error": "", "ca": CA, "capath": "", "cert": CERT, "key": KEY,
            "legacy_options": False, "role_overrides": []},
    "tools": {"socat_openssl": True, "openssl": True},
}
CHANNELS = ("clients", "secure-transport", "replication", "sst")


def judge(variables: dict[str, str] | None = None, facts: dict[str, Any] | None = None,
          off: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    section, gaps = verify.check_tls(variables or dict(GOOD_VARIABLES), dict(GOOD_STATUS),
                                     facts or copy.deepcopy(GOOD_FACTS), off)
    return section, gaps


def facts_with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    facts = copy.deepcopy(GOOD_FACTS)
    target = facts
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return facts


def test_a_node_encrypted_on_every_channel_has_no_gap() -> None:
    section, gaps = judge()
    assert gaps == []
    assert {section[ch]["state"] for ch in CHANNELS} == {"encrypted"}
    assert section["certificates"][CERT]["days_left"] == 300.0


# Each case: what changes, the channel that must report it, a fragment of the gap.
CASES: list[tuple[str, dict[str, str] | None, dict[str, Any] | None, str, str]] = [
    ("server without TLS", {**GOOD_VARIABLES, "have_ssl": "DISABLED"}, None, "clients", "have_ssl is DISABLED"),
    ("old TLS versions allowed", {**GOOD_VARIABLES, "tls_version": "TLSv1.1,TLSv1.2"}, None, "clients",
     "tls_version allows TLSv1.1"),
    ("clients not forced onto TLS", {**GOOD_VARIABLES, "require_secure_transport": "OFF"}, None,
     "secure-transport", "require_secure_transport is not ON"),
    ("galera without TLS", {**GOOD_VARIABLES, "wsrep_provider_options": "gcache.dir = /run/galera"}, None,
     "replication", "socket.ssl is unset"),
    ("galera accepting plaintext peers",
     {**GOOD_VARIABLES, "wsrep_provider_options": GOOD_VARIABLES["wsrep_provider_options"] + "socket.dynamic = YES"},
     None, "replication", "socket.dynamic is on"),
    ("certificate from another CA", None, facts_with(("files", CERT, "chain_ok"), False), "replication",
     "does not chain"),
    ("certificate expired", None, facts_with(("files", CERT, "days_left"), -0.5), "clients", "expired"),
    ("certificate missing", None, facts_with(("files", CERT), {"path": CERT, "exists": False}), "sst",
     "is missing"),
    ("key readable by the group", None, facts_with(("files", KEY, "mode"), "0640"), "sst",
     "readable beyond its owner"),
    ("key owned by root", None, facts_with(("files", KEY, "owner"), "root"), "clients", "not mysql"),
    ("key of another certificate", None, facts_with(("files", KEY, "matches_cert"), False), "replication",
     "is not the key of"),
    ("galera handshake fails", None,
     facts_with(("served", "replication"), {"ok": False, "error": "certificate verify failed", "address": "a:4567"}),
     "replication", "certificate verify failed"),
    ("galera serves an older certificate", None, facts_with(("served", "replication", "sha256"), "0" * 64),
     "replication", "another certificate than the installed one"),
    ("server holds an older certificate", None, facts_with(("served", "clients", "matches_file"), False),
     "clients", "another certificate than the installed one"),
    ("server not running", None, facts_with(("served",), {}), "clients", "was not checked"),
    ("sst in plaintext", None, facts_with(("sst", "tls"), False), "sst", "transfers without TLS"),
    ("sst without peer verification", None, facts_with(("sst", "verifies_peer"), False), "sst",
     "peer is not verified"),
    ("sst by rsync", {**GOOD_VARIABLES, "wsrep_sst_method": "rsync"}, None, "sst", "method rsync"),
    ("socat without OpenSSL", None, facts_with(("tools", "socat_openssl"), False), "sst", "socat"),
    ("openssl missing", None, facts_with(("tools", "openssl"), False), "sst", "openssl tool is missing"),
    ("role-specific SST files", None, facts_with(("sst", "role_overrides"), ["ssl-server-cert"]), "sst",
     "role-specific"),
    ("facts could not be gathered", None, {"error": "mariadb-kms-tls: not installed"}, "sst", "cannot inspect"),
]


@pytest.mark.parametrize(("case", "variables", "facts", "channel", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_each_gap_is_found_and_named_by_channel(
    case: str, variables: dict[str, str] | None, facts: dict[str, Any] | None, channel: str, fragment: str
) -> None:
    section, gaps = judge(variables, facts)
    mine = [g for g in gaps if g.startswith(f"tls: {channel}:")]
    assert any(fragment in g for g in mine), f"{case}: {gaps}"
    assert section[channel]["state"] == "GAP"


@pytest.mark.parametrize(("case", "variables", "facts", "channel", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_a_channel_turned_off_by_config_accepts_only_its_own_gap(
    case: str, variables: dict[str, str] | None, facts: dict[str, Any] | None, channel: str, fragment: str
) -> None:
    section, gaps = judge(variables, facts, off=(channel,))
    assert not any(g.startswith(f"tls: {channel}:") for g in gaps), f"{case}: {gaps}"
    assert section[channel]["state"] == "off by config"
    assert any(fragment in g for g in section[channel]["not_encrypted_because"]), "the report still says why"


def test_turning_one_channel_off_leaves_the_others_checked() -> None:
    plaintext = {**GOOD_VARIABLES, "have_ssl": "DISABLED", "require_secure_transport": "OFF",
                 "wsrep_provider_options": "gcache.dir = /run/galera"}
    _, gaps = judge(plaintext, facts_with(("sst", "tls"), False), off=("clients", "secure-transport"))
    assert {g.split(":")[1].strip() for g in gaps} == {"replication", "sst"}
    _, none = judge(plaintext, facts_with(("sst", "tls"), False), off=CHANNELS)
    assert none == []


def test_whole_report_fails_on_a_tls_gap_unless_config_turned_the_channel_off() -> None:
    def run(tls_off: list[str], facts: dict[str, Any]) -> dict[str, Any]:
        variables = {**GOOD_VARIABLES, "wsrep_provider_options": "gcache.dir = /run/galera; gcache.size = 256M"}
        canned = logic._server(variables)
        # The first matching answer wins: the Ssl_server status before the wsrep one.
        server = logic.FakeSql({"'Ssl_server_not%'": logic._batch([[k, v] for k, v in GOOD_STATUS.items()]),
                                **canned.answers}, errors=canned.errors)
        report: dict[str, Any] = verify.verify(
            verify.Sql(server), logic._args(tls_off=tls_off), mounts_text=logic.TMPFS_AND_DISK,
            swaps_text="", tls_facts=lambda: facts,
        )
        return report

    plaintext_galera = run([], copy.deepcopy(GOOD_FACTS))
    assert plaintext_galera["ok"] is False
    assert plaintext_galera["gaps"] == [
        "tls: replication: socket.ssl is unset: Galera replicates and transfers IST in plaintext"]
    assert run(["replication"], copy.deepcopy(GOOD_FACTS))["ok"] is True


def test_flag_parsing_accepts_only_known_channels() -> None:
    with pytest.raises(SystemExit):
        verify.main(["--tls-off", "everything"])


# --------------------------------------------------------------------------
# mariadb-kms-tls: option resolution and file facts
# --------------------------------------------------------------------------


def test_my_print_defaults_output_is_normalised_as_the_sst_script_does() -> None:
    text = "--ssl_ca=/a\n--loose-ssl-mode=verify_ca\n--ssl-cert=/b\n--ssl_cert=/c\nnot an option\n"
    assert tls_tool.parse_defaults(text) == {"ssl-ca": "/a", "ssl-mode": "verify_ca", "ssl-cert": "/c"}


@pytest.mark.parametrize(("sst", "mysqld", "tls", "verifies", "cert"), [
    ({"ssl-mode": "VERIFY_IDENTITY", "ssl-ca": CA, "ssl-cert": CERT, "ssl-key": KEY}, {}, True, True, CERT),
    ({"ssl-mode": "VERIFY_CA"}, {"ssl-ca": CA, "ssl-cert": CERT, "ssl-key": KEY}, True, True, CERT),
    # REQUIRED encrypts but drops the CA on purpose: nobody is verified.
    ({"ssl-mode": "REQUIRED", "ssl-ca": CA, "ssl-cert": CERT, "ssl-key": KEY}, {}, True, False, CERT),
    # DISABLED (the default) ignores every file: plaintext.
    ({}, {"ssl-ca": CA, "ssl-cert": CERT, "ssl-key": KEY}, False, False, CERT),
    # The old style: tca/tcert/tkey in [sst] win over everything, encrypt=3 verifies with the CA.
    ({"encrypt": "3", "tca": "/old/ca", "tcert": "/old/cert", "tkey": "/old/key"}, {"ssl-cert": CERT}, True, True,
     "/old/cert"),
    ({"encrypt": "3", "tcert": "/old/cert", "tkey": "/old/key"}, {}, True, False, "/old/cert"),
    ({"encrypt": "1", "encrypt-key": "x"}, {}, False, False, ""),
])
def test_sst_settings_resolve_as_wsrep_sst_mariabackup_reads_them(
    sst: dict[str, str], mysqld: dict[str, str], tls: bool, verifies: bool, cert: str
) -> None:
    resolved = tls_tool.resolve_sst({"--mysqld": {"wsrep-sst-method": "mariabackup", **mysqld}, "sst": sst})
    assert (resolved["tls"], resolved["verifies_peer"], resolved["cert"]) == (tls, verifies, cert)


def test_sst_mode_without_files_is_an_error_not_plaintext() -> None:
    resolved = tls_tool.resolve_sst({"--mysqld": {}, "sst": {"ssl-mode": "VERIFY_CA"}})
    assert resolved["tls"] is False and "refuses to run" in resolved["error"]


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl tool is not installed")


def _write(tmp: Path, name: str, text: str, mode: int = 0o644) -> str:
    path = tmp / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


@needs_openssl
def test_file_facts_of_a_good_pair_and_of_a_foreign_one(tmp_path: Path) -> None:
    ca, foreign = LocalCa("c1"), LocalCa("c1")
    node = ca.issue("node1", "10.0.0.11")
    stranger = foreign.issue("node1", "10.0.0.11")
    ca_file = _write(tmp_path, "ca.pem", ca.cert_pem)
    cert = _write(tmp_path, "cert.pem", node.cert_pem)
    key = _write(tmp_path, "key.pem", node.key_pem, 0o600)
    facts = tls_tool.cert_facts(cert, ca_file)
    assert facts["chain_ok"] is True and 364 < facts["days_left"] <= 365
    assert "CN=node1" in facts["subject"] and facts["sha256"] == tls_tool.pem_fingerprint(node.cert_pem.encode())
    key_facts = tls_tool.key_facts(key, cert)
    assert key_facts["mode"] == "0600" and key_facts["matches_cert"] is True
    assert tls_tool.material_usable(facts, key_facts) == []
    # Control: a certificate of another CA with the same names, and a key of another certificate.
    other = tls_tool.cert_facts(_write(tmp_path, "other.pem", stranger.cert_pem), ca_file)
    assert other["chain_ok"] is False and other["chain_error"]
    wrong_key = tls_tool.key_facts(_write(tmp_path, "k2.pem", stranger.key_pem, 0o600), cert)
    assert wrong_key["matches_cert"] is False
    problems = tls_tool.material_usable(other, wrong_key)
    assert any("does not chain" in p for p in problems) and any("is not the key" in p for p in problems)


@needs_openssl
def test_an_expired_certificate_is_not_usable(tmp_path: Path) -> None:
    ca = LocalCa("c1")
    old = ca.issue("node1", "10.0.0.11", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    ca_file = _write(tmp_path, "ca.pem", ca.cert_pem)
    facts = tls_tool.cert_facts(_write(tmp_path, "cert.pem", old.cert_pem), ca_file)
    key = tls_tool.key_facts(_write(tmp_path, "key.pem", old.key_pem, 0o600), str(tmp_path / "cert.pem"))
    assert facts["days_left"] < 0
    assert any("expired" in p for p in tls_tool.material_usable(facts, key))


@needs_openssl
def test_the_servers_loaded_certificate_is_matched_by_its_dates(tmp_path: Path) -> None:
    ca = LocalCa("c1")
    node = ca.issue("node1", "10.0.0.11")
    facts = tls_tool.cert_facts(_write(tmp_path, "cert.pem", node.cert_pem), _write(tmp_path, "ca.pem", ca.cert_pem))
    status = {"ssl_server_not_before": facts["not_before"], "ssl_server_not_after": facts["not_after"]}
    assert tls_tool.served_clients(status, facts)["matches_file"] is True
    renewed = tls_tool.cert_facts(
        _write(tmp_path, "new.pem", ca.issue("node1", "10.0.0.11", days=200).cert_pem), str(tmp_path / "ca.pem"))
    assert tls_tool.served_clients(status, renewed)["matches_file"] is False
    assert tls_tool.served_clients({}, facts)["ok"] is False


def test_channels_follow_the_running_servers_settings() -> None:
    where = tls_tool.channels({**GOOD_VARIABLES, "bind_address": "10.0.0.11", "port": "3306"})
    assert where["clients"]["address"] == "10.0.0.11" and where["clients"]["cert"] == CERT
    variables = {**GOOD_VARIABLES, "wsrep_node_address": "10.0.0.11",
                 "wsrep_provider_options": GOOD_VARIABLES["wsrep_provider_options"]
                 + "gmcast.listen_addr = ssl://10.0.0.11:4567"}
    assert tls_tool.channels(variables)["replication"]["address"] == "10.0.0.11"
    assert tls_tool.channels({"wsrep_provider_options": "gcache.dir = /run/galera"}) == {}


def test_the_tls_tool_is_installed_by_the_manifest() -> None:
    from components.node_files import load_node_files

    content, mode, owner = load_node_files("kms-envelope")["/usr/local/sbin/mariadb-kms-tls"]
    assert mode == 0o755 and owner == "root:root" and content.startswith(b"#!/usr/bin/python3")
    assert os.access(Path(tls_tool.__file__), os.X_OK)
