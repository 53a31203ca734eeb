"""Per-node on-prem identities and an access-key rotation as one `pulumi up`, on real hosts under client load.

moto runs with IAM authentication on from the start (``KmsServer(iam_auth=True)``), so the runner makes each
on-prem node's IAM user and access key in moto's IAM (``rehearsal/emulator``): a node's unwrap signs with a key
the emulator issued, and a deleted key is refused (``InvalidClientTokenId``) as AWS refuses it. moto enforces
no key policy; the key policy naming each node's own user is checked as data in
tests/unit/test_onprem_identities.py.

The program's plan is deployed on three on-prem testbed hosts (``rehearsal/runner``). Then the rotation of
docs/runbooks/credentials.md: node1's ``accessKeyGeneration`` goes from 1 to 2, the program is recorded again,
and exactly the remote commands the engine would run for that change (``rehearsal/engine_rules``) are
carried out on the hosts while the bank-transfer workload runs against every node; last, what left the
program (node1's old access key) is deleted, as the engine deletes it after every create and update.

What it shows: each node has its own key; the rotation runs node1's credentials, pre-flight and roll only;
afterwards the old key is refused with the credentials cause and the new one unwraps; no mariadbd restarted
during the rotation and node1 restarts fine with the new key afterwards; node2's and node3's credentials files
are untouched (content and mtime); no acknowledged write was lost. Last, node3 leaves (``decommission:
true``): its decommission step runs, then its access key and user are deleted and moto refuses the key.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from components.node_files import CREDENTIALS_PATH, UNWRAP_CONF_PATH, render_credentials_file
from rehearsal.engine_rules import plan_changes
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import check, sql, wait_synced
from rehearsal.recorder import Types
from rehearsal.runner import Deployment, Program, ProgramStack, deploy, engine_runs, onprem_config
from rehearsal.testbed import Testbed
from rehearsal.workload import BankWorkload, WorkloadReport, setup_sql

pytestmark = pytest.mark.node

HOSTS = ("node1", "node2", "node3")
ROTATED = "node1"
UNWRAP = "/usr/local/sbin/mariadb-kms-unwrap"
CREDENTIALS_UNRECOGNIZED_EXIT = 22
# Clients connect without TLS (the workload's pymysql client); replication and SST keep theirs.
CONFIG: dict[str, Any] = {"gcacheSize": "64M", "requireSecureTransport": False}


def mariadbd_pid(testbed: Testbed, host: str) -> str:
    return testbed.exec(host, ["systemctl", "show", "-p", "MainPID", "--value", "mariadb"]).stdout.strip()


def file_state(testbed: Testbed, host: str, path: str) -> tuple[str, str]:
    """(sha256 of the content, mtime in ns): what a rewrite of the same bytes would still change."""
    digest = hashlib.sha256(testbed.read_file(host, path)).hexdigest()
    return digest, testbed.exec(host, ["stat", "-c", "%.9Y", path]).stdout.strip()


def unwrap_check(testbed: Testbed, host: str, conf: str = UNWRAP_CONF_PATH) -> tuple[int, str]:
    result = testbed.exec(host, [UNWRAP, "--check", "--conf", conf], timeout=180)
    return result.rc, result.stderr + result.stdout


@dataclass
class Rotation:
    testbed: Testbed
    stack: ProgramStack
    base: Program
    head: Program
    keys_before: dict[str, tuple[str, str]]
    keys_after: dict[str, tuple[str, str]]
    files_on_hosts: dict[str, str]  # host -> its credentials file, before the rotation
    runs: list[str]
    aws_changes: dict[tuple[str, str], str]
    deleted: list[str]
    old_key_valid_before_delete: tuple[int, str]
    others_before: dict[str, tuple[str, str]]
    others_after: dict[str, tuple[str, str]]
    pids_before: dict[str, str]
    pids_after: dict[str, str]
    report: WorkloadReport
    seconds: float


def _check_with_key(testbed: Testbed, host: str, key: tuple[str, str], name: str) -> tuple[int, str]:
    """The unwrap's --check on ``host`` with another credentials file, written long ago (no new-key window)."""
    path = f"/root/{name}-credentials"
    conf = f"/root/{name}-unwrap.conf"
    testbed.put_file(host, path, render_credentials_file(*key), 0o600, "root:root")
    check(testbed, host, ["touch", "-d", "2 hours ago", path])
    check(testbed, host, ["sh", "-c", f"sed 's#^credentials_file = .*#credentials_file = {path}#' "
                                      f"{UNWRAP_CONF_PATH} > {conf}"])
    try:
        return unwrap_check(testbed, host, conf)
    finally:
        check(testbed, host, ["rm", "-f", path, conf])


@pytest.fixture(scope="module")
def iam_kms(testbed: Testbed) -> Iterator[KmsServer]:
    with KmsServer(testbed.bridge_address, state_dir=testbed.run_dir, iam_auth=True) as server:
        yield server


@pytest.fixture(scope="module")
def rotation(testbed: Testbed, iam_kms: KmsServer) -> Iterator[Rotation]:
    try:
        stack = ProgramStack(iam_kms)
        config = onprem_config(testbed, HOSTS, **CONFIG)
        before = deploy(testbed, stack, config, quiet=True)
        base = before.program
        keys_before = base.onprem_access_keys
        files = {h: testbed.read_file(h, CREDENTIALS_PATH).decode() for h in HOSTS}

        password = secrets.token_urlsafe(18)
        sql(testbed, "node1", setup_sql(20, 1000, "bank", password))

        # The next `pulumi up`: node1's accessKeyGeneration 1 -> 2 (docs/runbooks/credentials.md).
        nodes = [dict(n) for n in config["onPremNodes"]]
        nodes[0]["accessKeyGeneration"] = 2
        head = stack.record({**config, "onPremNodes": nodes}, testbed)
        runs = engine_runs(base, head)
        aws_changes = {(c.type, c.name): c.action for c in plan_changes(base.recording, head.recording)
                       if c.type != Types.REMOTE_COMMAND and c.action != "same"}
        others = [h for h in HOSTS if h != ROTATED]
        others_before = {h: file_state(testbed, h, CREDENTIALS_PATH) for h in others}
        pids_before = {h: mariadbd_pid(testbed, h) for h in HOSTS}

        up = Deployment(testbed, head, quiet=True)
        load = BankWorkload([testbed.hosts[h].address for h in HOSTS], user="bank", password=password,
                            duration=3600, max_transfers=10**7).start()
        time.sleep(5)
        started = time.monotonic()
        try:
            up.run_only(runs, timeout=1200)
            # Until the engine's last phase, the old key still works: nothing depended on its deletion.
            old_valid = _check_with_key(testbed, ROTATED, keys_before[ROTATED], "old")
            deleted = stack.delete_vanished(base, head)
        finally:
            seconds = time.monotonic() - started
            time.sleep(5)
            load.stop()
            load.wait(120)
        report = load.report(load.audit())
        pids_after = {h: mariadbd_pid(testbed, h) for h in HOSTS}
        others_after = {h: file_state(testbed, h, CREDENTIALS_PATH) for h in others}
        yield Rotation(testbed, stack, base, head, keys_before, head.onprem_access_keys, files, runs, aws_changes,
                       deleted, old_valid, others_before, others_after, pids_before, pids_after, report, seconds)
    finally:
        for host in HOSTS:
            testbed.exec(host, ["systemctl", "disable", "--now", "--quiet", "mariadb"], timeout=300)
            testbed.exec(host, ["apt-get", "clean"], timeout=120)


def test_each_node_has_its_own_key_in_its_own_credentials_file(rotation: Rotation) -> None:
    keys = rotation.keys_before
    assert sorted(keys) == sorted(HOSTS)
    assert len({key_id for key_id, _ in keys.values()}) == len(HOSTS)
    for host in HOSTS:
        own = keys[host][0]
        others = [keys[h][0] for h in HOSTS if h != host]
        assert own in rotation.files_on_hosts[host], host
        assert not [k for k in others if k in rotation.files_on_hosts[host]], host


def test_the_rotation_runs_three_commands_on_that_node_and_deletes_its_old_key_last(rotation: Rotation) -> None:
    assert rotation.runs == [f"{ROTATED}-ssh-credentials", f"{ROTATED}-ssh-preflight", f"{ROTATED}-ssh-roll"]
    assert rotation.aws_changes == {
        (Types.IAM_ACCESS_KEY, f"onprem-identity-{ROTATED}-key-2"): "create",
        (Types.IAM_ACCESS_KEY, f"onprem-identity-{ROTATED}-key"): "delete",
    }
    assert rotation.old_key_valid_before_delete[0] == 0, rotation.old_key_valid_before_delete
    assert rotation.deleted == [f"onprem-identity-{ROTATED}-key"]
    assert rotation.keys_after[ROTATED] != rotation.keys_before[ROTATED]
    assert {h: k for h, k in rotation.keys_after.items() if h != ROTATED} == {
        h: k for h, k in rotation.keys_before.items() if h != ROTATED}
    print(f"rotation under load: {rotation.seconds:.1f} s, commands {rotation.runs}")


def test_the_old_key_is_refused_and_the_new_one_unwraps(rotation: Rotation) -> None:
    tb = rotation.testbed
    assert rotation.keys_after[ROTATED][0] in tb.read_file(ROTATED, CREDENTIALS_PATH).decode()
    rc, said = unwrap_check(tb, ROTATED)
    assert rc == 0, said
    rc, said = _check_with_key(tb, ROTATED, rotation.keys_before[ROTATED], "old")
    assert rc == CREDENTIALS_UNRECOGNIZED_EXIT and "cause=credentials-unrecognized" in said, (rc, said)
    assert rotation.keys_before[ROTATED][1] not in said
    # Control: the same check with another node's current key passes (the refusal is the deleted key's).
    rc, said = _check_with_key(tb, ROTATED, rotation.keys_after["node2"], "other")
    assert rc == 0, said


def test_nothing_restarted_no_write_was_lost_and_the_other_files_are_untouched(rotation: Rotation) -> None:
    assert all(p not in ("", "0") for p in rotation.pids_before.values()), rotation.pids_before
    assert rotation.pids_after == rotation.pids_before
    assert rotation.others_after == rotation.others_before
    report = rotation.report
    print("workload:", report.to_dict())
    assert report.acknowledged > 0
    assert report.acknowledged_lost == 0 and report.invariant_violations == 0


def test_the_rotated_node_restarts_with_its_new_key(rotation: Rotation) -> None:
    tb = rotation.testbed
    check(tb, ROTATED, ["systemctl", "restart", "mariadb"], timeout=600)
    wait_synced(tb, ROTATED, len(HOSTS), timeout=600)
    # A requested stop removes the keyfile, so this start unwrapped again, with the only key node1 now has.
    assert mariadbd_pid(tb, ROTATED) != rotation.pids_after[ROTATED]


def test_a_leaving_nodes_identity_is_deleted_after_its_decommission_step(
    rotation: Rotation, iam_kms: KmsServer
) -> None:
    import boto3
    from botocore.exceptions import ClientError

    tb, leaving = rotation.testbed, "node3"
    nodes = [{**n, "decommission": True} if n["name"] == leaving else n for n in rotation.head.config["onPremNodes"]]
    stack = rotation.stack
    head = stack.record({**rotation.head.config, "onPremNodes": nodes}, tb)
    runs = engine_runs(rotation.head, head)
    assert f"{leaving}-ssh-decommission" in runs
    assert not [r for r in runs if r.startswith(f"{leaving}-") and not r.endswith("-decommission")], runs
    user = rotation.head.iam_user(leaving)
    key = rotation.keys_after[leaving]
    Deployment(tb, head, quiet=True).run_only(runs, timeout=1200)
    # The decommission step ran with the node's key still valid; the engine deletes the identity afterwards.
    assert _check_with_key(tb, "node1", key, "leaving")[0] == 0
    assert stack.delete_vanished(rotation.head, head) == [f"onprem-identity-{leaving}-key",
                                                          f"onprem-identity-{leaving}-user"]
    client = boto3.client("kms", region_name=iam_kms.region, endpoint_url=iam_kms.endpoint_url,
                          aws_access_key_id=key[0], aws_secret_access_key=key[1])
    with pytest.raises(ClientError) as refused:
        client.describe_key(KeyId=head.key_arn)
    assert refused.value.response["Error"]["Code"] in ("403", "InvalidClientTokenId"), refused.value.response
    with pytest.raises(ClientError):
        iam_kms.client(service="iam").get_user(UserName=user)
    # The staying nodes' keys still work.
    for host in ("node1", "node2"):
        assert unwrap_check(tb, host)[0] == 0, host
