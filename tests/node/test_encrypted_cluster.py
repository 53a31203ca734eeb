"""A 3-node kms-envelope Galera cluster on real hosts, deployed by the program's own plan.

The module's fixture records the program (``__main__.py`` under the rehearsal's mocks, the KMS key and
the cluster data key made in the emulator) for an all-on-premises stack whose nodes are the testbed's
hosts, and runs its remote commands on them in the recorded order (``rehearsal/runner``): the puts, the
install, the one-time bootstrap on node1, then each node's TLS material, config, pre-flight and roll.
It holds the plan before node3's roll: a workload writes a marker through SQL (INSERT, UPDATE, InnoDB
and Aria), then node3's roll makes it join by SST (mariabackup copies the encrypted pages) and the
program's verification runs on every node. A held-open query then spills a sort and temporary tables
to files while they are read.

Tests that only look come first; tests that stop nodes or break the key restore what they broke, and
come last. The hosts' upper directories are scanned from this machine's side, so the proof that nothing
is in plaintext does not rest on mariadb-kms-verify's own scanner; a server with encryption off, run
through the same workload and the same scanners, shows that they find the marker when it is there.
"""

from __future__ import annotations

import json
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import release_hosts
from error_log import error_log_since
from plaintext_probe import (
    PROBE_DIR,
    WORKLOAD_ROWS,
    SpillObservation,
    backing_dir,
    datadir_digests,
    flush_to_disk,
    held_spill_scan,
    run_workload,
    scan_upper_dirs,
)

from components.node_files import BLOB_PATH, CREDENTIALS_PATH, KEYFILE_PATH, UNWRAP_UNIT
from node import mariadb_kms_verify as verify_tool
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import (
    join,
    journal_cursor,
    journal_since,
    keyfile_present,
    sql,
    start,
    stop,
    tmp_on_disk,
    wait_synced,
)
from rehearsal.runner import Deployment, ProgramStack, deploy, onprem_config
from rehearsal.testbed import Testbed

HOSTS = ("node1", "node2", "node3")
# Debian's own mariadb.service names `man mariadbd(8)` in Documentation=; minbase hosts have no man.
KNOWN_ANALYZE_NOISE = "Command 'man mariadbd(8)' failed"
# The step the fixture holds the plan before, so the workload is on the donor when node3 joins by SST.
LAST_JOIN = "node3-ssh-roll"


@dataclass
class Cluster:
    testbed: Testbed
    kms: KmsServer
    deployed: Deployment
    data_key: bytes = field(repr=False)  # the plaintext, from the emulator: what must never be at rest
    marker: str = field(repr=False)
    sst_journal: str = field(repr=False)  # node3's journal of its join
    spill: SpillObservation | None = None

    @property
    def key_arn(self) -> str:
        return self.deployed.program.key_arn

    @property
    def blob(self) -> bytes:
        return self.deployed.program.data_key_blob

    def secrets_to_find(self) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for node, (access_key_id, secret_access_key) in self.deployed.program.onprem_access_keys.items():
            found[f"{node} access key id"] = access_key_id.encode()
            found[f"{node} secret access key"] = secret_access_key.encode()
        return {
            **found,
            "data key (hex)": self.data_key.hex().encode(),
            "data key (raw)": self.data_key,
        }


@pytest.fixture(scope="module")
def cluster(testbed: Testbed, kms: KmsServer) -> Iterator[Cluster]:
    marker = f"mkcanary-{secrets.token_hex(12)}"
    try:
        for host in HOSTS:
            tmp_on_disk(testbed, host)
        config = onprem_config(testbed, HOSTS, gcacheSize="64M")
        # node1 bootstrapped and node2 joined by the program's steps; node3 installed, not yet started.
        deployed = deploy(testbed, ProgramStack(kms), config, stop_before=LAST_JOIN)
        assert LAST_JOIN in deployed.pending and "cluster-bootstrap" in deployed.done
        run_workload(testbed, "node1", marker)
        cursor = journal_cursor(testbed, "node3")
        deployed.run()  # node3's roll (a join by SST), then the program's verification on every node
        data_key = kms.client().decrypt(
            CiphertextBlob=deployed.program.data_key_blob, EncryptionContext=deployed.program.encryption_context
        )["Plaintext"]
        built = Cluster(
            testbed, kms, deployed, data_key, marker,
            sst_journal=journal_since(testbed, "node3", cursor, "mariadb.service") + error_log_since(testbed, "node3"),
        )  # fmt: skip
        built.spill = held_spill_scan(testbed, "node1", marker)
        yield built
    finally:
        release_hosts(testbed, HOSTS)


def verify_report(testbed: Testbed, host: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = testbed.exec(host, ["mariadb-kms-verify", *args], timeout=600)
    assert result.stdout.strip(), f"{host}: mariadb-kms-verify printed no report: {result.stderr[-2000:]}"
    return result.rc, json.loads(result.stdout)


def captured(testbed: Testbed, host: str, argv: list[str]) -> bytes:
    """A command's stdout as bytes (through a root-only file on tmpfs: exec() decodes, which would mangle)."""
    out = f"{PROBE_DIR}/captured.out"
    testbed.exec(host, ["install", "-d", "-m", "0700", PROBE_DIR], check=True)
    testbed.exec(host, ["sh", "-c", 'umask 077; "$@" > ' + out, "captured", *argv], check=True, timeout=120)
    try:
        return testbed.read_file(host, out)
    finally:
        testbed.exec(host, ["rm", "-f", out])


def causal(statements: str) -> str:
    """Read after every write the cluster has committed (Galera applies asynchronously)."""
    return "SET SESSION wsrep_sync_wait = 1;\n" + statements


def table_state(testbed: Testbed, host: str) -> str:
    """The row count and content checksum of workload.items, as this node sees it."""
    return sql(testbed, host, causal("SELECT COUNT(*) FROM workload.items; CHECKSUM TABLE workload.items;"))


# --------------------------------------------------------------------------
# Looking only
# --------------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify(cluster: Cluster) -> None:
    tb = cluster.testbed
    units = [UNWRAP_UNIT, "run-galera.mount", "mariadb-kms-imds-guard.service", "mariadb.service"]
    result = tb.exec("node1", ["systemd-analyze", "verify", *units])
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if line and KNOWN_ANALYZE_NOISE not in line
    ]
    assert complaints == []
    # Control: systemd-analyze warns (with exit status 0) about a broken unit, so the output is what counts.
    tb.put_file("node1", f"{PROBE_DIR}/broken.service", "[Service]\nExecStart=/bin/true\nNoSuchKey=1\n")
    broken = tb.exec("node1", ["systemd-analyze", "verify", f"{PROBE_DIR}/broken.service"])
    assert "NoSuchKey" in broken.stdout + broken.stderr


def test_every_node_is_synced_and_verify_passes_with_aria_tables_encrypted(cluster: Cluster) -> None:
    deployed = cluster.deployed
    by_host = {deployed.outcomes[name].node: name for name in deployed.program.verification_commands}
    assert sorted(by_host) == list(HOSTS)
    for host in HOSTS:
        wait_synced(cluster.testbed, host, 3)
        at_deploy = json.loads(deployed.report(by_host[host]))  # the program's verification, as the plan ran it
        assert (at_deploy["ok"], at_deploy["gaps"]) == (True, []), f"{host}: {at_deploy['gaps']}"
    # The same recorded commands again, now that the workload, node3's SST and the spill are behind us.
    again = deployed.rerun([by_host[host] for host in HOSTS])
    for host, outcome in zip(HOSTS, again, strict=True):
        report = json.loads(outcome.stdout)
        assert (outcome.rc, report["gaps"]) == (0, []), f"{host}: {report['gaps']}"
        assert report["ok"] is True
        assert report["galera"]["cluster_size"] == 3 and report["galera"]["local_state"] == "Synced"
        aria = report["aria"]
        labels = {t["table"] for t in aria["each"]}
        assert {"mysql.global_priv", "mysql.db", "workload.notes"} <= labels, labels
        assert [t["table"] for t in aria["each"] if t["encrypted"] is not True] == []
        assert report["innodb"]["encrypted"] == report["innodb"]["tablespaces"] > 0
        canary = report["canary"]
        assert canary["found_in"] == [] and canary["innodb_flushed"] is True
        assert canary["files_scanned"] > 0 and "/var/lib/mysql" in canary["roots"]


def test_node3_joined_by_sst_and_holds_every_row(cluster: Cluster) -> None:
    assert "wsrep_sst_mariabackup --role 'joiner'" in cluster.sst_journal
    assert "(node3) complete" in cluster.sst_journal  # "<donor>: State transfer to <n> (node3) complete."
    expected = table_state(cluster.testbed, "node1")
    assert expected.split("\n", 1)[0] == str(WORKLOAD_ROWS)
    assert table_state(cluster.testbed, "node3") == expected


def test_spilled_sort_and_temporary_tables_leave_no_plaintext_while_open(cluster: Cluster) -> None:
    spill = cluster.spill
    assert spill is not None
    assert spill.tmpdir_fstype not in ("tmpfs", "ramfs", ""), f"tmpdir {spill.tmpdir} is not on disk"
    assert spill.counters["Sort_merge_passes"] > 0, spill.counters
    # The sort file holds every row's payload (about 80 bytes each): the rows did go to disk.
    assert max((f.size for f in spill.open_tmp), default=0) > WORKLOAD_ROWS * 50, spill.open_tmp
    assert any("#sql-temptable" in f.target for f in spill.open_tmp), "the Aria temporary table has no file"
    assert any(f.target.endswith("/ib_logfile0") for f in spill.open_data)
    assert spill.marker_in == []


def test_no_persistent_file_of_any_host_holds_the_canary_the_key_or_a_secret(cluster: Cluster) -> None:
    tb = cluster.testbed
    for host in HOSTS:
        flush_to_disk(tb, host)
    scan = scan_upper_dirs(tb, {"canary": cluster.marker.encode(), **cluster.secrets_to_find()})
    for host in HOSTS:
        # The scan covered what the server writes: data, redo and undo, binlog, Aria, the journal.
        for path in (
            "var/lib/mysql/ibdata1",
            "var/lib/mysql/ib_logfile0",
            "var/lib/mysql/workload/items.ibd",
            "var/lib/mysql/workload/notes.MAD",
            "var/lib/mysql/aria_log.00000001",
        ):
            assert f"{host}:/{path}" in scan.scanned, f"{host}:/{path} was not scanned"
        assert any(p.startswith(f"{host}:/var/lib/mysql/mariadb-bin.0") for p in scan.scanned)
        assert any(p.startswith(f"{host}:/var/log/journal/") for p in scan.scanned)
    assert scan.hits["canary"] == []
    # These datadirs are not encrypted by the kernel: MariaDB may leave the marker's text, from freed memory,
    # in the unused part of an encrypted Aria index page. Only there, and only in .MAI files; never a key.
    assert all(p.endswith(".MAI") for p in scan.aria_index_slack["canary"]), scan.aria_index_slack
    assert scan.hits["data key (hex)"] == [] and scan.hits["data key (raw)"] == []
    assert scan.aria_index_slack["data key (hex)"] == [] and scan.aria_index_slack["data key (raw)"] == []
    # Each node's credentials are at rest in exactly one file, on that node only: the root-only file the
    # unwrap reads (every node has a key of its own).
    for h in HOSTS:
        assert scan.hits[f"{h} access key id"] == [f"{h}:{CREDENTIALS_PATH}"]
        assert scan.hits[f"{h} secret access key"] == [f"{h}:{CREDENTIALS_PATH}"]


def test_real_aria_index_pages_state_a_used_length_the_slack_rule_can_rest_on(cluster: Cluster) -> None:
    """The layout behind the rule that tells index-page slack from a leak, on real encrypted index pages:
    every page of workload.notes states, where the rule reads it, a used length inside the page that its keys
    (200 INT ids) account for; read where an unencrypted page keeps it, the same pages say nothing sensible.
    Galera does not replicate Aria rows, so only node1, where the workload wrote them, has index pages (node3,
    which joined by SST, has its copy)."""
    tb = cluster.testbed
    for host in ("node1", "node3"):
        flush_to_disk(tb, host)
        data = (backing_dir(tb, host, "/var/lib/mysql") / "workload" / "notes.MAI").read_bytes()
        header = verify_tool.parse_aria_header(data)
        assert (header.encrypted, header.transactional, header.block_size) == (True, False, 8192), host
        pages = range(header.keystart, len(data), header.block_size)
        used = [struct.unpack_from(">H", data, p + header.keypage_header - 2)[0] for p in pages]
        assert used and all(header.keypage_header < u < header.block_size - 4 for u in used), (host, used)
        assert sum(used) >= 200 * 4, (host, used)
        plain_offset = 4 - 2  # key id, flag, then the used length: no LSN or key version before it
        wrong = [struct.unpack_from(">H", data, p + plain_offset)[0] for p in pages]
        assert wrong != used, (host, wrong)


def test_control_without_encryption_every_scanner_finds_the_canary(cluster: Cluster) -> None:
    """The same workload on a server with encryption off, on node1: each scanner must find the marker."""
    tb, host = cluster.testbed, "node1"
    marker = f"mkcontrol-{secrets.token_hex(12)}"
    unit, socket = "mariadb-kms-test-plain", "/run/mysqld/plain.sock"
    client = ["--socket", socket]
    cnf = (
        "[mariadb]\ndatadir = /var/lib/mysql-plain\n"
        f"socket = {socket}\npid_file = /run/mysqld/plain.pid\nskip_networking\n"
        "log_bin = plain-bin\nbinlog_format = ROW\ninnodb_buffer_pool_size = 64M\n"
    )
    tb.put_file(host, "/etc/mariadb-kms-test/plain.cnf", cnf)
    tb.put_file(host, "/usr/local/bin/mariadb-plain", f'#!/bin/sh\nexec mariadb --socket={socket} "$@"\n', 0o755)
    try:
        tb.exec(host, ["mariadb-install-db", "--defaults-file=/etc/mariadb-kms-test/plain.cnf", "--user=mysql",
                       "--skip-test-db"], check=True, timeout=300)  # fmt: skip
        tb.exec(host, ["systemd-run", f"--unit={unit}", "-p", "User=mysql", "-p", "Type=notify",
                       "/usr/sbin/mariadbd", "--defaults-file=/etc/mariadb-kms-test/plain.cnf"],
                check=True, timeout=120)  # fmt: skip
        run_workload(tb, host, marker, client)
        spill = held_spill_scan(tb, host, marker, server_unit=unit, client_args=client)
        assert spill.counters["Sort_merge_passes"] > 0
        assert [f for f in spill.open_tmp if f.marker], spill.open_tmp

        rc, report = verify_report(tb, host, "--canary", "--client", "/usr/local/bin/mariadb-plain")
        assert rc == 1
        found = report["canary"]["found_in"]
        assert any(p.startswith("/var/lib/mysql-plain/") for p in found), found
        assert [t["table"] for t in report["aria"]["each"] if t["encrypted"]] == []

        scan = scan_upper_dirs(tb, {"control": marker.encode()}, hosts=[host])
        hits = set(scan.hits["control"])
        for path in ("workload/items.ibd", "workload/notes.MAD", "ib_logfile0", "plain-bin.000001"):
            assert f"{host}:/var/lib/mysql-plain/{path}" in hits, sorted(hits)
    finally:
        tb.exec(host, ["systemctl", "stop", unit], timeout=120)
        tb.exec(host, ["rm", "-rf", "/var/lib/mysql-plain", "/etc/mariadb-kms-test", "/usr/local/bin/mariadb-plain"])


def test_no_aws_credentials_reach_mariadbd_systemctl_show_or_the_journal(cluster: Cluster) -> None:
    tb = cluster.testbed
    for host in HOSTS:
        access_key_id, secret_access_key = cluster.deployed.program.onprem_access_keys[host]
        creds_file = tb.read_file(host, CREDENTIALS_PATH)  # control: the needles are what the node holds
        assert access_key_id.encode() in creds_file and secret_access_key.encode() in creds_file
        assert tb.exec(host, ["stat", "-c", "%a %U:%G", CREDENTIALS_PATH]).stdout.split() == ["600", "root:root"]

        pid = tb.exec(host, ["systemctl", "show", "-p", "MainPID", "--value", "mariadb"]).stdout.strip()
        assert pid not in ("", "0")
        assert tb.exec(host, ["cat", f"/proc/{pid}/cmdline"]).stdout.startswith("/usr/sbin/mariadbd")
        environ = tb.read_file(host, f"/proc/{pid}/environ")
        variables = [item.split(b"=", 1)[0] for item in environ.split(b"\0") if item]
        assert b"PATH" in variables  # control: the environment was read
        assert [v for v in variables if v.startswith(b"AWS_")] == []

        show = captured(tb, host, ["systemctl", "show", "mariadb", UNWRAP_UNIT])
        assert b"ExecStart=" in show and b"AWS_" not in show
        journal = captured(tb, host, ["journalctl", "--no-pager", "-o", "export"])
        assert b"data key unwrapped into" in journal  # control: the unwrap's messages are in what we search
        for what, data in (("environ", environ), ("systemctl show", show), ("journal", journal)):
            leaked = [name for name, needle in cluster.secrets_to_find().items() if needle in data]
            assert leaked == [], f"{host}: {what} holds the {', '.join(leaked)}"


# --------------------------------------------------------------------------
# Stopping nodes and breaking the key (each test restores what it broke)
# --------------------------------------------------------------------------


def test_restarted_node_unwraps_the_key_again_and_rejoins(cluster: Cluster) -> None:
    tb, host = cluster.testbed, "node1"  # the bootstrap node: a restart joins, it never bootstraps again
    cursor = journal_cursor(tb, host)
    stop(tb, host)
    assert not keyfile_present(tb, host), (
        "the keyfile outlived MariaDB:\n" + journal_since(tb, host, cursor, UNWRAP_UNIT, "mariadb.service")[-3000:]
    )
    assert tb.exec(host, ["systemctl", "is-active", UNWRAP_UNIT]).stdout.strip() == "inactive", (
        journal_since(tb, host, cursor, UNWRAP_UNIT, "mariadb.service")[-3000:]
    )
    wait_synced(tb, "node2", 2)
    join(tb, host, 3)
    assert keyfile_present(tb, host)
    assert tb.exec(host, ["stat", "-c", "%a %U", KEYFILE_PATH]).stdout.split() == ["600", "mysql"]
    assert tb.exec(host, ["findmnt", "-n", "-o", "FSTYPE", "--target", KEYFILE_PATH]).stdout.strip() == "tmpfs"
    # A requested stop removes the key inside mariadb.service's own stop (its ExecStopPost), before the
    # unwrap unit's stop, which then has nothing left to remove.
    unwrap_log = journal_since(tb, host, cursor, UNWRAP_UNIT, "mariadb.service")
    removed = unwrap_log.find(f"{KEYFILE_PATH} removed")
    unwrapped = unwrap_log.find(f"data key unwrapped into {KEYFILE_PATH}")
    assert 0 <= removed < unwrapped, unwrap_log
    for other in ("node2", "node3"):
        wait_synced(tb, other, 3)
    assert table_state(tb, host) == table_state(tb, "node2")


def assert_refuses_to_start(cluster: Cluster, host: str, cause: str) -> None:
    """``systemctl start mariadb`` fails at the unwrap, naming the cause and the key, and touches nothing."""
    tb = cluster.testbed
    digests = datadir_digests(tb, host)
    assert any(name.endswith(".ibd") for name in digests) and "ibdata1" in digests
    cursor = journal_cursor(tb, host)
    result = start(tb, host)
    assert result.rc != 0, f"{host}: MariaDB started although the unwrap should fail ({cause})"
    assert tb.exec(host, ["systemctl", "is-active", "mariadb"]).stdout.strip() != "active"
    assert tb.exec(host, ["systemctl", "show", "-p", "MainPID", "--value", "mariadb"]).stdout.strip() == "0"
    assert tb.exec(host, ["pgrep", "-x", "mariadbd"]).rc == 1, f"{host}: a mariadbd runs"
    assert not keyfile_present(tb, host)
    failures = [line for line in journal_since(tb, host, cursor, UNWRAP_UNIT).splitlines() if "FAILED" in line]
    assert len(failures) == 1, failures
    assert f"FAILED cause={cause} key={cluster.key_arn}:" in failures[0]
    assert "MariaDB will not start" in failures[0]
    assert datadir_digests(tb, host) == digests, f"{host}: the datadir changed although MariaDB never started"


def test_kms_unreachable_node_waits_unencrypted_never_then_rejoins_with_every_row(cluster: Cluster) -> None:
    tb, host = cluster.testbed, "node2"
    stop(tb, host)
    cursor = journal_cursor(tb, host)
    with tb.unreachable(host, cluster.kms.address):
        # The unwrap waits for KMS inside its start (tests/node/test_self_healing.py times the healing).
        tb.exec(host, ["systemctl", "start", "--no-block", "mariadb"], check=True)
        sql(tb, "node1", "INSERT INTO workload.items (payload, n) "
                         "SELECT CONCAT('while-node2-was-down-', seq), seq FROM workload.seq_1_to_500;")  # fmt: skip
        deadline = time.monotonic() + 60
        while "unreachable" not in journal_since(tb, host, cursor, UNWRAP_UNIT) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "unreachable" in journal_since(tb, host, cursor, UNWRAP_UNIT)
        assert tb.exec(host, ["pgrep", "-x", "mariadbd"]).rc == 1, f"{host}: a mariadbd runs without its key"
        assert not keyfile_present(tb, host)
    wait_synced(tb, host, 3)
    expected = table_state(tb, "node1")
    assert expected.split("\n", 1)[0] == str(WORKLOAD_ROWS + 500)
    assert table_state(tb, host) == expected


def test_corrupt_blob_refuses_to_start_and_is_left_as_it_was(cluster: Cluster) -> None:
    tb, host = cluster.testbed, "node3"
    stop(tb, host)
    corrupt = cluster.blob[:-1] + bytes([cluster.blob[-1] ^ 0xFF])  # the AES-GCM ciphertext's last byte
    tb.put_file(host, BLOB_PATH, corrupt, 0o600)
    try:
        assert_refuses_to_start(cluster, host, "invalid-ciphertext")
        assert tb.read_file(host, BLOB_PATH) == corrupt
        assert tb.exec(host, ["stat", "-c", "%a %U", BLOB_PATH]).stdout.split() == ["600", "root"]
    finally:
        tb.put_file(host, BLOB_PATH, cluster.blob, 0o600)
    join(tb, host, 3)
    assert table_state(tb, host) == table_state(tb, "node1")


def test_disabled_key_refuses_to_start_and_the_node_returns_once_enabled(cluster: Cluster) -> None:
    tb, host = cluster.testbed, "node3"
    kms = cluster.kms.client()
    stop(tb, host)
    kms.disable_key(KeyId=cluster.deployed.program.key_id)  # moto wants the bare key id here, not the ARN
    try:
        assert kms.describe_key(KeyId=cluster.key_arn)["KeyMetadata"]["KeyState"] == "Disabled"
        assert_refuses_to_start(cluster, host, "key-disabled")
        assert tb.read_file(host, BLOB_PATH) == cluster.blob
    finally:
        kms.enable_key(KeyId=cluster.deployed.program.key_id)
    join(tb, host, 3)
    for other in HOSTS:
        wait_synced(tb, other, 3)
    assert table_state(tb, host) == table_state(tb, "node1")
