"""A backup taken under writes on one host restores on another: mariadb-kms-backup and mariadb-kms-restore.

node1 runs a single-node kms-envelope cluster, deployed by the program's own plan (``rehearsal/runner``).
node2 is deployed the same way as a one-node stack of its own that uses node1's KMS key (as a restore
stack would be pointed at it), so it has a data key of its own (another blob of the same KMS key); its
plan stops before the bootstrap, so it is installed and configured but never started. A client writes
to node1 for the whole backup. The backup is copied to node2 file by file (read from node1, written to
node2: no shared disk) and restored there as a new single-node cluster with a restore identity of its own. Then:

- every row the backup holds is the same on both hosts (count and checksum up to the last row restored),
  and that last row was written while the backup ran;
- the tables the workload wrote before the backup are equal (CHECKSUM TABLE);
- the canary the workload wrote appears in no backup file except those the manifest lists as stored in
  plaintext (MariaDB cannot encrypt them), and those hits are reported; a table comment puts it into a
  .frm on purpose, so the scan must find it there.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import release_hosts
from plaintext_probe import flush_to_disk, run_workload

from components.node_files import BLOB_PATH, UNWRAP_CONF_PATH, render_credentials_file
from components.plan.order import ESCROW_BLOB, ESCROW_DIR, ESCROW_UNWRAP_CONF, escrow_command
from rehearsal.aws_values import random_secret_access_key
from rehearsal.emulator import generated_access_key_id
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import sql, wait_synced
from rehearsal.runner import Deployment, ProgramStack, deploy, onprem_config
from rehearsal.testbed import ExecResult, Testbed

SOURCE, RESTORE = "node1", "node2"
TARGET = "/srv/backups"
NAME = "rehearsed"
COPY = "/root/restore-from"
RESTORE_CREDS = "/root/restore.creds"
WRITE_SECONDS = 45
BOOTSTRAP = "cluster-bootstrap"


@dataclass(frozen=True)
class ClusterKey:
    key_arn: str
    blob: bytes  # the cluster data key's CiphertextBlob, as the program stores it


@dataclass
class Rehearsal:
    testbed: Testbed
    source: Deployment
    key: ClusterKey
    marker: str = field(repr=False)
    backup: ExecResult
    restore: ExecResult
    manifest: dict[str, object]
    files: dict[str, bytes] = field(repr=False)
    ticks_before_backup: int
    ticks_final: int


def _writer(testbed: Testbed, stop_after: float, errors: list[str]) -> None:
    # One client session fed INSERTs for the whole window: a steady write load.
    script = (
        f"end=$((SECONDS+{int(stop_after)})); "  # noqa: S608 - constant SQL
        "while [ $SECONDS -lt $end ]; do echo \"INSERT INTO bank.ticks (v) VALUES (SHA2(RAND(), 256));\"; done "
        "| mariadb --batch"
    )
    result = testbed.exec(SOURCE, ["bash", "-c", script], timeout=stop_after + 120)
    if result.rc != 0:
        errors.append(result.stderr[-2000:])


def _count(testbed: Testbed, host: str) -> int:
    return int(sql(testbed, host, "SELECT COALESCE(MAX(id), 0) FROM bank.ticks;").strip())


@pytest.fixture(scope="module")
def rehearsal(testbed: Testbed, kms: KmsServer) -> Iterator[Rehearsal]:
    source_stack = ProgramStack(kms)
    marker = f"bkcanary-{secrets.token_hex(12)}"
    try:
        source = deploy(testbed, source_stack, onprem_config(testbed, [SOURCE], gcacheSize="64M"))
        key = ClusterKey(source.program.key_arn, source.program.data_key_blob)
        restore_stack = ProgramStack(kms)
        # The restore stack takes the source's KMS key as its own (what the engine would find in the state
        # of a stack that imported it); its data key, made under that key, is its own.
        restore_stack.kept.update({k: v for k, v in source_stack.kept.items() if k[0] == "kms_key"})
        restored = deploy(testbed, restore_stack, onprem_config(testbed, [RESTORE], gcacheSize="64M"),
                          stop_before=BOOTSTRAP)
        assert BOOTSTRAP in restored.pending
        # The restore must use the backup's data key, not this one.
        assert restored.program.key_arn == key.key_arn and restored.program.data_key_blob != key.blob
        run_workload(testbed, SOURCE, marker)
        # Where MariaDB cannot encrypt: a table definition (.frm) carrying the canary in a comment.
        sql(testbed, SOURCE, f"CREATE TABLE workload.described (id INT PRIMARY KEY) ENGINE=InnoDB "
            f"COMMENT '{marker}-in-frm';")
        sql(testbed, SOURCE, "CREATE DATABASE bank; CREATE TABLE bank.ticks "
            "(id BIGINT AUTO_INCREMENT PRIMARY KEY, v CHAR(64) NOT NULL) ENGINE=InnoDB;")
        flush_to_disk(testbed, SOURCE)

        errors: list[str] = []
        writer = threading.Thread(target=_writer, args=(testbed, WRITE_SECONDS, errors))
        writer.start()
        time.sleep(5)
        before = _count(testbed, SOURCE)
        backup = testbed.exec(SOURCE, ["mariadb-kms-backup", "--target", TARGET, "--name", NAME], timeout=900)
        writer.join()
        assert not errors, errors
        assert backup.rc == 0, backup.stdout[-3000:] + backup.stderr[-3000:]
        final = _count(testbed, SOURCE)

        # Carried to the restore host file by file, as bytes.
        listing = testbed.exec(SOURCE, ["find", f"{TARGET}/{NAME}", "-type", "f", "-printf", "%P\\n"], check=True)
        files = {rel: testbed.read_file(SOURCE, f"{TARGET}/{NAME}/{rel}") for rel in listing.stdout.split()}
        for rel, data in files.items():
            testbed.put_file(RESTORE, f"{COPY}/{rel}", data, 0o600)
        manifest = json.loads(files["manifest.json"])

        # The restore principal's own access key (moto accepts any); root 0600 like every credentials file.
        testbed.put_file(
            RESTORE, RESTORE_CREDS,
            render_credentials_file(generated_access_key_id(), random_secret_access_key())
            .replace("[mariadb-kms]", "[restore]"),
            0o600,
        )  # fmt: skip
        restore = testbed.exec(
            RESTORE,
            ["mariadb-kms-restore", "--from", COPY, "--credentials-file", RESTORE_CREDS, "--profile", "restore",
             "--endpoint-url", kms.endpoint_url, "--replace-datadir", "--bootstrap"],
            timeout=900,
        )
        assert restore.rc == 0, restore.stdout[-3000:] + restore.stderr[-3000:]
        wait_synced(testbed, RESTORE, 1)
        yield Rehearsal(testbed, source, key, marker, backup, restore, manifest, files, before, final)
    finally:
        for host in (SOURCE, RESTORE):
            testbed.exec(host, ["rm", "-rf", TARGET, COPY, RESTORE_CREDS])
        release_hosts(testbed, (SOURCE, RESTORE))


def test_the_backup_was_taken_under_writes_and_every_row_it_holds_is_restored(rehearsal: Rehearsal) -> None:
    t = rehearsal.testbed
    restored_last = _count(t, RESTORE)
    assert rehearsal.ticks_before_backup < restored_last < rehearsal.ticks_final, (
        "the backup's last row must be one written while the backup ran",
        rehearsal.ticks_before_backup, restored_last, rehearsal.ticks_final,
    )
    query = f"SELECT COUNT(*), SUM(CRC32(CONCAT(id, ':', v))) FROM bank.ticks WHERE id <= {restored_last};"  # noqa: S608
    assert sql(t, RESTORE, query) == sql(t, SOURCE, query)


def test_the_tables_written_before_the_backup_are_equal(rehearsal: Rehearsal) -> None:
    t = rehearsal.testbed
    tables = sql(t, SOURCE, "SELECT CONCAT(table_schema, '.', table_name) FROM information_schema.tables "
                 "WHERE table_schema = 'workload';").split()
    assert tables
    statement = "".join(f"SELECT COUNT(*) FROM {t}; CHECKSUM TABLE {t};" for t in tables)  # noqa: S608
    assert sql(t, RESTORE, statement) == sql(t, SOURCE, statement)


def test_the_restored_host_runs_under_the_backups_data_key(rehearsal: Rehearsal) -> None:
    t = rehearsal.testbed
    assert t.read_file(RESTORE, BLOB_PATH) == rehearsal.key.blob
    assert rehearsal.files["datakey.blob"] == rehearsal.key.blob
    assert sql(t, RESTORE, "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size';").split() == ["wsrep_cluster_size", "1"]


def test_the_manifest_records_position_version_and_key(rehearsal: Rehearsal) -> None:
    m = rehearsal.manifest
    assert m["key_arn"] == rehearsal.key.key_arn
    assert re.fullmatch(r"\d+-\d+-\d+", str(m["gtid"])), m["gtid"]
    assert str(m["galera_seqno"]).isdigit() and int(str(m["galera_seqno"])) > 0
    assert str(m["mariadb_version"]).startswith("10.11.")
    assert set(m["files"]) == set(rehearsal.files) - {"manifest.json"}  # type: ignore[arg-type]


def test_the_canary_is_only_where_mariadb_cannot_encrypt(rehearsal: Rehearsal) -> None:
    needle = rehearsal.marker.encode()
    hits = sorted(rel for rel, data in rehearsal.files.items() if needle in data)
    allowed = set(rehearsal.manifest["plaintext_files"])  # type: ignore[arg-type]
    print(f"backup files holding the canary (MariaDB does not encrypt them): {hits}")
    assert set(hits) <= allowed, f"canary in an encrypted file: {sorted(set(hits) - allowed)}"
    # Control: the scan finds it where it is in clear, and the manifest lists that file as plaintext.
    assert "data/workload/described.frm" in hits
    assert not [h for h in hits if h.endswith((".ibd", ".MAD", ".MAI")) or "ibdata" in h or "ib_logfile" in h]


def test_control_the_scan_finds_the_canary_in_the_restored_plaintext(rehearsal: Rehearsal) -> None:
    # The rows are there in clear once read through the server: the byte scan above could see them.
    like = f"'%{rehearsal.marker}%'"  # a generated hex token
    out = sql(rehearsal.testbed, RESTORE, f"SELECT COUNT(*) FROM workload.items WHERE payload LIKE {like};")  # noqa: S608
    assert int(out.strip()) > 0


def test_the_escrow_step_copies_the_blob_beside_the_datadir_on_a_real_host(rehearsal: Rehearsal) -> None:
    # The program's escrow step ran in the plan; its create string is escrow_command's.
    t = rehearsal.testbed
    escrow = rehearsal.source.program.names(node=SOURCE, step="escrow")
    assert len(escrow) == 1 and escrow_command() in rehearsal.source.program.command(escrow[0]).create
    assert rehearsal.source.outcomes[escrow[0]].stdout.count("escrowed ") == 2
    assert t.read_file(SOURCE, ESCROW_BLOB) == t.read_file(SOURCE, BLOB_PATH) == rehearsal.key.blob
    assert t.read_file(SOURCE, ESCROW_UNWRAP_CONF) == t.read_file(SOURCE, UNWRAP_CONF_PATH)
    modes = t.exec(SOURCE, ["stat", "-c", "%a %U", ESCROW_DIR, ESCROW_BLOB, ESCROW_UNWRAP_CONF], check=True)
    assert modes.stdout.split("\n")[:3] == ["700 root", "600 root", "600 root"]
    # Sent again with nothing changed, it copies nothing.
    again = rehearsal.source.run_command(escrow[0])
    assert again.stdout.count("unchanged ") == 2, again.stdout
