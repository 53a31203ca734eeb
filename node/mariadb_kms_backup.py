#!/usr/bin/python3
"""mariadb-kms-backup: a mariabackup backup of this node that another host can restore.

Run as root on one node of the cluster, while MariaDB runs:

    mariadb-kms-backup --target /srv/backups
    mariadb-kms-backup --target s3://bucket/prefix --s3-kms-key-id arn:aws:kms:...:key/...

A backup is one directory (or one S3 prefix) named after the time it was taken:

    <name>/data/...          mariabackup's output: InnoDB pages stay encrypted under the cluster data key
    <name>/datakey.blob      the cluster data key's KMS ciphertext blob (the one the node unwraps)
    <name>/key.json          key ARN, region, encryption context ({} when the blob has none)
    <name>/manifest.json     sha256 and size of every file above, GTID, Galera uuid:seqno, MariaDB version

The manifest is written last: a backup without one is incomplete. A local
target gets it under ``<name>.partial`` first, renamed when complete.

What the backup holds in plaintext (MariaDB cannot encrypt it; see
docs/runbooks/key-lifecycle.md): ``*.frm`` table definitions (view SQL
included), ``*.TRG`` trigger bodies, ``db.opt``, the Aria log
(``aria_log.*``, changes to ``mysql.*`` such as password hashes),
``ddl_recovery.log``, ``backup-my.cnf`` and the ``xtrabackup_*`` position
files. Keep backups where the data may be kept. With the stack config's
``logEncryption: kernel`` (innodb_encrypt_log and encrypt_binlog OFF, the
logs left to the volume's encryption) two more: mariabackup's copy of the
redo log (``ib_logfile0``: every change from the last checkpoint before the
backup until its end) and of the current binary log, both as the server wrote
them, in plaintext. The manifest lists each such file in ``plaintext_files``.

``mariadb-kms-restore`` (the same file's ``restore_main``) restores one.
Exit codes: see ``EXIT_CODES``. Never prints key material; never unwraps the
key (mariabackup reads the running node's keyfile).
"""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROG = "mariadb-kms-backup"
RESTORE_PROG = "mariadb-kms-restore"
MANIFEST = "manifest.json"
KEY_JSON = "key.json"
BLOB_NAME = "datakey.blob"
DATA_DIR_NAME = "data"
FORMAT = 1
UNWRAP_CONF = Path("/etc/mariadb-kms/unwrap.conf")
UNWRAP = Path("/usr/local/sbin/mariadb-kms-unwrap")
DATADIR = Path("/var/lib/mysql")
STAGING = Path("/srv/mariadb-kms/backup-staging")  # on the data volume: the staged copy holds .frm and Aria logs
KEYFILE_OPTION = "file_key_management_filename"
DATADIR_CONF = Path("/etc/mariadb-kms/datadir.conf")  # encryption=fscrypt|luks|none, where the layout has it

OK, USAGE, NOT_ROOT, PRECONDITION, MARIABACKUP, TARGET, VERIFY, UNWRAP_FAILED = 0, 2, 3, 4, 5, 6, 7, 8
EXIT_CODES = {
    OK: "done",
    USAGE: "bad arguments",
    NOT_ROOT: "not run as root",
    PRECONDITION: "the host is not in the state the command needs (named in the message)",
    MARIABACKUP: "mariabackup failed (its output is in the message)",
    TARGET: "the backup target could not be written or read",
    VERIFY: "a file does not match the manifest, or the manifest is missing",
    UNWRAP_FAILED: "the restore host could not unwrap the backup's data key (mariadb-kms-unwrap said why)",
}

# Files MariaDB writes without encryption, whatever the settings (its documentation on data-at-rest
# encryption lists what is encrypted; these are outside it). Backups keep them as they are.
PLAINTEXT_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(^|/)[^/]+\.frm$", "table definitions, including view SQL"),
    (r"(^|/)[^/]+\.TRG$", "trigger bodies"),
    (r"(^|/)[^/]+\.TRN$", "trigger names"),
    (r"(^|/)db\.opt$", "database character set"),
    (r"^aria_log\.\d+$", "the Aria log: changes to Aria tables such as mysql.* (password hashes)"),
    (r"^aria_log_control$", "the Aria log's control file"),
    (r"^ddl_recovery\.log$", "DDL text of statements in flight"),
    (r"^backup-my\.cnf$", "mariabackup's copy of the server settings"),
    (r"^xtrabackup_[a-z_]+$", "positions (binlog file, GTID, LSNs, Galera seqno)"),
    (r"^mariadb_backup_[a-z_]+$", "positions (binlog file, GTID, LSNs, Galera seqno)"),
)


class Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def say(prog: str, message: str) -> None:
    print(f"{prog}: {message}", flush=True)


# --------------------------------------------------------------------------
# The manifest (pure apart from reading the files it describes)
# --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(root: Path) -> dict[str, dict[str, Any]]:
    """{path relative to root: {size, sha256}} of every regular file under root, the manifest excepted."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not path.is_file() or rel == MANIFEST:
            continue
        out[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def read_position_files(data_dir: Path) -> dict[str, str | None]:
    """GTID, binlog position, Galera uuid:seqno and the server version from mariabackup's own files."""

    def text(*names: str) -> str:
        for name in names:
            p = data_dir / name
            if p.is_file():
                return p.read_text(encoding="utf-8", errors="replace").strip()
        return ""

    binlog = text("xtrabackup_binlog_info", "mariadb_backup_binlog_info").split()
    galera = text("xtrabackup_galera_info", "mariadb_backup_galera_info").split()
    info: dict[str, str] = {}
    for line in text("xtrabackup_info", "mariadb_backup_info").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = value.strip()
    uuid, seqno = [*galera[0].split(":", 1), ""][:2] if galera else ("", "")
    return {
        "binlog_file": binlog[0] if binlog else None,
        "binlog_position": binlog[1] if len(binlog) > 1 else None,
        "gtid": binlog[2] if len(binlog) > 2 else None,
        "galera_uuid": uuid or None,
        "galera_seqno": seqno or None,
        "mariadb_version": info.get("server_version") or None,
        "mariabackup_version": info.get("tool_version") or None,
    }


def build_manifest(
    root: Path, *, key: Mapping[str, Any], host: str, created: str, target: str,
    log_flags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``log_flags``: the server's answer to LOG_FLAGS_QUERY (read_log_flags); the log copies are listed as
    plaintext when it says the server does not encrypt them."""
    logs = {k: v for k, v in (log_flags or {}).items() if k in ("innodb_encrypt_log", "encrypt_binlog")}
    return {
        "format": FORMAT,
        "created": created,
        "host": host,
        "target": target,
        "key_arn": key["key_arn"],
        "region": key["region"],
        "encryption_context": dict(key.get("encryption_context") or {}),
        **read_position_files(root / DATA_DIR_NAME),
        **({"log_encryption": logs} if logs else {}),
        "plaintext_files": sorted(rel for rel in file_digests(root) if plaintext_reason(rel, log_flags) is not None),
        "files": file_digests(root),
    }


def verify_files(root: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Every difference between the files under root and the manifest, as sentences (empty: all match)."""
    if manifest.get("format") != FORMAT:
        return [f"{MANIFEST}: format {manifest.get('format')!r} is not {FORMAT}"]
    listed: Mapping[str, Mapping[str, Any]] = manifest.get("files") or {}
    present = file_digests(root)
    problems = [f"{rel}: missing" for rel in sorted(set(listed) - set(present))]
    problems += [f"{rel}: not in the manifest" for rel in sorted(set(present) - set(listed))]
    for rel in sorted(set(listed) & set(present)):
        want, got = listed[rel], present[rel]
        if want.get("size") != got["size"]:
            problems.append(f"{rel}: {got['size']} bytes, the manifest says {want.get('size')}")
        elif want.get("sha256") != got["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    for required in (BLOB_NAME, KEY_JSON, f"{DATA_DIR_NAME}/backup-my.cnf"):
        if required not in listed:
            problems.append(f"{required}: not part of this backup")
    return problems


# The server's settings that decide whether mariabackup's copies of the logs are ciphertext.
LOG_FLAGS_QUERY = "SELECT @@GLOBAL.innodb_encrypt_log, @@GLOBAL.encrypt_binlog, @@GLOBAL.log_bin_basename"


def log_patterns(flags: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The log copies a backup holds in plaintext because the server left its logs unencrypted
    (logEncryption: kernel); none when both flags are ON."""
    out: list[tuple[str, str]] = []
    if flags.get("innodb_encrypt_log", "ON") != "ON":
        out.append((r"^ib_logfile\d+$|^xtrabackup_logfile$", "the redo log's records from the last checkpoint before "
                    "the backup to its end (innodb_encrypt_log is OFF: logEncryption kernel)"))
    basename = os.path.basename(flags.get("log_bin_basename") or "")
    if flags.get("encrypt_binlog", "ON") != "ON" and basename:
        out.append((rf"^{re.escape(basename)}\.\d+$", "the current binary log (encrypt_binlog is OFF: "
                    "logEncryption kernel)"))
    return tuple(out)


def read_log_flags(text: str) -> dict[str, str]:
    """The answer to LOG_FLAGS_QUERY (one tab-separated row) as ON/OFF flags and the binlog basename."""
    fields = [*text.strip().split("\t"), "", "", ""][:3]
    on = {"1": "ON", "0": "OFF"}
    return {"innodb_encrypt_log": on.get(fields[0], fields[0] or "unknown"),
            "encrypt_binlog": on.get(fields[1], fields[1] or "unknown"),
            "log_bin_basename": "" if fields[2] == "NULL" else fields[2]}


def plaintext_reason(rel: str, log_flags: Mapping[str, str] | None = None) -> str | None:
    """Why a backup file is stored as MariaDB wrote it, unencrypted; None for the encrypted ones."""
    name = rel.split("/", 1)[1] if rel.startswith(DATA_DIR_NAME + "/") else None
    if name is None:
        return None  # our own files: the blob is ciphertext, key.json names the key
    for pattern, reason in (*PLAINTEXT_PATTERNS, *log_patterns(log_flags or {})):
        if re.search(pattern, name):
            return reason
    return None


def keyfile_from_backup_cnf(text: str) -> Path | None:
    """The key file mariabackup --prepare will read: file_key_management's filename in backup-my.cnf."""
    cp = configparser.ConfigParser(interpolation=None, strict=False, allow_no_value=True)
    cp.optionxform = lambda option: option.replace("-", "_")  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    for section in cp.sections():
        value = cp[section].get(KEYFILE_OPTION)
        if value:
            return Path(value.strip())
    return None


def backup_name(now: dt.datetime, host: str) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{re.sub(r'[^A-Za-z0-9.-]', '-', host)}"


# --------------------------------------------------------------------------
# Targets: a local directory, or S3 with SSE-KMS
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Target:
        m = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", url)
        if m is None:
            raise Failure(USAGE, f"{url} is not s3://bucket[/prefix]")
        return cls(m[1], (m[2] or "").strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)


def s3_client(region: str, endpoint_url: str | None) -> Any:
    import boto3  # Debian's python3-boto3; only the S3 target needs it

    return boto3.session.Session(region_name=region).client("s3", endpoint_url=endpoint_url)


def upload(client: Any, target: S3Target, name: str, root: Path, kms_key_id: str) -> None:
    """Every file, then the manifest: a prefix without a manifest is an incomplete backup."""
    extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
    files = [*(rel for rel in file_digests(root)), MANIFEST]
    for rel in files:
        client.upload_file(str(root / rel), target.bucket, target.key(name, rel), ExtraArgs=extra)


def download(client: Any, target: S3Target, name: str, dest: Path) -> None:
    prefix = target.key(name) + "/"
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=target.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.startswith("/") or ".." in rel.split("/"):
                raise Failure(VERIFY, f"refusing object {obj['Key']}: not a path inside the backup")
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(target.bucket, obj["Key"], str(path))


# --------------------------------------------------------------------------
# Backup
# --------------------------------------------------------------------------


def read_unwrap_conf(path: Path) -> configparser.SectionProxy:
    cp = configparser.ConfigParser(interpolation=None)
    if not cp.read(path) or not cp.has_section("unwrap"):
        raise Failure(PRECONDITION, f"{path} is missing or has no [unwrap] section: is this a mariadb-kms node?")
    return cp["unwrap"]


def set_encryption_context(path: Path, context: Mapping[str, Any]) -> None:
    """Rewrite the ``encryption_context`` line of the host's unwrap.conf (other lines as they are)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if line.split("=", 1)[0].strip() != "encryption_context"]
    if context:
        at = next((i + 1 for i, line in enumerate(lines) if line.strip() == "[unwrap]"), len(lines))
        lines.insert(at, f"encryption_context = {json.dumps(dict(context), sort_keys=True)}")
    mode = stat.S_IMODE(path.stat().st_mode)
    tmp = path.with_name(path.name + ".restore")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def run(argv: list[str], what: str, code: int = MARIABACKUP) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise Failure(code, f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def take_backup(stage: Path, conf: configparser.SectionProxy, *, parallel: int) -> None:
    data = stage / DATA_DIR_NAME
    # --galera-info records the cluster's uuid:seqno; the pages are copied as they are, encrypted.
    run(
        ["mariabackup", "--backup", "--user=root", f"--target-dir={data}", "--galera-info",
         f"--parallel={parallel}"],
        "mariabackup --backup",
    )
    shutil.copyfile(conf["blob"], stage / BLOB_NAME)
    key = {
        "key_arn": conf["key_arn"].strip(),
        "region": conf["region"].strip(),
        "encryption_context": json.loads(conf.get("encryption_context", "{}") or "{}"),
    }
    (stage / KEY_JSON).write_text(json.dumps(key, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def exit_status_help() -> str:
    # Python itself exits 1 on an error no Failure names; an operator still needs to know what 1 means.
    codes = {**EXIT_CODES, 1: "an error no other code names (the message or traceback on stderr says where)"}
    return "exit codes: the exit status says how it ended\n" + "\n".join(
        f"  {c}  {t}" for c, t in sorted(codes.items()))


def backup_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Back up this node with mariabackup (pages stay encrypted), with the wrapped data key, "
        "its key ARN and a manifest, to a local directory or to S3 (SSE-KMS). Run as root on a node while "
        "MariaDB runs.",
        epilog="example:\n  sudo mariadb-kms-backup --target /srv/backups\n"
        "  sudo mariadb-kms-backup --target s3://db-backups/prod --s3-kms-key-id arn:aws:kms:eu-west-1:"
        "123456789012:key/...\n\n" + exit_status_help()
        + "\n\nplaintext in a backup: " + "; ".join(sorted({r for _, r in PLAINTEXT_PATTERNS}))
        + "; with logEncryption kernel also the copies of the redo log and of the current binary log",
    )
    parser.add_argument("--target", required=True, help="a local directory, or s3://bucket[/prefix]")
    parser.add_argument("--s3-kms-key-id", help="KMS key for S3 server-side encryption (required for s3://)")
    parser.add_argument("--endpoint-url", help="S3 endpoint (a local stand-in in tests)")
    parser.add_argument("--name", help="backup name (default: UTC time and host name)")
    parser.add_argument("--staging-dir", type=Path, default=STAGING, help=f"for s3:// targets ({STAGING})")
    parser.add_argument("--conf", type=Path, default=UNWRAP_CONF, help=f"the node's unwrap settings ({UNWRAP_CONF})")
    parser.add_argument("--parallel", type=int, default=2, help="mariabackup copy threads (2)")
    args = parser.parse_args(argv)
    try:
        if os.geteuid() != 0:
            raise Failure(NOT_ROOT, "run as root: mariabackup reads the datadir and the keyfile")
        conf = read_unwrap_conf(args.conf)
        host = socket.gethostname()
        name = args.name or backup_name(dt.datetime.now(dt.UTC), host)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise Failure(USAGE, f"--name {name}: letters, digits, '.', '_' and '-' only")
        s3 = S3Target.parse(args.target) if args.target.startswith("s3://") else None
        if s3 is not None and not args.s3_kms_key_id:
            raise Failure(USAGE, "an s3:// target needs --s3-kms-key-id: backups are stored with SSE-KMS")
        if s3 is None:
            base = Path(args.target)
            final = base / name
            if final.exists():
                raise Failure(PRECONDITION, f"{final} exists already")
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            stage = base / f"{name}.partial"
        else:
            args.staging_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=args.staging_dir))
        os.umask(0o077)
        stage.mkdir(mode=0o700, exist_ok=True)
        say(PROG, f"backing up to {stage}")
        take_backup(stage, conf, parallel=args.parallel)
        log_flags = read_log_flags(run(["mariadb", "--batch", "--skip-column-names", "-e", LOG_FLAGS_QUERY],
                                       "reading innodb_encrypt_log and encrypt_binlog", PRECONDITION))
        manifest = build_manifest(
            stage, key=json.loads((stage / KEY_JSON).read_text()), host=host,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), target=args.target, log_flags=log_flags,
        )
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if s3 is None:
            os.rename(stage, final)
            where = str(final)
        else:
            try:
                upload(s3_client(conf["region"].strip(), args.endpoint_url), s3, name, stage, args.s3_kms_key_id)
            except Exception as e:
                raise Failure(TARGET, f"upload to {args.target} failed: {type(e).__name__}: {e}") from None
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            where = f"s3://{s3.bucket}/{s3.key(name)}"
        say(PROG, f"backup {name} complete at {where}: gtid {manifest['gtid']}, galera seqno "
            f"{manifest['galera_seqno']}, MariaDB {manifest['mariadb_version']}, {len(manifest['files'])} files")
        return OK
    except Failure as f:
        print(f"{PROG}: ERROR: {f}", file=sys.stderr)
        return f.code


# --------------------------------------------------------------------------
# Restore
# --------------------------------------------------------------------------


def render_restore_unwrap_conf(
    key: Mapping[str, Any], *, blob: Path, keyfile: Path, credentials_file: Path | None, profile: str | None,
    endpoint_url: str | None,
) -> str:
    """unwrap.conf for the restore: the backup's key and blob, unwrapped to the path backup-my.cnf names."""
    cp = configparser.ConfigParser(interpolation=None)
    cp["unwrap"] = {
        "mode": "kms-envelope",
        "key_arn": str(key["key_arn"]),
        "region": str(key["region"]),
        "blob": str(blob),
        "keyfile": str(keyfile),
    }
    if key.get("encryption_context"):
        cp["unwrap"]["encryption_context"] = json.dumps(key["encryption_context"], sort_keys=True)
    if credentials_file is not None:
        cp["unwrap"]["credentials_file"] = str(credentials_file)
        cp["unwrap"]["profile"] = profile or "default"
    if endpoint_url:
        cp["unwrap"]["endpoint_url"] = endpoint_url
    lines: list[str] = []
    for k, v in cp["unwrap"].items():
        lines.append(f"{k} = {v}")
    return "[unwrap]\n" + "\n".join(lines) + "\n"


def fscrypt_datadir(path: Path) -> bool:
    """Whether the node's datadir.conf (written by the installer when the layout has one) asks for fscrypt."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.replace(" ", "") == "encryption=fscrypt" for line in text.splitlines())


def mariadb_running() -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", "mariadb"]).returncode == 0


def datadir_entries(datadir: Path) -> list[str]:
    return sorted(p.name for p in datadir.iterdir()) if datadir.is_dir() else []


def empty_dir(path: Path) -> None:
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def restore_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=RESTORE_PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Restore a mariadb-kms-backup into this host's datadir: check the manifest, unwrap the "
        "backup's data key with this host's AWS identity (a restore principal: kms:Decrypt only) to the key "
        "file backup-my.cnf names, mariabackup --prepare and --move-back. With --bootstrap the host then starts "
        "as a new single-node cluster under the backup's key. Run as root on the node (or new host) being "
        "restored, with MariaDB stopped.",
        epilog="example:\n  sudo mariadb-kms-restore --from /srv/backups/20260101T000000Z-db-1 --replace-datadir "
        "--bootstrap\n  sudo mariadb-kms-restore --from s3://db-backups/prod/20260101T000000Z-db-1 "
        "--credentials-file /root/restore.creds --profile restore\n\n" + exit_status_help(),
    )
    parser.add_argument("--from", dest="source", required=True, help="a backup directory, or s3://bucket/prefix/name")
    parser.add_argument("--credentials-file", type=Path, help="AWS shared-credentials file of the restore principal "
                        "(default: the host's own identity, e.g. its instance profile)")
    parser.add_argument("--profile", help="profile in that file (default)")
    parser.add_argument("--region", help="S3 region (default: the key's region)")
    parser.add_argument("--endpoint-url", help="KMS and S3 endpoint (a local stand-in in tests)")
    parser.add_argument("--datadir", type=Path, default=DATADIR, help=f"({DATADIR})")
    parser.add_argument("--staging-dir", type=Path, default=STAGING, help=f"where the backup is prepared ({STAGING})")
    parser.add_argument("--replace-datadir", action="store_true", help="delete what the datadir holds first")
    parser.add_argument("--bootstrap", action="store_true", help="install the backup's blob as this host's and "
                        "start a new single-node cluster (galera_new_cluster)")
    parser.add_argument("--conf", type=Path, default=UNWRAP_CONF, help=f"this host's unwrap settings ({UNWRAP_CONF})")
    args = parser.parse_args(argv)
    work: Path | None = None
    try:
        if os.geteuid() != 0:
            raise Failure(NOT_ROOT, "run as root: the restore writes the datadir and the key file")
        if mariadb_running():
            raise Failure(PRECONDITION, "mariadb is running: stop it first (systemctl stop mariadb)")
        if fscrypt_datadir(DATADIR_CONF) and not os.path.ismount(args.datadir):
            # With fscrypt the datadir is bound from the data volume only while its key is present;
            # otherwise a restore would write the rows in clear under the mount point.
            raise Failure(PRECONDITION, f"{DATADIR_CONF} says fscrypt but {args.datadir} is not mounted: "
                          "start mariadb-kms-datadir-key.service first")
        entries = datadir_entries(args.datadir)
        if entries and not args.replace_datadir:
            raise Failure(PRECONDITION, f"{args.datadir} is not empty ({len(entries)} entries): "
                          "give --replace-datadir to delete them")
        os.umask(0o077)
        args.staging_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="restore.", dir=args.staging_dir))
        backup = work / "backup"
        if args.source.startswith("s3://"):
            target = S3Target.parse(args.source)
            prefix, _, name = target.prefix.rpartition("/")
            region = args.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            try:
                download(s3_client(region, args.endpoint_url), S3Target(target.bucket, prefix), name, backup)
            except Failure:
                raise
            except Exception as e:
                raise Failure(TARGET, f"download of {args.source} failed: {type(e).__name__}: {e}") from None
        else:
            say(RESTORE_PROG, f"copying {args.source}")
            shutil.copytree(args.source, backup)
        manifest_path = backup / MANIFEST
        if not manifest_path.is_file():
            raise Failure(VERIFY, f"{args.source} has no {MANIFEST}: an incomplete backup")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        problems = verify_files(backup, manifest)
        if problems:
            raise Failure(VERIFY, "the backup does not match its manifest:\n  " + "\n  ".join(problems[:20]))
        say(RESTORE_PROG, f"manifest checked: {len(manifest['files'])} files; gtid {manifest['gtid']}, "
            f"MariaDB {manifest['mariadb_version']}")
        key = json.loads((backup / KEY_JSON).read_text(encoding="utf-8"))
        keyfile = keyfile_from_backup_cnf((backup / DATA_DIR_NAME / "backup-my.cnf").read_text(encoding="utf-8"))
        if keyfile is None:
            raise Failure(VERIFY, f"backup-my.cnf names no {KEYFILE_OPTION}: not a kms-envelope backup")
        keyfile.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        conf = work / "unwrap.conf"
        conf.write_text(render_restore_unwrap_conf(
            key, blob=backup / BLOB_NAME, keyfile=keyfile, credentials_file=args.credentials_file,
            profile=args.profile, endpoint_url=args.endpoint_url,
        ), encoding="utf-8")
        say(RESTORE_PROG, f"unwrapping the backup's data key ({key['key_arn']}) to {keyfile}")
        run([str(UNWRAP), "--conf", str(conf)], "mariadb-kms-unwrap", UNWRAP_FAILED)
        run(["mariabackup", "--prepare", f"--target-dir={backup / DATA_DIR_NAME}"], "mariabackup --prepare")
        if entries:
            say(RESTORE_PROG, f"emptying {args.datadir}")
            empty_dir(args.datadir)
        args.datadir.mkdir(mode=0o755, parents=True, exist_ok=True)
        run(["mariabackup", "--move-back", f"--target-dir={backup / DATA_DIR_NAME}", f"--datadir={args.datadir}"],
            "mariabackup --move-back")
        run(["chown", "-R", "mysql:mysql", str(args.datadir)], "chown", PRECONDITION)
        # The plaintext key leaves the host's memory again; with --bootstrap the unwrap unit writes it anew.
        run([str(UNWRAP), "--conf", str(conf), "--remove"], "mariadb-kms-unwrap --remove", UNWRAP_FAILED)
        if args.bootstrap:
            host_conf = read_unwrap_conf(args.conf)
            if host_conf["key_arn"].strip() != key["key_arn"]:
                raise Failure(PRECONDITION, f"{args.conf} names {host_conf['key_arn'].strip()}, the backup's key is "
                              f"{key['key_arn']}: point the host at the backup's key first")
            blob_path = Path(host_conf["blob"].strip())
            shutil.copyfile(backup / BLOB_NAME, blob_path)
            os.chmod(blob_path, 0o600)
            # The blob is bound to the source cluster's encryption context; the unwrap unit must present
            # that one, not this host's, or KMS refuses it (InvalidCiphertext) and MariaDB cannot start.
            set_encryption_context(args.conf, key.get("encryption_context") or {})
            # The prepared datadir has no grastate.dat: galera_new_cluster starts a new history.
            say(RESTORE_PROG, "starting a new single-node cluster (galera_new_cluster)")
            run(["galera_new_cluster"], "galera_new_cluster", PRECONDITION)
        say(RESTORE_PROG, f"restored {args.source} into {args.datadir}")
        return OK
    except Failure as f:
        print(f"{RESTORE_PROG}: ERROR: {f}", file=sys.stderr)
        return f.code
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _entry(argv0: str) -> int:
    return restore_main() if Path(argv0).name == RESTORE_PROG else backup_main()


if __name__ == "__main__":
    sys.exit(_entry(sys.argv[0]))

