"""logEncryption kernel on a real host: the redo and binary logs left to fscrypt, and nothing plaintext at rest.

The program's own plan (``rehearsal/runner``) deploys one on-prem node, ``lk1``, whose data volume is a
loop-backed ext4 image made here with ``-O encrypt`` (``attach_volumes``), with the default
``onPremDatadirEncryption`` (fscrypt) and ``logEncryption: kernel``. Then:

- the plan's verification passed, stating the two log flags OFF as a limitation, and its canary found its
  marker in the logs (read through the filesystem) without calling it a gap;
- the server runs with innodb_encrypt_log and encrypt_binlog OFF;
- a marker written through SQL reads in plaintext in ib_logfile0 and in a binary log through the mounted
  filesystem (the control: the logs really are left unencrypted by MariaDB), and is nowhere in the volume
  image, byte for byte;
- the verify tool told nothing about the logs (no ``--log-encryption kernel``) reports both flags and the
  marker in the logs as gaps on this same node;
- a mariadb-kms-backup taken while rows are written holds those rows in plaintext in its copy of the redo
  log (and mariabackup copies the current binary log too, as the server wrote it): the trade-off the config
  key's description states; its manifest lists both copies as plaintext;
- last, a day-2 change back to ``mariadb``: the update the engine would run rolls the node (a restart) and
  its verification passes with both flags ON, so the canary found its new marker in no log: MariaDB
  rewrote the redo log encrypted at that start.

TLS is off: it has no bearing on what rests on one node's volume, and the run is shorter without it.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from plaintext_probe import flush_to_disk

from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import check, main_pid, sql
from rehearsal.runner import (
    TLS_OFF,
    Deployment,
    ProgramStack,
    attach_volumes,
    deploy,
    engine_runs,
    onprem_config,
)
from rehearsal.testbed import Settings, Testbed
from rehearsal.volumes import LoopVolume, scan_image

HOST = "lk1"
VOLUME_MIB = 768  # sparse: a fresh datadir, its redo log and binary logs
BACKUP_DIR = "/root/lk-backup"  # on the host's root, outside the volume: as a backup shipped elsewhere
STOP = "/run/lk-writer.stop"


@dataclass
class Node:
    testbed: Testbed
    stack: ProgramStack
    deployment: Deployment
    volume: LoopVolume
    data_key: bytes
    marker: str
    log_hits: list[str]
    binlogs: list[str]


def _require_testbed(config: pytest.Config) -> None:
    from pathlib import Path

    path = str(Path(__file__).with_name("conftest.py"))
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) == path:
            plugin.require_testbed()
            return
    raise AssertionError(f"{path} is not loaded")


def _files_with(tb: Testbed, paths: list[str], needle: str) -> list[str]:
    """Which of ``paths`` hold ``needle``, read on the host through its mounted filesystem."""
    result = tb.exec(HOST, ["grep", "-l", "-a", "-F", "-e", needle, *paths], timeout=300)
    assert result.rc in (0, 1), result.stderr
    return result.stdout.split()


@pytest.fixture(scope="module")
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    _require_testbed(request.config)
    with Testbed([HOST], settings=Settings.from_env()) as bed:
        volumes = attach_volumes(bed, size_mib=VOLUME_MIB)
        bed.boot(timeout=900)
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            config = onprem_config(bed, [HOST], gcacheSize="64M", logEncryption="kernel", **TLS_OFF)
            assert "onPremDatadirEncryption" not in config  # the program's default, fscrypt
            stack = ProgramStack(kms)
            deployment = deploy(bed, stack, config, quiet=True)
            program = deployment.program
            data_key = kms.client().decrypt(CiphertextBlob=program.data_key_blob,
                                            EncryptionContext=program.encryption_context)["Plaintext"]
            marker = f"logs-to-kernel-{secrets.token_hex(12)}"
            sql(bed, HOST, f"""
CREATE DATABASE lk;
CREATE TABLE lk.t (id INT PRIMARY KEY, note VARCHAR(200) NOT NULL) ENGINE=InnoDB;
INSERT INTO lk.t SELECT seq, CONCAT('{marker}', '-', seq) FROM lk.seq_1_to_200;
UPDATE lk.t SET note = CONCAT(note, '-updated') WHERE id % 2 = 0;
""")  # noqa: S608
            # Before any flush: the rows are in the redo log and the current binary log, not yet in lk/t.ibd.
            binlogs = [f"/var/lib/mysql/{line.split()[0]}" for line in
                       sql(bed, HOST, "SHOW BINARY LOGS;").strip().splitlines()]
            hits = _files_with(bed, ["/var/lib/mysql/ib_logfile0", *binlogs], marker)
            flush_to_disk(bed, HOST)
            check(bed, HOST, ["sync"])
            volumes[HOST].sync()
            yield Node(bed, stack, deployment, volumes[HOST], data_key, marker, hits, binlogs)


def test_the_plan_rendered_both_log_flags_off_and_the_server_runs_so(node: Node) -> None:
    cnf = node.testbed.read_file(HOST, "/etc/mysql/mariadb.conf.d/90-mariadb-kms-encryption.cnf").decode()
    assert "innodb_encrypt_log = OFF" in cnf and "encrypt_binlog = OFF" in cnf
    for flag in ("innodb_encrypt_temporary_tables", "encrypt_tmp_files", "encrypt_tmp_disk_tables",
                 "aria_encrypt_tables"):
        assert f"{flag} = ON" in cnf, flag
    rows = sql(node.testbed, HOST, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('innodb_encrypt_log', "
               "'encrypt_binlog', 'innodb_encrypt_tables', 'aria_encrypt_tables');").split()
    assert dict(zip(rows[::2], rows[1::2], strict=True)) == {
        "innodb_encrypt_log": "OFF", "encrypt_binlog": "OFF", "innodb_encrypt_tables": "FORCE",
        "aria_encrypt_tables": "ON"}


def test_the_plan_verification_passed_and_states_the_logs_left_to_the_kernel(node: Node) -> None:
    report: dict[str, Any] = json.loads(node.deployment.report(f"{HOST}-verification-run"))
    assert report["gaps"] == [], report["gaps"]
    assert report["datadir_encryption"]["state"] == "encrypted (fscrypt v2, AES-256-XTS)"
    flags = report["flags"]
    assert flags["innodb_encrypt_log"] == "OFF" and flags["encrypt_binlog"] == "OFF"
    assert flags["log_encryption"] == "kernel"
    assert "plaintext" in flags["limitation"] and "innodb_encrypt_log and encrypt_binlog" in flags["limitation"]
    # The canary's marker was in the logs, read through the filesystem, and stated rather than a gap.
    canary = report["canary"]
    assert canary["logs_left_to_kernel_with_marker"], canary
    assert all(p == "/var/lib/mysql/ib_logfile0" or "/mariadb-bin." in p
               for p in canary["logs_left_to_kernel_with_marker"]), canary
    assert canary["found_in"] == [], canary
    assert any("logEncryption: kernel" in line for line in canary["limitations"]), canary


def test_control_the_marker_reads_in_plaintext_in_the_redo_log_and_the_binary_log(node: Node) -> None:
    assert "/var/lib/mysql/ib_logfile0" in node.log_hits, node.log_hits
    assert any(p in node.log_hits for p in node.binlogs), (node.binlogs, node.log_hits)


def test_the_volume_image_holds_neither_the_marker_nor_the_key(node: Node) -> None:
    needles = {"marker": node.marker.encode(), "data key (raw)": node.data_key,
               "data key (hex)": node.data_key.hex().encode()}
    scan = scan_image(node.volume.image, needles)
    assert scan.bytes == VOLUME_MIB << 20
    assert {name: hits for name, hits in scan.hits.items() if hits} == {}


def test_control_verify_without_the_log_argument_reports_both_flags_and_the_logs_as_gaps(node: Node) -> None:
    tls_off = [a for channel in ("replication", "sst", "clients", "secure-transport") for a in ("--tls-off", channel)]
    result = node.testbed.exec(HOST, ["mariadb-kms-verify", "--expect-size", "1", "--canary", "--no-canary-spill",
                                      "--datadir-encryption", "fscrypt", *tls_off], timeout=900)
    assert result.stdout.strip(), result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert result.rc == 1, report["gaps"]
    assert "flags: innodb_encrypt_log is OFF, not ON" in report["gaps"]
    assert "flags: encrypt_binlog is OFF, not ON" in report["gaps"]
    assert "/var/lib/mysql/ib_logfile0" in report["canary"]["found_in"], report["canary"]
    assert any(f"canary: the marker is in plaintext in {p}" in report["gaps"]
               for p in report["canary"]["found_in"] if "/mariadb-bin." in p), report["gaps"]


def test_a_backup_holds_rows_written_while_it_ran_in_plaintext_in_its_log_copies_and_says_so(node: Node) -> None:
    tb = node.testbed
    marker = f"logs-to-kernel-backup-{secrets.token_hex(12)}"
    sql(tb, HOST, "CREATE TABLE lk.during (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(200)) ENGINE=InnoDB;")
    tb.exec(HOST, ["rm", "-f", STOP], check=True)
    writer_script = (f"n=0; while [ ! -e {STOP} ]; do mariadb -e \"INSERT INTO lk.during (note) VALUES "  # noqa: S608
                     f"('{marker}')\" || exit 1; n=$((n+1)); sleep 0.05; done; echo $n")
    out: dict[str, Any] = {}
    writer = threading.Thread(
        target=lambda: out.update(r=tb.exec(HOST, ["bash", "-c", writer_script], timeout=900)))
    writer.start()
    try:
        backup = tb.exec(HOST, ["mariadb-kms-backup", "--target", BACKUP_DIR, "--name", "b1"], timeout=900)
    finally:
        tb.exec(HOST, ["touch", STOP])
        writer.join()
    assert backup.rc == 0, backup.stdout[-3000:] + backup.stderr[-3000:]
    assert out["r"].rc == 0 and int(out["r"].stdout) > 0, out["r"]
    listing = check(tb, HOST, ["find", f"{BACKUP_DIR}/b1", "-type", "f", "-printf", "%P\\n"]).stdout.split()
    # mariabackup copies the redo log from the last checkpoint and the current binary log as the server wrote them.
    binlogs = [f for f in listing if f.startswith("data/mariadb-bin.") and f[len("data/mariadb-bin."):].isdigit()]
    assert "data/ib_logfile0" in listing and binlogs, listing
    hits = check(tb, HOST, f"cd {BACKUP_DIR}/b1 && grep -rlaF -e '{marker}' . || true").stdout.split()
    hits = sorted(h.removeprefix("./") for h in hits)
    assert "data/ib_logfile0" in hits, (hits, listing)
    # Nothing else holds the rows in plaintext (the tables' pages stay encrypted by MariaDB).
    assert set(hits) <= {"data/ib_logfile0", *binlogs}, hits
    manifest = json.loads(tb.read_file(HOST, f"{BACKUP_DIR}/b1/manifest.json"))
    assert manifest["log_encryption"] == {"innodb_encrypt_log": "OFF", "encrypt_binlog": "OFF"}
    assert {"data/ib_logfile0", *binlogs} <= set(manifest["plaintext_files"]), manifest["plaintext_files"]


def test_day2_back_to_mariadb_rolls_the_node_and_its_logs_are_encrypted_again(node: Node) -> None:
    tb, first = node.testbed, node.deployment.program
    # The same stack recorded again, its keys kept; only the key changes (TLS is off: no certificate renewal).
    back = node.stack.record({**first.config, "logEncryption": "mariadb"}, tb)
    runs = engine_runs(first, back)
    assert f"{HOST}-ssh-roll" in runs and f"{HOST}-verification-run" in runs, runs
    pid = main_pid(tb, HOST)
    update = Deployment(tb, back, quiet=True)
    update.run_only(runs)
    assert main_pid(tb, HOST) != pid  # restarted by the roll
    rows = sql(tb, HOST, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('innodb_encrypt_log', "
               "'encrypt_binlog');").split()
    assert dict(zip(rows[::2], rows[1::2], strict=True)) == {"innodb_encrypt_log": "ON", "encrypt_binlog": "ON"}
    report = json.loads(update.report(f"{HOST}-verification-run"))
    assert report["gaps"] == [] and "log_encryption" not in report["flags"], report["gaps"]
    assert report["canary"]["found_in"] == [] and "logs_left_to_kernel_with_marker" not in report["canary"]
