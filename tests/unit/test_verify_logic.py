"""mariadb-kms-verify's logic: query rows and files in, findings out.

Every check is fed canned rows (shaped like what MariaDB 10.11 returned on a
real Debian 12 node) and must find what it looks for: each has a case that
passes and a case that must be reported as a gap. The Aria header parser is
checked against real .MAI headers written by MariaDB 10.11 (an encrypted
system table, and tables made with aria_encrypt_tables off), and the canary
scanner against a planted marker.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from node_scripts import load_node_script

REPO = Path(__file__).resolve().parents[2]


verify = load_node_script("mariadb_kms_verify", REPO / "node" / "mariadb_kms_verify.py")

# The first header_length bytes of .MAI files written by MariaDB 10.11.18 on Debian 12, zlib + base64.
# ctl.aria_plain: made with aria_encrypt_tables=OFF, ROW_FORMAT=PAGE TRANSACTIONAL=1
PLAIN_TRANSACTIONAL = (
    "eNr794+TmYeB8QDDdYZ2hvcMjAwgxMDMDKKBrHO+bGgULvAfClBFFdBoguAD3Dy4iegmZ/PYV0CZjGh8fAbbg8jUzdW2b9gEPy7c"
    "z/QHph+760KxiDFOB+K5QAY3kF4FpJUZmIBmsIBJaIgx6CowsLIyQkMSaLIANoOA8kApThBk4QALOQCNgTsITLOAReBaGFgZOBgn"
    "Aa2C6IcKAgBtMjCw"
)
# ctl.aria_enc_nt: aria_encrypt_tables=ON, ROW_FORMAT=PAGE TRANSACTIONAL=0
ENCRYPTED_NOT_TRANSACTIONAL = (
    "eNr794+TmYeB8RrDdYZ2hvcMjAwgxMDMzEAq+A8FqKIKaDQJ5sFNRDc5m8e+AspkROPjAR/sQWTq5mrbN2yCHxfuZ/oD04/ddfUN"
    "mGKM04F4LpDBDaTnAWkBBiagGSxgEgIZGHQVGFhZGaGuUwCpwWIQUClQihMEWTjAQg5AY+AOAtMsYBG4FgZWBg7GSUCrIPqhgowi"
    "n3cL1mllhAmZWnqyRwddyWDQtn8PAJCGNEY="
)
# mysql.global_priv, made by mariadb-install-db under our encryption config
ENCRYPTED_TRANSACTIONAL_GLOBAL_PRIV = (
    "eNr794+TmYOJiYvhOkM7w28GJgYGRgYGBmZmIL0TyNqkBhaY6cvGAOVBATMDGvgPBaiiDmg0QcAINw9KK2CYnM1jH4usGolPJPhg"
    "DyJTN1fbvmET/LhwP9MfhM0KWNTHNWCKsXQC8RQggw1ILwTSStAw4QDSMF8EKzCwsjGCuEBCgYFlAhbDmRgZ+IFSTQzsLB2MwZDA"
    "ZfoLDw+ICCMj0AkIUQZGpr9QHiOMD1LDCHEoE4RkqWVgYeABQrB7YSHGxMAossmaV5L/Dm9Q8J79Ucwct/tyFpc1AgD/KjhQ"
)
# ctl.aria_dyn: ROW_FORMAT=DYNAMIC (Aria cannot encrypt it)
PLAIN_DYNAMIC = (
    "eNr794+TmYORcRXDdYZ2hvcMjAwgxMAIIkgD/6EAVVSBgVzwH24iusnZPPYVUCYjGh8P+GAPIlM3V9u+YRP8uHA/0x+YfhJcyYKG"
    "RYAmMIJZCKCrwMDGyojwvwAWc4DhywiU4gJBFg6wkAOaMSALUEQApI0pMA=="
)


def _header(blob: tuple[str, ...] | str) -> bytes:
    text = "".join(blob) if isinstance(blob, tuple) else blob
    return zlib.decompress(base64.b64decode(text))


def _mai(path: Path, blob: tuple[str, ...] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _header(blob)
    path.write_bytes(data + bytes(8192 - len(data)))  # a .MAI's first block, as on disk
    return path


TMPFS_AND_DISK = "/dev/vda / ext4 rw 0 0\ntmpfs /run tmpfs rw,nosuid 0 0\ntmpfs /run/galera tmpfs rw 0 0\n"


# --------------------------------------------------------------------------
# The client's batch output
# --------------------------------------------------------------------------


def test_batch_output_is_split_unescaped_and_null_aware() -> None:
    text = "a\\tb\tNULL\tline\\nbreak\n0\t\\\\x\t\n"
    assert verify.parse_batch_output(text) == [["a\tb", None, "line\nbreak"], ["0", "\\x", ""]]


def test_sql_strings_are_quoted() -> None:
    assert verify.sql_string("it's a \\ test") == "'it\\'s a \\\\ test'"


# --------------------------------------------------------------------------
# Galera, flags, key
# --------------------------------------------------------------------------

SYNCED = {
    "wsrep_ready": "ON", "wsrep_connected": "ON", "wsrep_cluster_status": "Primary",
    "wsrep_local_state_comment": "Synced", "wsrep_cluster_size": "3", "wsrep_cluster_state_uuid": "0ad3e0a6",
}


def test_galera_synced_primary_of_the_expected_size_passes() -> None:
    section, gaps = verify.check_galera(SYNCED, {"wsrep_on": "ON"}, 3)
    assert gaps == []
    assert section["cluster_size"] == 3 and section["local_state"] == "Synced"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"wsrep_local_state_comment": "Joining: receiving State Transfer"}, "not Synced"),
        ({"wsrep_cluster_status": "non-Primary"}, "not Primary"),
        ({"wsrep_ready": "OFF"}, "not ready"),
        ({"wsrep_cluster_size": "2"}, "expected 3"),
    ],
)
def test_galera_gaps(change: dict[str, str], expected: str) -> None:
    _, gaps = verify.check_galera({**SYNCED, **change}, {"wsrep_on": "ON"}, 3)
    assert len(gaps) == 1 and expected in gaps[0]


def test_galera_off_is_a_gap() -> None:
    _, gaps = verify.check_galera({}, {"wsrep_on": "OFF"}, None)
    assert any("wsrep_on" in g for g in gaps)


GOOD_FLAGS = {
    "innodb_encrypt_tables": "FORCE", "innodb_encrypt_log": "ON", "innodb_encrypt_temporary_tables": "ON",
    "encrypt_tmp_files": "ON", "encrypt_tmp_disk_tables": "ON", "encrypt_binlog": "ON", "aria_encrypt_tables": "ON",
    "innodb_encryption_threads": "4", "general_log": "OFF", "slow_query_log": "OFF", "log_output": "FILE",
}


def test_flags_all_on_pass() -> None:
    section, gaps = verify.check_flags(GOOD_FLAGS, allow_query_logs=False)
    assert gaps == []
    assert section["innodb_encrypt_tables"] == "FORCE"


@pytest.mark.parametrize(
    "flag",
    ["innodb_encrypt_log", "innodb_encrypt_temporary_tables", "encrypt_tmp_files", "encrypt_tmp_disk_tables",
     "encrypt_binlog", "aria_encrypt_tables"],
)
def test_each_flag_off_is_a_gap_naming_it(flag: str) -> None:
    _, gaps = verify.check_flags({**GOOD_FLAGS, flag: "OFF"}, allow_query_logs=False)
    assert len(gaps) == 1 and flag in gaps[0]


def test_tables_off_threads_zero_and_query_logs() -> None:
    _, gaps = verify.check_flags(
        {**GOOD_FLAGS, "innodb_encrypt_tables": "OFF", "innodb_encryption_threads": "0", "general_log": "ON",
         "log_output": "FILE,TABLE"},
        allow_query_logs=False,
    )
    text = "\n".join(gaps)
    assert "innodb_encrypt_tables" in text and "innodb_encryption_threads" in text
    assert "general_log" in text and "log_output" in text
    _, allowed = verify.check_flags({**GOOD_FLAGS, "slow_query_log": "ON"}, allow_query_logs=True)
    assert allowed == []


PLUGIN_OK = [["file_key_management", "ACTIVE", "FORCE_PLUS_PERMANENT"]]


def test_key_plugin_active_permanent_and_keyfile_on_tmpfs() -> None:
    variables = {"file_key_management_filename": "/run/mariadb-kms/keyfile"}
    section, gaps = verify.check_key_plugin(PLUGIN_OK, variables, TMPFS_AND_DISK)
    assert gaps == []
    assert section["keyfile"]["filesystem"] == "tmpfs"


def test_key_plugin_gaps() -> None:
    _, none = verify.check_key_plugin([], {}, TMPFS_AND_DISK)
    assert any("0 active" in g for g in none)
    _, loose = verify.check_key_plugin([["file_key_management", "ACTIVE", "ON"]], {}, TMPFS_AND_DISK)
    assert any("FORCE_PLUS_PERMANENT" in g for g in loose)
    _, on_disk = verify.check_key_plugin(PLUGIN_OK, {"file_key_management_filename": "/etc/key"}, TMPFS_AND_DISK)
    assert any("ext4" in g for g in on_disk)


# --------------------------------------------------------------------------
# InnoDB tablespaces
# --------------------------------------------------------------------------

# As 10.11 lists them on a fresh node (INNODB_SYS_TABLESPACES has no space 0 row).
SYS_ROWS = [
    ["1", "mysql/innodb_table_stats"], ["2", "mysql/innodb_index_stats"], ["3", "mysql/transaction_registry"],
    ["4", "mysql/gtid_slave_pos"], ["4294967294", "innodb_temporary"], ["5", "app/orders"],
]


def _enc(space: str, name: str, scheme: str = "1", min_v: str = "1", rotating: str = "0") -> list[str | None]:
    return [space, name, scheme, min_v, "1", rotating, None, None]


ENC_ROWS = [
    _enc("0", "innodb_system"), _enc("1", "mysql/innodb_table_stats"), _enc("2", "mysql/innodb_index_stats"),
    _enc("3", "mysql/transaction_registry"), _enc("4", "mysql/gtid_slave_pos"), _enc("5", "app/orders"),
]


def test_every_tablespace_encrypted_passes_including_space_0_and_the_temporary_one() -> None:
    state = verify.innodb_state(SYS_ROWS, ENC_ROWS, temporary_encrypted=True)
    section, gaps = verify.check_innodb(state)
    assert gaps == []
    assert section["tablespaces"] == 7 == section["encrypted"]


def test_a_tablespace_with_no_encryption_row_is_a_gap() -> None:
    rows = [r for r in ENC_ROWS if r[0] != "5"]
    _, gaps = verify.check_innodb(verify.innodb_state(SYS_ROWS, rows, temporary_encrypted=True))
    assert gaps == ["innodb: app/orders (space 5): no row in INNODB_TABLESPACES_ENCRYPTION"]


def test_space_0_is_checked_even_though_sys_tablespaces_omits_it() -> None:
    rows = [r for r in ENC_ROWS if r[0] != "0"]
    _, gaps = verify.check_innodb(verify.innodb_state(SYS_ROWS, rows, temporary_encrypted=True))
    assert gaps == ["innodb: innodb_system (space 0): no row in INNODB_TABLESPACES_ENCRYPTION"]


def test_rotation_is_in_progress_and_unencrypted_is_a_gap() -> None:
    rows = [*ENC_ROWS[:4], _enc("4", "mysql/gtid_slave_pos", min_v="0"),
            ["5", "app/orders", "1", "0", "1", "1", "120", "640"]]
    state = verify.innodb_state(SYS_ROWS, rows, temporary_encrypted=True)
    assert state.pending == 2
    assert "rotating (page 120 of 640)" in state.in_progress[1]
    unencrypted = verify.innodb_state(SYS_ROWS, [*ENC_ROWS[:5], _enc("5", "app/orders", scheme="0", min_v="0")],
                                      temporary_encrypted=True)
    assert unencrypted.unencrypted == ["app/orders (space 5): encryption_scheme 0"]


def test_temporary_tablespace_follows_its_flag() -> None:
    state = verify.innodb_state(SYS_ROWS, ENC_ROWS, temporary_encrypted=False)
    assert state.unencrypted == ["innodb_temporary (space 4294967294): innodb_encrypt_temporary_tables is OFF"]


class FakeSql:
    """Answers queries from canned batch output; records every statement."""

    def __init__(self, answers: dict[str, str], on_execute: Any = None, errors: dict[str, str] | None = None) -> None:
        self.answers = answers
        self.executed: list[str] = []
        self.on_execute = on_execute
        self.errors = errors or {}

    def __call__(self, sql: str) -> str:
        self.executed.append(sql)
        if self.on_execute:
            self.on_execute(sql)
        for needle, message in self.errors.items():
            if needle in sql:
                raise verify.SqlError(message)
        for needle, output in self.answers.items():
            if needle in sql:
                return output
        return ""


def _batch(rows: list[list[str | None]]) -> str:
    return "".join("\t".join("NULL" if v is None else v for v in r) + "\n" for r in rows)


def test_wait_reports_progress_until_rotation_finishes() -> None:
    calls = {"n": 0}
    rotating = [*ENC_ROWS[:5], ["5", "app/orders", "1", "0", "1", "1", "10", "20"]]

    def enc_answer(sql: str) -> None:
        if "INNODB_TABLESPACES_ENCRYPTION" in sql:
            calls["n"] += 1

    fake = FakeSql({"innodb_encrypt_temporary_tables": "1\n", "INNODB_SYS_TABLESPACES": _batch(SYS_ROWS)}, enc_answer)
    answers = iter([_batch(rotating), _batch(rotating), _batch(ENC_ROWS)])
    fake.answers["INNODB_TABLESPACES_ENCRYPTION"] = ""

    def run(sql: str) -> str:
        if "INNODB_TABLESPACES_ENCRYPTION" in sql:
            return next(answers)
        return fake(sql)

    said: list[str] = []
    original_sleep = verify.time.sleep
    verify.time.sleep = lambda _s: None
    try:
        state = verify.wait_for_rotation(verify.Sql(run), 60, said.append)
    finally:
        verify.time.sleep = original_sleep
    assert state.pending == 0
    assert len(said) == 2 and "1 of 7 tablespaces pending" in said[0] and "rotating" in said[0]


# --------------------------------------------------------------------------
# Engines that cannot be encrypted
# --------------------------------------------------------------------------


def _t(schema: str, name: str, engine: str | None, row_format: str | None = "Page") -> Any:
    return verify.TableInfo(schema, name, engine, row_format, "")


def test_unencryptable_engines_are_gaps_and_stock_log_tables_are_exempt() -> None:
    tables = [
        _t("mysql", "global_priv", "Aria"), _t("mysql", "general_log", "CSV", "Dynamic"),
        _t("mysql", "slow_log", "CSV", "Dynamic"), _t("app", "orders", "InnoDB", "Dynamic"),
        _t("app", "legacy", "MyISAM", "Fixed"), _t("app", "export", "CSV", "Dynamic"),
        _t("app", "dyn", "Aria", "Dynamic"), _t("app", "cache", "MEMORY", "Fixed"), _t("app", "broken", None, None),
    ]
    section, gaps = verify.check_engines(tables, "FILE")
    text = "\n".join(gaps)
    assert "app.legacy uses MyISAM" in text and "app.export uses CSV" in text
    assert "app.dyn is Aria ROW_FORMAT=Dynamic" in text and "app.broken" in text
    assert "orders" not in text and "cache" not in text and "global_priv" not in text
    assert len(gaps) == 4
    assert len(section["exempt"]) == 2
    _, with_table_logs = verify.check_engines(tables, "FILE,TABLE")
    assert any("mysql.general_log" in g for g in with_table_logs)


# --------------------------------------------------------------------------
# Aria: the .MAI header
# --------------------------------------------------------------------------


def test_every_table_type_but_views_is_checked() -> None:
    rows: list[list[str | None]] = [
        ["app", "history", "MyISAM", "Dynamic", "", "SYSTEM VERSIONED"],
        ["app", "audit", "CSV", "Dynamic", "", "SYSTEM VERSIONED"],
        ["app", "logs", "Aria", "Dynamic", "", "SYSTEM VERSIONED"],
        ["app", "seq", "InnoDB", "Dynamic", "", "SEQUENCE"],
        ["app", "orders_view", None, None, None, "VIEW"],
    ]
    tables = verify.table_infos(rows)
    assert [t.name for t in tables] == ["history", "audit", "logs", "seq"]
    _section, gaps = verify.check_engines(tables, "FILE")
    assert len(gaps) == 3 and "app.history uses MyISAM" in gaps[0]
    # The query filters no table type: the server returns them all and table_infos drops only views.
    assert "TABLE_TYPE IN" not in verify.TABLES_QUERY and "TABLE_TYPE" in verify.TABLES_QUERY


def test_compressed_binlog_is_a_gap_and_compression_default_is_stated() -> None:
    section, gaps = verify.check_flags({**GOOD_FLAGS, "log_bin_compress": "ON", "innodb_compression_default": "ON"},
                                       allow_query_logs=False)
    assert len(gaps) == 1 and "log_bin_compress" in gaps[0]
    assert section["innodb_compression_default"] == "ON"


@pytest.mark.parametrize(
    ("fixture", "encrypted", "transactional", "page"),
    [
        (ENCRYPTED_TRANSACTIONAL_GLOBAL_PRIV, True, True, True),
        (ENCRYPTED_NOT_TRANSACTIONAL, True, False, True),
        (PLAIN_TRANSACTIONAL, False, True, True),
        (PLAIN_DYNAMIC, False, False, False),
    ],
)
def test_real_aria_headers_are_read_correctly(fixture: tuple[str, ...], encrypted: bool, transactional: bool,
                                              page: bool) -> None:
    header = verify.parse_aria_header(_header(fixture))
    assert (header.encrypted, header.transactional, header.page_format) == (encrypted, transactional, page)


def test_not_an_aria_file() -> None:
    with pytest.raises(verify.NotAriaFile):
        verify.parse_aria_header(b"\xfe\xfe\x07\x01" + bytes(600))  # MyISAM's magic
    with pytest.raises(verify.NotAriaFile):
        verify.parse_aria_header(_header(PLAIN_TRANSACTIONAL)[:200])


def test_check_aria_reports_each_table_from_its_header(tmp_path: Path) -> None:
    _mai(tmp_path / "mysql" / "global_priv.MAI", ENCRYPTED_TRANSACTIONAL_GLOBAL_PRIV)
    _mai(tmp_path / "app" / "enc_nt.MAI", ENCRYPTED_NOT_TRANSACTIONAL)
    _mai(tmp_path / "app" / "plain.MAI", PLAIN_TRANSACTIONAL)
    _mai(tmp_path / "app" / "parted#P#p0.MAI", ENCRYPTED_NOT_TRANSACTIONAL)
    _mai(tmp_path / "app" / "parted#P#p1.MAI", PLAIN_DYNAMIC)
    _mai(tmp_path / "my@002ddb" / "t@0024.MAI", ENCRYPTED_NOT_TRANSACTIONAL)
    tables = [
        _t("mysql", "global_priv", "Aria"), _t("app", "enc_nt", "Aria"), _t("app", "plain", "Aria"),
        _t("app", "parted", "Aria"), _t("my-db", "t$", "Aria"), _t("app", "gone", "Aria"),
        _t("app", "orders", "InnoDB"),
    ]
    section, gaps = verify.check_aria(tables, tmp_path)
    each = {r["table"]: r for r in section["each"]}
    assert each["mysql.global_priv"] == {"table": "mysql.global_priv", "encrypted": True, "transactional": True}
    assert each["app.enc_nt"]["encrypted"] is True
    assert each["my-db.t$"]["encrypted"] is True  # found through MariaDB's filename encoding
    assert each["app.plain"]["encrypted"] is False
    assert each["app.parted"]["encrypted"] is False  # one partition is not
    text = "\n".join(gaps)
    assert "app.plain is not encrypted" in text and "app.plain is TRANSACTIONAL=1" in text
    assert "app.parted is not encrypted" in text
    assert "app.gone: no .MAI file" in text
    assert "global_priv" not in text and "enc_nt" not in text
    assert "1 system tables" in section["limitation"]
    assert section["tables"] == 6 and section["encrypted"] == 3


def _index_file(header_fixture: tuple[str, ...] | str, used: int, place_at: int, needle: bytes) -> bytes:
    """A .MAI file: a real header, then one index page whose used length is ``used``, with ``needle`` at
    ``place_at`` (an offset into the whole file)."""
    head = _header(header_fixture)
    info = verify.parse_aria_header(head)
    data = bytearray(head + bytes(info.keystart - len(head)) + bytes(info.block_size))
    struct.pack_into(">H", data, info.keystart + info.keypage_header - 2, used)
    data[place_at:place_at + len(needle)] = needle
    return bytes(data)


def test_real_aria_headers_give_block_size_keystart_and_the_key_page_header() -> None:
    enc_nt = verify.parse_aria_header(_header(ENCRYPTED_NOT_TRANSACTIONAL))
    assert (enc_nt.block_size, enc_nt.keystart, enc_nt.keypage_header) == (8192, 8192, 15)
    enc_t = verify.parse_aria_header(_header(ENCRYPTED_TRANSACTIONAL_GLOBAL_PRIV))
    assert (enc_t.block_size, enc_t.keystart, enc_t.keypage_header) == (8192, 8192, 21)
    assert verify.parse_aria_header(_header(PLAIN_TRANSACTIONAL)).keypage_header == 17


@pytest.mark.parametrize(("fixture", "offset_in_page", "where"), [
    (ENCRYPTED_NOT_TRANSACTIONAL, 300, "index page slack"),    # past the used 200 bytes: uninitialized memory
    (ENCRYPTED_NOT_TRANSACTIONAL, 100, "index page"),          # control: inside the keys, a real leak
    (ENCRYPTED_NOT_TRANSACTIONAL, 190, "index page"),          # control: begins among the keys
    (ENCRYPTED_NOT_TRANSACTIONAL, 8192 - 20, "index page"),    # control: runs into the checksum
    (ENCRYPTED_TRANSACTIONAL_GLOBAL_PRIV, 300, "index page slack"),
    (PLAIN_TRANSACTIONAL, 300, "index page"),                  # control: a table Aria does not encrypt
])
def test_a_marker_is_placed_in_index_page_slack_only_past_the_used_length(
    fixture: tuple[str, ...] | str, offset_in_page: int, where: str
) -> None:
    needle = b"mariadb-kms-canary-" + b"ab" * 16
    data = _index_file(fixture, 200, 8192 + offset_in_page, needle)
    assert verify.aria_marker_places(data, needle) == [(8192 + offset_in_page, where)]


def test_a_marker_in_the_aria_header_is_not_slack(tmp_path: Path) -> None:
    needle = b"mariadb-kms-canary-" + b"cd" * 16
    data = _index_file(ENCRYPTED_NOT_TRANSACTIONAL, 200, 600, needle)
    assert verify.aria_marker_places(data, needle) == [(600, "header")]
    path = tmp_path / "t.MAI"
    path.write_bytes(data)
    assert verify.in_aria_index_slack_only(path, needle) is False
    path.write_bytes(_index_file(ENCRYPTED_NOT_TRANSACTIONAL, 200, 8192 + 300, needle))
    assert verify.in_aria_index_slack_only(path, needle) is True
    assert verify.in_aria_index_slack_only(path.rename(tmp_path / "t.MAD"), needle) is False


@pytest.mark.parametrize(("datadir_encrypted", "allow", "offset_in_page", "gap", "limitation"), [
    (None, False, 300, False, True),
    (True, False, 300, False, False),
    (False, True, 300, False, True),
    (False, False, 300, True, False),
    (True, False, 100, True, False),  # control: among the keys it is a leak whatever the kernel does
])
def test_the_canary_in_aria_index_slack_is_told_apart_from_a_leak(
    tmp_path: Path, datadir_encrypted: bool | None, allow: bool, offset_in_page: int, gap: bool, limitation: bool
) -> None:
    datadir = tmp_path / "datadir"
    (datadir / "mariadb_kms_verify").mkdir(parents=True)
    mai = datadir / "mariadb_kms_verify" / "canary_aria.MAI"

    def on_execute(sql: str) -> None:
        found = re.search(r"'(mariadb-kms-canary-[0-9a-f]+)'", sql)
        if found and "canary_aria VALUES" in sql:
            mai.write_bytes(_index_file(ENCRYPTED_NOT_TRANSACTIONAL, 200, 8192 + offset_in_page,
                                        found.group(1).encode()))

    fake = FakeSql({"innodb_max_dirty_pages_pct": "90.000000\n", "INNODB_BUFFER_POOL_PAGES_DIRTY": "0\n"},
                   on_execute)
    section, gaps = verify.run_canary(verify.Sql(fake), {"datadir": str(datadir)}, "/dev/vda / ext4 rw 0 0\n",
                                      spill=False, datadir_encrypted=datadir_encrypted, allow_plain_datadir=allow)
    slack = offset_in_page == 300
    assert section["aria_index_slack_with_marker"] == ([str(mai)] if slack else [])
    assert section["found_in"] == ([] if slack else [str(mai)])
    assert bool(gaps) is gap, gaps
    assert bool(section.get("limitations")) is limitation


def test_filename_encoding() -> None:
    assert verify.filename_encode("orders_2024") == "orders_2024"
    assert verify.filename_encode("my-db") == "my@002ddb"
    assert verify.filename_encode("a.b") == "a@002eb"


# --------------------------------------------------------------------------
# gcache, swap
# --------------------------------------------------------------------------


def test_gcache_on_tmpfs_passes_and_on_disk_is_a_gap(tmp_path: Path) -> None:
    opts = "base_dir = /var/lib/mysql/; gcache.dir = /run/galera; gcache.name = galera.cache; gcache.recover = no; " \
           "gcache.size = 256M; gmcast.segment = 1"
    section, gaps = verify.check_gcache(opts, tmp_path, TMPFS_AND_DISK)
    assert gaps == [] and section["filesystem"] == "tmpfs" and section["size"] == "256M"
    _, on_disk = verify.check_gcache("gcache.dir = /var/lib/mysql; gcache.size = 128M", tmp_path, TMPFS_AND_DISK)
    assert any("ext4" in g for g in on_disk)
    (tmp_path / "galera.cache").write_bytes(b"old")
    (tmp_path / "gcache.page.000000").write_bytes(b"old")
    _, stray = verify.check_gcache(opts, tmp_path, TMPFS_AND_DISK)
    assert len(stray) == 2 and "old gcache file" in stray[0]


def _sys_block(root: Path, name: str, uuid: str | None = None, slaves: tuple[str, ...] = ()) -> Path:
    dev = root / "devices" / "virtual" / "block" / name
    dev.mkdir(parents=True)
    if uuid is not None:
        (dev / "dm").mkdir()
        (dev / "dm" / "uuid").write_text(uuid + "\n")
    (dev / "slaves").mkdir()
    for s in slaves:
        (dev / "slaves" / s).symlink_to(root / "devices" / "virtual" / "block" / s)
    (root / "class" / "block").mkdir(parents=True, exist_ok=True)
    (root / "class" / "block" / name).symlink_to(dev)
    return dev


def test_swap_encryption_is_read_from_dm_crypt(tmp_path: Path) -> None:
    _sys_block(tmp_path, "sda2")
    _sys_block(tmp_path, "dm-0", "CRYPT-LUKS2-abc-swap")
    _sys_block(tmp_path, "dm-1", "CRYPT-LUKS2-def-root")
    _sys_block(tmp_path, "dm-2", "LVM-xyz", slaves=("dm-1",))  # LVM on LUKS
    (tmp_path / "dev" / "block").mkdir(parents=True)
    (tmp_path / "dev" / "block" / "253:2").symlink_to(tmp_path / "class" / "block" / "dm-2")
    (tmp_path / "dev" / "block" / "8:1").symlink_to(tmp_path / "class" / "block" / "sda2")
    swaps = (
        "Filename\tType\tSize\tUsed\tPriority\n"
        "/dev/dm-0  partition\t1048572\t0\t-2\n"
        "/dev/zram0 partition\t1048572\t0\t100\n"
        "/swapfile  file\t1048572\t0\t-3\n"
    )

    class St:
        def __init__(self, major: int, minor: int) -> None:
            self.st_dev = os.makedev(major, minor)

    section, gaps = verify.check_swap(swaps, sys_root=tmp_path, stat=lambda _p: St(253, 2))  # type: ignore[arg-type,return-value]
    assert gaps == []
    assert [d["encrypted"] for d in section["devices"]] == [True, True, True]
    plain = "Filename\tType\tSize\tUsed\tPriority\n/dev/sda2 partition 1 0 -2\n/swapfile file 1 0 -3\n"
    _, gaps = verify.check_swap(plain, sys_root=tmp_path, stat=lambda _p: St(8, 1))  # type: ignore[arg-type,return-value]
    assert len(gaps) == 2 and all("not encrypted" in g for g in gaps)
    _, none = verify.check_swap("Filename\tType\tSize\tUsed\tPriority\n", sys_root=tmp_path)
    assert none == []


# --------------------------------------------------------------------------
# The canary scanner (control: a planted marker is found)
# --------------------------------------------------------------------------


def test_scanner_finds_a_planted_marker_and_only_there(tmp_path: Path) -> None:
    marker = b"mariadb-kms-canary-0123456789abcdef"
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "t.ibd").write_bytes(os.urandom(100_000) + marker + os.urandom(1000))
    (tmp_path / "db" / "clean.ibd").write_bytes(os.urandom(200_000))
    (tmp_path / "binlog.000001").write_bytes(b"x" * 10 + marker[:10])  # a prefix is not the marker
    result = verify.scan_for_marker([tmp_path], marker, "/dev/vda / ext4 rw 0 0\n")
    assert result.found == [str(tmp_path / "db" / "t.ibd")]
    assert result.files == 3 and result.bytes > 300_000


def test_scanner_finds_a_marker_across_a_chunk_boundary(tmp_path: Path) -> None:
    marker = b"boundary-marker-42"
    path = tmp_path / "f"
    path.write_bytes(b"a" * 1000 + marker + b"b" * 1000)
    for chunk in (7, 1003, 1010, 4096):
        assert verify.file_contains(path, marker, chunk=chunk), chunk
    assert not verify.file_contains(path, b"absent-marker", chunk=7)


def test_scanner_skips_tmpfs_because_it_is_not_at_rest(tmp_path: Path) -> None:
    marker = b"gcache-marker-7"
    (tmp_path / "galera").mkdir()
    (tmp_path / "galera" / "galera.cache").write_bytes(marker)
    (tmp_path / "disk").mkdir()
    (tmp_path / "disk" / "ibdata1").write_bytes(marker)
    mounts = f"/dev/vda / ext4 rw 0 0\ntmpfs {tmp_path / 'galera'} tmpfs rw 0 0\n"
    result = verify.scan_for_marker([tmp_path / "galera", tmp_path / "disk"], marker, mounts)
    assert result.found == [str(tmp_path / "disk" / "ibdata1")]
    assert any("tmpfs" in s for s in result.skipped)


def test_persistent_roots_come_from_the_servers_variables() -> None:
    roots = verify.persistent_roots({
        "datadir": "/var/lib/mysql/", "innodb_log_group_home_dir": "./", "log_bin_basename": "/srv/binlog/mariadb-bin",
        "aria_log_dir_path": "/var/lib/mysql/", "tmpdir": "/tmp:/srv/tmp2", "log_error": "",
        "general_log_file": "vm.log", "innodb_undo_directory": "/srv/undo",
    })
    for expected in ("/var/lib/mysql/", "/srv/binlog", "/tmp", "/srv/tmp2", "/var/log/mysql", "/srv/undo"):
        assert expected in roots


def _canary_sql(datadir: Path, *, leaks: bool, spill_page: bool = False, compressed: bool = False) -> FakeSql:
    """A stand-in server: on INSERT it writes the marker to a data file, in plaintext or not; during the large
    transaction it holds a Galera spill page in base_dir (as Galera does while it commits) and then deletes it."""

    def on_execute(sql: str) -> None:
        if "INSERT INTO" in sql and "START TRANSACTION" not in sql:
            found = re.search(r"'(mariadb-kms-canary-[0-9a-f]+)'", sql)
            assert found
            data = found.group(1).encode() if leaks else bytes(reversed(found.group(1).encode()))
            (datadir / "canary.ibd").write_bytes(b"\0" * 100 + data)
        if "START TRANSACTION" in sql and spill_page:
            found = re.search(r"'(mariadb-kms-canary-[0-9a-f]+)'", sql)
            assert found
            page = datadir / "0x00007f1c2c01b5e8_data.000000"
            page.write_bytes(b"\0" * 4096 + found.group(1).encode() + b"\0" * 4096)
            time.sleep(0.5)
            page.unlink()

    return FakeSql({
        "innodb_max_dirty_pages_pct": "90.000000\n",
        "INNODB_BUFFER_POOL_PAGES_DIRTY": "0\n",
        "CREATE_OPTIONS FROM information_schema.TABLES": _batch(
            [["canary_spill", "`PAGE_COMPRESSED`='ON'" if compressed else ""]]),
    }, on_execute)


@pytest.mark.parametrize("leaks", [True, False])
def test_canary_finds_a_plaintext_marker_and_always_deletes_it(tmp_path: Path, leaks: bool) -> None:
    datadir = tmp_path / "datadir"
    datadir.mkdir()
    fake = _canary_sql(datadir, leaks=leaks)
    section, gaps = verify.run_canary(verify.Sql(fake), {"datadir": str(datadir)}, "/dev/vda / ext4 rw 0 0\n")
    assert section["found_in"] == ([str(datadir / "canary.ibd")] if leaks else [])
    assert bool(gaps) is leaks
    statements = "\n".join(fake.executed)
    assert "ENGINE=InnoDB PAGE_COMPRESSED=0" in statements
    assert "ENGINE=Aria ROW_FORMAT=PAGE TRANSACTIONAL=0" in statements
    assert "SET GLOBAL innodb_max_dirty_pages_pct = 0" in statements
    assert "SET GLOBAL innodb_max_dirty_pages_pct = 90.0" in statements  # put back
    assert fake.executed[-1].count("DELETE FROM") == 3  # the marker rows go, found or not


@pytest.mark.parametrize(("checkpoint", "flushed"), [("1200", True), ("1000", True), ("999", False), ("", False)])
def test_under_client_writes_a_checkpoint_past_the_canary_proves_its_pages_flushed(
    tmp_path: Path, checkpoint: str, flushed: bool
) -> None:
    # Dirty pages never reach 0 while clients write; a checkpoint at or past the LSN read after the canary's
    # writes means each page they dirtied was written. A checkpoint short of it (or none reported) proves nothing.
    fake = _canary_sql(tmp_path, leaks=False)
    fake.answers["INNODB_BUFFER_POOL_PAGES_DIRTY"] = "7\n"
    fake.answers["INNODB_LSN_CURRENT"] = "1000\n"
    fake.answers["INNODB_LSN_LAST_CHECKPOINT"] = f"{checkpoint}\n" if checkpoint else ""
    _section, gaps = verify.run_canary(verify.Sql(fake), {"datadir": str(tmp_path)}, "/dev/vda / ext4 rw 0 0\n",
                                       spill=False, flush_wait=1.0)
    assert ("canary: InnoDB dirty pages were not all flushed in time; the proof is incomplete" in gaps) is not flushed


def test_canary_transaction_inserts_updates_and_deletes_enough_to_spill() -> None:
    text = verify.canary_transaction("s", "host-1-ab", "mariadb-kms-canary-" + "0" * 32)
    steps = [line.split()[0] for line in text.splitlines()]
    assert steps == ["START", "INSERT", "UPDATE", "DELETE", "COMMIT;"]
    # Galera keeps a write-set in memory up to 4 MiB (galerautils gu_alloc.hpp, max_ram); the INSERT's row images
    # alone exceed it (the UPDATE adds before and after images of every row).
    assert verify.CANARY_SPILL_ROWS * verify.CANARY_PAD_REPEAT * len("mariadb-kms-canary-" + "0" * 32) > 4 << 20


@pytest.mark.parametrize(("datadir_encrypted", "allow", "gap"), [
    (None, False, False), (False, False, True), (False, True, False), (True, False, False),
])
def test_the_canary_catches_a_spill_page_while_it_exists(tmp_path: Path, datadir_encrypted: bool | None, allow: bool,
                                                         gap: bool) -> None:
    datadir = tmp_path / "datadir"
    datadir.mkdir()
    fake = _canary_sql(datadir, leaks=False, spill_page=True)
    section, gaps = verify.run_canary(verify.Sql(fake), {"datadir": str(datadir)}, "/dev/vda / ext4 rw 0 0\n",
                                      datadir_encrypted=datadir_encrypted, allow_plain_datadir=allow)
    page = str(datadir / "0x00007f1c2c01b5e8_data.000000")
    assert section["spill_pages_with_marker"] == [page]  # deleted before the directory walk: only the watch saw it
    assert section["found_in"] == []
    assert any("spill page" in g for g in gaps) is gap
    assert bool(section.get("limitations")) is (datadir_encrypted is None or allow)


def test_the_spill_watch_control_finds_nothing_when_the_page_holds_no_marker(tmp_path: Path) -> None:
    stop, watch = threading.Event(), verify.SpillWatch()
    (tmp_path / "0x1_data.000000").write_bytes(b"rows of someone else")
    (tmp_path / "ibdata1").write_bytes(b"needle")  # not a spill page: the directory walk's job
    thread = threading.Thread(target=verify.watch_spill_pages, args=(tmp_path, b"needle", stop, watch))
    thread.start()
    time.sleep(0.1)
    stop.set()
    thread.join()
    assert watch.seen == {"0x1_data.000000"} and watch.with_marker == set()


def test_a_page_compressed_canary_table_is_a_gap(tmp_path: Path) -> None:
    fake = _canary_sql(tmp_path, leaks=False, compressed=True)
    _section, gaps = verify.run_canary(verify.Sql(fake), {"datadir": str(tmp_path)}, "/dev/vda / ext4 rw 0 0\n",
                                       spill=False)
    assert gaps == ["canary: mariadb_kms_verify.canary_spill is page-compressed: the scan could not see a plaintext "
                    "marker in it"]


# --------------------------------------------------------------------------
# The datadir as a whole
# --------------------------------------------------------------------------


def test_datadir_encryption_fscrypt_needs_a_policy(tmp_path: Path) -> None:
    _s, gaps = verify.check_datadir_encryption("fscrypt", tmp_path, allow_plain=False, policy=lambda _p: "none")
    assert gaps and "no fscrypt policy" in gaps[0]
    section, gaps = verify.check_datadir_encryption("fscrypt", tmp_path, allow_plain=False,
                                                    policy=lambda _p: "f25e50939335006e35fc5165670548d7")
    assert gaps == [] and section["state"].startswith("encrypted")


def test_datadir_encryption_luks_needs_dm_crypt_and_none_is_a_gap_unless_allowed(tmp_path: Path) -> None:
    assert verify.check_datadir_encryption("luks", tmp_path, allow_plain=False, dm_crypt=lambda _p: False)[1]
    assert verify.check_datadir_encryption("luks", tmp_path, allow_plain=False, dm_crypt=lambda _p: True)[1] == []
    assert "spill pages" in verify.check_datadir_encryption("none", tmp_path, allow_plain=False)[1][0]
    section, gaps = verify.check_datadir_encryption("none", tmp_path, allow_plain=True)
    assert gaps == [] and "plaintext" in section["limitation"]
    assert verify.check_datadir_encryption(None, tmp_path, allow_plain=False)[0]["mode"] == "unchecked"


def test_luks_the_datadirs_device_is_found_dm_crypt_through_sysfs(tmp_path: Path) -> None:
    # The datadir's st_dev leads to /sys/dev/block/MAJ:MIN: LUKS directly, LVM on LUKS, and a plain disk.
    datadir = tmp_path / "datadir"
    datadir.mkdir()
    st_dev = os.stat(datadir).st_dev
    sys_root = tmp_path / "sys"
    (sys_root / "dev" / "block").mkdir(parents=True)
    link = sys_root / "dev" / "block" / f"{os.major(st_dev)}:{os.minor(st_dev)}"
    _sys_block(sys_root, "sdb1")
    _sys_block(sys_root, "dm-0", "CRYPT-LUKS2-abc-data")
    _sys_block(sys_root, "dm-1", "LVM-xyz", slaves=("dm-0",))
    _sys_block(sys_root, "dm-2", "LVM-plain", slaves=("sdb1",))
    for name, encrypted in (("dm-0", True), ("dm-1", True), ("dm-2", False), ("sdb1", False)):
        link.unlink(missing_ok=True)
        link.symlink_to(sys_root / "class" / "block" / name)
        assert verify.device_encrypted_under(datadir, sys_root=sys_root) is encrypted, name


# --------------------------------------------------------------------------
# No SQL path to the key
# --------------------------------------------------------------------------


def test_secure_file_priv_must_be_set_private_and_outside_the_datadir(tmp_path: Path) -> None:
    assert "empty" in verify.check_secure_file_priv("", "/var/lib/mysql")[1][0]
    good = tmp_path / "secure-file-priv"
    good.mkdir(mode=0o700)
    assert verify.check_secure_file_priv(str(good), str(tmp_path / "data"), mysql_uid=os.getuid())[1] == []
    inside = tmp_path / "data" / "files"
    inside.mkdir(parents=True, mode=0o700)
    assert "overlaps the datadir" in verify.check_secure_file_priv(str(inside), str(tmp_path / "data"))[1][0]
    good.chmod(0o755)
    assert "not 0700" in verify.check_secure_file_priv(str(good), str(tmp_path / "data"))[1][0]
    assert "not owned by mysql" in verify.check_secure_file_priv(str(good), "/x", mysql_uid=os.getuid() + 1)[1][-1]


def test_every_secret_file_is_tried_and_a_refusal_passes(tmp_path: Path) -> None:
    keyfile = tmp_path / "keyfile"
    keyfile.write_text("1;" + "ab" * 32)
    paths = verify.secret_files({"file_key_management_filename": str(keyfile), "datadir": str(tmp_path)})
    assert paths[0] == str(keyfile)
    assert {"/etc/mariadb-kms/datakey.blob", "/etc/mariadb-kms/aws-credentials", "/proc/self/environ",
            str(tmp_path / "aws-kms-key.1.1")} <= set(paths)
    refusing = FakeSql({"LOAD_FILE(": "0\n"}, errors={"LOAD DATA INFILE": REFUSED, "INTO OUTFILE": REFUSED})
    attempts = verify.try_sql_paths(verify.Sql(refusing), [str(keyfile), "/proc/self/environ"])
    assert [(a.how, a.succeeded) for a in attempts] == [
        ("LOAD DATA INFILE", False), ("LOAD_FILE()", False), ("SELECT ... INTO OUTFILE", False),
        ("LOAD DATA INFILE", False), ("LOAD_FILE()", False),  # nothing is written into /proc
    ]
    section, gaps = verify.check_sql_paths({}, attempts, verify.check_secure_file_priv(SECURE_DIR, "/var/lib/mysql"))
    assert gaps == [] and len(section["attempts"]) == 5


def test_control_a_server_that_reads_the_keyfile_is_a_gap(tmp_path: Path) -> None:
    keyfile = tmp_path / "keyfile"
    keyfile.write_text("1;" + "ab" * 32)
    written: list[str] = []
    reading = FakeSql({"LOAD DATA INFILE": "1\n", "LOAD_FILE(": "1\n"},
                      on_execute=lambda q: written.append(q) if "INTO OUTFILE" in q else None)
    removed: list[str] = []
    attempts = verify.try_sql_paths(verify.Sql(reading), [str(keyfile)], remove=removed.append)
    _section, gaps = verify.check_sql_paths({}, attempts, verify.check_secure_file_priv("", "/var/lib/mysql"))
    assert [g.split(" on ")[0] for g in gaps[1:]] == [
        "sql paths: LOAD DATA INFILE", "sql paths: LOAD_FILE()", "sql paths: SELECT ... INTO OUTFILE"]
    assert removed and removed[0].startswith(str(tmp_path) + "/.mariadb-kms-sql-path-probe-")  # cleaned up


def test_no_secret_file_found_is_an_empty_proof() -> None:
    _section, gaps = verify.check_sql_paths({}, [], ({}, []))
    assert gaps == ["sql paths: no secret file was found to try; the proof is empty"]


# --------------------------------------------------------------------------
# A datadir's state, for the installer
# --------------------------------------------------------------------------


def _fresh_datadir(root: Path, fixture: tuple[str, ...]) -> Path:
    root.mkdir()
    for name in ("global_priv", "db", "proc"):
        _mai(root / "mysql" / f"{name}.MAI", fixture)
        (root / "mysql" / f"{name}.frm").write_bytes(b"frm")
    for name in ("aria_log.00000001", "aria_log_control", "ibdata1", "ib_logfile0", "ib_buffer_pool",
                 "mysql_upgrade_info", "debian-10.11.flag"):
        (root / name).write_bytes(b"x")
    (root / "performance_schema").mkdir()
    (root / "sys").mkdir()
    return root


def test_datadir_states(tmp_path: Path) -> None:
    assert verify.datadir_state(tmp_path / "absent")[0] == "empty"
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "lost+found").mkdir()
    (tmp_path / "blank" / "debian-10.11.flag").write_bytes(b"")
    assert verify.datadir_state(tmp_path / "blank")[0] == "empty"
    assert verify.datadir_state(_fresh_datadir(tmp_path / "enc", ENCRYPTED_TRANSACTIONAL_GLOBAL_PRIV))[0] == "encrypted"
    pristine = _fresh_datadir(tmp_path / "plain", PLAIN_TRANSACTIONAL)
    assert verify.datadir_state(pristine)[0] == "unencrypted-pristine"
    (pristine / "grastate.dat").write_text("seqno: 10\n")
    state, reasons = verify.datadir_state(pristine)
    assert state == "unencrypted-with-data" and any("Galera" in r for r in reasons)
    app = _fresh_datadir(tmp_path / "app", PLAIN_TRANSACTIONAL)
    (app / "shop").mkdir()
    assert verify.datadir_state(app)[0] == "unencrypted-with-data"
    mixed = _fresh_datadir(tmp_path / "mixed", ENCRYPTED_TRANSACTIONAL_GLOBAL_PRIV)
    _mai(mixed / "mysql" / "db.MAI", PLAIN_TRANSACTIONAL)
    assert verify.datadir_state(mixed)[0] == "mixed"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "ibdata1").write_bytes(b"x")
    assert verify.datadir_state(tmp_path / "odd")[0] == "unknown"


# --------------------------------------------------------------------------
# The whole report from canned server answers
# --------------------------------------------------------------------------


SECURE_DIR = tempfile.mkdtemp(prefix="secure-file-priv-")  # 0700, empty: what the node's install makes
REFUSED = "ERROR 1290 (HY000) at line 3: The MariaDB server is running with the --secure-file-priv option"


def _server(overrides: dict[str, str] | None = None, tables: list[list[str | None]] | None = None) -> FakeSql:
    variables = {**GOOD_FLAGS, "wsrep_on": "ON", "datadir": "/nonexistent-datadir/", "version": "10.11.18-MariaDB",
                 "secure_file_priv": SECURE_DIR,
                 "wsrep_provider_options": "gcache.dir = /run/galera; gcache.size = 256M",
                 "file_key_management_filename": "/run/mariadb-kms/keyfile", **(overrides or {})}
    return FakeSql({
        "SHOW GLOBAL VARIABLES": _batch([[k, v] for k, v in variables.items()]),
        "SHOW GLOBAL STATUS": _batch([[k, v] for k, v in SYNCED.items()]),
        "information_schema.PLUGINS": _batch(PLUGIN_OK),
        "innodb_encrypt_temporary_tables": "1\n",
        "INNODB_SYS_TABLESPACES": _batch(SYS_ROWS),
        "INNODB_TABLESPACES_ENCRYPTION": _batch(ENC_ROWS),
        "information_schema.TABLES": _batch(tables or [["app", "orders", "InnoDB", "Dynamic", ""]]),
        "LOAD_FILE(": "0\n",
    }, errors={"LOAD DATA INFILE": REFUSED, "INTO OUTFILE": REFUSED})


def _args(**kw: Any) -> argparse.Namespace:
    # Encryption in transit is off here (as config can turn it off); tests/unit/test_verify_tls.py covers it.
    defaults: dict[str, Any] = {"expect_size": 3, "allow_query_logs": False, "wait": 0, "canary": False,
                                "tls_off": list(verify.TLS_CHANNELS)}
    return argparse.Namespace(**{**defaults, **kw})


def test_a_fully_encrypted_node_reports_ok() -> None:
    report = verify.verify(verify.Sql(_server()), _args(), mounts_text=TMPFS_AND_DISK, swaps_text="")
    assert report["gaps"] == [] and report["ok"] is True
    assert set(report) >= {"galera", "key", "flags", "innodb", "tables", "aria", "gcache", "swap", "tls",
                           "never_encrypted", "sql_paths", "datadir_encryption"}
    assert report["sql_paths"]["attempts"] and not any(a["succeeded"] for a in report["sql_paths"]["attempts"])


def test_a_system_versioned_myisam_table_fails_the_report() -> None:
    tables: list[list[str | None]] = [["app", "orders", "InnoDB", "Dynamic", "", "BASE TABLE"],
                                      ["app", "history", "MyISAM", "Dynamic", "", "SYSTEM VERSIONED"]]
    report = verify.verify(verify.Sql(_server(tables=tables)), _args(), mounts_text=TMPFS_AND_DISK, swaps_text="")
    assert report["gaps"] == ["tables: app.history uses MyISAM, which cannot be encrypted"]
    assert any(".frm" in n for n in report["never_encrypted"])


def test_one_gap_fails_the_report() -> None:
    report = verify.verify(verify.Sql(_server({"encrypt_binlog": "OFF"})), _args(), mounts_text=TMPFS_AND_DISK,
                           swaps_text="")
    assert report["ok"] is False and report["gaps"] == ["flags: encrypt_binlog is OFF, not ON"]


def test_main_exit_status_and_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    def boom(_client: Any) -> Any:
        def run(_sql: str) -> str:
            raise verify.SqlError("Can't connect to local server through socket '/run/mysqld/mysqld.sock'")
        return run

    monkeypatch.setattr(verify, "mariadb_runner", boom)
    assert verify.main([]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and "Can't connect" in report["error"]


def _flaky_runner(errors: list[str]) -> tuple[list[str], Any]:
    calls: list[str] = []

    def run(sql: str) -> str:
        calls.append(sql)
        if errors:
            raise verify.SqlError(errors.pop(0))
        return ""

    return calls, run


def test_a_certification_abort_of_the_canary_transaction_is_retried() -> None:
    # Every node verifies at once; Galera aborts the local transaction that loses to a replicated one.
    deadlock = "ERROR 1213 (40001) at line 5: Deadlock found when trying to get lock; try restarting transaction"
    calls, run = _flaky_runner([deadlock, deadlock])
    verify.run_retrying_certification(verify.Sql(run), "COMMIT;", pause=lambda _s: None)
    assert len(calls) == 3


def test_other_sql_errors_and_endless_aborts_are_not_swallowed() -> None:
    calls, run = _flaky_runner(["ERROR 1146 (42S02): Table 'x.y' doesn't exist"])
    with pytest.raises(verify.SqlError):
        verify.run_retrying_certification(verify.Sql(run), "COMMIT;", pause=lambda _s: None)
    assert len(calls) == 1
    calls, run = _flaky_runner(["ERROR 1213 (40001): Deadlock found"] * 9)
    with pytest.raises(verify.SqlError):
        verify.run_retrying_certification(verify.Sql(run), "COMMIT;", retries=3, pause=lambda _s: None)
    assert len(calls) == 3


@pytest.mark.parametrize(("checkpoint", "flushed"), [("5000", True), ("4999", False)])
def test_under_client_writes_the_checkpoint_past_the_canary_proves_the_flush(
        tmp_path: Path, checkpoint: str, flushed: bool) -> None:
    # Writes never stop, so the buffer pool is never clean; the checkpoint passing the canary's LSN is the proof.
    # Control: a checkpoint one short of it is no proof, and the gap says so.
    datadir = tmp_path / "datadir"
    datadir.mkdir()
    fake = _canary_sql(datadir, leaks=False)
    fake.answers = {**fake.answers, "INNODB_BUFFER_POOL_PAGES_DIRTY": "17\n", "INNODB_LSN_CURRENT": "5000\n",
                    "INNODB_LSN_LAST_CHECKPOINT": checkpoint + "\n"}
    section, gaps = verify.run_canary(verify.Sql(fake), {"datadir": str(datadir)}, "/dev/vda / ext4 rw 0 0\n",
                                      flush_wait=1.0, spill=False)
    assert section["innodb_flushed"] is flushed
    assert any("not all flushed" in g for g in gaps) is not flushed


def test_a_certification_abort_of_the_first_canary_insert_is_retried(tmp_path: Path, monkeypatch: Any) -> None:
    # Seen with every node verifying under client writes: the canary's first INSERT aborted with 1213.
    datadir = tmp_path / "datadir"
    datadir.mkdir()
    fake = _canary_sql(datadir, leaks=False)
    aborted = {"n": 0}
    inner = fake.__call__

    def once(sql: str) -> str:
        if "INSERT INTO" in sql and "canary_innodb" in sql and "START" not in sql and aborted["n"] == 0:
            aborted["n"] += 1
            raise verify.SqlError("ERROR 1213 (40001) at line 1: Deadlock found when trying to get lock")
        return inner(sql)

    monkeypatch.setattr(verify.time, "sleep", lambda _s: None)
    section, gaps = verify.run_canary(verify.Sql(once), {"datadir": str(datadir)}, "/dev/vda / ext4 rw 0 0\n",
                                      spill=False)
    assert aborted["n"] == 1
    assert gaps == [] and section["found_in"] == []
    assert sum("canary_innodb VALUES" in s for s in fake.executed) == 1  # retried once, never inserted twice


# --------------------------------------------------------------------------
# logEncryption kernel: the redo and binary logs left to the encryption below MariaDB
# --------------------------------------------------------------------------

LOGS_OFF = {**GOOD_FLAGS, "innodb_encrypt_log": "OFF", "encrypt_binlog": "OFF"}


def test_the_log_flags_off_are_stated_when_left_to_a_kernel_encrypted_datadir() -> None:
    section, gaps = verify.check_flags(LOGS_OFF, allow_query_logs=False, logs_left_to_kernel=True,
                                       datadir_encrypted=True)
    assert gaps == []
    assert section["log_encryption"] == "kernel"
    assert section["limitation"].startswith("innodb_encrypt_log and encrypt_binlog OFF, encrypted only below MariaDB")
    assert "plaintext" in section["limitation"]
    # Control: without the argument, both are gaps as before.
    _, control = verify.check_flags(LOGS_OFF, allow_query_logs=False, datadir_encrypted=True)
    assert control == ["flags: innodb_encrypt_log is OFF, not ON", "flags: encrypt_binlog is OFF, not ON"]


@pytest.mark.parametrize("datadir_encrypted", [False, None])
def test_the_log_flags_off_are_gaps_where_the_datadir_is_not_kernel_encrypted(datadir_encrypted: bool | None) -> None:
    section, gaps = verify.check_flags(LOGS_OFF, allow_query_logs=False, logs_left_to_kernel=True,
                                       datadir_encrypted=datadir_encrypted)
    assert len(gaps) == 2 and all("not known to be encrypted by the kernel" in g for g in gaps)
    assert [g.split()[1] for g in gaps] == ["innodb_encrypt_log", "encrypt_binlog"]
    assert "limitation" not in section


def test_leaving_the_logs_to_the_kernel_excuses_no_other_flag() -> None:
    _, gaps = verify.check_flags({**LOGS_OFF, "aria_encrypt_tables": "OFF", "encrypt_tmp_files": "OFF"},
                                 allow_query_logs=False, logs_left_to_kernel=True, datadir_encrypted=True)
    assert gaps == ["flags: encrypt_tmp_files is OFF, not ON", "flags: aria_encrypt_tables is OFF, not ON"]


def test_log_file_kind_names_only_the_servers_redo_and_binary_logs(tmp_path: Path) -> None:
    datadir = tmp_path / "data"
    variables = {"datadir": f"{datadir}/", "innodb_log_group_home_dir": "./",
                 "log_bin_basename": f"{datadir}/mariadb-bin"}
    assert verify.log_file_kind(str(datadir / "ib_logfile0"), variables) == "redo"
    assert verify.log_file_kind(str(datadir / "mariadb-bin.000007"), variables) == "binlog"
    for other in ("mariadb-bin.index", "ibdata1", "ib_logfile0.bak", "mariadb-bin.000007.ibd", "aria_log.00000001",
                  "app/ib_logfile0", "app/mariadb-bin.000001", "0x00007f1c2c01b5e8_data.000000", "GRA_1_2.log"):
        assert verify.log_file_kind(str(datadir / other), variables) is None, other
    # Elsewhere when the server's variables say so.
    moved = {**variables, "innodb_log_group_home_dir": "/srv/redo", "log_bin_basename": "/srv/binlog/node-bin"}
    assert verify.log_file_kind("/srv/redo/ib_logfile0", moved) == "redo"
    assert verify.log_file_kind(str(datadir / "ib_logfile0"), moved) is None
    assert verify.log_file_kind("/srv/binlog/node-bin.000001", moved) == "binlog"
    assert verify.log_file_kind(str(datadir / "mariadb-bin.000001"), moved) is None
    assert verify.log_file_kind(str(datadir / "mariadb-bin.000001"), {"datadir": str(datadir)}) is None  # no binlog


def _logs_canary_sql(datadir: Path, files: tuple[str, ...]) -> FakeSql:
    """A stand-in server writing the canary's marker in plaintext into each of ``files`` under the datadir."""

    def on_execute(sql: str) -> None:
        if "INSERT INTO" in sql and "START TRANSACTION" not in sql:
            found = re.search(r"'(mariadb-kms-canary-[0-9a-f]+)'", sql)
            assert found
            for name in files:
                (datadir / name).write_bytes(b"\0" * 64 + found.group(1).encode() + b"\0" * 64)

    return FakeSql({"innodb_max_dirty_pages_pct": "90.000000\n", "INNODB_BUFFER_POOL_PAGES_DIRTY": "0\n"},
                   on_execute)


@pytest.mark.parametrize(("logs_left_to_kernel", "datadir_encrypted", "stated"), [
    (True, True, True), (False, True, False), (True, False, False), (True, None, False),
])
def test_the_canary_in_the_logs_is_stated_only_when_left_to_a_kernel_encrypted_datadir(
    tmp_path: Path, logs_left_to_kernel: bool, datadir_encrypted: bool | None, stated: bool,
) -> None:
    datadir = tmp_path / "datadir"
    datadir.mkdir()
    logs = ("ib_logfile0", "mariadb-bin.000003")
    fake = _logs_canary_sql(datadir, (*logs, "canary.ibd"))
    variables = {"datadir": str(datadir), "innodb_log_group_home_dir": "./",
                 "log_bin_basename": str(datadir / "mariadb-bin")}
    section, gaps = verify.run_canary(verify.Sql(fake), variables, "/dev/vda / ext4 rw 0 0\n", spill=False,
                                      datadir_encrypted=datadir_encrypted, logs_left_to_kernel=logs_left_to_kernel)
    log_paths = [str(datadir / n) for n in logs]
    # A hit outside the logs is a gap whatever the logs' setting (the control every case carries).
    assert f"canary: the marker is in plaintext in {datadir / 'canary.ibd'}" in gaps
    if stated:
        assert gaps == [f"canary: the marker is in plaintext in {datadir / 'canary.ibd'}"]
        assert sorted(section["logs_left_to_kernel_with_marker"]) == sorted(log_paths)
        assert section["found_in"] == [str(datadir / "canary.ibd")]
        assert any("logEncryption: kernel" in line for line in section["limitations"])
    else:
        for path in log_paths:
            assert f"canary: the marker is in plaintext in {path}" in gaps
        assert section.get("logs_left_to_kernel_with_marker", []) == []


def test_verify_accepts_the_log_flags_off_on_ebs_and_refuses_them_on_a_plain_datadir() -> None:
    server = _server({"innodb_encrypt_log": "OFF", "encrypt_binlog": "OFF"})
    report = verify.verify(verify.Sql(server), _args(datadir_encryption="ebs", log_encryption="kernel"),
                           mounts_text=TMPFS_AND_DISK, swaps_text="")
    assert report["gaps"] == [] and "limitation" in report["flags"]
    # Controls: the argument missing; a datadir not encrypted below MariaDB (even allowed by config).
    missing = verify.verify(verify.Sql(_server({"innodb_encrypt_log": "OFF", "encrypt_binlog": "OFF"})),
                            _args(datadir_encryption="ebs"), mounts_text=TMPFS_AND_DISK, swaps_text="")
    assert missing["gaps"] == ["flags: innodb_encrypt_log is OFF, not ON", "flags: encrypt_binlog is OFF, not ON"]
    plain = verify.verify(verify.Sql(_server({"innodb_encrypt_log": "OFF", "encrypt_binlog": "OFF"})),
                          _args(datadir_encryption="none", allow_plain_datadir=True, log_encryption="kernel"),
                          mounts_text=TMPFS_AND_DISK, swaps_text="")
    assert len(plain["gaps"]) == 2 and all("not known to be encrypted by the kernel" in g for g in plain["gaps"])
    unknown = verify.verify(verify.Sql(_server({"innodb_encrypt_log": "OFF", "encrypt_binlog": "OFF"})),
                            _args(log_encryption="kernel"), mounts_text=TMPFS_AND_DISK, swaps_text="")
    assert len(unknown["gaps"]) == 2


def test_the_log_encryption_argument_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_verify(_sql: Any, args: argparse.Namespace, **_kw: Any) -> dict[str, Any]:
        seen["log_encryption"] = args.log_encryption
        return {"ok": True, "gaps": []}

    monkeypatch.setattr(verify, "verify", fake_verify)
    assert verify.main(["--log-encryption", "kernel"]) == 0
    assert seen["log_encryption"] == "kernel"
    assert verify.main([]) == 0 and seen["log_encryption"] == "mariadb"
    with pytest.raises(SystemExit):
        verify.main(["--log-encryption", "off"])
