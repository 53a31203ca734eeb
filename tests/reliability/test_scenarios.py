"""Faults under the bank-transfer workload, fastest first; each heals without a human, except where noted.

Every scenario asserts what must hold (no acknowledged write lost, no invariant violation, every node Synced
again within its bound) and records its figures (harness.RESULTS; docs/RELIABILITY.md has them).
Limits of this machine, stated rather than hidden: hosts are containers, so a "power loss" kills every
process of a host but not this machine's page cache (data a node wrote but never fsynced survives here,
where a real power cut would lose it); there is no netem qdisc, so packet loss is an nftables rule that
drops a random share and added delay is out of reach.
"""

from __future__ import annotations

import re
import threading
import time

from cluster_setup import (
    CREDENTIALS_MODE,
    FakeCredentials,
    in_parallel,
    journal_cursor,
    journal_since,
    keyfile_present,
)
from harness import HOSTS, ReliabilityCluster, Scenario, nft, nft_flush

from components.node_files import CREDENTIALS_PATH, UNWRAP_UNIT, render_credentials_file
from rehearsal.testbed import _kill_container

ONPREM = "node3"  # the node on "premises" for the partition, loss and credential scenarios
KMS_OUTAGE = 30.0
PARTITION = 60.0
LOSS_PERCENT = 20
LOSS_FOR = 60.0


def assert_whole(sc: Scenario) -> None:
    figures = sc.figures
    assert figures is not None
    assert figures.acknowledged > 0, "the workload acknowledged nothing"
    assert figures.acknowledged_lost == 0, f"acknowledged writes lost: {figures}"
    assert figures.invariant_violations == 0, f"invariant violated: {figures}"


def test_all_mariadbd_killed_at_once(reliability_cluster: ReliabilityCluster) -> None:
    tb = reliability_cluster.testbed
    with Scenario(reliability_cluster, "all mariadbd killed at once") as sc:
        in_parallel(HOSTS, lambda h: tb.exec(h, ["pkill", "-KILL", "-x", "mariadbd"]))
        sc.fault_over()
        sc.wait_all_synced()
        crash_restarts = [h for h in HOSTS
                          if "KMS not called" in journal_since(tb, h, sc.cursors[h], UNWRAP_UNIT)]
        sc.note(f"crash restarts that reused the held key without KMS: {len(crash_restarts)}/{len(HOSTS)}")
    assert_whole(sc)
    assert sc.healed_s is not None and sc.healed_s < 120


def test_kms_unreachable_across_a_restart_for_30s(reliability_cluster: ReliabilityCluster) -> None:
    tb, kms = reliability_cluster.testbed, reliability_cluster.kms
    with Scenario(reliability_cluster, f"KMS unreachable across a restart for {KMS_OUTAGE:.0f}s") as sc:
        with tb.unreachable(ONPREM, kms.address):
            began = time.monotonic()
            tb.exec(ONPREM, ["systemctl", "restart", "--no-block", "mariadb"], check=True)
            time.sleep(KMS_OUTAGE)
            assert tb.exec(ONPREM, ["pgrep", "-x", "mariadbd"]).rc == 1
            waited = time.monotonic() - began
        sc.fault_over()
        healed = sc.wait_all_synced()
        sc.note(f"{ONPREM} waited {waited:.0f}s for KMS inside one start; Synced {healed}s after KMS answered")
    assert_whole(sc)
    assert healed < 60
    assert "FAILED" not in journal_since(tb, ONPREM, sc.cursors[ONPREM], UNWRAP_UNIT)


def test_one_host_rebooted(reliability_cluster: ReliabilityCluster) -> None:
    tb, host = reliability_cluster.testbed, "node2"
    with Scenario(reliability_cluster, f"one host rebooted ({host}: tmpfs, keyfile and gcache lost)") as sc:
        tb.stop(host)
        sc.fault_over()  # timed from power-on: the boot, the unwrap and the join
        tb.start(host)  # mariadb.service is enabled: it unwraps and joins at boot
        sc.wait_all_synced()
        assert keyfile_present(tb, host)
    assert_whole(sc)


def test_onprem_node_partitioned_for_60s(reliability_cluster: ReliabilityCluster) -> None:
    tb = reliability_cluster.testbed
    others = ", ".join(reliability_cluster.address(h) for h in HOSTS if h != ONPREM)
    rules = f"""table inet fault {{
  chain in {{ type filter hook input priority 0; policy accept; ip saddr {{ {others} }} drop; }}
  chain out {{ type filter hook output priority 0; policy accept; ip daddr {{ {others} }} drop; }}
}}
"""
    with Scenario(reliability_cluster, f"on-prem node partitioned for {PARTITION:.0f}s") as sc:
        nft(tb, ONPREM, rules)
        try:
            time.sleep(PARTITION)
            from cluster_setup import wsrep_status

            majority = wsrep_status(tb, "node1")
            minority = wsrep_status(tb, ONPREM)
            sc.note(f"during: node1 {majority.get('wsrep_cluster_status')} of {majority.get('wsrep_cluster_size')}, "
                    f"{ONPREM} {minority.get('wsrep_cluster_status')}")
            assert majority.get("wsrep_cluster_status") == "Primary"
            assert minority.get("wsrep_cluster_status") != "Primary"
        finally:
            nft_flush(tb, ONPREM)
        sc.fault_over()
        sc.wait_all_synced()
    assert_whole(sc)


def test_packet_loss_on_the_onprem_link(reliability_cluster: ReliabilityCluster) -> None:
    tb = reliability_cluster.testbed
    others = ", ".join(reliability_cluster.address(h) for h in HOSTS if h != ONPREM)
    # No netem qdisc on this kernel: nftables drops a random share instead (no added delay possible).
    rules = f"""table inet fault {{
  chain in {{ type filter hook input priority 0; policy accept;
    ip saddr {{ {others} }} numgen random mod 100 < {LOSS_PERCENT} drop; }}
  chain out {{ type filter hook output priority 0; policy accept;
    ip daddr {{ {others} }} numgen random mod 100 < {LOSS_PERCENT} drop; }}
}}
"""
    with Scenario(reliability_cluster, f"{LOSS_PERCENT}% packet loss on the on-prem link for {LOSS_FOR:.0f}s") as sc:
        nft(tb, ONPREM, rules)
        try:
            time.sleep(LOSS_FOR)
        finally:
            nft_flush(tb, ONPREM)
        sc.fault_over()
        sc.wait_all_synced()
    assert_whole(sc)


def test_credentials_revoked_on_one_node(reliability_cluster: ReliabilityCluster) -> None:
    """Expected: the node refuses at once, naming the cause; a human issues a new key (timed runbook)."""
    rc = reliability_cluster
    tb, kms, user = rc.testbed, rc.kms, rc.users[ONPREM]
    with Scenario(rc, f"credentials revoked on {ONPREM}") as sc:
        kms.delete_access_key(user, rc.credentials[ONPREM].access_key_id)
        cursor = journal_cursor(tb, ONPREM)
        began = time.monotonic()
        result = tb.exec(ONPREM, ["systemctl", "restart", "mariadb"], timeout=300)
        refused = time.monotonic() - began
        assert result.rc != 0
        failed = [ln for ln in journal_since(tb, ONPREM, cursor, UNWRAP_UNIT).splitlines() if "FAILED" in ln]
        assert len(failed) == 1 and "cause=credentials-unrecognized" in failed[0], failed
        sc.note(f"{ONPREM} refused in {refused:.1f}s with one FAILED cause=credentials-unrecognized line")
        # The runbook: a new access key, written where the unwrap reads it, then a start.
        runbook = time.monotonic()
        fresh = FakeCredentials(*kms.new_access_key(user))
        rc.credentials[ONPREM] = fresh
        tb.put_file(ONPREM, CREDENTIALS_PATH,
                    render_credentials_file(fresh.access_key_id, fresh.secret_access_key), CREDENTIALS_MODE)
        tb.exec(ONPREM, ["systemctl", "start", "mariadb"], check=True, timeout=300)
        sc.fault_over()
        sc.wait_all_synced()
        sc.runbook_s = round(time.monotonic() - runbook, 1)
        sc.healed_s = None
    assert_whole(sc)


def test_power_loss_of_every_host(reliability_cluster: ReliabilityCluster) -> None:
    tb = reliability_cluster.testbed
    with Scenario(reliability_cluster, "power loss of every host") as sc:
        gvw = {h: tb.exec(h, ["test", "-f", "/var/lib/mysql/gvwstate.dat"]).rc == 0 for h in HOSTS}
        for host in HOSTS:
            pid = tb.hosts[host].nspawn_pid
            assert pid is not None
            _kill_container(pid)
        sc.fault_over()
        # Boot them together, as a site's power returns; booting waits for each host's units, and
        # mariadb.service waits for the others, so they are started in parallel.
        threads = [threading.Thread(target=tb.start, args=(h,)) for h in HOSTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sc.wait_all_synced()
        sc.note(f"gvwstate.dat before the cut on {sum(gvw.values())}/{len(HOSTS)} hosts; pc.recovery re-formed")
    assert_whole(sc)


RECOVERY = re.compile(r"^RECOVERY node=(\S+) primary=no position=(\S+):(-?\d+) safe_to_bootstrap=(\S+)", re.M)


def test_clean_shutdown_of_every_host_then_the_runbook(reliability_cluster: ReliabilityCluster) -> None:
    """Expected: no self-healing (a graceful stop deletes gvwstate.dat); the runbook is timed."""
    tb = reliability_cluster.testbed
    with Scenario(reliability_cluster, "clean shutdown of every host, then the runbook") as sc:
        in_parallel(HOSTS, tb.stop)
        threads = [threading.Thread(target=tb.start, args=(h,)) for h in HOSTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sc.fault_over()
        runbook = time.monotonic()
        reports = in_parallel(HOSTS, lambda h: tb.exec(h, ["mariadb-kms-recover", "--stop"], timeout=300))
        found = {}
        for host, result in reports.items():
            assert result.rc == 0, f"{host}: {result.stdout}{result.stderr}"
            match = RECOVERY.search(result.stdout)
            assert match, result.stdout
            found[host] = (int(match.group(3)), match.group(4) == "1")
            assert "gvwstate.dat: absent" in result.stdout
        chosen = max(HOSTS, key=lambda h: found[h])
        command = next(line.strip() for line in reports[chosen].stdout.splitlines()
                       if "galera_new_cluster" in line and not line.strip().startswith(("if", "(")))
        tb.exec(chosen, ["sh", "-c", command], check=True, timeout=300)
        for host in HOSTS:
            if host != chosen:
                tb.exec(host, ["systemctl", "start", "mariadb"], check=True, timeout=600)
        sc.wait_all_synced()
        sc.runbook_s = round(time.monotonic() - runbook, 1)
        sc.healed_s = None
        sc.note(f"bootstrapped {chosen} (seqno {found[chosen][0]}) with: {command}")
    assert_whole(sc)
