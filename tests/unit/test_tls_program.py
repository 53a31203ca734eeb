"""Encryption in transit through the whole program under mocks: the cluster CA, each node's certificate on
the SSH path, a renewal as a rolling reload, and the private keys nowhere but on their own node's stdin.

The mocks answer pulumi-tls with real keys and certificates (rehearsal/tls_values.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import mocks
import pytest
from cryptography import x509
from mocks import UNKNOWN, Recording, RegisteredResource, Types, plaintext_leaks, run_program
from pulumi.runtime import rpc
from remote_plan import closure, decode_put, remote_commands, runs_after, stdin_text, strings_in
from remote_plan import command as cmd

from components.cluster_ca import COMPONENT_TYPE as CLUSTER_CA
from components.tls_material import CA_CERT_PATH, CERT_PATH, KEY_PATH

NODES = ("aws-a", "aws-b", "dc-1")  # rolling order: aws-a bootstraps
TLS_OFF = {"tlsReplication": False, "tlsSst": False, "tlsClients": False, "requireSecureTransport": False}


@pytest.fixture(scope="module")
def recorded() -> Iterator[dict[bool, Recording]]:
    yield {preview: run_program(mocks.full_config(), preview=preview) for preview in (False, True)}


def _by_name(rec: Recording, type_: str) -> dict[str, RegisteredResource]:
    return {r.name: r for r in rec.of_type(type_)}


def _private_pem(res: RegisteredResource) -> str:
    return str(rpc.unwrap_rpc_secret(res.state["privateKeyPem"]))


def _node_keys(rec: Recording) -> dict[str, str]:
    keys = _by_name(rec, Types.TLS_PRIVATE_KEY)
    return {n: _private_pem(keys[f"cluster-ca-{n}-key"]) for n in NODES}


def _key_material(pem: str) -> list[str]:
    """The first base64 line of a PEM private key, which holds the private scalar (an EC key's later lines
    hold its public point, which the public key PEM shows too)."""
    return [next(line for line in pem.splitlines() if line and not line.startswith("-----"))]


def test_one_cluster_ca_in_the_cluster_signing_each_node_directly(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    ca = rec.one(CLUSTER_CA)
    assert ca.parent_urn == rec.one(Types.MARIADB_CLUSTER).urn
    (root,) = rec.of_type(Types.TLS_SELF_SIGNED_CERT)
    assert root.parent_urn == ca.urn and root.input("isCaCertificate") is True
    leaves = _by_name(rec, Types.TLS_LOCALLY_SIGNED_CERT)
    assert sorted(leaves) == sorted(f"cluster-ca-{n}-cert" for n in NODES)
    root_pem = str(root.state["certPem"])
    root_cert = x509.load_pem_x509_certificate(root_pem.encode())
    for leaf in leaves.values():
        assert leaf.input("caCertPem") == root_pem
        cert = x509.load_pem_x509_certificate(str(leaf.state["certPem"]).encode())
        assert cert.issuer == root_cert.subject, "signed by the root itself, no intermediate"
        cert.verify_directly_issued_by(root_cert)


def test_sans_are_the_addresses_the_members_use(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    enis = {r.name.removesuffix("-eni"): r.state["privateIp"] for r in rec.of_type(Types.EC2_NETWORK_INTERFACE)}
    expected = {"aws-a": enis["aws-a"], "aws-b": "10.20.2.10", "dc-1": "192.0.2.21"}
    requests = _by_name(rec, Types.TLS_CERT_REQUEST)
    for node, address in expected.items():
        request = requests[f"cluster-ca-{node}-csr"]
        assert request.input("ipAddresses") == [address], node
        assert request.input("dnsNames") == [node]


def test_each_node_gets_its_own_key_and_certificate_on_stdin_only(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    keys = _node_keys(rec)
    certs = {n: str(_by_name(rec, Types.TLS_LOCALLY_SIGNED_CERT)[f"cluster-ca-{n}-cert"].state["certPem"])
             for n in NODES}
    (root,) = rec.of_type(Types.TLS_SELF_SIGNED_CERT)
    for node in NODES:
        step = cmd(rec, f"{node}-ssh-tls")
        assert step.input_is_secret("stdin"), node
        assert {"stdout", "stderr"} <= set(step.secret_outputs), node
        files = decode_put(str(stdin_text(step)))
        assert set(files) == {CA_CERT_PATH, CERT_PATH, KEY_PATH}
        content, mode, owner = files[KEY_PATH]
        assert content.decode() == keys[node] and (mode, owner) == (0o600, "mysql:mysql"), node
        assert files[CERT_PATH] == (certs[node].encode(), 0o644, "root:root")
        assert files[CA_CERT_PATH] == (str(root.state["certPem"]).encode(), 0o644, "root:root")


def test_private_keys_appear_nowhere_but_on_their_own_nodes_tls_stdin(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    keys = _node_keys(rec)
    ca_key = _private_pem(_by_name(rec, Types.TLS_PRIVATE_KEY)["cluster-ca-ca-key"])
    needles = {node: _key_material(pem) for node, pem in {**keys, "ca": ca_key}.items()}
    for res in remote_commands(rec):
        for field in ("create", "triggers", "environment", "connection"):
            for text in strings_in(res.inputs.get(field)):
                for owner, lines in needles.items():
                    assert not any(line in text for line in lines), (res.name, field, owner)
        stdin = stdin_text(res)
        if stdin is None or "-ssh-" not in res.name:
            continue
        node, step = res.name.split("-ssh-")
        # The login-keys step reads public key lines, the member firewall an nft ruleset: no put payload.
        payload = stdin if step in ("login-keys", "member-firewall") else b"".join(
            c for c, _m, _o in decode_put(stdin).values()
        ).decode("latin-1")
        for owner, lines in needles.items():
            present = any(line in payload for line in lines)
            assert present == (owner == node and step == "tls"), (res.name, owner)
    # Nothing non-secret (inputs, state, outputs, logs) holds any of them.
    assert plaintext_leaks(rec, tuple(line for lines in needles.values() for line in lines)) == []


def test_control_the_leak_scan_sees_a_key_in_plain_text(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    lines = _key_material(_node_keys(rec)["dc-1"])
    # The same key lines, planted where the scan looks: it must find them.
    fake = Recording(preview=False, outputs={"leak": mocks.StackOutput("x" + lines[0], secret=False, known=True)})
    assert plaintext_leaks(fake, tuple(lines)) != []


@pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
def test_cluster_ca_certificate_is_a_public_output(recorded: dict[bool, Recording], preview: bool) -> None:
    rec = recorded[preview]
    out = rec.outputs["clusterCaCertificate"]
    assert out.secret is False
    if preview:
        assert out.known is False and out.value is UNKNOWN
        return
    (root,) = rec.of_type(Types.TLS_SELF_SIGNED_CERT)
    assert out.value == root.state["certPem"] and "PRIVATE KEY" not in str(out.value)
    x509.load_pem_x509_certificate(str(out.value).encode())


def test_certificates_arrive_before_the_config_that_names_them_and_roll_node_by_node(
    recorded: dict[bool, Recording],
) -> None:
    rec = recorded[False]
    deps = closure(rec)
    for node in NODES:
        chain = ["install", "tls", "tls-reload", "config", "preflight", "roll"]
        for earlier, later in itertools.pairwise(chain):
            assert runs_after(rec, f"{node}-ssh-{later}", f"{node}-ssh-{earlier}", deps), (node, later)
    # The bootstrap node has its certificates before galera_new_cluster starts it.
    assert runs_after(rec, "cluster-bootstrap", f"{NODES[0]}-ssh-tls-reload", deps)
    # A renewal reloads one node after the previous one is Synced again: never two at once.
    for earlier, later in itertools.pairwise(NODES):
        assert runs_after(rec, f"{later}-ssh-tls", f"{earlier}-ssh-roll", deps), (earlier, later)
        assert runs_after(rec, f"{later}-ssh-tls-reload", f"{earlier}-ssh-roll", deps), (earlier, later)


def test_a_renewal_reloads_and_verifies_again_but_restarts_nothing(full_config: dict[str, Any]) -> None:
    # New certificates for every node, as an early renewal gives: re-issued with another lifetime (the mocks
    # would issue new ones anyway; the config change makes it so whatever they do).
    before = run_program(full_config, preview=False)
    after = run_program({**full_config, "tlsValidityDays": 300}, preview=False)

    def inputs(rec: Recording, name: str) -> tuple[Any, str | None]:
        return cmd(rec, name).input("triggers"), stdin_text(cmd(rec, name))

    changed = {r.name for r in remote_commands(before) if inputs(before, r.name) != inputs(after, r.name)}
    assert changed == {f"{n}-{s}" for n in NODES for s in ("ssh-tls", "ssh-tls-reload", "verification-run")}
    reload = cmd(after, "dc-1-ssh-tls-reload")
    assert reload.input("create") == "sudo -n /usr/local/sbin/mariadb-kms-tls reload"
    assert reload.options is not None and reload.options.delete_before_replace is True


def test_every_channel_off_means_no_ca_no_certificates_and_plaintext_accepted_by_verification(
    full_config: dict[str, Any],
) -> None:
    rec = run_program({**full_config, **TLS_OFF}, preview=False)
    assert not rec.of_type(CLUSTER_CA) and not rec.of_type(Types.TLS_LOCALLY_SIGNED_CERT)
    assert not [r for r in remote_commands(rec) if r.name.endswith(("-ssh-tls", "-ssh-tls-reload"))]
    assert rec.outputs["clusterCaCertificate"].value is None
    for node in NODES:
        create = str(cmd(rec, f"{node}-verification-run").input("create"))
        assert create.endswith("--tls-off replication --tls-off sst --tls-off clients --tls-off secure-transport")


def test_verification_expects_every_channel_unless_config_turned_it_off(
    recorded: dict[bool, Recording], full_config: dict[str, Any]
) -> None:
    for node in NODES:
        assert "--tls-off" not in str(cmd(recorded[False], f"{node}-verification-run").input("create"))
    relaxed = run_program({**full_config, "requireSecureTransport": False}, preview=False)
    assert str(cmd(relaxed, "dc-1-verification-run").input("create")).endswith(" --tls-off secure-transport")
    # The node config follows the same switch.
    cnf = decode_put(str(stdin_text(cmd(relaxed, "dc-1-ssh-config"))))
    assert b"require_secure_transport = OFF" in next(c for p, (c, _m, _o) in cnf.items() if p.endswith("node.cnf"))


def test_preview_registers_the_ca_and_keeps_the_tls_stdin_secret(recorded: dict[bool, Recording]) -> None:
    rec = recorded[True]
    assert len(rec.of_type(Types.TLS_LOCALLY_SIGNED_CERT)) == 3
    for node in NODES:
        step = cmd(rec, f"{node}-ssh-tls")
        assert step.input_is_secret("stdin") and stdin_text(step) in (None, UNKNOWN), node
