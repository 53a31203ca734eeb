"""Faults under the bank-transfer workload, fastest first; each heals without a human, except where noted.

The cluster is the rehearsal's (``harness.stand_up``): two "EC2" nodes in one Galera segment, one on-prem
node in another. "The on-prem link" is therefore the inter-segment link.

Every scenario asserts what must hold (no acknowledged write lost, no invariant violation, every node Synced
again within its bound) and records its figures (harness.RESULTS; docs/RELIABILITY.md has them).
Limits of this machine, stated rather than hidden: hosts are containers, so a "power loss" kills every
process of a host but not this machine's page cache (data a node wrote but never fsynced survives here,
where a real power cut would lose it); there is no netem qdisc on this kernel, so packet loss is an nftables
rule that drops a random share and added delay is out of reach.
"""

from __future__ import annotations

import re
import threading
import time

from harness import JOINER_LINE, SST_LINE, ReliabilityCluster, Scenario, in_parallel, nft, nft_flush

from components.node_files import UNWRAP_UNIT
from rehearsal.mariadb_on_host import journal_cursor, journal_since, keyfile_present, wsrep_status
from rehearsal.mariadb_on_host import stop as stop_mariadb
from rehearsal.testbed import _kill_container
from rehearsal.volumes import VOLUME_MOUNT

KMS_OUTAGE = 30.0
KMS_LONG_OUTAGE = 600.0
SELF_START_BOUND = 60.0  # a node starts by itself within this long of KMS answering again
PARTITION = 60.0
LOSS_PERCENT = 20
LOSS_FOR = 60.0
DISK_FULL_FOR = 60.0


def assert_whole(sc: Scenario) -> None:
    figures = sc.figures
    assert figures is not None
    assert figures.acknowledged > 0, "the workload acknowledged nothing"
    assert figures.acknowledged_lost == 0, f"acknowledged writes lost: {figures}"
    assert figures.invariant_violations == 0, f"invariant violated: {figures}"


def boot_together(cluster: ReliabilityCluster) -> None:
    """Boot every host at once, as a site's power returns: mariadb.service on each waits for the others."""
    # Bounded generously: a host's boot ends only once its MariaDB is up, and with pc.recovery that waits
    # for every member of the saved view.
    threads = [threading.Thread(target=cluster.testbed.start, args=(h, 600)) for h in cluster.hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_all_mariadbd_killed_at_once(reliability_cluster: ReliabilityCluster) -> None:
    rc = reliability_cluster
    tb = rc.testbed
    with Scenario(rc, "all mariadbd killed at once") as sc:
        in_parallel(rc.hosts, lambda h: tb.exec(h, ["pkill", "-KILL", "-x", "mariadbd"]))
        sc.fault_over()
        sc.wait_all_synced()
        crash_restarts = [h for h in rc.hosts
                          if "KMS not called" in journal_since(tb, h, sc.cursors[h], UNWRAP_UNIT)]
        sc.note(f"crash restarts that reused the held key without KMS: {len(crash_restarts)}/{len(rc.hosts)}")
    assert_whole(sc)
    assert sc.healed_s is not None and sc.healed_s < 120


def kms_outage_across_a_restart(rc: ReliabilityCluster, outage: float) -> Scenario:
    """KMS unreachable from the on-prem node while its MariaDB restarts; it must start by itself after."""
    tb, kms, host = rc.testbed, rc.kms, rc.onprem
    with Scenario(rc, f"KMS unreachable across a restart for {outage:.0f}s", max_duration=outage + 600) as sc:
        with tb.unreachable(host, kms.address):
            began = time.monotonic()
            tb.exec(host, ["systemctl", "restart", "--no-block", "mariadb"], check=True)
            time.sleep(outage)
            assert tb.exec(host, ["pgrep", "-x", "mariadbd"]).rc == 1, "mariadbd ran without KMS"
            waited = time.monotonic() - began
        sc.fault_over()
        assert sc.fault_over_at is not None
        while tb.exec(host, ["pgrep", "-x", "mariadbd"]).rc != 0:
            assert time.monotonic() - sc.fault_over_at < 300, f"{host}: mariadbd not started 300s after KMS"
            time.sleep(0.5)
        started = time.monotonic() - sc.fault_over_at
        # Catching up is IST of everything written meanwhile: 10 min of load measured 110925 write-sets,
        # applied in about 5 min on this machine. The bound is on the start, not on the catch-up.
        healed = sc.wait_all_synced(timeout=max(300.0, 1.5 * outage))
        unwrap = journal_since(tb, host, sc.cursors[host], UNWRAP_UNIT)
        sc.note(f"{host} waited {waited:.0f}s for KMS inside one start; mariadbd started {started:.1f}s and "
                f"every node Synced {healed}s after KMS answered")
    assert_whole(sc)
    assert started < SELF_START_BOUND
    assert "FAILED" not in unwrap
    return sc


def test_kms_unreachable_across_a_restart_for_30s(reliability_cluster: ReliabilityCluster) -> None:
    kms_outage_across_a_restart(reliability_cluster, KMS_OUTAGE)


def test_one_host_rebooted(reliability_cluster: ReliabilityCluster) -> None:
    rc = reliability_cluster
    tb, host = rc.testbed, rc.ec2[-1]
    with Scenario(rc, f"one host rebooted ({host}: tmpfs, keyfile and gcache lost)") as sc:
        tb.stop(host)
        sc.fault_over()  # timed from power-on: the boot, the unwrap and the join
        tb.start(host)  # mariadb.service is enabled: it unwraps and joins at boot
        sc.wait_all_synced()
        assert keyfile_present(tb, host)
    assert_whole(sc)


def segment_rules(rc: ReliabilityCluster, verdict: str) -> str:
    """nftables rules on the on-prem host for its traffic to and from the other segment."""
    others = ", ".join(rc.address(h) for h in rc.hosts if h != rc.onprem)
    return f"""table inet fault {{
  chain in {{ type filter hook input priority 0; policy accept; ip saddr {{ {others} }} {verdict}; }}
  chain out {{ type filter hook output priority 0; policy accept; ip daddr {{ {others} }} {verdict}; }}
}}
"""


def test_onprem_segment_partitioned_for_60s(reliability_cluster: ReliabilityCluster) -> None:
    rc = reliability_cluster
    tb = rc.testbed
    with Scenario(rc, f"on-prem segment partitioned for {PARTITION:.0f}s") as sc:
        nft(tb, rc.onprem, segment_rules(rc, "drop"))
        try:
            time.sleep(PARTITION)
            majority = wsrep_status(tb, rc.ec2[0])
            minority = wsrep_status(tb, rc.onprem)
            sc.note(f"during: {rc.ec2[0]} {majority.get('wsrep_cluster_status')} of "
                    f"{majority.get('wsrep_cluster_size')}, {rc.onprem} {minority.get('wsrep_cluster_status')}")
            assert majority.get("wsrep_cluster_status") == "Primary"
            assert minority.get("wsrep_cluster_status") != "Primary"
        finally:
            nft_flush(tb, rc.onprem)
        sc.fault_over()
        sc.wait_all_synced()
    assert_whole(sc)


def test_packet_loss_on_the_inter_segment_link(reliability_cluster: ReliabilityCluster) -> None:
    rc = reliability_cluster
    tb = rc.testbed
    # No netem qdisc on this kernel: nftables drops a random share instead (no added delay possible).
    rules = segment_rules(rc, f"numgen random mod 100 < {LOSS_PERCENT} drop")
    with Scenario(rc, f"{LOSS_PERCENT}% packet loss on the inter-segment link for {LOSS_FOR:.0f}s") as sc:
        nft(tb, rc.onprem, rules)
        try:
            time.sleep(LOSS_FOR)
        finally:
            nft_flush(tb, rc.onprem)
        sc.fault_over()
        sc.wait_all_synced()
    assert_whole(sc)


def test_credentials_revoked_on_one_node(reliability_cluster: ReliabilityCluster) -> None:
    """Expected: the node refuses at once, naming the cause; a human makes a new key (timed runbook)."""
    rc = reliability_cluster
    tb, kms, host = rc.testbed, rc.kms, rc.onprem
    with Scenario(rc, f"credentials revoked on {host}") as sc:
        kms.delete_access_key(rc.users[host], rc.credentials[host][0])
        cursor = journal_cursor(tb, host)
        began = time.monotonic()
        result = tb.exec(host, ["systemctl", "restart", "mariadb"], timeout=300)
        refused = time.monotonic() - began
        assert result.rc != 0
        failed = [ln for ln in journal_since(tb, host, cursor, UNWRAP_UNIT).splitlines() if "FAILED" in ln]
        assert len(failed) == 1 and "cause=credentials-unrecognized" in failed[0], failed
        sc.note(f"{host} refused in {refused:.1f}s with one FAILED cause=credentials-unrecognized line")
        # The runbook: a new access key, written where the unwrap reads it, then a start.
        runbook = time.monotonic()
        rc.write_credentials(host, kms.new_access_key(rc.users[host]))
        tb.exec(host, ["systemctl", "start", "mariadb"], check=True, timeout=300)
        sc.fault_over()
        sc.wait_all_synced()
        sc.runbook_s = round(time.monotonic() - runbook, 1)
        sc.healed_s = None
    assert_whole(sc)


def wait_for_donor(rc: ReliabilityCluster, joiner: str, timeout: float = 300) -> str:
    """The node that serves the joiner's SST, caught while it is Donor."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for host in rc.hosts:
            if host != joiner and wsrep_status(rc.testbed, host).get("wsrep_local_state_comment", "").startswith(
                    "Donor"):
                return host
        time.sleep(0.1)
    raise AssertionError(f"no node became the donor of {joiner}'s SST within {timeout:.0f}s")


def test_donor_killed_during_an_sst(reliability_cluster: ReliabilityCluster) -> None:
    rc = reliability_cluster
    tb, joiner = rc.testbed, rc.ec2[-1]
    with Scenario(rc, f"donor killed during an SST to {joiner}") as sc:
        stop_mariadb(tb, joiner)
        # An empty datadir is what makes Galera choose SST (a missing grastate.dat alone does not).
        tb.exec(joiner, ["find", "/var/lib/mysql", "-mindepth", "1", "-delete"], check=True)
        tb.exec(joiner, ["systemctl", "start", "--no-block", "mariadb"], check=True)
        donor = wait_for_donor(rc, joiner)
        tb.exec(donor, ["pkill", "-KILL", "-x", "mariadbd"], check=True)
        sc.fault_over()
        sc.wait_all_synced(timeout=600)
        log = sc.error_log(joiner)
        sc.note(f"donor {donor} killed mid-SST; {joiner} ran the joiner script {len(JOINER_LINE.findall(log))} "
                f"times and asked for a full copy {len(SST_LINE.findall(log))} times")
    assert_whole(sc)
    assert sc.figures is not None and sc.figures.state_transfer[joiner] == "SST"


FILL = f"{VOLUME_MOUNT}/reliability-fill"
# Every block root may take (the root-reserved share too); fallocate needs a few blocks for its own extent
# tree, so it steps down until it fits, and dd takes what is left. Printed: the blocks left for an
# unprivileged writer such as mysql (ext4 keeps a last reserve of up to 4096 clusters from root as well).
FILL_SCRIPT = f"""
set -u
n=$(( $(stat -f -c %f {VOLUME_MOUNT}) * $(stat -f -c %S {VOLUME_MOUNT}) ))
while [ "$n" -gt 0 ] && ! fallocate -l "$n" {FILL} 2>/dev/null; do n=$(( n - 1048576 )); done
dd if=/dev/zero of={FILL}.tail bs=4096 2>/dev/null || true
stat -f -c %a {VOLUME_MOUNT}
"""


def test_full_disk_on_one_nodes_data_volume(reliability_cluster: ReliabilityCluster) -> None:
    rc = reliability_cluster
    tb, host = rc.testbed, rc.onprem
    mounted = tb.exec(host, ["findmnt", "-n", "-o", "SIZE", "--mountpoint", VOLUME_MOUNT]).stdout.strip()
    assert mounted, f"{host}: {VOLUME_MOUNT} is not the data volume stand-in"
    with Scenario(rc, f"data volume full on {host} for {DISK_FULL_FOR:.0f}s") as sc:
        try:
            free = tb.exec(host, ["sh", "-c", FILL_SCRIPT], timeout=300).stdout.strip().splitlines()
            assert free and free[-1] == "0", f"{host}: {free} blocks still available on {VOLUME_MOUNT}"
            time.sleep(DISK_FULL_FOR)
            during = wsrep_status(tb, host)
            alive = tb.exec(host, ["pgrep", "-x", "mariadbd"]).rc == 0
            sc.note(f"{VOLUME_MOUNT} ({mounted}) full for {DISK_FULL_FOR:.0f}s: {host} mariadbd "
                    f"{'running' if alive else 'not running'}, "
                    f"{during.get('wsrep_local_state_comment', 'no answer')}")
        finally:
            tb.exec(host, ["rm", "-f", FILL, f"{FILL}.tail"], check=True)
        sc.fault_over()
        sc.wait_all_synced()
    assert_whole(sc)


def test_power_loss_of_every_host(reliability_cluster: ReliabilityCluster) -> None:
    rc = reliability_cluster
    tb = rc.testbed
    with Scenario(rc, "power loss of every host") as sc:
        gvw = {h: tb.exec(h, ["test", "-f", "/var/lib/mysql/gvwstate.dat"]).rc == 0 for h in rc.hosts}
        for host in rc.hosts:
            pid = tb.hosts[host].nspawn_pid
            assert pid is not None
            _kill_container(pid)
        sc.fault_over()
        boot_together(rc)
        sc.wait_all_synced()
        sc.note(f"gvwstate.dat before the cut on {sum(gvw.values())}/{len(rc.hosts)} hosts; pc.recovery re-formed")
    assert_whole(sc)


def test_kms_unreachable_across_a_restart_for_10min(reliability_cluster: ReliabilityCluster) -> None:
    kms_outage_across_a_restart(reliability_cluster, KMS_LONG_OUTAGE)


RECOVERY = re.compile(r"^RECOVERY node=(\S+) primary=no position=(\S+):(-?\d+) safe_to_bootstrap=(\S+)", re.M)


def test_clean_shutdown_of_every_host_then_the_runbook(reliability_cluster: ReliabilityCluster) -> None:
    """Expected: no self-healing (a graceful stop deletes gvwstate.dat); the runbook
    (docs/runbooks/outages.md, "Every host was shut down cleanly") is timed, command for command."""
    rc = reliability_cluster
    tb = rc.testbed
    with Scenario(rc, "clean shutdown of every host, then the runbook") as sc:
        in_parallel(rc.hosts, tb.stop)
        boot_together(rc)
        sc.fault_over()
        runbook = time.monotonic()
        # 1. On every node: mariadb-kms-recover --stop
        reports = in_parallel(rc.hosts, lambda h: tb.exec(h, ["mariadb-kms-recover", "--stop"], timeout=300))
        found = {}
        for host, result in reports.items():
            assert result.rc == 0, f"{host}: {result.stdout}{result.stderr}"
            match = RECOVERY.search(result.stdout)
            assert match, result.stdout
            found[host] = (int(match.group(3)), match.group(4) == "1")
            assert "gvwstate.dat: absent" in result.stdout
        # 2. The node with the highest seqno (safe_to_bootstrap on a tie): the bootstrap command it printed.
        chosen = max(rc.hosts, key=lambda h: found[h])
        command = next(line.strip() for line in reports[chosen].stdout.splitlines()
                       if "galera_new_cluster" in line and not line.strip().startswith(("if", "(")))
        tb.exec(chosen, ["sh", "-c", command], check=True, timeout=300)
        # 3. Every other node: systemctl start mariadb
        for host in rc.hosts:
            if host != chosen:
                tb.exec(host, ["systemctl", "start", "mariadb"], check=True, timeout=600)
        sc.wait_all_synced()
        sc.runbook_s = round(time.monotonic() - runbook, 1)
        sc.healed_s = None
        sc.note(f"bootstrapped {chosen} (seqno {found[chosen][0]}) with: {command}")
    assert_whole(sc)
