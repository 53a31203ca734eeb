"""The cluster through the whole program under mocks (2 EC2 nodes + 1 on-prem node), up and preview.

What pulumi-command does with what the program gives it, and the order the
recorded ``depends_on`` imposes, are what a real ``pulumi up`` would do on
real nodes (and what the rehearsal replays).
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import inspect
import itertools
import json
from collections.abc import Iterator
from typing import Any

import mocks
import pulumi_command as command
import pytest
import yaml
from mocks import (
    PLANTED_ACCESS_KEY_SECRET,
    PLANTED_SECRETS,
    PLANTED_SSH_PRIVATE_KEY,
    UNKNOWN,
    Recording,
    RegisteredResource,
    Types,
    canned_verify_report,
    plaintext_leaks,
    run_program,
)
from pulumi.runtime import rpc
from remote_plan import (
    closure,
    connection,
    decode_put,
    remote_commands,
    replay_order,
    runs_after,
    stdin_text,
    strings_in,
)
from remote_plan import command as cmd

from components.cluster import BOOTSTRAP_IGNORE_CHANGES
from components.node_files import MYCNF_NODE_PATH, UNWRAP_CONF_PATH
from components.plan.steps import FIRST_BOOT
from components.verification import parse_report

MODES = pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
NODES = ("aws-a", "aws-b", "dc-1")  # configuration order; aws-a is the bootstrap node (the first)
EC2 = ("aws-a", "aws-b")
SECRET_STEPS = ("credentials", "install", "tls", "preflight", "roll")
# pulumi-command 1.2.1's Command inputs; the SDK's list may grow, never shrink.
COMMAND_INPUTS_1_2_1 = {
    "connection", "add_previous_output_in_env", "create", "delete", "environment", "logging", "stdin",
    "triggers", "update",
}


def up(config: dict[str, Any]) -> Recording:
    return run_program(config, preview=False)


def node_of(res: RegisteredResource) -> str:
    if res.name == "cluster-bootstrap":
        return "bootstrap"
    return res.name.split("-ssh-")[0].removesuffix("-verification-run")


def step_of(res: RegisteredResource) -> str:
    return res.name.split("-ssh-")[1] if "-ssh-" in res.name else res.name


@pytest.fixture(scope="module")
def recorded() -> Iterator[dict[bool, Recording]]:
    # The full program runs once per mode for the read-only tests below.
    yield {preview: run_program(mocks.full_config(), preview=preview) for preview in (False, True)}


# -- the rules every remote command follows ------------------------------------


@MODES
def test_every_remote_command_keeps_the_rules(recorded: dict[bool, Recording], preview: bool) -> None:
    rec = recorded[preview]
    commands = remote_commands(rec)
    # 12 steps per node (EC2: first-boot, on-prem: credentials; both: login-keys, tls, tls-reload,
    # member-firewall), bootstrap,
    # verifications.
    assert len(commands) == 3 * 12 + 1 + 3
    for res in commands:
        assert res.options is not None
        # Self-contained: one create string run through sudo, nothing from the environment.
        assert str(res.input("create")).startswith("sudo -n "), res.name
        assert res.input("addPreviousOutputInEnv") is False, res.name
        for absent in ("environment", "update", "delete"):
            assert res.inputs.get(absent) in (None, {}), (res.name, absent)
        assert rpc.is_rpc_secret(res.inputs["connection"])
        if preview and node_of(res) in (*EC2, "bootstrap"):
            # The EC2 address and host key are made at create time, so a preview cannot show the connection.
            assert rpc.unwrap_rpc_secret(res.inputs["connection"]) is UNKNOWN, res.name
        else:
            # The host key is pinned on every connection.
            assert connection(res).get("hostKey") not in (None, "", UNKNOWN), res.name
        # A trigger change replaces: the old command must be gone before the new one runs.
        if res.inputs.get("triggers"):
            assert res.options.delete_before_replace is True, res.name
        if res.input_is_secret("stdin") or step_of(res) in SECRET_STEPS or res.name == "cluster-bootstrap":
            assert {"stdout", "stderr"} <= set(res.options.additional_secret_outputs), res.name
            assert {"stdout", "stderr"} <= set(res.secret_outputs), res.name
    assert not rec.of_type(Types.REMOTE_COPY)


def logged_secret_steps(rec: Recording) -> list[str]:
    """Commands that read a secret on stdin or touch the key, yet stream what they print to the engine log.

    pulumi-command 1.2.1 logs a command's stdout and stderr unless ``logging`` says otherwise ("If there
    might be secrets in the output, you can disable logging here and mark the outputs as secret via
    'additionalSecretOutputs'": the ``logging`` input's doc, pulumi_command/remote/command.py, 1.2.1);
    the value that logs nothing is ``Logging.NONE``, "none" on the wire (pulumi_command/remote/_enums.py).
    """
    return [
        res.name for res in remote_commands(rec)
        if (res.input_is_secret("stdin") or step_of(res) in SECRET_STEPS or res.name == "cluster-bootstrap")
        and res.input("logging") != command.remote.Logging.NONE.value
    ]


@MODES
def test_secret_touching_steps_log_nothing(recorded: dict[bool, Recording], preview: bool) -> None:
    rec = recorded[preview]
    assert command.remote.Logging.NONE.value == "none"
    assert logged_secret_steps(rec) == []
    # The others keep the default (both streams logged): the verification's report, the put steps' paths.
    logged = {res.name for res in remote_commands(rec) if res.inputs.get("logging") is None}
    assert {"aws-a-verification-run", "aws-a-ssh-node-files", "dc-1-ssh-config"} <= logged
    # Control: the same recording without the logging input, as the program was before, is caught.
    before = [dataclasses.replace(res, inputs={k: v for k, v in res.inputs.items() if k != "logging"})
              for res in rec.resources]
    old = dataclasses.replace(rec, resources=before)
    assert set(logged_secret_steps(old)) >= {"dc-1-ssh-credentials", "aws-a-ssh-tls", "cluster-bootstrap"}


def test_connections_reach_each_node_with_its_own_pinned_key(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    enis = {r.name.removesuffix("-eni"): r for r in rec.of_type(Types.EC2_NETWORK_INTERFACE)}
    keys = {r.name.removesuffix("-host-key"): r for r in rec.of_type(Types.TLS_PRIVATE_KEY)}
    for res in remote_commands(rec):
        node = node_of(res)
        node = "aws-a" if node == "bootstrap" else node
        conn = connection(res)
        assert conn["privateKey"] == PLANTED_SSH_PRIVATE_KEY
        if node in EC2:
            assert conn["host"] == enis[node].state["privateIp"]
            assert conn["hostKey"] == keys[node].state["publicKeyOpenssh"].strip()
            assert (conn["user"], conn["port"]) == ("admin", 22)
        else:
            assert (conn["host"], conn["user"], conn["hostKey"]) == (
                "192.0.2.21", "deploy", mocks.ONPREM_HOST_KEY,
            )


# -- order -----------------------------------------------------------------------


@MODES
def test_order_within_each_node(recorded: dict[bool, Recording], preview: bool) -> None:
    rec = recorded[preview]
    deps = closure(rec)
    for node in NODES:
        chain = ["node-files", "install", "config", "preflight", "roll"]
        for earlier, later in itertools.pairwise(chain):
            assert runs_after(rec, f"{node}-ssh-{later}", f"{node}-ssh-{earlier}", deps), (node, later)
        assert runs_after(rec, f"{node}-ssh-install", f"{node}-ssh-seed", deps)
    for node in EC2:
        assert runs_after(rec, f"{node}-ssh-node-files", f"{node}-ssh-first-boot", deps)
        # Nothing connects before the instance exists.
        [instance] = [r for r in rec.of_type(Types.EC2_INSTANCE) if r.name == f"{node}-instance"]
        first_boot = cmd(rec, f"{node}-ssh-first-boot")
        assert first_boot.options is not None and instance.urn in first_boot.options.depends_on
    assert runs_after(rec, "dc-1-ssh-install", "dc-1-ssh-credentials", deps)
    assert runs_after(rec, "dc-1-ssh-preflight", "dc-1-ssh-credentials", deps)


@MODES
def test_installs_in_parallel_then_bootstrap_then_one_node_at_a_time(
    recorded: dict[bool, Recording], preview: bool
) -> None:
    rec = recorded[preview]
    deps = closure(rec)
    for node in NODES:
        assert runs_after(rec, "cluster-bootstrap", f"{node}-ssh-install", deps)
        assert runs_after(rec, f"{node}-ssh-roll", "cluster-bootstrap", deps)
        for other in NODES:
            if other != node:
                assert not runs_after(rec, f"{node}-ssh-install", f"{other}-ssh-install", deps)
    assert runs_after(rec, "cluster-bootstrap", "aws-a-ssh-preflight", deps)
    assert not runs_after(rec, "cluster-bootstrap", "aws-b-ssh-config", deps)  # others join after it
    # Node N+1 is configured only after node N has rolled (and is Synced): never two at once.
    for earlier, later in itertools.pairwise(NODES):
        assert runs_after(rec, f"{later}-ssh-config", f"{earlier}-ssh-roll", deps), (earlier, later)
    rolls = [f"{n}-ssh-roll" for n in NODES]
    for a in rolls:
        for b in rolls:
            if a != b:
                assert runs_after(rec, a, b, deps) or runs_after(rec, b, a, deps), (a, b)
    # Verification waits for every node's roll (cluster size) and so for the bootstrap.
    for node in NODES:
        for other in NODES:
            assert runs_after(rec, f"{node}-verification-run", f"{other}-ssh-roll", deps)
        assert runs_after(rec, f"{node}-verification-run", "cluster-bootstrap", deps)


def test_the_rolling_order_starts_at_the_bootstrap_node(full_config: dict[str, Any]) -> None:
    rec = up({**full_config, "bootstrapNode": "dc-1"})
    deps = closure(rec)
    assert connection(cmd(rec, "cluster-bootstrap"))["host"] == "192.0.2.21"
    for later, earlier in (("aws-a-ssh-config", "dc-1-ssh-roll"), ("aws-b-ssh-config", "aws-a-ssh-roll")):
        assert runs_after(rec, later, earlier, deps)
    assert runs_after(rec, "cluster-bootstrap", "dc-1-ssh-preflight", deps)


def test_replay_order_keeps_every_dependency(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    order = [r.urn for r in replay_order(rec)]
    deps = closure(rec)
    position = {urn: i for i, urn in enumerate(order)}
    for urn in order:
        assert all(position[d] < position[urn] for d in deps[urn] if d in position)
    names = [r.name for r in replay_order(rec)]
    assert names.index("cluster-bootstrap") > max(names.index(f"{n}-ssh-install") for n in NODES)


# -- the bootstrap ------------------------------------------------------------


@MODES
def test_bootstrap_is_one_create_only_command_on_the_bootstrap_node(
    recorded: dict[bool, Recording], preview: bool
) -> None:
    rec = recorded[preview]
    [bootstrap] = [r for r in remote_commands(rec) if "mariadb-kms-bootstrap" in str(r.input("create"))]
    assert bootstrap.name == "cluster-bootstrap"
    assert bootstrap.parent_urn == rec.one(Types.MARIADB_CLUSTER).urn
    same_node = rpc.unwrap_rpc_secret(cmd(rec, "aws-a-ssh-roll").inputs["connection"])
    assert rpc.unwrap_rpc_secret(bootstrap.inputs["connection"]) == same_node
    for absent in ("triggers", "update", "delete", "stdin", "environment"):
        assert bootstrap.inputs.get(absent) in (None, [], {}), absent
    assert bootstrap.options is not None
    assert set(bootstrap.options.ignore_changes) == set(BOOTSTRAP_IGNORE_CHANGES)


def test_bootstrap_ignores_a_change_of_every_command_input() -> None:
    sdk_inputs = {p for p in inspect.signature(command.remote.CommandArgs.__init__).parameters if p != "__self__"}
    assert COMMAND_INPUTS_1_2_1 <= sdk_inputs == set(BOOTSTRAP_IGNORE_CHANGES)


def _replaced_instance(monkeypatch: pytest.MonkeyPatch, node: str, *, new_host_key: bool) -> None:
    """Make the mocks hand out another instance id (and host key) for ``node``, as after a replacement."""
    ec2_id, host_key = mocks._ec2_id, mocks.ed25519_openssh
    monkeypatch.setattr(
        mocks, "_ec2_id", lambda prefix, name: ec2_id(prefix, name + "/2" if name == f"{node}-instance" else name)
    )
    if new_host_key:
        monkeypatch.setattr(
            mocks, "ed25519_openssh", lambda seed: host_key(seed + "/2" if seed.endswith(f"/{node}-host-key") else seed)
        )


@pytest.mark.parametrize("new_host_key", [False, True], ids=["new-instance", "new-instance-and-host-key"])
def test_replacing_the_bootstrap_node_never_bootstraps_again(
    full_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, new_host_key: bool
) -> None:
    first = up(full_config)
    _replaced_instance(monkeypatch, "aws-a", new_host_key=new_host_key)
    second = up(full_config)
    [old_instance] = [r for r in first.of_type(Types.EC2_INSTANCE) if r.name == "aws-a-instance"]
    [new_instance] = [r for r in second.of_type(Types.EC2_INSTANCE) if r.name == "aws-a-instance"]
    assert old_instance.id != new_instance.id  # the premise: a new machine
    # Every step of the node's own path runs again on the new machine (its identity trigger changed) ...
    for res in remote_commands(first):
        if node_of(res) == "aws-a":
            assert res.input("triggers") != cmd(second, res.name).input("triggers"), res.name
            assert new_instance.id in list(strings_in(cmd(second, res.name).inputs["triggers"]))
    # ... and its roll, finding MariaDB stopped, makes it join. The bootstrap does not run again:
    before, after = cmd(first, "cluster-bootstrap"), cmd(second, "cluster-bootstrap")
    differing = {k for k in set(before.inputs) | set(after.inputs) if before.inputs.get(k) != after.inputs.get(k)}
    assert differing == ({"connection"} if new_host_key else set())
    assert after.options is not None
    assert {"connection"} | differing <= set(after.options.ignore_changes)
    assert before.input("create") == after.input("create")


def test_choosing_another_bootstrap_node_later_changes_nothing_that_counts(full_config: dict[str, Any]) -> None:
    first = up(full_config)
    second = up({**full_config, "bootstrapNode": "dc-1"})
    before, after = cmd(first, "cluster-bootstrap"), cmd(second, "cluster-bootstrap")
    assert before.input("create") == after.input("create")
    assert after.options is not None and "connection" in after.options.ignore_changes


# -- secrets ------------------------------------------------------------------


@MODES
def test_no_secret_in_plain_text(recorded: dict[bool, Recording], preview: bool) -> None:
    assert plaintext_leaks(recorded[preview]) == []


def test_secrets_only_where_they_belong(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    ssh_key_line = PLANTED_SSH_PRIVATE_KEY.splitlines()[1]
    found_credentials = False
    for res in remote_commands(rec):
        # Not in the command line, triggers or environment, not even inside a secret wrapper.
        for key in ("create", "triggers", "environment"):
            for text in strings_in(res.inputs.get(key)):
                assert not any(secret in text for secret in PLANTED_SECRETS), (res.name, key)
        stdin = stdin_text(res)
        if stdin is not None and "-ssh-" in res.name and step_of(res) != "first-boot":
            # The login-keys step reads public key lines, the member firewall an nft ruleset: no put payload.
            payload = stdin if step_of(res) in ("login-keys", "member-firewall") else json.dumps(
                {k: v[0].decode("latin-1") for k, v in decode_put(stdin).items()}
            )
            assert ssh_key_line not in payload
            if PLANTED_ACCESS_KEY_SECRET in payload:
                assert step_of(res) == "credentials" and res.input_is_secret("stdin"), res.name
                found_credentials = True
        # The SSH key is in the connection only.
        assert connection(res)["privateKey"] == PLANTED_SSH_PRIVATE_KEY
    assert found_credentials, "the planted access key secret never reached a node: the scan proves nothing"


def test_no_secret_output(recorded: dict[bool, Recording]) -> None:
    for name in ("nodes", "galeraClusterAddress", "verification"):
        assert recorded[False].outputs[name].secret is False, name


# -- outputs ------------------------------------------------------------------


def test_outputs_nodes_and_cluster_address(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    enis = {r.name.removesuffix("-eni"): r.state["privateIp"] for r in rec.of_type(Types.EC2_NETWORK_INTERFACE)}
    assert enis["aws-b"] == "10.20.2.10"  # the configured address
    expected = [
        {"name": "aws-a", "kind": "ec2", "address": enis["aws-a"]},
        {"name": "aws-b", "kind": "ec2", "address": "10.20.2.10"},
        {"name": "dc-1", "kind": "onprem", "address": "192.0.2.21"},
    ]
    assert rec.outputs["nodes"].value == expected
    address = f"gcomm://{enis['aws-a']}:4567,10.20.2.10:4567,192.0.2.21:4567"
    assert rec.outputs["galeraClusterAddress"].value == address
    # The output is what every node's config carries.
    for node in NODES:
        cnf = decode_put(str(stdin_text(cmd(rec, f"{node}-ssh-config"))))[MYCNF_NODE_PATH][0].decode()
        assert f"wsrep_cluster_address = {address}\n" in cnf, node


def test_verification_output_is_the_parsed_report_per_node(recorded: dict[bool, Recording]) -> None:
    out = recorded[False].outputs["verification"]
    assert out.known and out.value == {n: canned_verify_report(n, 3) for n in NODES}


def test_preview_outputs_are_unknown_where_nothing_ran(recorded: dict[bool, Recording]) -> None:
    rec = recorded[True]
    assert rec.outputs["verification"].known is False
    assert rec.outputs["galeraClusterAddress"].known is False  # aws-a's address is assigned at create time
    assert rec.outputs["verification"].value is UNKNOWN


def test_verification_commands(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    for node in NODES:
        create = str(cmd(rec, f"{node}-verification-run").input("create"))
        # EC2: EBS encrypts the volume; on premises: onPremDatadirEncryption (default fscrypt).
        mode = "ebs" if node in EC2 else "fscrypt"
        assert create.endswith(f"mariadb-kms-verify --canary --wait 600 --datadir-encryption {mode} --expect-size 3")
        assert create.startswith(f"sudo -n {FIRST_BOOT} --check >/dev/null && ") == (node in EC2)


# -- what makes steps run again ---------------------------------------------------


def _triggers(rec: Recording) -> dict[str, Any]:
    return {r.name: r.input("triggers") for r in remote_commands(rec)}


def _without_tls(config: dict[str, Any]) -> dict[str, Any]:
    # The mocks issue new certificates on every run (as a renewal would), so runs compared for what *else*
    # changes leave the certificates out; tests/unit/test_tls_program.py compares them with TLS on.
    return {**config, "tlsReplication": False, "tlsSst": False, "tlsClients": False, "requireSecureTransport": False}


def test_verification_reruns_on_every_up_only_when_configured(full_config: dict[str, Any]) -> None:
    full_config = _without_tls(full_config)
    assert _triggers(up(full_config)) == _triggers(up(full_config))
    first, second = up({**full_config, "verifyOnEveryUp": True}), up({**full_config, "verifyOnEveryUp": True})
    a, b = _triggers(first), _triggers(second)
    assert {name for name in a if a[name] != b[name]} == {f"{n}-verification-run" for n in NODES}
    # In preview the run stamp is a plain value too: nothing to crash on.
    preview = run_program({**full_config, "verifyOnEveryUp": True}, preview=True)
    assert len(preview.of_type(Types.VERIFICATION)) == 3


def test_a_setting_change_rolls_config_but_reinstalls_nothing(full_config: dict[str, Any]) -> None:
    full_config = _without_tls(full_config)
    before, after = up(full_config), up({**full_config, "gcacheSize": "1G"})
    def inputs(rec: Recording, name: str) -> tuple[Any, str | None]:
        return cmd(rec, name).input("triggers"), stdin_text(cmd(rec, name))

    changed = {r.name for r in remote_commands(before) if inputs(before, r.name) != inputs(after, r.name)}
    expected = {f"{n}-ssh-{s}" for n in NODES for s in ("config", "preflight", "roll")}
    assert changed == expected | {f"{n}-verification-run" for n in NODES}


def test_a_new_member_reaches_every_node_one_at_a_time(full_config: dict[str, Any]) -> None:
    dc2 = {**full_config["onPremNodes"][0], "name": "dc-2", "address": "192.0.2.22",
           "hostKey": mocks._ed25519_line("dc-2 host key")}
    before, after = up(full_config), up({**full_config, "onPremNodes": [*full_config["onPremNodes"], dc2]})
    for node in NODES:
        # The member list restarts nobody (components/mycnf.py, RESTART_EXEMPT_OPTIONS): no roll re-runs.
        for step, rolls in (("roll", False), ("preflight", False), ("install", False), ("node-files", False)):
            name = f"{node}-ssh-{step}"
            assert (cmd(before, name).input("triggers") != cmd(after, name).input("triggers")) is rolls, name
    assert runs_after(after, "dc-2-ssh-config", "dc-1-ssh-roll")
    assert str(cmd(after, "dc-1-verification-run").input("create")).endswith("--expect-size 4")


def test_first_boot_and_the_ssh_path_agree_on_unwrap_conf(recorded: dict[bool, Recording]) -> None:
    rec = recorded[False]
    for node in EC2:
        [instance] = [r for r in rec.of_type(Types.EC2_INSTANCE) if r.name == f"{node}-instance"]
        user_data = yaml.safe_load(
            gzip.decompress(base64.b64decode(str(instance.input("userDataBase64")))).decode()
        )
        [entry] = [f for f in user_data["write_files"] if f["path"] == UNWRAP_CONF_PATH]
        config = decode_put(str(stdin_text(cmd(rec, f"{node}-ssh-config"))))
        assert config[UNWRAP_CONF_PATH][0].decode() == entry["content"]


def test_parse_report() -> None:
    report = canned_verify_report("dc-1", 3)
    assert parse_report(json.dumps(report)) == report
    assert parse_report(None) is None and parse_report("  \n") is None
    broken = parse_report("mariadb-kms-verify: Traceback ...")
    assert broken is not None and broken["ok"] is False and "not JSON" in broken["error"]
    listed = parse_report("[1, 2]")
    assert listed is not None and listed["ok"] is False


def test_kms_endpoint_comes_before_any_ec2_node_is_installed(full_config: dict[str, Any]) -> None:
    without = up(full_config)
    assert not without.of_type(Types.KMS_VPC_ENDPOINT)
    rec = up({**full_config, "createKmsVpcEndpoint": True})
    endpoint = rec.one(Types.KMS_VPC_ENDPOINT)
    assert endpoint.parent_urn == rec.one(Types.MARIADB_CLUSTER).urn
    [node_group] = [r for r in rec.of_type(Types.EC2_SECURITY_GROUP) if r.name == "cluster-nodes-group"]
    [rule] = [r for r in rec.of_type(Types.SG_INGRESS_RULE) if r.parent_urn == endpoint.urn]
    assert rule.input("referencedSecurityGroupId") == node_group.id
    deps = closure(rec)
    for node in EC2:
        first_boot = cmd(rec, f"{node}-ssh-first-boot")
        assert endpoint.urn in deps[first_boot.urn]
        assert endpoint.urn in deps[cmd(rec, f"{node}-ssh-install").urn]
    assert endpoint.urn not in deps[cmd(rec, "dc-1-ssh-install").urn]  # on premises: KMS's public endpoint


def test_jump_host_from_config_reaches_every_connection_pinned(full_config: dict[str, Any]) -> None:
    bastion_key = mocks._ed25519_line("bastion host key")
    rec = up({**full_config, "sshJumpHost": {"host": "bastion.example.net", "user": "jump", "hostKey": bastion_key}})
    commands = remote_commands(rec)
    assert commands
    for res in commands:
        proxy = connection(res).get("proxy")
        assert proxy is not None, res.name
        assert (proxy["host"], proxy["user"], proxy["port"]) == ("bastion.example.net", "jump", 22), res.name
        assert proxy["hostKey"] == bastion_key, res.name
    # Control: without the key no connection goes through a bastion.
    assert all(connection(res).get("proxy") is None for res in remote_commands(up(full_config)))
