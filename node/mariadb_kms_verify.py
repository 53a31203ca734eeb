#!/usr/bin/python3
"""mariadb-kms-verify: prove, on a running node, that MariaDB's data is encrypted at rest and in transit.

Installed as /usr/local/sbin/mariadb-kms-verify; run as root on the node. It
talks to MariaDB through the ``mariadb`` client over the unix socket (root is
a unix_socket account on Debian), so it works on a stock node. Prints one
JSON report on stdout; exit status 0 when there is no gap, 1 when there is
any, 2 when it could not check (e.g. the server is down).

Checks:
- Galera: ready, Primary, Synced, cluster size (``--expect-size``).
- Key: exactly one encryption plugin, ACTIVE and FORCE_PLUS_PERMANENT; the
  file_key_management keyfile on tmpfs.
- Flags: every encryption flag on; query logs off (unless ``--allow-query-logs``). With
  ``--log-encryption kernel`` (the stack config's logEncryption), innodb_encrypt_log and encrypt_binlog OFF
  and the canary's marker in the redo or binary logs are a stated limitation where the datadir check finds
  the datadir encrypted below MariaDB, and gaps where it does not.
- InnoDB: every tablespace (INNODB_SYS_TABLESPACES plus space 0, plus any
  row of INNODB_TABLESPACES_ENCRYPTION) encrypted, including tablespaces with
  no row in INNODB_TABLESPACES_ENCRYPTION. Rotation still running is reported
  as in progress; ``--wait N`` waits up to N seconds for it (progress on stderr).
- Tables in engines that cannot be encrypted (MyISAM, CSV, Aria not
  ROW_FORMAT=PAGE, ...) are gaps.
- Aria: every Aria table's own encryption, read from its .MAI header. Aria has
  no information_schema flag for it; the header's base info carries
  MA_EXTRA_OPTIONS_ENCRYPTED, set when the table was created encrypted (Aria
  never re-encrypts an existing table). Layout as MariaDB's storage/maria
  reads it (_ma_base_info_read); the canary cross-checks it with real bytes.
  The header also says whether the table is transactional: MariaDB never
  encrypts the Aria transaction log (aria_log.*), so a user table that logs
  is a gap, and the mysql.* system tables are reported as a limitation.
- gcache on tmpfs and no gcache file left on disk; the keyfile on tmpfs.
- Swap that is not encrypted (dm-crypt) is a gap: tmpfs pages can be swapped out.
- Encryption in transit, per channel (``tls``): the server's TLS for clients
  (have_ssl, TLSv1.2+ only, the certificate the server has loaded is the
  installed one), client enforcement (require_secure_transport), Galera's
  provider SSL for replication and IST (socket.ssl_*, socket.dynamic off, a
  verified handshake on the Galera port) and the SST (mariabackup through
  socat with OpenSSL, the peer verified against the CA, from the [sst]
  options as the SST script reads them). Certificates chain to their CA, are
  not expired, match their keys; keys are readable by mysql only. Facts come
  from ``mariadb-kms-tls inspect``. Every channel is expected encrypted;
  ``--tls-off CHANNEL`` (what the stack config turned off) is the only way
  to accept plaintext on one.
- ``--canary``: a random marker written through SQL into an InnoDB and an
  Aria (TRANSACTIONAL=0, see above) table, flushed (Aria tables flushed, InnoDB dirty pages written,
  binary log rotated), then every file on persistent storage the server
  writes (datadir, redo, undo, binlog, Aria log, tmpdir, logs) is scanned for
  its bytes; tmpfs is not at rest and is skipped. The marker rows are deleted
  afterwards. The report names every file where the marker was found.

``--datadir-state DIR`` (offline, no server): prints the state of a datadir
for mariadb-kms-install: empty, encrypted, unencrypted-pristine,
unencrypted-with-data, mixed or unknown.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import re
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROG = "mariadb-kms-verify"
TLS_TOOL = "/usr/local/sbin/mariadb-kms-tls"
TLS_CHANNELS = ("replication", "sst", "clients", "secure-transport")
WEAK_TLS_VERSIONS = ("SSLv3", "TLSv1.0", "TLSv1.1")
NOT_AT_REST_FS = frozenset({"tmpfs", "ramfs", "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2"})
CANARY_SCHEMA = "mariadb_kms_verify"
NEVER_ENCRYPTED = (
    ".frm table definitions (table and column names, types, comments)",
    "the error log",
    "the Aria transaction log aria_log.* (changes to the mysql.* system tables: accounts, grants, routines)",
    "Galera's grastate.dat and gvwstate.dat (cluster ids and positions)",
    "the unused part of each encrypted Aria index page (.MAI), written from uninitialized memory that can hold "
    "recent statements' text",
)

Row = list[str | None]
Gaps = list[str]


# --------------------------------------------------------------------------
# Talking to MariaDB: the stock client, batch mode, over the unix socket
# --------------------------------------------------------------------------


class SqlError(RuntimeError):
    pass


_UNESCAPE = {"n": "\n", "t": "\t", "\\": "\\", "0": "\0", "r": "\r", "b": "\b", "Z": "\x1a"}


def parse_batch_output(text: str) -> list[Row]:
    """Rows of ``mariadb --batch --skip-column-names`` output (tab-separated, backslash-escaped, NULL)."""
    rows: list[Row] = []
    for line in text.split("\n"):
        if line == "":
            continue
        row: Row = []
        for raw in line.split("\t"):
            if raw == "NULL":
                row.append(None)
            else:
                row.append(re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), raw))
        rows.append(row)
    return rows


Runner = Callable[[str], str]


def mariadb_runner(client: Sequence[str] = ("mariadb",)) -> Runner:
    def run(sql: str) -> str:
        # SQL on stdin, never in argv: the canary marker stays out of `ps`.
        proc = subprocess.run(
            [*client, "--batch", "--skip-column-names", "--protocol=socket", "--user=root"],
            input=sql, capture_output=True, text=True, check=False, timeout=600,
        )
        if proc.returncode != 0:
            raise SqlError(proc.stderr.strip() or f"mariadb exited with {proc.returncode}")
        return proc.stdout

    return run


class Sql:
    def __init__(self, runner: Runner) -> None:
        self._run = runner

    def rows(self, query: str) -> list[Row]:
        return parse_batch_output(self._run(query))

    def execute(self, statements: str) -> None:
        self._run(statements)

    def pairs(self, query: str) -> dict[str, str]:
        return {str(r[0]).lower(): (r[1] if r[1] is not None else "") for r in self.rows(query) if len(r) >= 2}


def sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------
# Pure checks: query rows in, (section, gaps) out
# --------------------------------------------------------------------------


def check_galera(
    status: dict[str, str], variables: dict[str, str], expect_size: int | None
) -> tuple[dict[str, Any], Gaps]:
    gaps: Gaps = []
    size = int(status.get("wsrep_cluster_size", "0") or 0)
    section = {
        "wsrep_on": variables.get("wsrep_on", ""),
        "ready": status.get("wsrep_ready", ""),
        "connected": status.get("wsrep_connected", ""),
        "cluster_status": status.get("wsrep_cluster_status", ""),
        "local_state": status.get("wsrep_local_state_comment", ""),
        "cluster_size": size,
        "cluster_state_uuid": status.get("wsrep_cluster_state_uuid", ""),
    }
    if variables.get("wsrep_on", "").upper() != "ON":
        gaps.append("galera: wsrep_on is not ON")
    if status.get("wsrep_ready", "").upper() != "ON":
        gaps.append("galera: node is not ready (wsrep_ready != ON)")
    if status.get("wsrep_cluster_status", "") != "Primary":
        gaps.append(f"galera: cluster status is {status.get('wsrep_cluster_status') or 'unknown'}, not Primary")
    if status.get("wsrep_local_state_comment", "") != "Synced":
        gaps.append(f"galera: local state is {status.get('wsrep_local_state_comment') or 'unknown'}, not Synced")
    if expect_size is not None and size != expect_size:
        gaps.append(f"galera: cluster size is {size}, expected {expect_size}")
    return section, gaps


# The program turns exactly these on: components/mycnf.py reads this assignment (a literal, kept so).
ENCRYPTION_FLAGS_ON = (
    "innodb_encrypt_log",
    "innodb_encrypt_temporary_tables",
    "encrypt_tmp_files",
    "encrypt_tmp_disk_tables",
    "encrypt_binlog",
    "aria_encrypt_tables",
)


# The logs every commit writes. With logEncryption kernel (``--log-encryption kernel``) the program turns these
# OFF and leaves them to the encryption below MariaDB; components/mycnf.py reads this assignment too.
LOG_FLAGS = ("innodb_encrypt_log", "encrypt_binlog")
LOG_ENCRYPTION_MODES = ("mariadb", "kernel")
LOGS_TO_KERNEL_TRADE_OFF = ("encrypted only below MariaDB (logEncryption: kernel): the redo and binary logs (row "
                            "images of recent changes) read in plaintext to anyone who reads the files on this running "
                            "host, and in any copy taken below MariaDB (a binlog shipped elsewhere, a backup's redo)")


def check_flags(variables: dict[str, str], *, allow_query_logs: bool, logs_left_to_kernel: bool = False,
                datadir_encrypted: bool | None = None) -> tuple[dict[str, Any], Gaps]:
    """``logs_left_to_kernel``: the config turned LOG_FLAGS off; accepted only where ``datadir_encrypted`` (the
    datadir check found it encrypted by the kernel or EBS), stated as a limitation."""
    gaps: Gaps = []
    section: dict[str, Any] = {}
    tables = variables.get("innodb_encrypt_tables", "").upper()
    section["innodb_encrypt_tables"] = tables
    if tables not in ("ON", "FORCE"):
        gaps.append(f"flags: innodb_encrypt_tables is {tables or 'unset'}, not ON or FORCE")
    left: list[str] = []
    for name in ENCRYPTION_FLAGS_ON:
        value = variables.get(name, "").upper()
        section[name] = value
        if value == "ON":
            continue
        if name in LOG_FLAGS and logs_left_to_kernel:
            if datadir_encrypted:
                left.append(name)
                continue
            gaps.append(f"flags: {name} is {value or 'unset'} (logEncryption: kernel), but the datadir is not known "
                        "to be encrypted by the kernel: the log rests in plaintext")
            continue
        gaps.append(f"flags: {name} is {value or 'unset'}, not ON")
    if logs_left_to_kernel:
        section["log_encryption"] = "kernel"
    if left:
        section["limitation"] = f"{' and '.join(left)} OFF, {LOGS_TO_KERNEL_TRADE_OFF}"
    threads = int(variables.get("innodb_encryption_threads", "0") or 0)
    section["innodb_encryption_threads"] = threads
    if threads < 1:
        gaps.append("flags: innodb_encryption_threads is 0: existing tablespaces are never (re)encrypted")
    for log_flag in ("general_log", "slow_query_log"):
        value = variables.get(log_flag, "").upper()
        section[log_flag] = value
        if value == "ON" and not allow_query_logs:
            gaps.append(f"flags: {log_flag} is ON: it writes statement text in plaintext")
    # The canary scan looks for the marker's bytes: a compressed binlog event would hide them even
    # if encrypt_binlog were off, so the scan would pass on plaintext. The canary table itself is created
    # PAGE_COMPRESSED=0 (run_canary), so innodb_compression_default only needs stating.
    binlog_compress = variables.get("log_bin_compress", "").upper()
    section["log_bin_compress"] = binlog_compress
    if binlog_compress == "ON":
        gaps.append("flags: log_bin_compress is ON: compressed binlog events would hide a plaintext canary from "
                    "the scan, so encrypt_binlog cannot be proved")
    section["innodb_compression_default"] = variables.get("innodb_compression_default", "").upper()
    output = variables.get("log_output", "").upper()
    section["log_output"] = output
    if "TABLE" in output.split(","):
        gaps.append("flags: log_output includes TABLE: query logs go to CSV tables, which cannot be encrypted")
    return section, gaps


def check_key_plugin(
    plugins: Sequence[Row], variables: dict[str, str], mounts_text: str
) -> tuple[dict[str, Any], Gaps]:
    gaps: Gaps = []
    listed = [{"name": r[0], "status": r[1], "load_option": r[2]} for r in plugins]
    section: dict[str, Any] = {"plugins": listed}
    active = [p for p in listed if p["status"] == "ACTIVE"]
    if len(active) != 1:
        gaps.append(f"key: {len(active)} active encryption plugins, expected exactly 1")
    for p in active:
        if p["load_option"] != "FORCE_PLUS_PERMANENT":
            gaps.append(f"key: plugin {p['name']} is loaded {p['load_option']}, not FORCE_PLUS_PERMANENT")
    keyfile = variables.get("file_key_management_filename", "")
    if keyfile:
        fstype = filesystem_type(keyfile, mounts_text)
        section["keyfile"] = {"path": keyfile, "filesystem": fstype}
        if fstype not in ("tmpfs", "ramfs"):
            gaps.append(f"key: the plaintext keyfile {keyfile} is on {fstype}, not tmpfs")
    return section, gaps


@dataclass
class InnodbState:
    total: int = 0
    encrypted: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    unencrypted: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return len(self.in_progress) + len(self.unencrypted)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


TEMPORARY_SPACE = 0xFFFFFFFE  # innodb_temporary: rebuilt at every start, encrypted page by page (no crypt data)


def innodb_state(sys_rows: Sequence[Row], enc_rows: Sequence[Row], *, temporary_encrypted: bool) -> InnodbState:
    """sys_rows: SPACE, NAME from INNODB_SYS_TABLESPACES. enc_rows: SPACE, NAME, ENCRYPTION_SCHEME,
    MIN_KEY_VERSION, CURRENT_KEY_VERSION, ROTATING_OR_FLUSHING, KEY_ROTATION_PAGE_NUMBER,
    KEY_ROTATION_MAX_PAGE_NUMBER from INNODB_TABLESPACES_ENCRYPTION. ``temporary_encrypted``:
    innodb_encrypt_temporary_tables is ON (the temporary tablespace never has a row of its own)."""
    names: dict[int, str] = {0: "innodb_system"}
    for r in sys_rows:
        names[_int(r[0])] = str(r[1])
    encryption = {_int(r[0]): r for r in enc_rows}
    for space, r in encryption.items():
        names.setdefault(space, str(r[1]))
    state = InnodbState(total=len(names))
    for space in sorted(names):
        label = f"{names[space]} (space {space})"
        row = encryption.get(space)
        if row is None and space == TEMPORARY_SPACE:
            if temporary_encrypted:
                state.encrypted.append(f"{label}: per page (innodb_encrypt_temporary_tables)")
            else:
                state.unencrypted.append(f"{label}: innodb_encrypt_temporary_tables is OFF")
            continue
        if row is None:
            state.unencrypted.append(f"{label}: no row in INNODB_TABLESPACES_ENCRYPTION")
            continue
        scheme, min_version, rotating = _int(row[2]), _int(row[3]), _int(row[5])
        if rotating:
            page, max_page = row[6] or "?", row[7] or "?"
            state.in_progress.append(f"{label}: rotating (page {page} of {max_page})")
        elif scheme == 1 and min_version >= 1:
            state.encrypted.append(label)
        elif scheme == 1:
            state.in_progress.append(f"{label}: some pages not yet encrypted (min_key_version 0)")
        else:
            state.unencrypted.append(f"{label}: encryption_scheme {scheme}")
    return state


def check_innodb(state: InnodbState) -> tuple[dict[str, Any], Gaps]:
    section = {
        "tablespaces": state.total,
        "encrypted": len(state.encrypted),
        "in_progress": state.in_progress,
        "unencrypted": state.unencrypted,
    }
    gaps = [f"innodb: {item}" for item in state.unencrypted]
    gaps += [f"innodb: encryption in progress: {item}" for item in state.in_progress]
    return section, gaps


CSV_LOG_TABLES = {("mysql", "general_log"), ("mysql", "slow_log")}
NOT_STORED_ENGINES = {"MEMORY", "BLACKHOLE", "PERFORMANCE_SCHEMA", "SEQUENCE"}


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    engine: str | None
    row_format: str | None
    create_options: str

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"


# Every kind of table but views is stored somewhere: BASE TABLE, SEQUENCE, SYSTEM VERSIONED (a
# `WITH SYSTEM VERSIONING` table in any engine), TEMPORARY. Filtering on the kinds we know would skip
# the next one MariaDB adds, so only the kinds that hold no rows are dropped.
NOT_STORED_TABLE_TYPES = frozenset({"VIEW", "SYSTEM VIEW"})
TABLES_QUERY = (
    "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE, ROW_FORMAT, CREATE_OPTIONS, TABLE_TYPE FROM information_schema.TABLES "
    "WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema')"
)


def table_infos(rows: Sequence[Row]) -> list[TableInfo]:
    """rows: TABLE_SCHEMA, TABLE_NAME, ENGINE, ROW_FORMAT, CREATE_OPTIONS[, TABLE_TYPE] from information_schema.TABLES;
    views dropped, every other type kept."""
    return [
        TableInfo(str(r[0]), str(r[1]), r[2], r[3], r[4] or "")
        for r in rows
        if len(r) < 6 or (r[5] or "").upper() not in NOT_STORED_TABLE_TYPES
    ]


def check_engines(tables: Sequence[TableInfo], log_output: str) -> tuple[dict[str, Any], Gaps]:
    gaps: Gaps = []
    counts: dict[str, int] = {}
    exempt: list[str] = []
    for t in tables:
        engine = (t.engine or "UNKNOWN").upper()
        counts[engine] = counts.get(engine, 0) + 1
        if engine == "INNODB" or engine in NOT_STORED_ENGINES:
            continue
        if engine == "ARIA":
            if (t.row_format or "").upper() != "PAGE":
                gaps.append(f"tables: {t.label} is Aria ROW_FORMAT={t.row_format}: only PAGE can be encrypted")
            continue
        if engine == "CSV" and (t.schema, t.name) in CSV_LOG_TABLES and "TABLE" not in log_output.upper():
            exempt.append(f"{t.label} (CSV, written only when log_output includes TABLE)")
            continue
        gaps.append(f"tables: {t.label} uses {t.engine or 'an unknown engine'}, which cannot be encrypted")
    return {"engines": dict(sorted(counts.items())), "exempt": exempt}, gaps


# --------------------------------------------------------------------------
# Aria: per-table encryption from the .MAI header
# --------------------------------------------------------------------------

ARIA_MAGIC = b"\xfe\xfe\x09\x03"
_BASE_POS_OFFSET = 12  # state header: file_version[4] options[2] header_length[2] state_info_length[2]
#                        base_info_length[2] base_pos[2]
_DATA_FILE_TYPE_OFFSET = 22  # ... key_parts[2] unique_key_parts[2] keys uniques language fulltext_keys data_file_type
# base info (_ma_base_info_read): uuid[16], 5 x 8-byte, 6 x 4-byte, 5 x 2-byte fields, then extra_options[2]
_EXTRA_OPTIONS_OFFSET = 16 + 5 * 8 + 6 * 4 + 5 * 2
# ... null_bytes original_null_bytes field_offsets language block_size [2 each], rec_reflength key_reflength
# keys auto_key [1 each], born_transactional
_BORN_TRANSACTIONAL_OFFSET = _EXTRA_OPTIONS_OFFSET + 2 + 5 * 2 + 4
_KEYSTART_OFFSET = 16  # base info: uuid[16], then keystart[8], where the index pages begin
_BLOCK_SIZE_OFFSET = _EXTRA_OPTIONS_OFFSET + 2 + 4 * 2
MA_EXTRA_OPTIONS_ENCRYPTED = 1
BLOCK_RECORD = 3  # enum data_file_type: STATIC, DYNAMIC, COMPRESSED, BLOCK (= ROW_FORMAT=PAGE)


@dataclass(frozen=True)
class AriaHeader:
    encrypted: bool
    transactional: bool
    page_format: bool
    block_size: int = 8192
    keystart: int = 8192

    @property
    def keypage_header(self) -> int:
        """Bytes before an index page's keys (storage/maria ma_open.c: LSN and transid when transactional,
        key id, flag, used length; encrypted pages add a key version, and an LSN when not transactional)."""
        plain = (7 + 6 if self.transactional else 0) + 1 + 1 + 2
        if not self.encrypted:
            return plain
        return plain + (4 if self.transactional else 7 + 4)


class NotAriaFile(ValueError):
    pass


def parse_aria_header(data: bytes) -> AriaHeader:
    if len(data) < 32 or data[:4] != ARIA_MAGIC:
        raise NotAriaFile("not an Aria index file (.MAI magic missing)")
    (base_pos,) = struct.unpack_from(">H", data, _BASE_POS_OFFSET)
    if len(data) < base_pos + _BORN_TRANSACTIONAL_OFFSET + 1:
        raise NotAriaFile("Aria header shorter than its base info")
    (extra_options,) = struct.unpack_from(">H", data, base_pos + _EXTRA_OPTIONS_OFFSET)
    (keystart,) = struct.unpack_from(">Q", data, base_pos + _KEYSTART_OFFSET)
    (block_size,) = struct.unpack_from(">H", data, base_pos + _BLOCK_SIZE_OFFSET)
    return AriaHeader(
        encrypted=bool(extra_options & MA_EXTRA_OPTIONS_ENCRYPTED),
        transactional=bool(data[base_pos + _BORN_TRANSACTIONAL_OFFSET]),
        page_format=data[_DATA_FILE_TYPE_OFFSET] == BLOCK_RECORD,
        block_size=block_size,
        keystart=keystart,
    )


def read_aria_header(path: Path) -> AriaHeader:
    with open(path, "rb") as f:
        return parse_aria_header(f.read(8192))


# Aria writes an encrypted index page from a fresh my_malloc() buffer and encrypts only the part in use
# (storage/maria/ma_crypt.c, ma_crypt_index_pre_write_hook: the header copied, [header, used) encrypted,
# the 4-byte checksum copied). The bytes between the used length and the checksum are whatever the heap
# held; only valgrind builds zero them. Seen here: a canary marker, freed with its INSERT's text, in the
# unused part of canary_aria.MAI's index page while every key and row around it was ciphertext.
ARIA_CHECKSUM_SIZE = 4


def aria_marker_places(data: bytes, needle: bytes) -> list[tuple[int, str]]:
    """Each occurrence of ``needle`` in a .MAI file's bytes: (offset, "index page slack" when it lies wholly
    in the unused part of an encrypted index page, "index page" or "header" otherwise)."""
    header = parse_aria_header(data[:8192])
    size = header.block_size
    places: list[tuple[int, str]] = []
    at = data.find(needle)
    while at >= 0:
        start = at - at % size
        if start < header.keystart or size <= header.keypage_header + ARIA_CHECKSUM_SIZE:
            places.append((at, "header"))
        else:
            (used,) = struct.unpack_from(">H", data, start + header.keypage_header - 2)
            slack = header.encrypted and header.keypage_header <= used < size - ARIA_CHECKSUM_SIZE
            inside = start + used <= at and at + len(needle) <= start + size - ARIA_CHECKSUM_SIZE
            places.append((at, "index page slack" if slack and inside else "index page"))
        at = data.find(needle, at + 1)
    return places


def in_aria_index_slack_only(path: Path, needle: bytes) -> bool:
    """True when every occurrence of ``needle`` in the Aria index file ``path`` is index-page slack."""
    if path.suffix != ".MAI":
        return False
    try:
        places = aria_marker_places(path.read_bytes(), needle)
    except (OSError, NotAriaFile, struct.error):
        return False
    return bool(places) and all(where == "index page slack" for _at, where in places)


def filename_encode(name: str) -> str:
    """MariaDB's table-name-to-file-name encoding (my_charset_filename) for the common cases."""
    return "".join(c if (c.isascii() and (c.isalnum() or c == "_")) else f"@{ord(c):04x}" for c in name)


def aria_files(datadir: Path, t: TableInfo) -> list[Path]:
    base = datadir / filename_encode(t.schema)
    table = filename_encode(t.name)
    exact = base / f"{table}.MAI"
    if exact.exists():
        return [exact]
    return sorted(base.glob(f"{table}#P#*.MAI"))  # partitions (and #SP# subpartitions)


# The Aria transaction log (aria_log.*) holds row images of every change to a transactional Aria
# table, and MariaDB never encrypts it (measured: a canary in a TRANSACTIONAL=1 Aria table was in
# aria_log.00000001 in plaintext). It cannot be moved to tmpfs either: encrypted Aria tables whose log
# is lost can no longer be repaired ("failed to decrypt"). So: system tables are a stated limitation,
# user tables that log are gaps (on Galera user tables belong in InnoDB anyway).
SYSTEM_SCHEMAS = frozenset({"mysql", "sys"})


def check_aria(tables: Sequence[TableInfo], datadir: Path) -> tuple[dict[str, Any], Gaps]:
    gaps: Gaps = []
    report: list[dict[str, Any]] = []
    logged_system: list[str] = []
    for t in tables:
        if (t.engine or "").upper() != "ARIA":
            continue
        files = aria_files(datadir, t)
        if not files:
            gaps.append(f"aria: {t.label}: no .MAI file found under {datadir}, cannot tell")
            report.append({"table": t.label, "encrypted": None, "transactional": None})
            continue
        headers: list[AriaHeader] = []
        for f in files:
            try:
                headers.append(read_aria_header(f))
            except (OSError, NotAriaFile) as e:
                gaps.append(f"aria: {t.label}: {f.name}: {e}")
                headers.append(AriaHeader(encrypted=False, transactional=False, page_format=False))
        encrypted = all(h.encrypted for h in headers)
        transactional = any(h.transactional for h in headers)
        report.append({"table": t.label, "encrypted": encrypted, "transactional": transactional})
        if not encrypted:
            gaps.append(f"aria: {t.label} is not encrypted (created before aria_encrypt_tables was on)")
        if transactional and t.schema in SYSTEM_SCHEMAS:
            logged_system.append(t.label)
        elif transactional:
            gaps.append(
                f"aria: {t.label} is TRANSACTIONAL=1: its changes go to the Aria log, which MariaDB never encrypts "
                "(use InnoDB, or Aria TRANSACTIONAL=0)"
            )
    section: dict[str, Any] = {
        "tables": len(report),
        "encrypted": sum(1 for r in report if r["encrypted"]),
        "each": report,
    }
    if logged_system:
        section["limitation"] = (
            f"{len(logged_system)} system tables (mysql.*) are transactional Aria: changes to them (accounts, "
            "grants with password hashes, routines) are written to the Aria log (aria_log.*) in plaintext; "
            "MariaDB never encrypts that log"
        )
    return section, gaps


# --------------------------------------------------------------------------
# Filesystems: tmpfs, swap
# --------------------------------------------------------------------------


def mount_entries(mounts_text: str) -> list[tuple[str, str, str]]:
    out = []
    for line in mounts_text.splitlines():
        f = line.split()
        if len(f) >= 3:
            out.append((f[0], f[1].replace("\\040", " "), f[2]))
    return out


def filesystem_type(path: str | Path, mounts_text: str) -> str:
    """The type of the filesystem holding ``path`` (longest mount-point prefix; the last mount wins)."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    for _dev, mount_point, fstype in mount_entries(mounts_text):
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fstype
    return best_type


def parse_provider_options(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(";"):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def check_gcache(provider_options: str, datadir: Path, mounts_text: str) -> tuple[dict[str, Any], Gaps]:
    gaps: Gaps = []
    opts = parse_provider_options(provider_options)
    gdir = opts.get("gcache.dir", "") or str(datadir)
    name = opts.get("gcache.name", "galera.cache")
    path = Path(name) if name.startswith("/") else Path(gdir) / name
    fstype = filesystem_type(path.parent, mounts_text)
    section: dict[str, Any] = {
        "dir": gdir, "file": str(path), "filesystem": fstype,
        "size": opts.get("gcache.size", ""), "recover": opts.get("gcache.recover", ""),
    }
    if fstype not in ("tmpfs", "ramfs"):
        gaps.append(f"gcache: {path} is on {fstype}, not tmpfs: Galera writes rows there unencrypted")
    stray = datadir / "galera.cache"
    if path != stray and stray.exists():
        gaps.append(f"gcache: an old gcache file is on disk at {stray}: it holds rows in plaintext")
    for page in sorted(datadir.glob("gcache.page.*")):
        gaps.append(f"gcache: a gcache page file is on disk at {page}")
    return section, gaps


def _device_encrypted(sys_block: Path, depth: int = 0) -> bool:
    """dm-crypt anywhere under this block device (LUKS directly, or LVM on LUKS)."""
    if depth > 8:
        return False
    uuid = sys_block / "dm" / "uuid"
    try:
        if uuid.read_text().startswith("CRYPT-"):
            return True
    except OSError:
        pass
    slaves = sys_block / "slaves"
    if slaves.is_dir():
        return any(_device_encrypted(s.resolve(), depth + 1) for s in slaves.iterdir())
    return False


def swap_entries(swaps_text: str) -> list[tuple[str, str]]:
    out = []
    for line in swaps_text.splitlines()[1:]:
        f = line.split()
        if len(f) >= 2:
            out.append((f[0].replace("\\040", " "), f[1]))
    return out


def check_swap(
    swaps_text: str,
    *,
    sys_root: Path = Path("/sys"),
    stat: Callable[[str], os.stat_result] = os.stat,
) -> tuple[dict[str, Any], Gaps]:
    gaps: Gaps = []
    report = []
    for name, kind in swap_entries(swaps_text):
        where = "unknown"
        encrypted = False
        try:
            if kind == "partition":
                dev = os.path.basename(os.path.realpath(name))
                block = sys_root / "class" / "block" / dev
                if dev.startswith("zram"):
                    where, encrypted = "memory (zram)", True
                else:
                    where, encrypted = f"block device {dev}", _device_encrypted(block.resolve())
            else:
                st = stat(name)
                block = sys_root / "dev" / "block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
                where, encrypted = f"file on device {os.major(st.st_dev)}:{os.minor(st.st_dev)}", _device_encrypted(
                    block.resolve()
                )
        except OSError as e:
            where = f"cannot inspect: {e.strerror}"
        report.append({"swap": name, "type": kind, "where": where, "encrypted": encrypted})
        if not encrypted:
            gaps.append(f"swap: {name} ({kind}, {where}) is not encrypted: tmpfs pages (gcache, key) can land on disk")
    return {"devices": report}, gaps


# --------------------------------------------------------------------------
# Encryption in transit (facts from mariadb-kms-tls inspect)
# --------------------------------------------------------------------------


def inspect_tls(tool: str = TLS_TOOL) -> dict[str, Any]:
    try:
        proc = subprocess.run([tool, "inspect"], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{tool} inspect: {e}"}
    if proc.returncode != 0:
        return {"error": f"{tool} inspect exited {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    try:
        facts: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as e:
        return {"error": f"{tool} inspect printed no JSON: {e}"}
    return facts


def material_gaps(channel: str, cert: str, key: str, files: dict[str, Any]) -> Gaps:
    """What is wrong with the certificate and key one channel names (facts from mariadb-kms-tls)."""
    gaps: Gaps = []
    c = files.get(cert) or {"exists": False}
    if not c.get("exists"):
        gaps.append(f"tls: {channel}: certificate {cert or '(none)'} is missing")
    else:
        if not c.get("ca"):
            gaps.append(f"tls: {channel}: no CA configured to verify peers against")
        elif c.get("chain_ok") is not True:
            gaps.append(f"tls: {channel}: {cert} does not chain to {c.get('ca')}: {c.get('chain_error', 'unchecked')}")
        if c.get("days_left") is None:
            gaps.append(f"tls: {channel}: cannot read the expiry of {cert}")
        elif float(c["days_left"]) <= 0:
            gaps.append(f"tls: {channel}: {cert} expired ({c.get('not_after')})")
    k = files.get(key) or {"exists": False}
    if not k.get("exists"):
        gaps.append(f"tls: {channel}: key {key or '(none)'} is missing")
    else:
        if k.get("matches_cert") is False:
            gaps.append(f"tls: {channel}: {key} is not the key of {cert}")
        if int(str(k.get("mode", "0777")), 8) & 0o077:
            gaps.append(f"tls: {channel}: {key} has mode {k.get('mode')}: readable beyond its owner")
        if k.get("owner") != "mysql":
            gaps.append(f"tls: {channel}: {key} belongs to {k.get('owner')}, not mysql (mariadbd reads it)")
    return gaps


def served_gaps(channel: str, served: dict[str, Any] | None, cert_facts: dict[str, Any]) -> Gaps:
    """What the running node actually serves: Galera by a verified handshake, the server by its loaded certificate."""
    if not served:
        return [f"tls: {channel}: what the node serves was not checked (server not running?)"]
    if not served.get("ok"):
        return [f"tls: {channel}: {served.get('address', 'the server')}: {served.get('error')}"]
    same = served.get("matches_file") if "matches_file" in served else served.get("sha256") == cert_facts.get("sha256")
    if not same:
        return [f"tls: {channel}: the node serves another certificate than the installed one "
                "(mariadb-kms-tls reload applies it)"]
    return []


def check_tls(
    variables: dict[str, str], status: dict[str, str], facts: dict[str, Any], off: Iterable[str]
) -> tuple[dict[str, Any], Gaps]:
    """Each channel encrypted, or turned off by config (``off``); ``facts`` from mariadb-kms-tls inspect."""
    off = set(off)
    gaps: dict[str, Gaps] = {name: [] for name in TLS_CHANNELS}
    files: dict[str, Any] = facts.get("files", {})
    served: dict[str, Any] = facts.get("served", {})
    if "error" in facts:
        for name in ("replication", "sst", "clients"):
            gaps[name].append(f"tls: {name}: cannot inspect the TLS material: {facts['error']}")

    # Clients: the server's own TLS.
    versions = [v.strip() for v in variables.get("tls_version", "").split(",") if v.strip()]
    have_ssl, ssl_cert = variables.get("have_ssl", ""), variables.get("ssl_cert", "")
    clients = {
        "have_ssl": have_ssl,
        "ssl_ca": variables.get("ssl_ca", ""),
        "ssl_cert": ssl_cert,
        "tls_version": ",".join(versions),
        "server_cert_not_after": status.get("ssl_server_not_after", ""),
        "served": served.get("clients"),
    }
    if have_ssl.upper() != "YES":
        gaps["clients"].append(f"tls: clients: have_ssl is {have_ssl or 'unset'}: the server has no TLS")
    else:
        weak = [v for v in versions if v in WEAK_TLS_VERSIONS]
        if weak or not versions:
            gaps["clients"].append(f"tls: clients: tls_version allows {', '.join(weak) or 'every version'}")
        if not clients["server_cert_not_after"]:
            gaps["clients"].append("tls: clients: the server reports no loaded certificate (Ssl_server_not_after)")
        gaps["clients"] += material_gaps("clients", ssl_cert, variables.get("ssl_key", ""), files)
        gaps["clients"] += served_gaps("clients", served.get("clients"), files.get(ssl_cert, {}))

    enforcement = {"require_secure_transport": variables.get("require_secure_transport", "")}
    if enforcement["require_secure_transport"].upper() != "ON":
        gaps["secure-transport"].append("tls: secure-transport: require_secure_transport is not ON: TCP clients "
                                        "may connect without TLS")

    # Replication and IST: Galera's own TLS.
    opts = parse_provider_options(variables.get("wsrep_provider_options", ""))
    enabled = opts.get("socket.ssl", "").upper() in ("YES", "ON", "TRUE", "1")
    replication = {
        "socket.ssl": opts.get("socket.ssl", ""),
        "socket.ssl_cert": opts.get("socket.ssl_cert", ""),
        "socket.ssl_ca": opts.get("socket.ssl_ca", ""),
        "socket.dynamic": opts.get("socket.dynamic", ""),
        "served": served.get("replication"),
    }
    if not enabled:
        gaps["replication"].append(f"tls: replication: socket.ssl is {opts.get('socket.ssl') or 'unset'}: Galera "
                                   "replicates and transfers IST in plaintext")
    else:
        if opts.get("socket.dynamic", "").upper() in ("YES", "ON", "TRUE", "1"):
            gaps["replication"].append("tls: replication: socket.dynamic is on: peers without TLS are accepted")
        gaps["replication"] += material_gaps(
            "replication", opts.get("socket.ssl_cert", ""), opts.get("socket.ssl_key", ""), files
        )
        gaps["replication"] += served_gaps("replication", served.get("replication"),
                                           files.get(opts.get("socket.ssl_cert", ""), {}))

    # SST: mariabackup through socat with OpenSSL, as the SST script reads its options.
    sst: dict[str, Any] = dict(facts.get("sst", {}))
    tools = facts.get("tools", {})
    sst["socat_openssl"] = tools.get("socat_openssl")
    method = variables.get("wsrep_sst_method", sst.get("method", ""))
    sst["method"] = method
    if "error" not in facts:
        if method != "mariabackup":
            gaps["sst"].append(f"tls: sst: method {method or 'unset'}: only mariabackup's TLS is configured "
                               "and checked")
        if not sst.get("tls"):
            gaps["sst"].append(f"tls: sst: transfers without TLS (ssl-mode {sst.get('ssl_mode')}, encrypt "
                               f"{sst.get('encrypt')}){': ' + sst['error'] if sst.get('error') else ''}")
        else:
            if not sst.get("verifies_peer"):
                gaps["sst"].append(f"tls: sst: encrypted but the peer is not verified against a CA (ssl-mode "
                                   f"{sst.get('ssl_mode')})")
            if sst.get("role_overrides"):
                gaps["sst"].append(f"tls: sst: role-specific options {', '.join(sst['role_overrides'])} are set; "
                                   "this check covers the shared ssl-ca/ssl-cert/ssl-key only")
            if sst.get("socat_openssl") is not True:
                gaps["sst"].append("tls: sst: socat is missing or built without OpenSSL")
            if sst.get("ssl_mode") == "VERIFY_IDENTITY" and not tools.get("openssl"):
                gaps["sst"].append("tls: sst: the openssl tool is missing (VERIFY_IDENTITY reads the certificate name)")
            gaps["sst"] += material_gaps("sst", str(sst.get("cert", "")), str(sst.get("key", "")), files)

    section: dict[str, Any] = {}
    all_gaps: Gaps = []
    for name, details in (("clients", clients), ("secure-transport", enforcement), ("replication", replication),
                          ("sst", sst)):
        if name in off:
            state = "off by config"
        else:
            state = "encrypted" if not gaps[name] else "GAP"
            all_gaps += gaps[name]
        section[name] = {"state": state, **details}
        if name in off and gaps[name]:
            section[name]["not_encrypted_because"] = gaps[name]
    section["certificates"] = {
        path: {k: f[k] for k in ("subject", "issuer", "not_after", "days_left", "sha256") if k in f}
        for path, f in files.items() if "sha256" in f
    }
    return section, all_gaps


# --------------------------------------------------------------------------
# The canary scanner
# --------------------------------------------------------------------------


@dataclass
class ScanResult:
    found: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)


def file_contains(path: Path, needle: bytes, chunk: int = 4 << 20) -> bool:
    keep = len(needle) - 1
    tail = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return False
            data = tail + block
            if needle in data:
                return True
            tail = data[-keep:] if keep else b""


def scan_for_marker(roots: Iterable[str | Path], needle: bytes, mounts_text: str) -> ScanResult:
    """Every regular file under ``roots`` on persistent storage, searched for ``needle``; tmpfs & co. skipped."""
    result = ScanResult()
    seen_files: set[tuple[int, int]] = set()
    unique_roots = sorted({os.path.realpath(r) for r in roots})
    for root in unique_roots:
        if not os.path.exists(root):
            continue
        result.roots.append(root)
        walk: Iterable[tuple[str, list[str], list[str]]]
        if os.path.isfile(root):
            walk = [(os.path.dirname(root), [], [os.path.basename(root)])]
        else:
            walk = os.walk(root, followlinks=False)
        for dirpath, _dirs, names in walk:
            fstype = filesystem_type(dirpath, mounts_text)
            if fstype in NOT_AT_REST_FS:
                if dirpath == root:
                    result.skipped.append(f"{root} ({fstype}: not at rest)")
                continue
            for name in names:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                    if not path.is_file() or path.is_symlink() or (st.st_dev, st.st_ino) in seen_files:
                        continue
                    seen_files.add((st.st_dev, st.st_ino))
                    if filesystem_type(path, mounts_text) in NOT_AT_REST_FS:
                        continue
                    result.files += 1
                    result.bytes += st.st_size
                    if file_contains(path, needle):
                        result.found.append(str(path))
                except FileNotFoundError:
                    continue  # a temporary file that went away
                except OSError as e:
                    result.skipped.append(f"{path}: {e.strerror}")
    return result


def log_file_kind(path: str, variables: dict[str, str]) -> str | None:
    """``redo`` or ``binlog`` when ``path`` is one of the server's redo log files or binary logs (where its
    variables put them: innodb_log_group_home_dir, log_bin_basename), else None."""
    datadir = variables.get("datadir", "/var/lib/mysql")

    def absolute(p: str) -> str:
        return os.path.realpath(p if p.startswith("/") else os.path.join(datadir, p))

    real = os.path.realpath(path)
    directory, name = os.path.split(real)
    if directory == absolute(variables.get("innodb_log_group_home_dir") or datadir) and \
            re.fullmatch(r"ib_logfile\d+", name):
        return "redo"
    basename = variables.get("log_bin_basename", "")
    if basename:
        bin_dir, bin_name = os.path.split(absolute(basename))
        if directory == bin_dir and re.fullmatch(re.escape(bin_name) + r"\.\d+", name):
            return "binlog"
    return None


def persistent_roots(variables: dict[str, str]) -> list[str]:
    """Every place the server writes files, from its own variables."""
    datadir = variables.get("datadir", "/var/lib/mysql")

    def absolute(p: str) -> str:
        return p if p.startswith("/") else os.path.join(datadir, p)

    roots = [datadir, "/var/log/mysql"]
    for name in ("innodb_data_home_dir", "innodb_log_group_home_dir", "innodb_undo_directory", "aria_log_dir_path",
                 "innodb_tmpdir"):
        if variables.get(name):
            roots.append(absolute(variables[name]))
    for name in ("log_bin_basename", "relay_log_basename", "general_log_file", "slow_query_log_file", "log_error"):
        value = variables.get(name, "")
        if value:
            roots.append(os.path.dirname(absolute(value)) or datadir)
    for tmp in variables.get("tmpdir", "").split(":"):
        if tmp:
            roots.append(tmp)
    return roots


# Galera 4 builds a local write-set in memory up to 4 MiB (gu::Allocator's max_ram, galerautils
# gu_alloc.hpp), then in 64 MiB pages `0x<id>_data.NNNNNN` / `0x<id>_keys.NNNNNN` in its base_dir, in
# clear, while the transaction commits; the files are deleted afterwards. The canary transaction is
# made several times that size so its rows pass through such pages.
CANARY_SPILL_ROWS = 768
CANARY_PAD_REPEAT = 160  # the marker repeated: about 8 KB a row, about 24 MB of write-set in all
SPILL_PAGE = re.compile(r"^0x[0-9a-fA-F]+_(data|keys)\.\d+$")


@dataclass
class SpillWatch:
    """Galera spill pages seen in base_dir while the canary transaction ran, and which held the marker."""

    seen: set[str] = field(default_factory=set)
    with_marker: set[str] = field(default_factory=set)


def watch_spill_pages(base_dir: Path, needle: bytes, stop: threading.Event, watch: SpillWatch,
                      interval: float = 0.01) -> None:
    """Poll ``base_dir`` for spill pages until ``stop``; each is read (while it exists) until it shows the marker."""
    last_read: dict[str, float] = {}
    while True:
        finished = stop.is_set()
        try:
            names = [n for n in os.listdir(base_dir) if SPILL_PAGE.match(n)]
        except OSError:
            names = []
        for name in names:
            watch.seen.add(name)
            now = time.monotonic()
            if name in watch.with_marker or now - last_read.get(name, 0.0) < 0.2:
                continue
            last_read[name] = now
            try:
                if file_contains(base_dir / name, needle):
                    watch.with_marker.add(name)
            except OSError:
                continue  # deleted after the commit
        if finished:
            return
        time.sleep(interval)


def canary_transaction(schema: str, row_id: str, marker: str) -> str:
    """One transaction that takes the marker through INSERT, UPDATE (its old image goes to undo) and DELETE,
    large enough that Galera spills it to pages in base_dir."""
    m, rid = sql_string(marker), sql_string(row_id + "-")
    like = sql_string(row_id + "-%")
    # The schema is a constant, the marker and the id are quoted by sql_string.
    return (
        "START TRANSACTION;\n"  # noqa: S608
        f"INSERT INTO {schema}.canary_spill (id, marker, pad) SELECT CONCAT({rid}, seq), {m}, "
        f"REPEAT({m}, {CANARY_PAD_REPEAT}) FROM {schema}.seq_1_to_{CANARY_SPILL_ROWS};\n"
        f"UPDATE {schema}.canary_spill SET marker = CONCAT(marker, '-updated') WHERE id LIKE {like};\n"
        f"DELETE FROM {schema}.canary_spill WHERE id LIKE {like} "
        "AND CAST(SUBSTRING_INDEX(id, '-', -1) AS UNSIGNED) % 2 = 0;\n"
        "COMMIT;\n"
    )


# Every node verifies at once after a roll. A replicated write-set that meets a local transaction's locks
# wins, and Galera aborts the local one with ER_LOCK_DEADLOCK (1213): that is a retry, never a gap.
CERTIFICATION_RETRIES = 5


def run_retrying_certification(sql: Sql, statements: str, *, retries: int = CERTIFICATION_RETRIES,
                               pause: Callable[[float], None] = time.sleep) -> None:
    for attempt in range(1, retries + 1):
        try:
            sql.execute(statements)
            return
        except SqlError as err:
            if "1213" not in str(err) or attempt == retries:
                raise
            pause(random.uniform(0.5, 2.0) * attempt)


def canary_tables_sql(schema: str) -> str:
    # PAGE_COMPRESSED=0: with innodb_compression_default=ON a compressed canary page would hide the marker's
    # bytes from the scan even if encryption were off; created uncompressed, the scan can tell.
    return (
        f"CREATE DATABASE IF NOT EXISTS {schema};\n"
        f"CREATE TABLE IF NOT EXISTS {schema}.canary_innodb (id VARCHAR(120) PRIMARY KEY, marker VARCHAR(200) "
        "NOT NULL) ENGINE=InnoDB PAGE_COMPRESSED=0;\n"
        f"CREATE TABLE IF NOT EXISTS {schema}.canary_spill (id VARCHAR(120) PRIMARY KEY, marker VARCHAR(200) "
        "NOT NULL, pad MEDIUMTEXT NOT NULL) ENGINE=InnoDB PAGE_COMPRESSED=0;\n"
        f"CREATE TABLE IF NOT EXISTS {schema}.canary_aria (id VARCHAR(120) PRIMARY KEY, marker VARCHAR(200) "
        "NOT NULL) ENGINE=Aria ROW_FORMAT=PAGE TRANSACTIONAL=0;\n"
    )


def compressed_canary_tables(rows: Sequence[Row]) -> list[str]:
    """rows: TABLE_NAME, CREATE_OPTIONS of the canary schema's tables."""
    return [str(r[0]) for r in rows if re.search(r"page_compressed`?\s*=\s*'?(1|on)", (r[1] or ""), re.I)]


def _global_status(sql: Sql, name: str) -> int | None:
    """One numeric global status value (``name`` is one of this file's constants), or None when absent."""
    query = f"SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = '{name}'"  # noqa: S608
    rows = sql.rows(query)
    if not rows or rows[0][0] in (None, ""):
        return None
    return _int(rows[0][0])


def run_canary(sql: Sql, variables: dict[str, str], mounts_text: str, *, flush_wait: float = 60.0,
               say: Callable[[str], None] | None = None, spill: bool = True,
               datadir_encrypted: bool | None = None, allow_plain_datadir: bool = False,
               logs_left_to_kernel: bool = False) -> tuple[dict[str, Any], Gaps]:
    """``datadir_encrypted``: the kernel encrypts the datadir (verified), so a spill page read through the
    filesystem shows plaintext that is not at rest in clear; None when nobody said how the datadir is kept.
    ``logs_left_to_kernel``: the config left the redo and binary logs to that layer, so the marker in them is
    the same case (only there: a hit in any other file stays a gap)."""
    marker = f"mariadb-kms-canary-{secrets.token_hex(16)}"
    row_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    schema = CANARY_SCHEMA
    # Several rows so the marker fills parts of a page, not a single easily-missed record.
    values = ", ".join(f"({sql_string(f'{row_id}-{i}')}, {sql_string(marker)})" for i in range(8))
    sql.execute(canary_tables_sql(schema))
    compressed = compressed_canary_tables(sql.rows(
        "SELECT TABLE_NAME, CREATE_OPTIONS FROM information_schema.TABLES "  # noqa: S608
        f"WHERE TABLE_SCHEMA = {sql_string(schema)}"
    ))
    provider = parse_provider_options(variables.get("wsrep_provider_options", ""))
    base_dir = Path(provider.get("base_dir", "") or variables.get("datadir", "/var/lib/mysql"))
    watch = SpillWatch()
    flushed = False
    try:
        # Each statement on its own: a certification abort (1213) is retried, and retrying a batch whose first
        # statement had committed would insert its rows twice. Seen with every node verifying under client writes.
        run_retrying_certification(sql, f"INSERT INTO {schema}.canary_innodb VALUES {values};\n")  # noqa: S608
        run_retrying_certification(sql, f"INSERT INTO {schema}.canary_aria VALUES {values};\n")  # noqa: S608
        if spill:
            stop = threading.Event()
            watcher = threading.Thread(
                target=watch_spill_pages, args=(base_dir, marker.encode("ascii"), stop, watch), daemon=True
            )
            watcher.start()
            try:
                run_retrying_certification(sql, canary_transaction(schema, row_id, marker))
            finally:
                stop.set()
                watcher.join(timeout=120)
        # Every page the canary dirtied was written once a checkpoint passes this LSN (the checkpoint is the
        # oldest modification still unflushed). Under client writes the dirty count never reaches 0; this does.
        canary_lsn = _global_status(sql, "INNODB_LSN_CURRENT")
        old_pct = sql.rows("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")[0][0] or "90"
        sql.execute(
            f"FLUSH LOCAL TABLES {schema}.canary_aria;\n"
            "FLUSH LOCAL BINARY LOGS;\n"
            "SET GLOBAL innodb_max_dirty_pages_pct = 0;\n"
        )
        try:
            deadline = time.monotonic() + flush_wait
            while time.monotonic() < deadline:
                if _global_status(sql, "INNODB_BUFFER_POOL_PAGES_DIRTY") == 0:
                    flushed = True
                    break
                checkpoint = _global_status(sql, "INNODB_LSN_LAST_CHECKPOINT")
                if canary_lsn is not None and checkpoint is not None and checkpoint >= canary_lsn:
                    flushed = True
                    break
                time.sleep(0.5)
        finally:
            sql.execute(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(old_pct)};")
        if say:
            say("canary written and flushed; scanning persistent files")
        roots = persistent_roots(variables)
        result = scan_for_marker(roots, marker.encode("ascii"), mounts_text)
    finally:
        # The schema is a constant and the id is quoted by sql_string.
        sql.execute(
            f"DELETE FROM {schema}.canary_innodb WHERE id LIKE {sql_string(row_id + '-%')};\n"  # noqa: S608
            f"DELETE FROM {schema}.canary_spill WHERE id LIKE {sql_string(row_id + '-%')};\n"
            f"DELETE FROM {schema}.canary_aria WHERE id LIKE {sql_string(row_id + '-%')};\n"
        )
    needle = marker.encode("ascii")
    slack = [path for path in result.found if in_aria_index_slack_only(Path(path), needle)]
    # Read through the filesystem with the key present: at rest the kernel's layer holds them as ciphertext.
    in_logs = [path for path in result.found if path not in slack and logs_left_to_kernel and datadir_encrypted
               and log_file_kind(path, variables) is not None]
    gaps = [f"canary: the marker is in plaintext in {path}" for path in result.found
            if path not in slack and path not in in_logs]
    limitations: list[str] = []
    if in_logs:
        limitations.append(f"canary: the marker is in {', '.join(in_logs)}, {LOGS_TO_KERNEL_TRADE_OFF}")
    for path in slack:
        where = (f"canary: the marker was in {path} only in the unused part of an encrypted index page, which "
                 "Aria writes from uninitialized memory")
        if datadir_encrypted:
            continue  # read through the filesystem with the key present; at rest it is ciphertext
        if datadir_encrypted is None or allow_plain_datadir:
            limitations.append(f"{where}; the datadir is not known to be encrypted by the kernel, so it may "
                               "rest in plaintext")
        else:
            gaps.append(f"{where}, and the datadir is not encrypted by the kernel: it rests in plaintext")
    for table in compressed:
        gaps.append(f"canary: {schema}.{table} is page-compressed: the scan could not see a plaintext marker in it")
    spill_hits = sorted(str(base_dir / n) for n in watch.with_marker)
    for page in spill_hits:
        where = f"canary: the marker was in Galera's spill page {page} while the transaction committed"
        if datadir_encrypted:
            continue  # read through the filesystem with the key present; at rest it is ciphertext
        if datadir_encrypted is None or allow_plain_datadir:
            limitations.append(f"{where}; the datadir is not known to be encrypted by the kernel, so those "
                               "blocks may stay on disk in plaintext")
        else:
            gaps.append(f"{where}, and the datadir is not encrypted by the kernel: its blocks stay on disk")
    if not flushed:
        gaps.append("canary: InnoDB dirty pages were not all flushed in time; the proof is incomplete")
    if result.files == 0:
        gaps.append("canary: no persistent file was scanned")
    section = {
        "found_in": [path for path in result.found if path not in slack and path not in in_logs],
        "files_scanned": result.files,
        "bytes_scanned": result.bytes,
        "roots": result.roots,
        "skipped": result.skipped,
        "innodb_flushed": flushed,
        "transaction": ("INSERT, UPDATE, DELETE in one transaction of about "
                        f"{CANARY_SPILL_ROWS * CANARY_PAD_REPEAT * len(marker) >> 20} MiB") if spill else "not run",
        "spill_pages_seen": sorted(watch.seen),
        "spill_pages_with_marker": spill_hits,
        "aria_index_slack_with_marker": slack,
        **({"logs_left_to_kernel_with_marker": in_logs} if logs_left_to_kernel else {}),
        "uncompressed_because": "innodb_compression_default would hide the marker's bytes from the scan",
    }
    if limitations:
        section["limitations"] = limitations
    return section, gaps


# --------------------------------------------------------------------------
# The datadir as a whole: encrypted by the kernel (fscrypt, dm-crypt) or by EBS
# --------------------------------------------------------------------------

DATADIR_ENCRYPTION_MODES = ("fscrypt", "luks", "ebs", "none")
FSCRYPT_TOOL = "/usr/local/sbin/mariadb-kms-fscrypt"


def fscrypt_policy(directory: Path, tool: str = FSCRYPT_TOOL) -> str | None:
    """The key identifier of ``directory``'s fscrypt policy ("none" when it has none); None when unknown."""
    try:
        proc = subprocess.run([tool, "policy", str(directory)], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def device_encrypted_under(path: Path, sys_root: Path = Path("/sys")) -> bool:
    st = os.stat(path)
    return _device_encrypted((sys_root / "dev" / "block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}").resolve())


def check_datadir_encryption(mode: str | None, datadir: Path, *, allow_plain: bool,
                             policy: Callable[[Path], str | None] = fscrypt_policy,
                             dm_crypt: Callable[[Path], bool] = device_encrypted_under) -> tuple[dict[str, Any], Gaps]:
    """Whether the whole datadir is encrypted below MariaDB, as the config says: what MariaDB cannot encrypt
    (Galera spill pages, GRA_*.log, .frm, the Aria log, ddl_recovery.log) is covered only that way."""
    section: dict[str, Any] = {"mode": mode or "unchecked", "datadir": str(datadir)}
    if mode is None:
        section["state"] = "unchecked (no --datadir-encryption given)"
        return section, []
    if mode == "fscrypt":
        identifier = policy(datadir)
        section["fscrypt_policy"] = identifier
        if identifier in (None, "none", ""):
            return {**section, "state": "GAP"}, [
                f"datadir: {datadir} has no fscrypt policy (onPremDatadirEncryption is fscrypt)"]
        return {**section, "state": "encrypted (fscrypt v2, AES-256-XTS)"}, []
    if mode == "luks":
        try:
            ok = dm_crypt(datadir)
        except OSError as e:
            return {**section, "state": "GAP"}, [f"datadir: cannot inspect the device under {datadir}: {e.strerror}"]
        if not ok:
            why = f"datadir: {datadir} is not on a dm-crypt device (onPremDatadirEncryption is luks)"
            return {**section, "state": "GAP"}, [why]
        return {**section, "state": "encrypted (dm-crypt)"}, []
    if mode == "ebs":
        state = "encrypted by EBS with the cluster's KMS key (AWS's: not visible from the node)"
        return {**section, "state": state}, []
    section["state"] = "not encrypted"
    if allow_plain:
        section["limitation"] = ("Galera spill pages, GRA_*.log, .frm, the Aria log and ddl_recovery.log rest in "
                                 "plaintext (allowed by config)")
        return section, []
    return section, ["datadir: not encrypted below MariaDB (onPremDatadirEncryption is none): Galera spill pages, "
                     "GRA_*.log, .frm, the Aria log and ddl_recovery.log rest in plaintext"]


# --------------------------------------------------------------------------
# No SQL path to the key: secure_file_priv, proved by trying
# --------------------------------------------------------------------------

CONF_DIR = "/etc/mariadb-kms"
SECRET_FILES = (
    f"{CONF_DIR}/datakey.blob",
    f"{CONF_DIR}/aws-credentials",
    f"{CONF_DIR}/aws-plugin.env",
    "/proc/self/environ",
)
PROBE_TABLE = f"{CANARY_SCHEMA}.sql_path_probe"


def secret_files(variables: dict[str, str], extra: Sequence[str] = ()) -> list[str]:
    """The files no SQL statement may read: the keyfile, the blob, credentials, mariadbd's own environment."""
    datadir = variables.get("datadir", "/var/lib/mysql")
    paths = [variables.get("file_key_management_filename", "") or "/run/mariadb-kms/keyfile", *SECRET_FILES,
             os.path.join(datadir, "aws-kms-key.1.1"), *extra]
    return list(dict.fromkeys(p for p in paths if p))


def check_secure_file_priv(value: str, datadir: str, *, stat: Callable[[str], os.stat_result] = os.stat,
                           listdir: Callable[[str], list[str]] = os.listdir,
                           mysql_uid: int | None = None) -> tuple[dict[str, Any], Gaps]:
    section: dict[str, Any] = {"secure_file_priv": value}
    if not value:
        return section, ["sql paths: secure_file_priv is empty: any FILE-privileged account can read every file "
                         "mariadbd can open, the keyfile included"]
    gaps: Gaps = []
    real, data = os.path.realpath(value), os.path.realpath(datadir)
    if real == data or real.startswith(data.rstrip("/") + "/") or data.startswith(real.rstrip("/") + "/"):
        gaps.append(f"sql paths: secure_file_priv {value} overlaps the datadir {datadir}")
    try:
        st = stat(real)
        section["mode"] = f"{st.st_mode & 0o7777:04o}"
        if st.st_mode & 0o077:
            gaps.append(f"sql paths: secure_file_priv {value} is mode {st.st_mode & 0o7777:04o}, not 0700")
        if mysql_uid is not None and st.st_uid != mysql_uid:
            gaps.append(f"sql paths: secure_file_priv {value} is not owned by mysql")
        section["entries"] = len(listdir(real))
    except OSError as e:
        gaps.append(f"sql paths: secure_file_priv {value}: {e.strerror}")
    return section, gaps


@dataclass(frozen=True)
class PathAttempt:
    how: str  # "LOAD DATA INFILE", "LOAD_FILE()", "SELECT ... INTO OUTFILE"
    path: str
    succeeded: bool
    detail: str


def try_sql_paths(sql: Sql, paths: Sequence[str], *, exists: Callable[[str], bool] = os.path.exists,
                  remove: Callable[[str], None] = os.unlink) -> list[PathAttempt]:
    """Each path read through SQL two ways and a file written beside it, as root (FILE and every privilege).
    A temporary table takes what LOAD DATA reads: it is never replicated, so a success leaks nowhere."""
    attempts: list[PathAttempt] = []
    for path in paths:
        if not exists(path):
            continue
        q = sql_string(path)
        try:
            out = sql.rows(
                f"CREATE DATABASE IF NOT EXISTS {CANARY_SCHEMA};\n"
                f"CREATE TEMPORARY TABLE {PROBE_TABLE} (line LONGBLOB);\n"
                f"LOAD DATA INFILE {q} INTO TABLE {PROBE_TABLE} FIELDS TERMINATED BY '' ESCAPED BY '';\n"
                f"SELECT COUNT(*) FROM {PROBE_TABLE};\n"
            )
            attempts.append(PathAttempt("LOAD DATA INFILE", path, True, f"read {out[0][0] if out else '?'} lines"))
        except SqlError as e:
            attempts.append(PathAttempt("LOAD DATA INFILE", path, False, str(e).splitlines()[-1][:200]))
        try:
            got = sql.rows(f"SELECT LOAD_FILE({q}) IS NOT NULL")
            read = bool(got) and got[0][0] == "1"
            attempts.append(PathAttempt("LOAD_FILE()", path, read, "returned the file" if read else "returned NULL"))
        except SqlError as e:
            attempts.append(PathAttempt("LOAD_FILE()", path, False, str(e).splitlines()[-1][:200]))
        if path.startswith("/proc/"):
            continue
        target = os.path.join(os.path.dirname(path), f".mariadb-kms-sql-path-probe-{secrets.token_hex(4)}")
        try:
            sql.execute(f"SELECT 'mariadb-kms-verify' INTO OUTFILE {sql_string(target)}")
            attempts.append(PathAttempt("SELECT ... INTO OUTFILE", target, True, "wrote a file beside it"))
            try:
                remove(target)
            except OSError:
                pass
        except SqlError as e:
            attempts.append(PathAttempt("SELECT ... INTO OUTFILE", target, False, str(e).splitlines()[-1][:200]))
    return attempts


def check_sql_paths(variables: dict[str, str], attempts: Sequence[PathAttempt], secure: tuple[dict[str, Any], Gaps]
                    ) -> tuple[dict[str, Any], Gaps]:
    section, gaps = secure
    section = {**section, "attempts": [
        {"how": a.how, "path": a.path, "succeeded": a.succeeded, "detail": a.detail} for a in attempts]}
    gaps = list(gaps)
    for a in attempts:
        if a.succeeded:
            gaps.append(f"sql paths: {a.how} on {a.path} succeeded ({a.detail})")
    if not attempts:
        gaps.append("sql paths: no secret file was found to try; the proof is empty")
    return section, gaps


# --------------------------------------------------------------------------
# Offline: the state of a datadir, for mariadb-kms-install
# --------------------------------------------------------------------------

# What mariadb-install-db and Debian's postinst leave in a datadir that never held data.
_PRISTINE_TOP = re.compile(
    r"^(aria_log\.\d+|aria_log_control|ibdata1|ib_logfile\d+|ibtmp1|ib_buffer_pool|undo\d+|mysql_upgrade_info|"
    r"debian-[\d.]+\.flag|ddl_recovery(-backup)?\.log|multi-master\.info|tc\.log|.*\.pid|.*\.err|"
    r"mysql|performance_schema|sys|lost\+found|aws-kms-key\.\d+\.\d+)$"
)
_IGNORED_WHEN_EMPTY = re.compile(r"^(lost\+found|debian-[\d.]+\.flag|aws-kms-key\.\d+\.\d+|\.mariadb-kms.*)$")


def datadir_state(datadir: Path) -> tuple[str, list[str]]:
    if not datadir.is_dir():
        return "empty", [f"{datadir} does not exist"]
    entries = sorted(os.listdir(datadir))
    if all(_IGNORED_WHEN_EMPTY.match(e) for e in entries):
        return "empty", ["no database files"]
    mysql = datadir / "mysql"
    mai = sorted(mysql.glob("*.MAI")) if mysql.is_dir() else []
    if not mai:
        return "unknown", [f"{datadir} holds files but no Aria system tables in mysql/: refusing to guess"]
    flags = {}
    for f in mai:
        try:
            flags[f.name] = read_aria_header(f).encrypted
        except (OSError, NotAriaFile) as e:
            return "unknown", [f"{f}: {e}"]
    if all(flags.values()):
        return "encrypted", [f"{len(flags)} Aria system tables encrypted"]
    if any(flags.values()):
        plain = sorted(k for k, v in flags.items() if not v)
        return "mixed", [f"unencrypted system tables next to encrypted ones: {', '.join(plain)}"]
    reasons = [f"{e}: not something a fresh install leaves" for e in entries if not _PRISTINE_TOP.match(e)]
    for marker in ("grastate.dat", "gvwstate.dat", "galera.cache"):
        if (datadir / marker).exists():
            reasons.append(f"{marker}: this datadir has been part of a Galera cluster")
    for f in (datadir / "mysql").iterdir():
        if f.suffix.lower() not in (".frm", ".mai", ".mad", ".ibd", ".csv", ".csm", ".opt", ".trg", ".trn", ".par"):
            reasons.append(f"mysql/{f.name}: unexpected in a fresh system schema")
    if reasons:
        return "unencrypted-with-data", reasons
    return "unencrypted-pristine", ["only what mariadb-install-db creates, system tables unencrypted"]


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _mysql_uid() -> int | None:
    try:
        return pwd.getpwnam("mysql").pw_uid
    except KeyError:
        return None


def gather_innodb(sql: Sql) -> InnodbState:
    temporary = sql.rows("SELECT @@GLOBAL.innodb_encrypt_temporary_tables")
    sys_rows = sql.rows("SELECT SPACE, NAME FROM information_schema.INNODB_SYS_TABLESPACES")
    enc_rows = sql.rows(
        "SELECT SPACE, NAME, ENCRYPTION_SCHEME, MIN_KEY_VERSION, CURRENT_KEY_VERSION, ROTATING_OR_FLUSHING, "
        "KEY_ROTATION_PAGE_NUMBER, KEY_ROTATION_MAX_PAGE_NUMBER FROM information_schema.INNODB_TABLESPACES_ENCRYPTION"
    )
    return innodb_state(sys_rows, enc_rows, temporary_encrypted=bool(temporary) and temporary[0][0] in ("1", "ON"))


def wait_for_rotation(sql: Sql, seconds: float, say: Callable[[str], None]) -> InnodbState:
    deadline = time.monotonic() + seconds
    state = gather_innodb(sql)
    while state.pending and time.monotonic() < deadline:
        example = (state.in_progress + state.unencrypted)[0]
        say(f"waiting for InnoDB encryption: {state.pending} of {state.total} tablespaces pending, e.g. {example}")
        time.sleep(2)
        state = gather_innodb(sql)
    return state


def verify(
    sql: Sql,
    args: argparse.Namespace,
    *,
    mounts_text: str,
    swaps_text: str,
    tls_facts: Callable[[], dict[str, Any]] = inspect_tls,
    exists: Callable[[str], bool] = os.path.exists,
) -> dict[str, Any]:
    variables = sql.pairs("SHOW GLOBAL VARIABLES")
    status = sql.pairs("SHOW GLOBAL STATUS LIKE 'wsrep%'")
    gaps: Gaps = []
    report: dict[str, Any] = {"node": socket.gethostname(), "version": variables.get("version", "")}

    def add(name: str, result: tuple[dict[str, Any], Gaps]) -> None:
        report[name] = result[0]
        gaps.extend(result[1])

    add("galera", check_galera(status, variables, args.expect_size))
    plugins = sql.rows(
        "SELECT PLUGIN_NAME, PLUGIN_STATUS, LOAD_OPTION FROM information_schema.PLUGINS "
        "WHERE PLUGIN_TYPE = 'ENCRYPTION'"
    )
    add("key", check_key_plugin(plugins, variables, mounts_text))
    datadir = Path(variables.get("datadir", "/var/lib/mysql"))
    datadir_mode = getattr(args, "datadir_encryption", None)
    allow_plain = bool(getattr(args, "allow_plain_datadir", False))
    # Checked first, reported in its place below: the flags and the canary judge the logs by it.
    datadir_result = check_datadir_encryption(datadir_mode, datadir, allow_plain=allow_plain)
    encrypted = None if datadir_mode is None else (
        datadir_mode != "none" and datadir_result[0].get("state", "").startswith("encrypted"))
    logs_to_kernel = getattr(args, "log_encryption", "mariadb") == "kernel"
    add("flags", check_flags(variables, allow_query_logs=args.allow_query_logs, logs_left_to_kernel=logs_to_kernel,
                             datadir_encrypted=encrypted))
    state = wait_for_rotation(sql, args.wait, _say) if args.wait > 0 else gather_innodb(sql)
    add("innodb", check_innodb(state))
    tables = table_infos(sql.rows(TABLES_QUERY))
    add("tables", check_engines(tables, variables.get("log_output", "")))
    add("aria", check_aria(tables, datadir))
    add("gcache", check_gcache(variables.get("wsrep_provider_options", ""), datadir, mounts_text))
    add("swap", check_swap(swaps_text))
    ssl_status = sql.pairs("SHOW GLOBAL STATUS LIKE 'Ssl_server_not%'")
    add("tls", check_tls(variables, ssl_status, tls_facts(), args.tls_off))
    add("datadir_encryption", datadir_result)
    add("sql_paths", check_sql_paths(
        variables,
        try_sql_paths(sql, secret_files(variables, getattr(args, "secret_file", []) or []), exists=exists),
        check_secure_file_priv(variables.get("secure_file_priv", ""), str(datadir), mysql_uid=_mysql_uid()),
    ))
    if args.canary:
        add("canary", run_canary(sql, variables, mounts_text, say=_say, spill=getattr(args, "canary_spill", True),
                                 datadir_encrypted=encrypted, allow_plain_datadir=allow_plain,
                                 logs_left_to_kernel=logs_to_kernel))
    report["never_encrypted"] = list(NEVER_ENCRYPTED)
    report["gaps"] = gaps
    report["ok"] = not gaps
    return report


HELP_EPILOG = """\
exit status: 0 no gap (or --datadir-state printed the state);
             1 the report lists at least one gap;
             2 it could not check (the server is down or did not answer), bad argument

example: sudo mariadb-kms-verify --expect-size 3
         sudo mariadb-kms-verify --canary --wait 600
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Prove that this MariaDB node is encrypted at rest and in transit.\n"
        "Run it as root on a mariadb-kms node while MariaDB runs; it prints one JSON report on stdout.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--canary", action="store_true", help="write a marker through SQL and scan the disk for it")
    parser.add_argument("--wait", type=float, default=0, metavar="N", help="wait up to N s for encryption to finish")
    parser.add_argument("--expect-size", type=int, default=None, metavar="N", help="expected Galera cluster size")
    parser.add_argument("--allow-query-logs", action="store_true", help="the general/slow logs are on by config")
    parser.add_argument("--tls-off", action="append", default=[], choices=TLS_CHANNELS, metavar="CHANNEL",
                        help="a channel the stack config turned off, accepted in plaintext: "
                        + ", ".join(TLS_CHANNELS) + " (repeatable)")
    parser.add_argument("--client", default="mariadb", help="the mariadb client binary")
    parser.add_argument("--datadir-encryption", choices=DATADIR_ENCRYPTION_MODES, default=None,
                        help="how the datadir is encrypted below MariaDB (the stack config's onPremDatadirEncryption; "
                        "ebs on EC2); checked where the node can see it")
    parser.add_argument("--allow-plain-datadir", action="store_true",
                        help="datadir encryption none is allowed by config: stated, not a gap")
    parser.add_argument("--log-encryption", choices=LOG_ENCRYPTION_MODES, default="mariadb",
                        help="the stack config's logEncryption: with kernel, innodb_encrypt_log and encrypt_binlog OFF "
                        "and the marker in the redo or binary logs are stated, not gaps, where the datadir check "
                        "finds the datadir encrypted by the kernel or EBS")
    parser.add_argument("--no-canary-spill", dest="canary_spill", action="store_false",
                        help="skip the canary's large transaction (Galera spill pages)")
    parser.add_argument("--secret-file", action="append", default=[], metavar="PATH",
                        help="one more file no SQL statement may read (repeatable)")
    parser.add_argument("--datadir-state", type=Path, metavar="DIR", help="offline: print the state of DIR and exit")
    args = parser.parse_args(argv)
    if args.datadir_state is not None:
        state, reasons = datadir_state(args.datadir_state)
        for reason in reasons:
            _say(reason)
        print(state)
        return 0
    try:
        report = verify(
            Sql(mariadb_runner((args.client,))),
            args,
            mounts_text=Path("/proc/mounts").read_text(encoding="utf-8"),
            swaps_text=Path("/proc/swaps").read_text(encoding="utf-8") if Path("/proc/swaps").exists() else "",
        )
    except (SqlError, OSError, subprocess.TimeoutExpired) as e:
        print(json.dumps({"node": socket.gethostname(), "ok": False, "error": str(e), "gaps": [f"cannot verify: {e}"]},
                         indent=2))
        return 2
    print(json.dumps(report, indent=2, sort_keys=False))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
