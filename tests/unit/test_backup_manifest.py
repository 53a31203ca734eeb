"""mariadb-kms-backup's manifest, its checks, the restore's unwrap settings and the S3 target (moto's S3)."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws
from node_scripts import NODE, load_node_script

from components.node_files import KEYFILE_PATH, node_files

KEY = {"key_arn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
       "region": "eu-west-1", "encryption_context": {}}


@pytest.fixture(scope="module")
def bk() -> ModuleType:
    return load_node_script("mariadb_kms_backup", NODE / "mariadb_kms_backup.py")


def fake_backup(root: Path) -> Path:
    """A backup directory as mariadb-kms-backup leaves it, with mariabackup's files as 10.11 writes them."""
    data = root / "data"
    (data / "shop").mkdir(parents=True)
    (data / "ibdata1").write_bytes(b"\x00encrypted-pages" * 64)
    (data / "shop" / "orders.ibd").write_bytes(b"\x01encrypted" * 100)
    (data / "shop" / "orders.frm").write_bytes(b"frm")
    (data / "shop" / "db.opt").write_text("default-character-set=utf8mb4\n")
    (data / "aria_log.00000001").write_bytes(b"aria")
    (data / "backup-my.cnf").write_text(
        "[mysqld]\ninnodb_checksum_algorithm=crc32\ninnodb_log_file_size=100663296\n"
        "plugin_load=file_key_management=file_key_management.so\n"
        f"file_key_management_filename={KEYFILE_PATH}\nfile_key_management_encryption_algorithm=AES_CTR\n"
    )
    (data / "xtrabackup_binlog_info").write_text("mariadb-bin.000003\t1234\t0-1-57\n")
    (data / "xtrabackup_galera_info").write_text("5f6a1b2c-0000-11ef-8000-0242ac110002:42\n")
    (data / "xtrabackup_info").write_text(
        "uuid = 1\nname = \ntool_name = mariabackup\ntool_version = 10.11.6-MariaDB\n"
        "server_version = 10.11.6-MariaDB-0+deb12u1-log\n"
    )
    (root / "datakey.blob").write_bytes(b"\x01\x02\x03ciphertext")
    (root / "key.json").write_text(json.dumps(KEY))
    return root


def write_manifest(bk: ModuleType, root: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = bk.build_manifest(root, key=KEY, host="db-1", created="2026-01-01T00:00:00+00:00",
                                                 target="/backups")
    (root / bk.MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_the_manifest_records_position_version_key_and_every_file(bk: ModuleType, tmp_path: Path) -> None:
    manifest = write_manifest(bk, fake_backup(tmp_path))
    assert manifest["gtid"] == "0-1-57" and manifest["binlog_file"] == "mariadb-bin.000003"
    assert manifest["galera_uuid"] == "5f6a1b2c-0000-11ef-8000-0242ac110002" and manifest["galera_seqno"] == "42"
    assert manifest["mariadb_version"] == "10.11.6-MariaDB-0+deb12u1-log"
    assert manifest["key_arn"] == KEY["key_arn"] and manifest["encryption_context"] == {}
    assert set(manifest["files"]) == {
        "datakey.blob", "key.json", "data/ibdata1", "data/shop/orders.ibd", "data/shop/orders.frm",
        "data/shop/db.opt", "data/aria_log.00000001", "data/backup-my.cnf", "data/xtrabackup_binlog_info",
        "data/xtrabackup_galera_info", "data/xtrabackup_info",
    }
    assert manifest["files"]["datakey.blob"]["size"] == len(b"\x01\x02\x03ciphertext")
    assert bk.verify_files(tmp_path, manifest) == []


def test_the_manifest_names_what_is_stored_in_plaintext(bk: ModuleType, tmp_path: Path) -> None:
    manifest = write_manifest(bk, fake_backup(tmp_path))
    assert "data/shop/orders.frm" in manifest["plaintext_files"]
    assert "data/aria_log.00000001" in manifest["plaintext_files"]
    assert "data/shop/db.opt" in manifest["plaintext_files"]
    # Encrypted by MariaDB, or ciphertext of ours: never listed.
    for encrypted in ("data/ibdata1", "data/shop/orders.ibd", "datakey.blob", "key.json"):
        assert encrypted not in manifest["plaintext_files"]


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda r: (r / "data" / "shop" / "orders.ibd").write_bytes(b"\x01encrypted" * 99 + b"\x01encryptes"),
         "data/shop/orders.ibd: sha256 differs"),
        (lambda r: (r / "data" / "ibdata1").write_bytes(b"short"), "data/ibdata1: 5 bytes"),
        (lambda r: (r / "datakey.blob").unlink(), "datakey.blob: missing"),
        (lambda r: (r / "data" / "extra.ibd").write_bytes(b"x"), "data/extra.ibd: not in the manifest"),
    ],
)
def test_control_every_kind_of_damage_is_found(bk: ModuleType, tmp_path: Path, damage: Any, expected: str) -> None:
    manifest = write_manifest(bk, fake_backup(tmp_path))
    damage(tmp_path)
    problems = bk.verify_files(tmp_path, manifest)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_backup_without_the_blob_or_the_server_settings_is_refused(bk: ModuleType, tmp_path: Path) -> None:
    root = fake_backup(tmp_path)
    (root / "datakey.blob").unlink()
    manifest = write_manifest(bk, root)  # consistent with itself, but incomplete
    assert bk.verify_files(root, manifest) == ["datakey.blob: not part of this backup"]


def test_prepare_reads_the_key_file_named_in_backup_my_cnf(bk: ModuleType, tmp_path: Path) -> None:
    text = (fake_backup(tmp_path) / "data" / "backup-my.cnf").read_text()
    assert bk.keyfile_from_backup_cnf(text) == Path(KEYFILE_PATH)
    assert bk.keyfile_from_backup_cnf(text.replace("file_key_management_filename", "file-key-management-filename")) \
        == Path(KEYFILE_PATH)
    assert bk.keyfile_from_backup_cnf("[mysqld]\nplugin_load=aws_key_management.so\n") is None


def test_the_restore_unwraps_the_backups_blob_to_that_key_file_with_the_restore_identity(
    bk: ModuleType, tmp_path: Path
) -> None:
    unwrap = load_node_script("mariadb_kms_unwrap", NODE / "mariadb_kms_unwrap.py")
    conf = tmp_path / "unwrap.conf"
    conf.write_text(bk.render_restore_unwrap_conf(
        KEY, blob=tmp_path / "datakey.blob", keyfile=Path(KEYFILE_PATH), credentials_file=Path("/root/restore.creds"),
        profile="restore", endpoint_url=None,
    ))
    # Read back by the unwrap tool's own parser: the restore runs the same unwrap as a node.
    settings = unwrap.load_settings(conf)
    assert settings.mode == "kms-envelope" and settings.key_arn == KEY["key_arn"]
    assert settings.blob == tmp_path / "datakey.blob" and settings.keyfile == Path(KEYFILE_PATH)
    assert settings.credentials_file == Path("/root/restore.creds") and settings.profile == "restore"
    assert settings.gcache_dir is None  # a restore host runs no Galera yet


@pytest.mark.parametrize("script", ["mariadb_kms_backup.py", "mariadb_kms_restore.py"])
def test_help_touches_nothing_and_names_root_exit_codes_and_an_example(script: str, tmp_path: Path) -> None:
    # An empty PATH: --help must not run systemctl, mariabackup or anything else.
    proc = subprocess.run([sys.executable, str(NODE / script), "--help"], capture_output=True, text=True,
                          env={"PATH": str(tmp_path)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "root" in out and "exit codes:" in out and "example:" in out and "sudo mariadb-kms-" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script, args", [("mariadb_kms_backup.py", ["--target", "/nonexistent/x"]),
                                          ("mariadb_kms_restore.py", ["--from", "/nonexistent/x"])])
def test_not_root_is_refused_with_its_exit_code(script: str, args: list[str]) -> None:
    # As nobody when the tests run as root (setpriv is util-linux, on every Debian).
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    proc = subprocess.run([*drop, sys.executable, str(NODE / script), *args], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert "run as root" in proc.stderr


def test_both_tools_are_installed_on_every_node() -> None:
    for mode in ("kms-envelope", "aws-plugin"):
        dests = {f.dest: f for f in node_files(mode)}
        for name in ("mariadb-kms-backup", "mariadb-kms-restore"):
            assert dests[f"/usr/local/sbin/{name}"].mode == 0o755


def test_s3_target_is_written_with_sse_kms_manifest_last_and_reads_back(bk: ModuleType, tmp_path: Path) -> None:
    root = fake_backup(tmp_path / "stage")
    manifest = write_manifest(bk, root)
    kms_key = "arn:aws:kms:eu-west-1:123456789012:key/backup-bucket-key"
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket="db-backups", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        calls: list[str] = []
        real_upload = s3.upload_file

        def recording_upload(path: str, bucket: str, key: str, ExtraArgs: dict[str, str]) -> None:
            calls.append(key)
            assert ExtraArgs == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key}
            real_upload(path, bucket, key, ExtraArgs=ExtraArgs)

        s3.upload_file = recording_upload
        target = bk.S3Target.parse("s3://db-backups/prod")
        bk.upload(s3, target, "b1", root, kms_key)
        assert calls[-1] == "prod/b1/manifest.json" and len(calls) == len(manifest["files"]) + 1
        head = s3.head_object(Bucket="db-backups", Key="prod/b1/datakey.blob")
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith("backup-bucket-key")
        restored = tmp_path / "restored"
        bk.download(s3, target, "b1", restored)
    stored = json.loads((restored / "manifest.json").read_text())
    assert bk.verify_files(restored, stored) == []


@pytest.mark.parametrize("url", ["s3://", "s3://A_B/x", "https://bucket/x"])
def test_control_a_bad_s3_url_is_refused(bk: ModuleType, url: str) -> None:
    with pytest.raises(bk.Failure):
        bk.S3Target.parse(url)


def test_only_an_fscrypt_datadir_conf_asks_for_the_mount(bk: ModuleType, tmp_path: Path) -> None:
    conf = tmp_path / "datadir.conf"
    assert bk.fscrypt_datadir(conf) is False  # no such file: a layout without datadir encryption
    conf.write_text("# datadir encryption\nencryption=fscrypt\n")
    assert bk.fscrypt_datadir(conf) is True
    conf.write_text("encryption=none\n")
    assert bk.fscrypt_datadir(conf) is False


def test_a_restore_with_bootstrap_presents_the_backups_encryption_context(tmp_path: Path) -> None:
    backup = load_node_script("mariadb_kms_backup", NODE / "mariadb_kms_backup.py")
    conf = tmp_path / "unwrap.conf"
    conf.write_text('[unwrap]\nmode = kms-envelope\nencryption_context = {"mariadb-kms:stack": "restore-host"}\n'
                    "key_arn = arn:aws:kms:eu-west-1:123456789012:key/k\n")
    conf.chmod(0o640)
    source = {"mariadb-kms:cluster": "prod", "mariadb-kms:stack": "prod"}
    backup.set_encryption_context(conf, source)
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(conf)
    assert json.loads(cp["unwrap"]["encryption_context"]) == source
    assert cp["unwrap"]["key_arn"].endswith("key/k") and oct(conf.stat().st_mode & 0o777) == "0o640"
    backup.set_encryption_context(conf, {})  # a backup whose blob has no context: the line goes
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(conf)
    assert "encryption_context" not in cp["unwrap"]


def test_with_the_logs_left_to_the_kernel_the_manifest_names_the_log_copies_as_plaintext(
    bk: ModuleType, tmp_path: Path
) -> None:
    root = fake_backup(tmp_path)
    (root / "data" / "ib_logfile0").write_bytes(b"redo records")
    (root / "data" / "mariadb-bin.000006").write_bytes(b"row events")
    kernel = bk.read_log_flags("0\t0\t/var/lib/mysql/mariadb-bin\n")
    assert kernel == {"innodb_encrypt_log": "OFF", "encrypt_binlog": "OFF",
                      "log_bin_basename": "/var/lib/mysql/mariadb-bin"}
    manifest = bk.build_manifest(root, key=KEY, host="db-1", created="2026-01-01T00:00:00+00:00", target="/b",
                                 log_flags=kernel)
    assert {"data/ib_logfile0", "data/mariadb-bin.000006"} <= set(manifest["plaintext_files"])
    assert manifest["log_encryption"] == {"innodb_encrypt_log": "OFF", "encrypt_binlog": "OFF"}
    assert "data/shop/orders.ibd" not in manifest["plaintext_files"]
    # Control: the default, both logs encrypted by MariaDB: their copies are ciphertext and not listed.
    default = bk.build_manifest(root, key=KEY, host="db-1", created="2026-01-01T00:00:00+00:00", target="/b",
                                log_flags=bk.read_log_flags("1\t1\t/var/lib/mysql/mariadb-bin\n"))
    assert not {"data/ib_logfile0", "data/mariadb-bin.000006"} & set(default["plaintext_files"])
    assert default["log_encryption"] == {"innodb_encrypt_log": "ON", "encrypt_binlog": "ON"}
    # One log left to the kernel: only its copy is listed.
    redo_only = bk.build_manifest(root, key=KEY, host="db-1", created="2026-01-01T00:00:00+00:00", target="/b",
                                  log_flags=bk.read_log_flags("0\t1\t/var/lib/mysql/mariadb-bin\n"))
    assert "data/ib_logfile0" in redo_only["plaintext_files"]
    assert "data/mariadb-bin.000006" not in redo_only["plaintext_files"]
