"""The login key rotated and the cluster retired, rehearsed on the demo's cluster under the bank-transfer load.

One `make demo` cluster for the module (two EC2 hosts booted by cloud-init, one on-prem host), every step
over real SSH, as the runbooks say (`make scenarios`; marked ``scenarios``, so not in `make test`):

1. **Login-key rotation** (docs/runbooks/credentials.md), with `make demo-up CONFIG=FILE [SSH_KEY=FILE]`:
   the first `up` (``sshNextAuthorizedKey`` = B) makes every node accept A and B; going back from there
   (the stack's old config) removes B again; the first `up` once more and the second (``sshPrivateKey`` /
   ``sshAuthorizedKey`` = B) switch to B, after which sshd refuses A on every node; and back to A after
   that, by the same rotation with the roles reversed. Checked over real SSH
   with paramiko (pinned host key); the commands each `up` re-runs are counted against the engine's rules
   (login-keys alone, then every command but the create-only bootstrap); mariadbd keeps its PID.
2. **Retiring the cluster** (docs/runbooks/retire.md): a final `mariadb-kms-backup`, a clean shutdown
   node by node, `make demo-protected` / `make demo-unprotect URN=...` for each protected URN, then
   `make demo-destroy`. Afterwards the KMS key is still enabled, and the blob's escrow copies (the SSM
   parameter, the copy on every data volume image, read from the image itself with debugfs, and the final
   backup's) are the state's blob and still decrypt in the emulator with the encryption context (and not
   without it: the control).

Figures go to stdout as JSON lines and, for the loaded parts, into day2's table.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pytest
import test_day2_scenarios
import yaml
from day2 import Day2Scenario, DemoCluster, rehearsal, settings

from rehearsal.engine_rules import plain
from rehearsal.plan import RecordedCommand, recorded_commands
from rehearsal.recorder import Types
from rehearsal.replay import Outcome, Sent, login_key, pinned_key, run_one
from rehearsal.stack import KeyPair, new_ed25519
from rehearsal.state import RehearsalState, load
from rehearsal.volumes import VOLUMES_DIR, LoopVolume

pytestmark = [pytest.mark.rehearsal, pytest.mark.scenarios]
# The module's one demo cluster, as the day-2 scenarios make it: make demo, the bank, make demo-down at the end.
cluster = test_day2_scenarios.cluster

REPO = Path(__file__).resolve().parents[2]
STACK_FILE = REPO / "Pulumi.rehearsal.yaml"
NODES = ["aws-a", "aws-b", "dc-1"]
STEP_LINE = re.compile(r"^\[.*\] up: (\S+) on (\S+) ok in ", re.M)
FACTS: dict[str, Any] = {}  # what one test leaves for the next (the module's tests run in file order)


def everywhere(old: bool, new: bool) -> dict[str, dict[str, bool]]:
    return {n: {"old": old, "new": new} for n in NODES}


def figures(name: str, values: dict[str, Any]) -> None:
    print(f"\n{name}: " + json.dumps(values, sort_keys=True, default=str))


def demo_state() -> RehearsalState:
    from rehearsal.demo import out_dir

    return load(out_dir(settings()))


# --------------------------------------------------------------------------
# Real SSH, as pulumi-command dials
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    node: str
    address: str
    user: str
    host_key: str


def logins(state: RehearsalState) -> dict[str, Login]:
    """Each node's login (address, user, pinned host key) as the program's own commands dial it."""
    out: dict[str, Login] = {}
    for cmd in recorded_commands(state.recording()):
        node = next(n.name for n in state.nodes.values() if n.address == cmd.host)
        assert cmd.host_key, cmd.name
        out.setdefault(node, Login(node, cmd.host, cmd.user, cmd.host_key))
    return out


def accepts(login: Login, private_openssh: str) -> bool:
    """Whether sshd on the node (its host key checked against the pin) lets ``private_openssh`` log in."""
    transport = paramiko.Transport((login.address, 22))
    try:
        transport.start_client(timeout=30)
        assert transport.get_remote_server_key().asbytes() == pinned_key(login.host_key).asbytes(), login.node
        try:
            transport.auth_publickey(login.user, login_key(private_openssh))
        except paramiko.AuthenticationException:
            return False
        return bool(transport.is_authenticated())
    finally:
        transport.close()


def over_ssh(login: Login, private_openssh: str, command: str, timeout: float = 900) -> Outcome:
    """One runbook command on a node over SSH, as the login user (the replay's own dialler)."""
    cmd = RecordedCommand(
        name=command.split()[2] if command.startswith("sudo -n ") else command.split()[0], urn="", create=command,
        stdin=None, stdin_secret=False, host=login.address, port=22, user=login.user, host_key=login.host_key,
        private_key=private_openssh, dial_error_limit=3, per_dial_timeout=30, environment={}, after=(),
        secret_output=False)
    return run_one(Sent(cmd, login.node, None), threading.Event(), timeout)


def who_logs_in(state: RehearsalState, keys: dict[str, KeyPair]) -> dict[str, dict[str, bool]]:
    return {node: {name: accepts(login, pair.private_openssh) for name, pair in keys.items()}
            for node, login in logins(state).items()}


def authorized_keys(cluster: DemoCluster, login: Login) -> str:
    tb = cluster.testbed()
    return tb.exec(login.node, ["sh", "-c", f"cat ~{login.user}/.ssh/authorized_keys"]).stdout


def steps_of(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [m.group(1) for m in STEP_LINE.finditer(proc.stderr)]


def mariadbd_pids(cluster: DemoCluster) -> dict[str, str]:
    tb = cluster.testbed()
    return {n: tb.exec(n, ["systemctl", "show", "-p", "MainPID", "--value", "mariadb"]).stdout.strip() for n in NODES}


def stack_file(tmp: Path, name: str, **keys: str) -> Path:
    """Pulumi.rehearsal.yaml with these ``mariadb-kms:`` keys set: what `pulumi config set` leaves."""
    data = yaml.safe_load(STACK_FILE.read_text())
    for key, value in keys.items():
        data["config"][f"mariadb-kms:{key}"] = value
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------
# 1. The login key
# --------------------------------------------------------------------------


@dataclass
class Keys:
    old: KeyPair
    new: KeyPair
    new_file: Path  # 0600: what `pulumi config set --secret sshPrivateKey` reads it from
    next_config: Path  # up 1: sshNextAuthorizedKey = the new key
    switch_config: Path  # up 2: sshAuthorizedKey = the new key, next unset


@pytest.fixture(scope="module")
def keys(cluster: DemoCluster, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    state = demo_state()
    old = KeyPair(str(state.config["sshPrivateKey"]), str(state.config["sshAuthorizedKey"]))
    new = new_ed25519("mariadb-kms-login-next")
    tmp = tmp_path_factory.mktemp("login-keys")
    new_file = tmp / "login-next"
    fd = os.open(new_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(new.private_openssh)
    return Keys(old, new, new_file,
                stack_file(tmp, "login-1-next.yaml", sshNextAuthorizedKey=new.public_line),
                stack_file(tmp, "login-2-switch.yaml", sshAuthorizedKey=new.public_line))


def login_key_steps(state: RehearsalState) -> set[str]:
    return {r.name for r in state.resources.values()
            if r.type == Types.REMOTE_COMMAND and r.name.endswith("login-keys")}


def test_first_up_makes_every_node_accept_both_keys(cluster: DemoCluster, keys: Keys) -> None:
    state = demo_state()
    pair = {"old": keys.old, "new": keys.new}
    before = who_logs_in(state, pair)
    # Control: the check can fail. make demo authorised only the old key.
    assert before == everywhere(True, False), before
    FACTS["pids"] = mariadbd_pids(cluster)
    with Day2Scenario(cluster, "login key: up 1 (accept the next key)", members=NODES, nodes=NODES) as sc:
        proc = sc.up(keys.next_config)  # make demo-up CONFIG=login-1-next.yaml
        assert proc.returncode == 0, proc.stderr[-6000:]
    f = sc.figures
    assert f is not None
    ran = steps_of(proc)
    after = who_logs_in(state, pair)
    figures("login key up 1", {"steps": sorted(ran), **f.to_dict(), "logs_in": after})
    assert sorted(ran) == sorted(login_key_steps(state)) and len(ran) == len(NODES)
    assert after == everywhere(True, True), after
    assert f.nodes_restarted == [] and f.acknowledged_lost == 0 and f.invariant_violations == 0


def test_going_back_after_the_first_up_removes_the_next_key(cluster: DemoCluster, keys: Keys) -> None:
    state = demo_state()
    pair = {"old": keys.old, "new": keys.new}
    with Day2Scenario(cluster, "login key: back after up 1", members=NODES, nodes=NODES) as sc:
        proc = sc.up(STACK_FILE)  # the config before the rotation: `pulumi config rm sshNextAuthorizedKey`
        assert proc.returncode == 0, proc.stderr[-6000:]
    f = sc.figures
    assert f is not None
    ran = steps_of(proc)
    after = who_logs_in(state, pair)
    new_key = keys.new.public_line.split()[1]
    files = {n: authorized_keys(cluster, login) for n, login in logins(state).items()}
    figures("login key rollback", {"steps": sorted(ran), **f.to_dict(), "logs_in": after})
    assert sorted(ran) == sorted(login_key_steps(state)) and len(ran) == len(NODES)
    assert after == everywhere(True, False), after
    assert all(keys.old.public_line.split()[1] in text for text in files.values())
    assert not [n for n, text in files.items() if new_key in text], "the next key is still in authorized_keys"
    assert f.nodes_restarted == [] and f.acknowledged_lost == 0 and f.invariant_violations == 0


def test_second_up_switches_to_the_new_key_and_the_old_one_is_refused(
        cluster: DemoCluster, keys: Keys) -> None:
    pair = {"old": keys.old, "new": keys.new}
    with Day2Scenario(cluster, "login key: up 1 again, then up 2 (switch)", members=NODES, nodes=NODES) as sc:
        first = sc.up(keys.next_config)
        assert first.returncode == 0, first.stderr[-6000:]
        middle = who_logs_in(demo_state(), pair)
        state = demo_state()  # what up 2 is planned against
        # make demo-up CONFIG=login-2-switch.yaml SSH_KEY=login-next
        second = sc.up(keys.switch_config, "--ssh-private-key", str(keys.new_file))
        assert second.returncode == 0, second.stderr[-6000:]
    f = sc.figures
    assert f is not None
    ran = steps_of(second)
    after = who_logs_in(demo_state(), pair)
    pids = mariadbd_pids(cluster)
    # The engine's rules: the connection (its private key) changed on every remote command, so each one that
    # does not ignore the change updates and runs its `update`, else its `create`; only the bootstrap is
    # create-only (ignore_changes). docs/runbooks/credentials.md counts 12 per node plus each verification.
    commands = [r for r in state.resources.values() if r.type == Types.REMOTE_COMMAND]
    expected = sorted(r.name for r in commands
                      if not (r.options and {"*", "connection"} & set(r.options.ignore_changes)))
    figures("login key up 2", {"steps": len(ran), "expected": len(expected), **f.to_dict(), "logs_in": after,
                               "pids_before": FACTS.get("pids"), "pids_after": pids})
    assert middle == everywhere(True, True), middle
    assert sorted(ran) == expected, sorted(set(ran) ^ set(expected))
    assert len(ran) == 12 * len(NODES) + len(NODES) and "cluster-bootstrap" not in ran
    assert "~0 update" not in second.stderr and "+-0 replace" in second.stderr
    assert after == everywhere(False, True), after
    assert demo_state().config["sshPrivateKey"] == keys.new.private_openssh
    assert FACTS.get("pids") and pids == FACTS["pids"], "a mariadbd restarted during the rotation"
    assert f.nodes_restarted == [] and f.max_members_not_synced <= 1
    assert f.acknowledged > 0 and f.acknowledged_lost == 0 and f.invariant_violations == 0


def test_going_back_after_the_second_up_is_the_rotation_reversed(
        cluster: DemoCluster, keys: Keys, tmp_path: Path) -> None:
    pair = {"old": keys.old, "new": keys.new}
    old_file = tmp_path / "login-old"
    fd = os.open(old_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(keys.old.private_openssh)
    # The new key stays the stack's (the state holds it); the old one comes back as the next key, then as the key.
    back_next = stack_file(tmp_path, "login-3-back-next.yaml", sshNextAuthorizedKey=keys.old.public_line)
    back_switch = stack_file(tmp_path, "login-4-back-switch.yaml", sshAuthorizedKey=keys.old.public_line)
    with Day2Scenario(cluster, "login key: back after up 2 (reversed)", members=NODES, nodes=NODES) as sc:
        first = sc.up(back_next)  # make demo-up CONFIG=login-3-back-next.yaml
        assert first.returncode == 0, first.stderr[-6000:]
        middle = who_logs_in(demo_state(), pair)
        second = sc.up(back_switch, "--ssh-private-key", str(old_file))
        assert second.returncode == 0, second.stderr[-6000:]
    f = sc.figures
    assert f is not None
    after = who_logs_in(demo_state(), pair)
    pids = mariadbd_pids(cluster)
    figures("login key back after up 2", {"steps": [len(steps_of(first)), len(steps_of(second))], **f.to_dict(),
                                          "logs_in": after, "pids_after": pids})
    assert len(steps_of(first)) == len(NODES) and len(steps_of(second)) == 12 * len(NODES) + len(NODES)
    assert middle == everywhere(True, True), middle
    assert after == everywhere(True, False), after
    assert pids == FACTS["pids"], "a mariadbd restarted during the way back"
    assert f.nodes_restarted == [] and f.acknowledged_lost == 0 and f.invariant_violations == 0


# --------------------------------------------------------------------------
# 2. Retiring the cluster
# --------------------------------------------------------------------------

BACKUP_TARGET = "/srv/mariadb-kms/final-backup"
BACKUP_NAME = "final"


def kms_clients(state: RehearsalState) -> tuple[Any, Any]:
    import boto3

    from rehearsal.kms_server import DEFAULT_PORT

    url = f"http://{settings().bridge_address}:{DEFAULT_PORT}"
    session = boto3.session.Session(region_name=state.region)
    return session.client("kms", endpoint_url=url), session.client("ssm", endpoint_url=url)


def image_file(volume: LoopVolume, path: str) -> bytes:
    """A file read from the volume's image itself (debugfs), not from any mount of it."""
    volume.sync()
    proc = subprocess.run(["debugfs", "-R", f"cat {path}", str(volume.image)], capture_output=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def test_retire_the_cluster_with_the_blob_still_recoverable(cluster: DemoCluster) -> None:
    from botocore.exceptions import ClientError

    from rehearsal.emulator import emulator_credentials

    state = demo_state()
    key = next(r for r in state.resources.values() if r.type == Types.KMS_KEY)
    data_key = next(r for r in state.resources.values() if r.type == Types.DATA_KEY)
    key_arn = str(plain(key.state["arn"]))
    blob_b64 = str(plain(data_key.state["ciphertext_blob"]))  # pulumi stack output clusterDataKeyCiphertext
    context = dict(plain(data_key.state["encryption_context"]))
    parameter = str(plain(data_key.state["escrow_parameter_name"]))
    login = logins(state)
    private = str(state.config["sshPrivateKey"])
    seconds: dict[str, float] = {}

    # 1. The final backup, while clients still write (the load stops before the shutdown).
    with Day2Scenario(cluster, "retire: final backup", members=NODES, nodes=NODES) as sc:
        t = time.monotonic()
        backup = over_ssh(login["dc-1"], private,
                          f"sudo -n mariadb-kms-backup --target {BACKUP_TARGET} --name {BACKUP_NAME}", timeout=1800)
        seconds["backup"] = round(time.monotonic() - t, 1)
        assert backup.ok, f"{backup.rc} {backup.error}\n{backup.stderr[-3000:]}"
    f = sc.figures
    assert f is not None and f.acknowledged > 0 and f.acknowledged_lost == 0 and f.invariant_violations == 0

    # 2. A clean shutdown, one node at a time; the last one stopped is the one to bootstrap from.
    t = time.monotonic()
    for node in NODES:
        stopped = over_ssh(login[node], private, "sudo -n systemctl stop mariadb", timeout=600)
        assert stopped.ok, f"{node}: {stopped.rc} {stopped.error} {stopped.stderr[-2000:]}"
    seconds["shutdown"] = round(time.monotonic() - t, 1)
    tb = cluster.testbed()
    grastate = tb.exec("dc-1", ["sh", "-c", "cat /srv/mariadb-kms/data/grastate.dat"]).stdout

    # 3. Control: the engine refuses while the protected resources are protected.
    refused = rehearsal("destroy", "--preview", timeout=600)  # make demo-destroy PREVIEW=1
    assert refused.returncode == 3 and "is protected and would be deleted" in refused.stderr, refused.stderr[-3000:]

    # 4. Each protected URN unprotected (make demo-protected; make demo-unprotect URN=...).
    listed = rehearsal("state", "protected", timeout=120)
    assert listed.returncode == 0, listed.stderr
    protected = listed.stdout.split()
    types = sorted(state.resources[u].type for u in protected)
    assert types == sorted([Types.KMS_KEY, Types.DATA_KEY, Types.EBS_VOLUME, Types.EBS_VOLUME]), types
    for urn in protected:
        done = rehearsal("state", "unprotect", urn, timeout=120)
        assert done.returncode == 0 and f"unprotected {urn}" in done.stderr, done.stderr
    again = rehearsal("state", "protected", timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == "", again.stdout

    # 5. pulumi destroy (make demo-destroy).
    t = time.monotonic()
    destroyed = rehearsal("destroy", timeout=1800)
    seconds["destroy"] = round(time.monotonic() - t, 1)
    assert destroyed.returncode == 0, destroyed.stderr[-6000:]
    off = re.search(r"powered off (\S+), (\S+)$", destroyed.stderr, flags=re.M)
    assert off is not None and sorted(off.groups()) == ["aws-a", "aws-b"], destroyed.stderr[-3000:]
    retained = re.findall(r"^retained: (\S+) (\S+)", destroyed.stderr, flags=re.M)
    assert sorted(t for t, _n in retained) == types, retained
    empty = rehearsal("destroy", "--preview", timeout=600)  # the state is empty: nothing is left to delete
    assert empty.returncode == 0 and "Resources: +0 create, ~0 update, +-0 replace, -0 delete" in empty.stderr, \
        empty.stderr[-2000:]
    tb = cluster.testbed()
    assert not tb.hosts["aws-a"].leader_pid and not tb.hosts["aws-b"].leader_pid

    # 6. What is left: the key, the escrowed blob, every volume image, the final backup.
    blob = base64.b64decode(blob_b64)
    copies: dict[str, bytes] = {}
    volumes = {n: LoopVolume(n, tb.run_dir / VOLUMES_DIR / n) for n in NODES}
    with emulator_credentials():
        kms, ssm = kms_clients(state)
        key_state = kms.describe_key(KeyId=key_arn)["KeyMetadata"]["KeyState"]
        copies["ssm"] = base64.b64decode(ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"])
        for n, volume in volumes.items():
            assert volume.image.is_file(), f"{n}: the volume image is gone"
            copies[f"{n} volume"] = image_file(volume, "/escrow/datakey.blob")
            conf = image_file(volume, "/escrow/unwrap.conf").decode()
            assert key_arn in conf and "encryption_context" in conf and all(v in conf for v in context.values()), conf
        copies["final backup"] = image_file(volumes["dc-1"], f"/final-backup/{BACKUP_NAME}/datakey.blob")
        decrypted = {}
        for where, copy in copies.items():
            answer = kms.decrypt(CiphertextBlob=copy, EncryptionContext=context)
            decrypted[where] = (answer["KeyId"] == key_arn, len(answer["Plaintext"]))
        # Control: without the encryption context KMS refuses the same blob.
        with pytest.raises(ClientError, match="InvalidCiphertext"):
            kms.decrypt(CiphertextBlob=blob)
    figures("retire", {"seconds": seconds, "protected_urns": len(protected), "retained": retained,
                       "key_state": key_state, "copies": {k: v == blob for k, v in copies.items()},
                       "decrypted": decrypted, "image_bytes": {n: v.image.stat().st_size for n, v in volumes.items()},
                       "dc-1 grastate": grastate.strip().splitlines()[-1:], "backup": f.to_dict()})
    assert key_state == "Enabled"
    assert all(c == blob for c in copies.values()), {k: v == blob for k, v in copies.items()}
    assert decrypted == dict.fromkeys(copies, (True, 32)), decrypted
    assert "safe_to_bootstrap: 1" in grastate, grastate
