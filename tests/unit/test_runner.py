"""The runner that carries out the program's plan on testbed hosts (rehearsal/runner.py), against moto's KMS
server on loopback and a stand-in for the testbed that records what would run in each host."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from components.node_files import UNWRAP_CONF_PATH
from rehearsal import TestbedError
from rehearsal.kms_server import KmsServer
from rehearsal.plan import decode_put
from rehearsal.runner import (
    TLS_OFF,
    DeployFailed,
    Deployment,
    ProgramStack,
    changed_commands,
    deploy,
    onprem_config,
)
from rehearsal.testbed import ExecResult, Testbed

HOSTS = ("node1", "node2", "node3")
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0pq3L7Gd8nJk3s1m0y6rHc2QmX1pJ7vQzB8uX4k2Ty root@host\n"


@dataclass
class _Host:
    name: str
    address: str


class HostsStandIn:
    """What the runner uses of a Testbed: host addresses, exec, put_file, read_file. Records each exec."""

    def __init__(self, fail: str | None = None) -> None:
        self.hosts = {n: _Host(n, f"10.231.99.{10 + i}") for i, n in enumerate(HOSTS, start=1)}
        self.fail = fail  # a command line containing this exits 1
        self.volumes: dict[str, Any] = {}  # host -> its data volume stand-in's directory (none here)
        self.ran: list[tuple[str, list[str], bytes | None]] = []
        self.lock = threading.Lock()

    def exec(self, name: str, cmd: Sequence[str] | str, input: bytes | str | None = None, timeout: float = 120,
             check: bool = False) -> ExecResult:
        argv = [cmd] if isinstance(cmd, str) else list(cmd)
        if argv[:2] == ["getent", "passwd"]:
            return ExecResult(0, f"{argv[2]}:x:0:0::/root:/bin/bash\n", "")
        data = input.encode() if isinstance(input, str) else input
        with self.lock:
            self.ran.append((name, argv, data))
        if self.fail is not None and self.fail in argv[-1]:
            return ExecResult(1, "", "it broke\n")
        return ExecResult(0, "done\n", "")

    def put_file(self, name: str, path: str, data: bytes | str, mode: int = 0o644, owner: str = "root:root") -> None:
        pass

    def read_file(self, name: str, path: str) -> bytes:
        return HOST_KEY.encode()

    def commands(self) -> list[str]:
        return [argv[-1] for _, argv, _ in self.ran]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsServer]:
    with KmsServer("127.0.0.1", _free_port(), state_dir=tmp_path_factory.mktemp("kms"), region="eu-west-1") as server:
        yield server


def _testbed(stand_in: HostsStandIn) -> Testbed:
    return stand_in  # type: ignore[return-value]  # duck-typed: the runner uses only what it has


def test_the_plan_runs_in_recorded_order_with_its_stdin_and_holds_before_a_step(kms: KmsServer) -> None:
    tb = HostsStandIn()
    program = ProgramStack(kms).record(onprem_config(_testbed(tb)), _testbed(tb))
    deployed = Deployment(_testbed(tb), program, quiet=True)
    deployed.run(stop_before="node3-ssh-roll")
    ran = [o.name for o in deployed.history]
    assert "cluster-bootstrap" in ran and "node2-ssh-roll" in ran
    assert "node3-ssh-roll" not in ran and not set(program.verification_commands) & set(ran)
    assert deployed.pending[0] == "node3-ssh-roll"
    started = {o.name: o.started for o in deployed.history}
    finished = {o.name: o.started + o.seconds for o in deployed.history}
    for name in ran:
        for before in program.command(name).after:
            assert finished[before] <= started[name], f"{name} started before {before} finished"
    deployed.run()
    assert deployed.pending == []
    assert sorted(deployed.outcomes[n].node for n in program.verification_commands) == list(HOSTS)
    # Each command ran as sshd runs an exec request: the login shell with -c and the recorded command line,
    # its stdin (the overlay's KMS endpoint added to unwrap.conf, nothing else) written to it.
    sent = sorted((s.node, ["/bin/bash", "-c", s.command.create], (s.stdin or "").encode()) for s in program.sent)
    assert sorted(tb.ran) == sent  # each command once, on its own node
    by_name = {s.command.name: s for s in program.sent}
    seed = decode_put(by_name["node1-ssh-seed"].stdin or "")
    recorded_seed = decode_put(program.command("node1-ssh-seed").stdin or "")
    assert f"endpoint_url = {kms.endpoint_url}" in seed[UNWRAP_CONF_PATH][0].decode()
    assert "endpoint_url" not in recorded_seed[UNWRAP_CONF_PATH][0].decode()
    assert {c.path for c in program.changes} == {UNWRAP_CONF_PATH}
    # Recorded commands again, as sent, whatever they waited for; outcomes in the order asked.
    names = list(reversed(program.verification_commands))
    before = len(tb.ran)
    assert [o.name for o in deployed.rerun(names)] == names
    assert len(tb.ran) == before + len(names) and len(deployed.history) == len(program.sent) + len(names)


def test_a_failed_step_stops_the_plan_and_names_node_and_step(kms: KmsServer) -> None:
    tb = HostsStandIn(fail="mariadb-kms-bootstrap")
    program = ProgramStack(kms).record(onprem_config(_testbed(tb)), _testbed(tb))
    deployed = Deployment(_testbed(tb), program, quiet=True)
    with pytest.raises(DeployFailed, match=r"node node1, step cluster-bootstrap: exit 1"):
        deployed.run()
    assert not any("mariadb-kms-roll --timeout" in c for c in tb.commands())
    assert "cluster-bootstrap" in deployed.pending and "node1-ssh-install" in deployed.done


def test_recording_again_keeps_the_key_and_the_data_key_and_names_what_changed(kms: KmsServer) -> None:
    tb = HostsStandIn()
    stack = ProgramStack(kms)
    first = stack.record(onprem_config(_testbed(tb)), _testbed(tb))
    second = stack.record({**first.config, **TLS_OFF}, _testbed(tb))
    assert (second.key_arn, second.data_key_blob) == (first.key_arn, first.data_key_blob)
    assert second.onprem_access_keys == first.onprem_access_keys and len(first.onprem_access_keys) == 3
    assert len(stack.emulator.keys) == 1
    changed = changed_commands(first, second)
    assert "node1-verification-run" in changed and "node2-ssh-config" in changed
    assert "node1-ssh-install" not in changed and "node1-ssh-node-files" not in changed
    assert changed_commands(second, second) == []  # control: nothing changed, nothing named


def test_a_stack_with_ec2_nodes_is_refused_by_name(kms: KmsServer) -> None:
    tb = HostsStandIn()
    ec2 = [{"name": "aws-a", "subnetId": "subnet-0a11ce00000000a01", "availabilityZone": "eu-west-1a"}]
    config = {**onprem_config(_testbed(tb)), "ec2Nodes": ec2}
    with pytest.raises(ValueError, match="ec2Nodes"):
        ProgramStack(kms).record(config, _testbed(tb))


def test_hosts_without_a_data_volume_get_datadir_encryption_none_stated_and_with_one_the_default() -> None:
    bare = HostsStandIn()
    config = onprem_config(_testbed(bare))
    assert (config["onPremDatadirEncryption"], config["allowPlainDatadir"]) == ("none", True)
    assert onprem_config(_testbed(bare), onPremDatadirEncryption="luks")["onPremDatadirEncryption"] == "luks"
    backed = HostsStandIn()
    backed.volumes = {n: f"/volumes/{n}" for n in HOSTS}
    assert "onPremDatadirEncryption" not in onprem_config(_testbed(backed))  # the program's default, fscrypt
    half = HostsStandIn()
    half.volumes = {HOSTS[0]: "/volumes/x"}
    with pytest.raises(TestbedError, match="no data volume"):
        onprem_config(_testbed(half))


def test_deploying_fscrypt_to_hosts_without_a_volume_fails_before_any_command(kms: KmsServer) -> None:
    tb = HostsStandIn()
    config = {**onprem_config(_testbed(tb)), "onPremDatadirEncryption": "fscrypt"}
    with pytest.raises(DeployFailed, match="attach_volumes"):
        deploy(_testbed(tb), ProgramStack(kms), config)
    assert tb.ran == []


def test_recording_again_with_the_context_rewraps_the_same_data_key_in_the_nodes_files(kms: KmsServer) -> None:
    tb = HostsStandIn()
    stack = ProgramStack(kms)
    first = stack.record(onprem_config(_testbed(tb), dataKeyEncryptionContext=False), _testbed(tb))
    assert first.encryption_context == {}
    data_key = kms.client().decrypt(CiphertextBlob=first.data_key_blob)["Plaintext"]

    second = stack.record({**first.config, "dataKeyEncryptionContext": True}, _testbed(tb))
    context = second.encryption_context
    assert context == {"mariadb-kms:stack": stack.stack, "mariadb-kms:cluster": first.config["clusterName"]}
    assert second.data_key_blob != first.data_key_blob and second.key_arn == first.key_arn
    assert kms.client().decrypt(CiphertextBlob=second.data_key_blob, EncryptionContext=context)["Plaintext"] == data_key
    changed = changed_commands(first, second)
    for node in HOSTS:
        assert f"{node}-ssh-config" in changed and f"{node}-ssh-seed" in changed
        files = decode_put(str(second.command(f"{node}-ssh-config").stdin))
        assert f"encryption_context = {{\"mariadb-kms:cluster\": \"{context['mariadb-kms:cluster']}\"".encode() in \
            files[UNWRAP_CONF_PATH][0]
    # Control: recording once more with the same config re-wraps nothing.
    third = stack.record(dict(second.config), _testbed(tb))
    assert third.data_key_blob == second.data_key_blob


def test_recording_again_keeps_the_tls_material_whose_inputs_did_not_change(kms: KmsServer) -> None:
    tb = HostsStandIn()
    stack = ProgramStack(kms)
    first = stack.record(onprem_config(_testbed(tb)), _testbed(tb))
    second = stack.record(dict(first.config), _testbed(tb))
    ca = "tls:index/selfSignedCert:SelfSignedCert"
    assert first.recording.one(ca).state["certPem"] == second.recording.one(ca).state["certPem"]
    # Control: another stack (a fresh state) gets a CA of its own.
    other = ProgramStack(kms).record(dict(first.config), _testbed(tb))
    assert other.recording.one(ca).state["certPem"] != first.recording.one(ca).state["certPem"]


# -- with IAM authentication on: each node's key is one moto issued, and a rotation revokes the old one ---------


@pytest.fixture(scope="module")
def iam_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsServer]:
    with KmsServer("127.0.0.1", _free_port(), state_dir=tmp_path_factory.mktemp("iam-kms"), region="eu-west-1",
                   iam_auth=True) as server:
        yield server


def _describe_as(kms: KmsServer, key: tuple[str, str], key_arn: str) -> str:
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("kms", region_name=kms.region, endpoint_url=kms.endpoint_url,
                          aws_access_key_id=key[0], aws_secret_access_key=key[1])
    try:
        return str(client.describe_key(KeyId=key_arn)["KeyMetadata"]["Arn"])
    except ClientError as err:
        from node_scripts import NODE, load_node_script

        unwrap = load_node_script("mariadb_kms_unwrap", NODE / "mariadb_kms_unwrap.py")
        return str(unwrap.classify(err))


def test_under_iam_auth_each_node_signs_with_its_own_key_and_a_rotated_one_is_refused(iam_kms: KmsServer) -> None:
    tb = HostsStandIn()
    stack = ProgramStack(iam_kms)
    first = stack.record(onprem_config(_testbed(tb), gcacheSize="64M"), _testbed(tb))
    keys = first.onprem_access_keys
    assert sorted(keys) == list(HOSTS) and len({k for k, _ in keys.values()}) == len(HOSTS)
    for node in HOSTS:
        assert _describe_as(iam_kms, keys[node], first.key_arn) == first.key_arn, node
    nodes = [dict(n) for n in first.config["onPremNodes"]]
    nodes[0]["accessKeyGeneration"] = 2
    second = stack.record({**first.config, "onPremNodes": nodes}, _testbed(tb))
    rotated = second.onprem_access_keys
    assert rotated["node1"] != keys["node1"] and rotated["node2"] == keys["node2"]
    # Both keys are valid until the run's end, when the engine deletes what left the program.
    assert _describe_as(iam_kms, keys["node1"], first.key_arn) == first.key_arn
    assert stack.delete_vanished(first, second) == ["onprem-identity-node1-key"]
    assert _describe_as(iam_kms, keys["node1"], first.key_arn) == "credentials-unrecognized"
    assert _describe_as(iam_kms, rotated["node1"], first.key_arn) == first.key_arn
    assert _describe_as(iam_kms, keys["node2"], first.key_arn) == first.key_arn
    # Control: a recording again with the same config makes nothing new and deletes nothing.
    assert stack.delete_vanished(second, stack.record(second.config, _testbed(tb))) == []
