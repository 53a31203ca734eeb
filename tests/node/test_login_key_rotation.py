"""A login-key rotation on real hosts over real SSH, under the bank-transfer load: two `pulumi up`s, no restart.

The program's plan is deployed on three on-prem testbed hosts by the runner
(``rehearsal/runner``, nsenter); its login-keys step is what first authorises
the stack's login key A for the login user (root here) in sshd. Then the two
`pulumi up`s of docs/runbooks/credentials.md, each recorded from the program
with the changed config, and of each recording exactly the remote commands
the engine would run (``rehearsal/engine_rules``: the state's recording
against the new one), carried out over SSH by the replay (paramiko, as
pulumi-command dials: pinned host key, the connection's private key):

1. ``sshNextAuthorizedKey`` = B: only the login-keys step of each node runs,
   logging in with A; afterwards A and B both log in.
2. ``sshPrivateKey``/``sshAuthorizedKey`` = B, next unset: the connection
   changed, so every command but the bootstrap runs its ``create`` again,
   logging in with B; afterwards B logs in and A is refused.

Meanwhile the bank-transfer workload runs over TLS on every node: no
acknowledged write is lost, the balances add up, and every mariadbd keeps its
PID. A control shows the SSH check can fail: before the deploy, A is refused.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paramiko
import pytest

from components.tls_material import CA_CERT_PATH
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import sql, wait_synced
from rehearsal.replay import Outcome, login_key, pinned_key, replay
from rehearsal.runner import Deployment, Program, ProgramStack, deploy, engine_runs, onprem_config
from rehearsal.stack import KeyPair, new_ed25519
from rehearsal.testbed import Testbed
from rehearsal.workload import BankWorkload, pymysql_connect, setup_sql

HOSTS = ("node1", "node2", "node3")
LOGIN_USER = "root"  # onprem_config's sshUser


def mariadbd_pid(testbed: Testbed, host: str) -> str:
    return testbed.exec(host, ["systemctl", "show", "-p", "MainPID", "--value", "mariadb"]).stdout.strip()


def logs_in(address: str, host_key: str, key: KeyPair) -> bool:
    """Whether sshd on ``address`` (its host key checked against the pin) accepts ``key`` for the login user."""
    sock = socket.create_connection((address, 22), timeout=30)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=30)
        assert transport.get_remote_server_key().asbytes() == pinned_key(host_key).asbytes(), address
        try:
            transport.auth_publickey(LOGIN_USER, login_key(key.private_openssh))
        except paramiko.AuthenticationException:
            return False
        return bool(transport.is_authenticated())
    finally:
        transport.close()


def up_over_ssh(head: Program, names: list[str]) -> list[Outcome]:
    """Those commands of ``head`` over real SSH, in the recorded order, each waiting for the chosen ones it
    waits for (what the engine does: an unchanged resource is no step)."""
    chosen = set(names)
    sent = [dataclasses.replace(s, command=dataclasses.replace(
        s.command, after=tuple(a for a in s.command.after if a in chosen)))
        for s in head.sent if s.command.name in chosen]
    result = replay(sent, timeout=1800)
    failed = result.failed
    if failed is not None:
        secret = head.command(failed.name).secret_output
        shown = "(secret output)" if secret else f"{failed.stdout[-1500:]}\n{failed.stderr[-2000:]}"
        raise AssertionError(f"{failed.name} on {failed.node}: exit {failed.rc} {failed.error or ''}\n{shown}")
    return result.outcomes


@dataclass
class Rotation:
    testbed: Testbed
    addresses: dict[str, str]
    host_keys: dict[str, str]
    old: KeyPair
    new: KeyPair
    refused_before_deploy: dict[str, bool]
    first_up: list[str]
    first_outcomes: list[Outcome]
    after_first: dict[str, tuple[bool, bool]]  # host -> (old logs in, new logs in)
    second_up: list[str]
    second_outcomes: list[Outcome]
    after_second: dict[str, tuple[bool, bool]]
    pids_before: dict[str, str]
    pids_after: dict[str, str]
    workload: Any  # WorkloadReport
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def rotation(testbed: Testbed, kms: KmsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotation]:
    try:
        config = onprem_config(testbed, HOSTS, gcacheSize="64M")
        old = KeyPair(config["sshPrivateKey"], config["sshAuthorizedKey"])
        new = new_ed25519("mariadb-kms-node-tests-next")
        addresses = {h: testbed.hosts[h].address for h in HOSTS}
        host_keys = {n["name"]: n["hostKey"] for n in config["onPremNodes"]}
        # Control: nothing authorises the stack's key before the program's own step does.
        refused = {h: not logs_in(addresses[h], host_keys[h], old) for h in HOSTS}

        stack = ProgramStack(kms)
        deployed: Deployment = deploy(testbed, stack, config)
        base = deployed.program

        password = secrets.token_urlsafe(18)
        sql(testbed, "node1", setup_sql(20, 1000, "bank", password))
        ca = tmp_path_factory.mktemp("ca") / "ca.pem"
        ca.write_bytes(testbed.read_file("node1", CA_CERT_PATH))
        pids_before = {h: mariadbd_pid(testbed, h) for h in HOSTS}
        load = BankWorkload(list(addresses.values()), user="bank", password=password, duration=1800,
                            max_transfers=10**7,
                            connect=pymysql_connect("bank", password, io_timeout=10, ca=ca)).start()
        time.sleep(5)

        seconds: dict[str, float] = {}
        during_cfg = {**config, "sshNextAuthorizedKey": new.public_line}
        during = stack.record(during_cfg, testbed)
        first_up = engine_runs(base, during)
        t = time.monotonic()
        first_outcomes = up_over_ssh(during, first_up)
        seconds["first up"] = round(time.monotonic() - t, 1)
        after_first = {h: (logs_in(addresses[h], host_keys[h], old), logs_in(addresses[h], host_keys[h], new))
                       for h in HOSTS}

        after_cfg = {**config, "sshPrivateKey": new.private_openssh, "sshAuthorizedKey": new.public_line}
        switched = stack.record(after_cfg, testbed)
        second_up = engine_runs(during, switched)
        t = time.monotonic()
        second_outcomes = up_over_ssh(switched, second_up)
        seconds["second up"] = round(time.monotonic() - t, 1)
        after_second = {h: (logs_in(addresses[h], host_keys[h], old), logs_in(addresses[h], host_keys[h], new))
                        for h in HOSTS}

        time.sleep(5)
        load.stop()
        load.wait(120)
        for h in HOSTS:
            wait_synced(testbed, h, 3, timeout=300)
        report = load.report(load.audit())
        pids_after = {h: mariadbd_pid(testbed, h) for h in HOSTS}
        yield Rotation(testbed, addresses, host_keys, old, new, refused, first_up, first_outcomes, after_first,
                       second_up, second_outcomes, after_second, pids_before, pids_after, report, seconds)
    finally:
        for host in HOSTS:
            testbed.exec(host, ["systemctl", "disable", "--now", "--quiet", "mariadb"], timeout=300)
            testbed.exec(host, ["apt-get", "clean"], timeout=120)
            testbed.exec(host, ["rm", "-f", "/root/.ssh/authorized_keys"], timeout=60)


def test_the_ssh_check_fails_when_sshd_refuses_the_key(rotation: Rotation) -> None:
    assert rotation.refused_before_deploy == dict.fromkeys(HOSTS, True)


def test_the_first_up_runs_only_login_keys_and_both_keys_log_in(rotation: Rotation) -> None:
    assert sorted(rotation.first_up) == sorted(f"{h}-ssh-login-keys" for h in HOSTS)
    assert all(o.ok for o in rotation.first_outcomes) and len(rotation.first_outcomes) == len(HOSTS)
    assert rotation.after_first == dict.fromkeys(HOSTS, (True, True))


def test_the_second_up_re_executes_every_command_but_the_bootstrap_with_the_new_key(rotation: Rotation) -> None:
    # 12 steps per on-prem node with TLS on, and each node's verification; the bootstrap is create-only.
    assert "cluster-bootstrap" not in rotation.second_up
    assert len(rotation.second_up) == 12 * len(HOSTS) + len(HOSTS), sorted(rotation.second_up)
    assert len(rotation.second_outcomes) == len(rotation.second_up) and all(o.ok for o in rotation.second_outcomes)
    rolls = [o for o in rotation.second_outcomes if o.name.endswith("-ssh-roll")]
    assert len(rolls) == len(HOSTS)
    print("rotation timings:", rotation.seconds)


def test_after_the_switch_only_the_new_key_logs_in(rotation: Rotation) -> None:
    assert rotation.after_second == dict.fromkeys(HOSTS, (False, True))


def test_nothing_restarted_and_no_acknowledged_write_was_lost(rotation: Rotation) -> None:
    assert all(rotation.pids_before.values()) and rotation.pids_before != dict.fromkeys(HOSTS, "0")
    assert rotation.pids_after == rotation.pids_before
    report = rotation.workload
    print("workload:", report.to_dict())
    assert report.acknowledged > 0
    assert report.acknowledged_lost == 0 and report.invariant_violations == 0
