"""On-prem nodes and the SSH path, through the whole program under mocks (a stack of on-prem nodes only)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pulumi_command as command
import pytest
from mocks import (
    ONPREM_HOST_KEY,
    PLANTED_ACCESS_KEY_SECRET,
    PLANTED_SSH_PRIVATE_KEY,
    UNKNOWN,
    Recording,
    Types,
    _ed25519_line,
    run_program,
)
from pulumi.runtime import rpc
from remote_plan import command as cmd
from remote_plan import connection, decode_put, remote_commands, runs_after, stdin_text

from components.config import JumpHost
from components.mycnf import DATADIR_CONF_PATH
from components.node_files import (
    BLOB_PATH,
    CREDENTIALS_PATH,
    MYCNF_ENCRYPTION_PATH,
    MYCNF_NODE_PATH,
    UNWRAP_CONF_PATH,
    load_node_files,
)
from components.node_path import ssh_connection

MODES = pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
DC2_HOST_KEY = _ed25519_line("dc-2 host key")


def onprem_config(full_config: dict[str, Any]) -> dict[str, Any]:
    """Two on-prem nodes, no EC2 (so the EC2-only keys go too)."""
    config = {k: v for k, v in full_config.items() if k not in ("vpcId", "amiId", "sshAuthorizedKey")}
    dc2 = {"name": "dc-2", "address": "dc-2.db.example.net", "sshUser": "ops", "sshPort": 2222,
           "hostKey": DC2_HOST_KEY, "egressCidr": "203.0.113.8/32"}
    return {**config, "ec2Nodes": [], "onPremNodes": [*full_config["onPremNodes"], dc2]}


@pytest.fixture
def config(full_config: dict[str, Any]) -> dict[str, Any]:
    return onprem_config(full_config)


def up(config: dict[str, Any]) -> Recording:
    return run_program(config, preview=False)


@MODES
def test_components_and_their_children(config: dict[str, Any], preview: bool) -> None:
    rec = run_program(config, preview=preview)
    cluster = rec.one(Types.MARIADB_CLUSTER)
    nodes = rec.of_type(Types.ONPREM_NODE)
    assert sorted(n.name for n in nodes) == ["dc-1", "dc-2"]
    for node in nodes:
        assert node.parent_urn == cluster.urn
        [path] = [c for c in rec.children_of(node) if c.type == Types.NODE_SSH_PATH]
        [verification] = [c for c in rec.children_of(node) if c.type == Types.VERIFICATION]
        steps = {c.name for c in rec.children_of(path)}
        assert steps == {f"{node.name}-ssh-{k}" for k in
                         ("node-files", "seed", "credentials", "install", "tls", "tls-reload", "config", "escrow",
                          "member-firewall", "preflight", "roll")}
        assert [c.name for c in rec.children_of(verification)] == [f"{node.name}-verification-run"]
    # The one bootstrap belongs to the cluster, not to a node: a new bootstrap node never makes a second one.
    assert [c.name for c in rec.children_of(cluster) if c.type == Types.REMOTE_COMMAND] == ["cluster-bootstrap"]
    assert not rec.of_type(Types.REMOTE_COPY)


@MODES
def test_connections_pin_the_configured_host_keys(config: dict[str, Any], preview: bool) -> None:
    rec = run_program(config, preview=preview)
    expected = {
        "dc-1": ("192.0.2.21", 22, "deploy", ONPREM_HOST_KEY),
        "dc-2": ("dc-2.db.example.net", 2222, "ops", DC2_HOST_KEY),
    }
    for res in remote_commands(rec):
        node = res.name.split("-ssh-")[0].split("-verification")[0]
        node = "dc-1" if res.name == "cluster-bootstrap" else node
        conn = connection(res)
        assert (conn["host"], conn["port"], conn["user"], conn["hostKey"]) == expected[node], res.name
        # The private key travels only inside the (secret) connection.
        assert conn["privateKey"] == PLANTED_SSH_PRIVATE_KEY
        assert rpc.is_rpc_secret(res.inputs["connection"])
        assert "proxy" not in conn


def test_credentials_reach_the_node_on_stdin_only(config: dict[str, Any]) -> None:
    rec = up(config)
    # Each node's own key: its user carries the node's name as a tag.
    users = {u.state["name"]: u.input("tags")["mariadb-kms:node"] for u in rec.of_type(Types.IAM_USER)}
    keys = {users[k.input("user")]: k for k in rec.of_type(Types.IAM_ACCESS_KEY)}
    assert sorted(keys) == ["dc-1", "dc-2"] and keys["dc-1"].id != keys["dc-2"].id
    for node in ("dc-1", "dc-2"):
        key, other = keys[node], keys["dc-2" if node == "dc-1" else "dc-1"]
        step = cmd(rec, f"{node}-ssh-credentials")
        assert step.input_is_secret("stdin")
        files = decode_put(str(stdin_text(step)))
        assert list(files) == [CREDENTIALS_PATH]
        content, mode, owner = files[CREDENTIALS_PATH]
        assert (mode, owner) == (0o600, "root:root")
        assert PLANTED_ACCESS_KEY_SECRET in content.decode() and key.id in content.decode()
        assert other.id not in content.decode()
        assert PLANTED_ACCESS_KEY_SECRET not in step.input("create")
        assert "environment" not in step.inputs
        assert set(step.secret_outputs) >= {"stdout", "stderr"}
        # A rotated access key (a new id) is checked again before anything restarts.
        for later in ("preflight", "roll"):
            assert key.id in cmd(rec, f"{node}-ssh-{later}").input("triggers")


def test_seed_and_config_files(config: dict[str, Any]) -> None:
    rec = up(config)
    seed = decode_put(str(stdin_text(cmd(rec, "dc-1-ssh-seed"))))
    assert set(seed) == {UNWRAP_CONF_PATH, BLOB_PATH, MYCNF_ENCRYPTION_PATH, DATADIR_CONF_PATH}
    # The installer reads it before it makes the datadir: the default mode, fscrypt.
    assert seed[DATADIR_CONF_PATH][0].decode().splitlines()[-1] == "encryption=fscrypt"
    assert cmd(rec, "dc-1-ssh-seed").input("create").endswith(" mariadb-kms-put --if-missing")
    blob = rec.one(Types.DATA_KEY).state["ciphertext_blob"]
    assert seed[BLOB_PATH] == (base64.b64decode(blob), 0o600, "root:root")
    assert f"credentials_file = {CREDENTIALS_PATH}" in seed[UNWRAP_CONF_PATH][0].decode()
    assert rec.one(Types.KMS_KEY).state["arn"] in seed[UNWRAP_CONF_PATH][0].decode()
    config_files = decode_put(str(stdin_text(cmd(rec, "dc-2-ssh-config"))))
    # datadir.conf is seeded, never rolled: rewriting it under a datadir encrypted the other way stops the node.
    assert set(config_files) == {*seed, MYCNF_NODE_PATH} - {DATADIR_CONF_PATH}
    node_cnf = config_files[MYCNF_NODE_PATH][0].decode()
    assert "wsrep_cluster_address = gcomm://192.0.2.21:4567,dc-2.db.example.net:4567" in node_cnf
    assert "wsrep_node_address = dc-2.db.example.net" in node_cnf and "gmcast.segment=1" in node_cnf


def test_node_files_are_the_repository_bytes_with_their_manifest_modes(config: dict[str, Any]) -> None:
    rec = up(config)
    installed = decode_put(str(stdin_text(cmd(rec, "dc-1-ssh-node-files"))))
    expected = {dest: (content, mode, owner) for dest, (content, mode, owner)
                in load_node_files("kms-envelope").items()}
    assert installed == expected
    assert installed["/usr/local/sbin/mariadb-kms-roll"][1] == 0o755
    # The same payload for every node: one copy of node/, read once.
    assert stdin_text(cmd(rec, "dc-2-ssh-node-files")) == stdin_text(cmd(rec, "dc-1-ssh-node-files"))


def test_preview_has_no_secret_and_no_crash(config: dict[str, Any]) -> None:
    rec = run_program(config, preview=True)
    creds = cmd(rec, "dc-1-ssh-credentials")
    # Unknown in preview (the access key does not exist yet), and secret all the same.
    assert rpc.unwrap_rpc_secret(creds.inputs["stdin"]) is UNKNOWN
    assert rec.outputs["verification"].known is False
    assert rec.outputs["nodes"].value == [
        {"name": "dc-1", "kind": "onprem", "address": "192.0.2.21"},
        {"name": "dc-2", "kind": "onprem", "address": "dc-2.db.example.net"},
    ]


def test_a_reinstalled_host_runs_its_whole_path_again_but_never_the_bootstrap(config: dict[str, Any]) -> None:
    first = up(config)
    changed = copy.deepcopy(config)
    changed["onPremNodes"][0]["hostKey"] = _ed25519_line("dc-1 reinstalled")
    second = up(changed)
    for res in remote_commands(first):
        if not res.name.startswith("dc-1-ssh-"):
            continue
        # Its connection and its identity trigger changed: every step is replaced and runs on the new host.
        assert connection(cmd(second, res.name)) != connection(res)
        assert res.input("triggers") != cmd(second, res.name).input("triggers"), res.name
    before, after = cmd(first, "cluster-bootstrap"), cmd(second, "cluster-bootstrap")
    assert before.input("create") == after.input("create")
    differing = {k for k in set(before.inputs) | set(after.inputs) if before.inputs.get(k) != after.inputs.get(k)}
    assert differing == {"connection"}
    assert after.options is not None and "connection" in after.options.ignore_changes


def test_the_order_on_premises(config: dict[str, Any]) -> None:
    rec = up(config)
    for node in ("dc-1", "dc-2"):
        for later, earlier in (("install", "node-files"), ("install", "seed"), ("install", "credentials"),
                               ("preflight", "install"), ("roll", "preflight")):
            assert runs_after(rec, f"{node}-ssh-{later}", f"{node}-ssh-{earlier}"), (node, later, earlier)
    assert runs_after(rec, "cluster-bootstrap", "dc-2-ssh-install")
    assert runs_after(rec, "dc-2-ssh-config", "dc-1-ssh-roll")
    assert not runs_after(rec, "dc-1-ssh-install", "dc-2-ssh-install")  # installs run side by side


def test_jump_host_is_pinned_too() -> None:
    jump = JumpHost(host="bastion.example.net", user="jump", host_key=_ed25519_line("bastion"), port=2200)
    conn = ssh_connection(host="192.0.2.21", user="deploy", host_key=ONPREM_HOST_KEY, private_key="k",
                          jump_host=jump)
    assert isinstance(conn.proxy, command.remote.ProxyConnectionArgs)
    assert (conn.proxy.host, conn.proxy.port, conn.proxy.user) == ("bastion.example.net", 2200, "jump")
    assert conn.proxy.host_key == jump.host_key and conn.proxy.private_key == "k"
    assert ssh_connection(host="h", user="u", host_key=ONPREM_HOST_KEY, private_key=None).proxy is None
