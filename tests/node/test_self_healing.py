"""A node heals by itself: KMS away across a restart, a crash while KMS is away, and what still refuses.

The cluster is built once, in the ``healing_cluster`` fixture, by the program's own plan
(``rehearsal/runner``: the install, the one-time bootstrap on node1, each node's roll, the verification).
KMS is made unreachable from one host with a prohibit route (its connections fail at once), which keeps
the emulator's keys.

- KMS unreachable across ``systemctl restart mariadb`` for 30 s: the unwrap waits inside its one start
  (no unit restart, no FAILED line), and MariaDB is Synced again within 60 s of KMS answering.
- mariadbd killed while KMS is unreachable: systemd's restart reuses the key the node holds, without KMS.
- a disabled key still refuses at once, with one ``FAILED cause=key-disabled`` line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import release_hosts

from components.node_files import UNWRAP_UNIT
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import (
    join,
    journal_cursor,
    journal_since,
    keyfile_present,
    unit_state,
    wait_synced,
)
from rehearsal.runner import Deployment, ProgramStack, deploy, onprem_config
from rehearsal.testbed import Testbed

HOSTS = ("node1", "node2", "node3")
OUTAGE = 30.0  # seconds KMS stays unreachable across the restart
HEALED_WITHIN = 60.0  # MariaDB must be Synced this soon after KMS answers again


@dataclass
class HealingCluster:
    testbed: Testbed
    kms: KmsServer
    deployed: Deployment


@pytest.fixture(scope="module")
def healing_cluster(testbed: Testbed, kms: KmsServer) -> Iterator[HealingCluster]:
    """Three nodes deployed by the program's plan, bootstrapped once; the one place the cluster is made."""
    try:
        deployed = deploy(testbed, ProgramStack(kms), onprem_config(testbed, HOSTS, gcacheSize="64M"))
        yield HealingCluster(testbed, kms, deployed)
    finally:
        release_hosts(testbed, HOSTS)


def mariadbd_running(tb: Testbed, host: str) -> bool:
    return tb.exec(host, ["pgrep", "-x", "mariadbd"]).rc == 0


def wait_for(predicate: object, timeout: float, what: str) -> float:
    """Poll ``predicate()`` until true; the seconds it took."""
    assert callable(predicate)
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.5)
    return time.monotonic() - started


def n_restarts(tb: Testbed, host: str, unit: str) -> int:
    return int(tb.exec(host, ["systemctl", "show", "-p", "NRestarts", "--value", unit]).stdout.strip() or 0)


def test_kms_unreachable_across_a_restart_the_node_comes_back_by_itself(healing_cluster: HealingCluster) -> None:
    tb, kms, host = healing_cluster.testbed, healing_cluster.kms, "node2"
    cursor = journal_cursor(tb, host)
    restarts = n_restarts(tb, host, "mariadb.service")
    with tb.unreachable(host, kms.address):
        began = time.monotonic()
        tb.exec(host, ["systemctl", "restart", "--no-block", "mariadb"], check=True)
        wait_for(lambda: "unreachable" in journal_since(tb, host, cursor, UNWRAP_UNIT), 60, "a retried unwrap")
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - began)))
        # Still waiting, inside the same start: nothing runs, no key on the node, nothing failed.
        assert unit_state(tb, host, UNWRAP_UNIT) == "activating"
        assert not mariadbd_running(tb, host)
        assert not keyfile_present(tb, host)
        wait_synced(tb, "node1", 2)
    healed = time.monotonic()
    wait_synced(tb, host, 3, timeout=HEALED_WITHIN)
    took = time.monotonic() - healed
    log = journal_since(tb, host, cursor, UNWRAP_UNIT)
    assert "FAILED" not in log, log
    assert log.count("unreachable") >= 3, log  # retried several times over the 30 s
    assert "data key unwrapped into" in log
    assert n_restarts(tb, host, "mariadb.service") == restarts  # no unit restart did it
    assert took < HEALED_WITHIN
    print(f"node2 Synced {took:.1f}s after KMS answered again (outage {OUTAGE:.0f}s)")


def test_a_crash_while_kms_is_unreachable_restarts_with_the_key_held(healing_cluster: HealingCluster) -> None:
    tb, kms, host = healing_cluster.testbed, healing_cluster.kms, "node3"
    wait_synced(tb, host, 3)
    cursor = journal_cursor(tb, host)
    with tb.unreachable(host, kms.address):
        tb.exec(host, ["pkill", "-KILL", "-x", "mariadbd"], check=True)
        # systemd restarts it after RestartSec (15 s); galera_recovery and the IST join follow.
        wait_synced(tb, host, 3, timeout=120)
        assert keyfile_present(tb, host)
    log = journal_since(tb, host, cursor, UNWRAP_UNIT, "mariadb.service")
    assert "ended abnormally (signal)" in log, log
    assert "reusing the key this node holds; KMS not called" in log, log
    assert "unreachable" not in log and "FAILED" not in log, log


def test_control_a_requested_restart_does_call_kms(healing_cluster: HealingCluster) -> None:
    tb, host = healing_cluster.testbed, "node3"
    wait_synced(tb, host, 3)
    cursor = journal_cursor(tb, host)
    tb.exec(host, ["systemctl", "restart", "mariadb"], check=True, timeout=300)
    wait_synced(tb, host, 3)
    log = journal_since(tb, host, cursor, UNWRAP_UNIT)
    assert "data key unwrapped into" in log and "KMS not called" not in log, log


def test_a_start_right_after_a_stop_unwraps_afresh(healing_cluster: HealingCluster) -> None:
    tb, host = healing_cluster.testbed, "node3"
    wait_synced(tb, host, 3)
    cursor = journal_cursor(tb, host)
    tb.exec(host, ["systemctl", "stop", "mariadb"], check=True, timeout=300)
    assert not keyfile_present(tb, host)  # gone when the stop returns, whatever the unwrap unit's stop job does
    tb.exec(host, ["systemctl", "start", "mariadb"], check=True, timeout=300)
    wait_synced(tb, host, 3)
    log = journal_since(tb, host, cursor, UNWRAP_UNIT, "mariadb-kms-datadir-key.service", "mariadb.service")
    assert "data key unwrapped into" in log and "KMS not called" not in log, log


def test_a_disabled_key_still_refuses_at_once(healing_cluster: HealingCluster) -> None:
    tb, host = healing_cluster.testbed, "node2"
    key = healing_cluster.deployed.program  # its key_id and key_arn
    client = healing_cluster.kms.client()
    wait_synced(tb, host, 3)
    tb.exec(host, ["systemctl", "stop", "mariadb"], check=True, timeout=300)
    cursor = journal_cursor(tb, host)
    client.disable_key(KeyId=key.key_id)
    try:
        began = time.monotonic()
        result = tb.exec(host, ["systemctl", "start", "mariadb"], timeout=120)
        took = time.monotonic() - began
        assert result.rc != 0
        assert took < 30, f"a permanent cause took {took:.0f}s to refuse"
        # A start right after a stop finds the unwrap unit still active (its stop job cancelled), so the
        # refusal may come from mariadb.service's own ExecStartPre: either way, exactly one.
        log = journal_since(tb, host, cursor, UNWRAP_UNIT, "mariadb-kms-datadir-key.service", "mariadb.service")
        failures = [line for line in log.splitlines() if "FAILED" in line]
        assert len(failures) == 1 and f"FAILED cause=key-disabled key={key.key_arn}:" in failures[0], failures
        assert not mariadbd_running(tb, host) and not keyfile_present(tb, host)
    finally:
        client.enable_key(KeyId=key.key_id)
    join(tb, host, 3)
