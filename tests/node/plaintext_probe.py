"""Looking for plaintext on testbed hosts, with code of the tests' own (not mariadb-kms-verify's).

- ``run_workload``: a marker written through SQL by INSERT and UPDATE into InnoDB, and into an Aria table
  (ROW_FORMAT=PAGE, TRANSACTIONAL=0, the kind that can be encrypted), then flushed to disk.
- ``held_spill_scan``: a session that makes temporary tables (InnoDB and Aria), groups through an
  on-disk internal temporary table, and sorts every row on a non-indexed column with a tiny sort buffer,
  so the server spills to files in its tmpdir. Those files are unlinked as soon as they are made, so no
  directory walk ever sees them; the query is held open (its client stops reading) and the files are read
  while the server still has them open, through ``/proc/<mariadbd>/fd``. The sort carries whole rows
  (``max_length_for_sort_data`` raised: "addon fields"), so the marker's own bytes go to the sort file;
  with the default rowid sort on a utf8mb4 key only collation weights would, and a scan would be blind.
  Temporary tables' pages mostly stay in the buffer pools at this size: their files are read too, but
  only the sort file is sure to hold rows on disk (the control, encryption off, finds the marker there).
- ``scan_upper_dirs``: every regular file a host has written to persistent storage is in its overlay
  upper directory (tmpfs mounts inside the host never are); each is read from this machine's side and
  searched for needles.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from node import mariadb_kms_verify as verify_tool
from rehearsal.mariadb_on_host import HostCommandFailed
from rehearsal.testbed import Testbed

PROBE_DIR = "/run/mariadb-kms-test"  # tmpfs on the host: the probes' own files are never at rest
WORKLOAD_ROWS = 20000
SPILL_COUNTERS = ("Sort_merge_passes", "Created_tmp_disk_tables", "Created_tmp_files")

# Reads the SQL on stdin with the stock client in --quick mode (row by row) and stops reading after the
# first row: the pipe, then the client's socket, fill up, and the server blocks while sending the result,
# with its sort and temporary files still open. $READY appears once the first row has arrived; removing
# $HOLD lets the rest drain.
HELD_QUERY_SH = """\
set -u
mariadb "$@" --quick --batch --skip-column-names | {
    IFS= read -r first_row
    : > "$READY"
    while [ -e "$HOLD" ]; do sleep 0.2; done
    cat > /dev/null
}
"""

# Run on the host as root: every file the server process has open under the given directories
# (deleted ones included), its size and whether the needle (on stdin) is in it. JSON on stdout.
OPEN_FILES_SCAN_PY = """\
import json, os, sys
needle = sys.stdin.buffer.read()
pid, prefixes = sys.argv[1], tuple(p.rstrip("/") + "/" for p in sys.argv[2:])
found = []
for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if not target.startswith(prefixes):
            continue
        with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
            data = f.read()
    except OSError:
        continue
    found.append({"target": target, "size": len(data), "marker": needle in data})
print(json.dumps(found))
"""


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _mariadb(testbed: Testbed, host: str, client_args: Sequence[str], statements: str) -> str:
    result = testbed.exec(
        host, ["mariadb", *client_args, "--batch", "--skip-column-names"], input=statements, timeout=300
    )
    if result.rc != 0:
        raise HostCommandFailed(f"{host}: mariadb {' '.join(client_args)}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def run_workload(testbed: Testbed, host: str, marker: str, client_args: Sequence[str] = ()) -> None:
    """INSERT and UPDATE rows holding ``marker`` (InnoDB and Aria), then flush everything to disk."""
    m = _sql_string(marker)
    _mariadb(
        testbed,
        host,
        client_args,
        # The marker is quoted by _sql_string; everything else is a constant.
        f"""
CREATE DATABASE IF NOT EXISTS workload;
CREATE TABLE workload.items (id INT AUTO_INCREMENT PRIMARY KEY, payload VARCHAR(255) NOT NULL, n INT NOT NULL)
  ENGINE=InnoDB;
INSERT INTO workload.items (payload, n)
  SELECT CONCAT({m}, '-inserted-', seq, '-', REPEAT('x', 40)), seq % 97 FROM workload.seq_1_to_{WORKLOAD_ROWS};
UPDATE workload.items SET payload = CONCAT({m}, '-updated-', id) WHERE id % 3 = 0;
CREATE TABLE workload.notes (id INT PRIMARY KEY, note VARCHAR(255) NOT NULL)
  ENGINE=Aria ROW_FORMAT=PAGE TRANSACTIONAL=0;
INSERT INTO workload.notes SELECT seq, CONCAT({m}, '-aria-', seq) FROM workload.seq_1_to_200;
UPDATE workload.notes SET note = CONCAT({m}, '-aria-updated-', id) WHERE id % 2 = 0;
""",  # noqa: S608
    )
    flush_to_disk(testbed, host, client_args)


def flush_to_disk(testbed: Testbed, host: str, client_args: Sequence[str] = (), timeout: float = 60) -> None:
    """Aria tables and the binary log flushed, every dirty InnoDB page written: a scan then sees the data."""
    old = _mariadb(testbed, host, client_args, "SELECT @@GLOBAL.innodb_max_dirty_pages_pct;").strip()
    _mariadb(
        testbed, host, client_args,
        "FLUSH LOCAL TABLES; FLUSH LOCAL BINARY LOGS; SET GLOBAL innodb_max_dirty_pages_pct = 0;",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            dirty = _mariadb(
                testbed, host, client_args,
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                "WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_DIRTY';",
            ).strip()  # fmt: skip
            if dirty == "0":
                return
            if time.monotonic() > deadline:
                raise HostCommandFailed(f"{host}: {dirty} dirty InnoDB pages still unwritten after {timeout:.0f}s")
            time.sleep(0.5)
    finally:
        _mariadb(testbed, host, client_args, f"SET GLOBAL innodb_max_dirty_pages_pct = {float(old)};")


def _counters(testbed: Testbed, host: str, client_args: Sequence[str]) -> dict[str, int]:
    names = ", ".join(f"'{c}'" for c in SPILL_COUNTERS)
    out = _mariadb(
        testbed, host, client_args, f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names});"
    )  # fmt: skip
    return {k: int(v) for k, v in (line.split("\t") for line in out.splitlines())}


@dataclass(frozen=True)
class OpenFile:
    target: str
    size: int
    marker: bool


@dataclass
class SpillObservation:
    """What the server had open while the spilling query was held, and what the query made it do."""

    tmpdir: str
    tmpdir_fstype: str
    open_tmp: list[OpenFile] = field(default_factory=list)
    open_data: list[OpenFile] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # increase during the query

    @property
    def marker_in(self) -> list[str]:
        return [f.target for f in (*self.open_tmp, *self.open_data) if f.marker]


HELD_SQL = """\
SET SESSION sort_buffer_size = 32768, max_length_for_sort_data = 8192,
  tmp_table_size = 16384, max_heap_table_size = 16384;
CREATE TEMPORARY TABLE workload.tmp_innodb ENGINE=InnoDB AS SELECT id, payload FROM workload.items;
CREATE TEMPORARY TABLE workload.tmp_aria ENGINE=Aria AS SELECT id, payload FROM workload.items;
SELECT COUNT(*) INTO @grouped FROM (SELECT payload, COUNT(*) FROM workload.tmp_aria GROUP BY payload) AS g;
SELECT id, payload, n FROM workload.items ORDER BY n DESC, id;
"""
# The reader signals "ready" at the first row it gets, so only the held SELECT may print rows.


def held_spill_scan(
    testbed: Testbed,
    host: str,
    marker: str,
    *,
    server_unit: str = "mariadb",
    client_args: Sequence[str] = (),
    timeout: float = 120,
) -> SpillObservation:
    """Run HELD_SQL, and while the server blocks sending its result, read every file it has open."""
    tmpdir, datadir = _mariadb(testbed, host, client_args, "SELECT @@tmpdir, @@datadir;").strip().split("\t")
    fstype = testbed.exec(host, ["findmnt", "-n", "-o", "FSTYPE", "--target", tmpdir]).stdout.strip()
    pid = testbed.exec(host, ["systemctl", "show", "-p", "MainPID", "--value", server_unit]).stdout.strip()
    if pid in ("", "0"):
        raise HostCommandFailed(f"{host}: {server_unit} has no main process")
    ready, hold = f"{PROBE_DIR}/held.ready", f"{PROBE_DIR}/held.hold"
    testbed.exec(host, ["install", "-d", "-m", "0700", PROBE_DIR], check=True)
    testbed.put_file(host, f"{PROBE_DIR}/held_query.sh", HELD_QUERY_SH, 0o700)
    testbed.put_file(host, f"{PROBE_DIR}/open_files_scan.py", OPEN_FILES_SCAN_PY, 0o700)
    testbed.exec(host, ["rm", "-f", ready], check=True)
    testbed.exec(host, ["touch", hold], check=True)
    before = _counters(testbed, host, client_args)
    held_cmd = ["env", f"READY={ready}", f"HOLD={hold}", "sh", f"{PROBE_DIR}/held_query.sh", *client_args]
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(testbed.exec, host, held_cmd, HELD_SQL, timeout + 60)
        try:
            deadline = time.monotonic() + timeout
            while testbed.exec(host, ["test", "-e", ready]).rc != 0:
                if held.done() or time.monotonic() > deadline:
                    rc, _out, err = held.result() if held.done() else (None, "", "")
                    raise HostCommandFailed(f"{host}: the held query never sent a row (rc {rc}): {err[-2000:]}")
                time.sleep(0.2)
            scan = testbed.exec(
                host,
                ["python3", f"{PROBE_DIR}/open_files_scan.py", pid, tmpdir, datadir],
                input=marker.encode(),
                timeout=120,
            )
            if scan.rc != 0:
                raise HostCommandFailed(f"{host}: open-file scan failed: {scan.stderr[-2000:]}")
        finally:
            testbed.exec(host, ["rm", "-f", hold])
        finished = held.result()
    if finished.rc != 0 or finished.stderr.strip():
        raise HostCommandFailed(f"{host}: the held query failed (rc {finished.rc}): {finished.stderr[-2000:]}")
    after = _counters(testbed, host, client_args)
    observation = SpillObservation(tmpdir=tmpdir, tmpdir_fstype=fstype)
    observation.counters = {name: after[name] - before[name] for name in SPILL_COUNTERS}
    tmp_prefix = tmpdir.rstrip("/") + "/"
    for item in json.loads(scan.stdout):
        entry = OpenFile(item["target"], int(item["size"]), bool(item["marker"]))
        (observation.open_tmp if entry.target.startswith(tmp_prefix) else observation.open_data).append(entry)
    return observation


# --------------------------------------------------------------------------
# Host-side scan of every persistent file
# --------------------------------------------------------------------------


@dataclass
class DiskScan:
    files: int = 0
    bytes: int = 0
    scanned: set[str] = field(default_factory=set)  # "host:/path"
    hits: dict[str, list[str]] = field(default_factory=dict)  # needle name -> ["host:/path", ...]
    # Hits only in the unused part of encrypted Aria index pages, which MariaDB writes from uninitialized
    # memory (see in_aria_index_slack_only in node/mariadb_kms_verify.py): needle name -> ["host:/path", ...]
    aria_index_slack: dict[str, list[str]] = field(default_factory=dict)


def _file_hits(path: Path, needles: Mapping[str, bytes], chunk: int = 8 << 20) -> set[str]:
    keep = max(len(n) for n in needles.values()) - 1
    hits: set[str] = set()
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            data = tail + block
            hits.update(name for name, needle in needles.items() if name not in hits and needle in data)
            tail = data[-keep:] if keep else b""
    return hits


def overlay_binds(testbed: Testbed, host: str) -> list[tuple[str, str]]:
    """(directory of the root overlay, where the host sees it) for each bind mount of one, longest first:
    the datadir is the data volume's data/ subdirectory bound at /var/lib/mysql."""
    out = testbed.exec(host, ["findmnt", "-rn", "-o", "TARGET,FSROOT,FSTYPE"]).stdout
    rows = [line.split(" ") for line in out.splitlines() if line.count(" ") == 2]
    binds = [(root, target) for target, root, fstype in rows if fstype == "overlay" and root != "/"]
    return sorted(binds, key=lambda b: len(b[0]), reverse=True)


def visible_path(path: str, binds: Sequence[tuple[str, str]]) -> str:
    """A file's path as the host sees it, through the first bind mount that shows it."""
    for root, target in binds:
        if path.startswith(root.rstrip("/") + "/"):
            return target.rstrip("/") + path[len(root.rstrip("/")):]
    return path


def scan_upper_dirs(testbed: Testbed, needles: Mapping[str, bytes], hosts: Sequence[str] | None = None) -> DiskScan:
    """Search every regular file each host wrote to persistent storage (its overlay upper dir) for needles.

    Whiteouts (character devices) and symlinks are skipped; nothing is followed outside the upper dir.
    """
    if not needles or any(not n for n in needles.values()):
        raise ValueError("needles must be non-empty byte strings")
    result = DiskScan(hits={name: [] for name in needles}, aria_index_slack={name: [] for name in needles})
    for host in hosts or list(testbed.hosts):
        upper = testbed.hosts[host].upper
        binds = overlay_binds(testbed, host)
        for dirpath, _dirs, names in os.walk(upper, followlinks=False):
            for name in names:
                path = Path(dirpath) / name
                try:
                    info = path.lstat()
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    hits = _file_hits(path, needles)
                except FileNotFoundError:
                    continue  # removed while we walked (a running server's temporary file)
                label = f"{host}:{visible_path(f'/{path.relative_to(upper)}', binds)}"
                result.files += 1
                result.bytes += info.st_size
                result.scanned.add(label)
                for hit in hits:
                    slack = verify_tool.in_aria_index_slack_only(path, needles[hit])
                    (result.aria_index_slack if slack else result.hits)[hit].append(label)
    return result


def backing_dir(testbed: Testbed, host: str, path: str) -> Path:
    """Where ``path`` of a host lies in its upper dir: the datadir is a bind mount of the data volume's
    subdirectory (/srv/mariadb-kms/data), which on a host without a volume stand-in is on the root overlay."""
    found = testbed.exec(host, ["findmnt", "-n", "-o", "FSROOT,FSTYPE", "--mountpoint", path]).stdout.split()
    if len(found) == 2 and found[1] == "overlay":
        return testbed.hosts[host].upper / found[0].lstrip("/")
    if found:
        raise HostCommandFailed(f"{host}: {path} is on {found[1]}, not in the host's upper dir")
    return testbed.hosts[host].upper / path.lstrip("/")


def datadir_digests(testbed: Testbed, host: str, datadir: str = "/var/lib/mysql") -> dict[str, str]:
    """sha256 of every regular file in a host's datadir, read from this machine's side (upper dir)."""
    root = backing_dir(testbed, host, datadir)
    digests: dict[str, str] = {}
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(dirpath) / name
            if stat.S_ISREG(path.lstat().st_mode):
                with open(path, "rb") as f:
                    digests[str(path.relative_to(root))] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests
