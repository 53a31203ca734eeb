"""Nothing in plaintext at rest on on-prem nodes, even what MariaDB cannot encrypt; no SQL path to the key.

The program's own plan (``rehearsal/runner``) deploys two stacks on hosts that each have a data volume
stand-in at /srv/mariadb-kms: a loop-backed ext4 image made on this machine with ``-O encrypt`` and bound
into the host (``attach_volumes``). The image is what lies on the "device": it is read byte for byte from
this machine's side, whatever the host has mounted, keyed or not.

- ``atr1``, ``atr2``, ``atr3``: one cluster with the default ``onPremDatadirEncryption``, fscrypt. The plan
  places datadir.conf before the install, which sets the policy on the volume's empty ``data/`` (and on
  ``log/`` and ``secure-file-priv/`` beside it) before MariaDB initialises it.
- ``atc``: the control, a one-node stack with ``onPremDatadirEncryption: none`` (allowed, so its
  verification states it), the same volume and the same large transaction.

The workload, on the fscrypt cluster: rows and a system-versioned table written before ``atr3`` joins by
SST (the plan is held before its roll); a failed apply on ``atr2`` (a row it holds and the others do not
makes an insert's apply fail: ``GRA_*.log``, the node leaves, and rejoins by a second SST); a 200 MB
transaction on ``atr1`` (200 MB with ``MARIADB_KMS_ATREST_FULL=1``, ``make test-at-rest-full``; 32 MB in
``make test``), while a watcher on every node forces Galera's spill pages to the volume as long as
they exist. Then every node's volume image and every file the hosts wrote to their root (the overlay's
upper dir) are searched for every marker, the data key and the access key. The program's verification runs
on every node (its SQL-path attempts as root, who holds every privilege a DBA has).

The gcache tmpfs is sized by the program (gcache.size plus two write-sets of wsrep_max_ws_size): the 200 MB
write-set's page file fits on every node.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from plaintext_probe import flush_to_disk, scan_upper_dirs

from components.mycnf import ERROR_LOG, MAX_WRITE_SET_BYTES, SECURE_FILE_PRIV_DIR
from components.node_files import BLOB_PATH, CREDENTIALS_PATH, KEYFILE_PATH
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import check, sql, start, unit_state, wait_synced
from rehearsal.overlay import DPKG_UNSAFE_IO, DPKG_UNSAFE_IO_PATH
from rehearsal.runner import DeployFailed, Deployment, ProgramStack, attach_volumes, deploy, onprem_config
from rehearsal.testbed import Settings, Testbed
from rehearsal.volumes import LoopVolume, scan_image

FSCRYPT_NODES = ("atr1", "atr2", "atr3")
CONTROL = "atc"
HOSTS = (*FSCRYPT_NODES, CONTROL)
JOINER = "atr3"  # joins by SST after the first rows are written
FAILS_APPLY = "atr2"
# The large transaction: 200 MB with MARIADB_KMS_ATREST_FULL=1 (make test-at-rest-full), 32 MB in make test
# (still eight times Galera's in-memory write-set, so it spills the same way; 14 min against 10 here).
FULL = os.environ.get("MARIADB_KMS_ATREST_FULL") == "1"
BIG_ROWS = 25_600 if FULL else 4_096  # x ROW_BYTES of payload in one INSERT: 204.8 MB, or 32.8 MB
VOLUME_MIB = 3072 if FULL else 1536  # sparse: the datadir, redo, undo, binlog and spill pages fit
ROW_BYTES = 8000  # each row's payload: the marker repeated to this length
GCACHE_SIZE = "128M"  # smaller than the write-set: it goes to a page file on the gcache tmpfs
PROBE_DIR = "/run/mariadb-kms-test"  # tmpfs in the host

# Runs in a host while the large transaction commits: every Galera spill page (0x…_data.*, 0x…_keys.*) that
# appears in the datadir gets a second link, so Galera's delete after the commit does not drop its dirty
# pages unwritten; once the transaction is over its last bytes are synced and the link removed, and its
# blocks are free on the volume holding what the page held. Before the link, a page filled and deleted
# between two syncs left nothing on the control's volume and its control failed now and then.
SPILL_SYNC_PY = """\
import json, os, sys, time
base, ready, stop = sys.argv[1:4]
seen, held, syncs = set(), set(), 0
open(ready, "w").close()
while not os.path.exists(stop):
    try:
        pages = [n for n in os.listdir(base) if n.startswith("0x") and ("_data." in n or "_keys." in n)]
    except OSError:
        pages = []
    seen.update(pages)
    for name in set(pages) - held:
        try:
            os.link(os.path.join(base, name), os.path.join(base, "held-" + name))
            held.add(name)
        except OSError:
            pass  # already deleted
    if pages:
        os.sync()
        syncs += 1
    time.sleep(0.02)
os.sync()
for name in held:
    os.unlink(os.path.join(base, "held-" + name))
os.sync()
print(json.dumps({"seen": sorted(seen), "held": sorted(held), "syncs": syncs}))
"""


# Runs in the node whose apply fails: notes every GRA_*.log in the datadir and whether it holds the marker
# (read while the key is present: what the filesystem shows its reader), forcing it to the volume.
GRA_WATCH_PY = """\
import glob, json, os, sys, time
base, ready, stop, needle = sys.argv[1], sys.argv[2], sys.argv[3], sys.stdin.buffer.read()
seen, held = set(), False
open(ready, "w").close()
while not os.path.exists(stop):
    for path in glob.glob(os.path.join(base, "GRA_*.log")):
        seen.add(os.path.basename(path))
        try:
            with open(path, "rb") as f:
                held = held or needle in f.read()
        except OSError:
            pass
        os.sync()
    time.sleep(0.02)
print(json.dumps({"logs": sorted(seen), "marker_in_log": held}))
"""


@dataclass
class AtRest:
    testbed: Testbed
    kms: KmsServer
    cluster: Deployment
    control: Deployment
    volumes: dict[str, LoopVolume]
    data_keys: dict[str, bytes] = field(repr=False)  # stack -> its plaintext data key (from the emulator)
    markers: dict[str, str] = field(default_factory=dict, repr=False)  # what -> marker
    watch: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> what its spill watcher saw
    gra_logs: dict[str, Any] = field(default_factory=dict)
    big_seconds: dict[str, float] = field(default_factory=dict)
    big_bytes: int = 0  # what the large transaction wrote, as the server counts it

    def secrets(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for name, key in self.data_keys.items():
            out[f"{name} data key (raw)"] = key
            out[f"{name} data key (hex)"] = key.hex().encode()
        return out

    def access_secrets(self) -> dict[str, bytes]:
        # Each on-prem node has an access key of its own.
        return {f"{node} secret access key": secret.encode()
                for node, (_, secret) in self.cluster.program.onprem_access_keys.items()}


def _require_testbed(config: pytest.Config) -> None:
    from pathlib import Path

    path = str(Path(__file__).with_name("conftest.py"))
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) == path:
            plugin.require_testbed()
            return
    raise AssertionError(f"{path} is not loaded")


def _units_journal(bed: Testbed, hosts: tuple[str, ...]) -> str:
    """What a failed step hides (its output may hold secrets): the units' journal and the error log's tail."""
    out = []
    for host in hosts:
        journal = bed.exec(host, ["journalctl", "--no-pager", "-o", "cat", "-n", "60", "-u", "mariadb-kms-unwrap",
                                  "-u", "mariadb-kms-datadir-key", "-u", "mariadb"]).stdout
        log = bed.exec(host, ["tail", "-n", "30", ERROR_LOG]).stdout
        out.append(f"--- {host}: journal\n{journal}\n--- {host}: {ERROR_LOG}\n{log}")
    return "\n".join(out)


def _big_transaction(marker: str) -> str:
    m = "'" + marker + "'"  # letters, digits and '-' only
    return f"""
CREATE DATABASE IF NOT EXISTS atrest;
CREATE TABLE IF NOT EXISTS atrest.big (id INT PRIMARY KEY, marker VARCHAR(100) NOT NULL, pad MEDIUMTEXT NOT NULL)
  ENGINE=InnoDB;
START TRANSACTION;
INSERT INTO atrest.big SELECT seq, {m}, RPAD({m}, {ROW_BYTES}, {m}) FROM atrest.seq_1_to_{BIG_ROWS};
COMMIT;
SELECT SUM(LENGTH(pad)) FROM atrest.big;
DELETE FROM atrest.big;
"""  # noqa: S608


def _first_rows(marker: str, versioned: str) -> str:
    return f"""
CREATE DATABASE IF NOT EXISTS atrest;
CREATE TABLE atrest.rows (id INT PRIMARY KEY, note VARCHAR(200) NOT NULL) ENGINE=InnoDB;
INSERT INTO atrest.rows SELECT seq, CONCAT('{marker}', '-', seq) FROM atrest.seq_1_to_500;
UPDATE atrest.rows SET note = CONCAT(note, '-updated') WHERE id % 2 = 0;
CREATE TABLE atrest.history (id INT PRIMARY KEY, note VARCHAR(200) NOT NULL) ENGINE=InnoDB WITH SYSTEM VERSIONING;
INSERT INTO atrest.history SELECT seq, CONCAT('{versioned}', '-', seq) FROM atrest.seq_1_to_200;
UPDATE atrest.history SET note = CONCAT(note, '-v2');
DELETE FROM atrest.history WHERE id % 3 = 0;
"""  # noqa: S608


def _watch_and_run(at: AtRest, writer: str, watched: tuple[str, ...], statements: str) -> tuple[float, str]:
    """``statements`` on ``writer`` while a spill watcher runs on each of ``watched``: (seconds, output)."""
    tb = at.testbed
    ready, stop = f"{PROBE_DIR}/spill.ready", f"{PROBE_DIR}/spill.stop"
    for host in watched:
        tb.exec(host, ["install", "-d", "-m", "0700", PROBE_DIR], check=True)
        tb.put_file(host, f"{PROBE_DIR}/spill_sync.py", SPILL_SYNC_PY, 0o700)
        tb.exec(host, ["rm", "-f", ready, stop], check=True)
    with ThreadPoolExecutor(max_workers=len(watched)) as pool:
        watchers = {
            host: pool.submit(tb.exec, host, ["python3", f"{PROBE_DIR}/spill_sync.py", "/var/lib/mysql", ready, stop],
                              None, 1800)
            for host in watched
        }
        for host, watcher in watchers.items():
            while tb.exec(host, ["test", "-e", ready]).rc != 0:
                assert not watcher.done(), watcher.result()
                time.sleep(0.1)
        started = time.monotonic()
        output = ""
        try:
            output = sql(tb, writer, statements, timeout=1800)
        finally:
            seconds = time.monotonic() - started
            for host in watched:
                tb.exec(host, ["touch", stop])
        for host, watcher in watchers.items():
            result = watcher.result()
            assert result.rc == 0, result.stderr
            at.watch[host] = json.loads(result.stdout)
    return seconds, output


def _fail_an_apply(at: AtRest, marker: str) -> dict[str, Any]:
    """A row only ``FAILS_APPLY`` holds (written with wsrep off) collides with the same row inserted on atr1:
    its apply fails (duplicate key), Galera writes ``GRA_*.log`` with the row image, and the node leaves."""
    tb = at.testbed
    ready, stop = f"{PROBE_DIR}/gra.ready", f"{PROBE_DIR}/gra.stop"
    tb.exec(FAILS_APPLY, ["install", "-d", "-m", "0700", PROBE_DIR], check=True)
    tb.put_file(FAILS_APPLY, f"{PROBE_DIR}/gra_watch.py", GRA_WATCH_PY, 0o700)
    tb.exec(FAILS_APPLY, ["rm", "-f", ready, stop], check=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        watcher = pool.submit(tb.exec, FAILS_APPLY, ["python3", f"{PROBE_DIR}/gra_watch.py", "/var/lib/mysql",
                                                     ready, stop], marker.encode(), 1800)
        while tb.exec(FAILS_APPLY, ["test", "-e", ready]).rc != 0:
            assert not watcher.done(), watcher.result()
            time.sleep(0.1)
        try:
            sql(tb, FAILS_APPLY, f"""
SET SESSION wsrep_on = OFF;
INSERT INTO atrest.rows VALUES (100000, '{marker}-local');
SET SESSION wsrep_on = ON;
""")  # noqa: S608
            sql(tb, "atr1", f"INSERT INTO atrest.rows VALUES (100000, '{marker}-replicated');")  # noqa: S608
            # The node leaves the cluster (an inconsistency): wait until it is no longer Synced in a Primary one.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                state = tb.exec(FAILS_APPLY, ["mariadb", "-N", "-e", "SHOW STATUS LIKE 'wsrep_local_state_comment'"],
                                timeout=30)
                if state.rc != 0 or "Synced" not in state.stdout:
                    break
                time.sleep(1)
            time.sleep(2)
        finally:
            tb.exec(FAILS_APPLY, ["touch", stop])
        result = watcher.result()
    assert result.rc == 0, result.stderr
    at.volumes[FAILS_APPLY].sync()
    # Back by the program's own start path: the unwrap, the datadir key, a join by SST (its state is unsafe).
    tb.exec(FAILS_APPLY, ["systemctl", "stop", "mariadb"], timeout=300)
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def at_rest(request: pytest.FixtureRequest) -> Iterator[AtRest]:
    _require_testbed(request.config)
    with Testbed(HOSTS, settings=Settings.from_env()) as bed:
        volumes = attach_volumes(bed, size_mib=VOLUME_MIB)
        bed.boot(timeout=900)  # four hosts at once on a loaded machine
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            config = onprem_config(bed, FSCRYPT_NODES, gcacheSize=GCACHE_SIZE)
            assert "onPremDatadirEncryption" not in config  # the program's default, fscrypt
            control_config = onprem_config(bed, [CONTROL], gcacheSize=GCACHE_SIZE,
                                           onPremDatadirEncryption="none", allowPlainDatadir=True)
            # Recorded one after the other (the program runs under one process-wide mocks runtime); the
            # control's plan runs on its own host while the cluster's plan runs on the others.
            control_stack = ProgramStack(kms)
            control_program = control_stack.record(control_config, bed)
            with ThreadPoolExecutor(max_workers=1) as pool:
                bed.put_file(CONTROL, DPKG_UNSAFE_IO_PATH, DPKG_UNSAFE_IO, 0o644, "root:root")
                control = Deployment(bed, control_program, quiet=True)
                control_run = pool.submit(control.run)
                try:
                    cluster = deploy(bed, ProgramStack(kms), config, stop_before=f"{JOINER}-ssh-roll", quiet=True)
                    control_run.result()
                except DeployFailed as failed:
                    raise DeployFailed(f"{failed}\n{_units_journal(bed, HOSTS)}") from None
            data_keys = {
                name: kms.client().decrypt(CiphertextBlob=d.program.data_key_blob,
                                           EncryptionContext=d.program.encryption_context)["Plaintext"]
                for name, d in (("cluster", cluster), ("control", control))
            }
            at = AtRest(bed, kms, cluster, control, volumes, data_keys)
            token = secrets.token_hex(8)
            at.markers = {
                "rows": f"atrest-rows-{token}",
                "versioned": f"atrest-versioned-{token}",
                "failed apply": f"atrest-gra-{token}",
                "big": f"atrest-big-{token}",
                "control big": f"atrest-control-{token}",
            }
            sql(bed, "atr1", _first_rows(at.markers["rows"], at.markers["versioned"]))
            cluster.run()  # atr3's roll: a join by SST; then the program's verification on every node
            at.gra_logs = _fail_an_apply(at, at.markers["failed apply"])
            assert start(bed, FAILS_APPLY).rc == 0, \
                f"{FAILS_APPLY} did not come back after its failed apply\n{_units_journal(bed, [FAILS_APPLY])}"
            wait_synced(bed, FAILS_APPLY, 3, timeout=900)
            at.big_seconds["cluster"], written = _watch_and_run(at, "atr1", FSCRYPT_NODES,
                                                                _big_transaction(at.markers["big"]))
            at.big_bytes = int(written.split()[-1])
            at.big_seconds["control"], _ = _watch_and_run(at, CONTROL, (CONTROL,),
                                                          _big_transaction(at.markers["control big"]))
            for host in HOSTS:
                flush_to_disk(bed, host)
                volumes[host].sync()
            yield at


def _needles(at: AtRest) -> dict[str, bytes]:
    return {name: m.encode() for name, m in at.markers.items() if name != "control big"} | at.secrets()


# --------------------------------------------------------------------------
# What the plan put in place
# --------------------------------------------------------------------------


def test_the_plan_placed_datadir_conf_and_the_volume_layout(at_rest: AtRest) -> None:
    tb = at_rest.testbed
    for host in HOSTS:
        mode = "none" if host == CONTROL else "fscrypt"
        conf = tb.read_file(host, "/etc/mariadb-kms/datadir.conf").decode()
        assert conf.splitlines()[-1] == f"encryption={mode}", host
        mounts = check(tb, host, ["findmnt", "-n", "-o", "TARGET,FSTYPE,FSROOT", "/var/lib/mysql"]).stdout
        assert mounts.split() == ["/var/lib/mysql", "ext4", "/data"], host  # the volume's data/, not its root
        out = check(tb, host, ["stat", "-c", "%U %a", SECURE_FILE_PRIV_DIR]).stdout.split()
        assert out == ["mysql", "700"], host
        assert tb.exec(host, ["test", "-s", ERROR_LOG]).rc == 0, f"{host}: no error log on the volume"
    for host in FSCRYPT_NODES:
        for directory in ("/srv/mariadb-kms/data", "/srv/mariadb-kms/log", SECURE_FILE_PRIV_DIR):
            policy = check(tb, host, ["mariadb-kms-fscrypt", "policy", directory]).stdout.strip()
            assert len(policy) == 32, (host, directory, policy)  # a v2 key identifier
    assert check(tb, CONTROL, ["mariadb-kms-fscrypt", "policy", "/srv/mariadb-kms/data"]).stdout.strip() == "none"


def test_the_gcache_tmpfs_is_sized_for_the_largest_write_set(at_rest: AtRest) -> None:
    tb = at_rest.testbed
    expected = (128 << 20) + 2 * MAX_WRITE_SET_BYTES
    for host in HOSTS:
        size = check(tb, host, ["findmnt", "-n", "-b", "-o", "FSTYPE,SIZE", "/run/galera"]).stdout.split()
        assert size[0] == "tmpfs" and int(size[1]) == expected, (host, size)
        variables = sql(tb, host, "SELECT @@wsrep_max_ws_size;").split()
        assert variables == [str(MAX_WRITE_SET_BYTES)], host


def test_the_program_verification_passed_on_every_node_with_the_datadir_mode_and_no_sql_path(
    at_rest: AtRest,
) -> None:
    for deployment, hosts, mode in ((at_rest.cluster, FSCRYPT_NODES, "fscrypt"), (at_rest.control, (CONTROL,), "none")):
        for host in hosts:
            report = json.loads(deployment.report(f"{host}-verification-run"))
            assert report["gaps"] == [], (host, report["gaps"])
            datadir = report["datadir_encryption"]
            assert datadir["mode"] == mode, host
            if mode == "fscrypt":
                assert datadir["state"] == "encrypted (fscrypt v2, AES-256-XTS)", host
            else:
                assert datadir["state"] == "not encrypted" and "limitation" in datadir, host
            # Every SQL path to the key, tried with every privilege (root holds FILE and all a DBA has).
            attempts = report["sql_paths"]["attempts"]
            tried = {(a["how"], a["path"]) for a in attempts}
            for path in (KEYFILE_PATH, BLOB_PATH, CREDENTIALS_PATH, "/proc/self/environ"):
                assert ("LOAD DATA INFILE", path) in tried and ("LOAD_FILE()", path) in tried, (host, path)
            assert any(a["how"].startswith("SELECT") for a in attempts), attempts
            assert not any(a["succeeded"] for a in attempts), (host, attempts)


# --------------------------------------------------------------------------
# The workload did what it is for
# --------------------------------------------------------------------------


def test_the_workload_joined_by_sst_failed_an_apply_and_spilled_the_large_transaction(at_rest: AtRest) -> None:
    tb = at_rest.testbed
    gra = at_rest.gra_logs
    assert gra["logs"], "no GRA_*.log appeared on the node whose apply failed"
    assert gra["marker_in_log"], "the GRA_*.log did not hold the row image (the scan's control for it)"
    assert at_rest.big_bytes == BIG_ROWS * ROW_BYTES
    # The writer built the large write-set in spill pages in its datadir, on the fscrypt cluster and the control.
    assert any("_data." in page for page in at_rest.watch["atr1"]["seen"]), at_rest.watch
    assert any("_data." in page for page in at_rest.watch[CONTROL]["seen"]), at_rest.watch
    # Each page was held open by a second link until its last bytes were synced, then freed: whether its blocks
    # reach the volume never depends on writeback timing, on the control or on the fscrypt nodes.
    for host in ("atr1", CONTROL):
        assert any("_data." in page for page in at_rest.watch[host]["held"]), at_rest.watch
    for host in FSCRYPT_NODES:
        wait_synced(tb, host, 3)
    counts = {h: sql(tb, h, "SELECT COUNT(*) FROM atrest.rows; SELECT COUNT(*) FROM atrest.history FOR SYSTEM_TIME "
                          "ALL;").split() for h in FSCRYPT_NODES}
    assert len(set(map(tuple, counts.values()))) == 1, counts  # the same rows, history included, everywhere


# --------------------------------------------------------------------------
# The volumes, byte for byte, and the hosts' persistent files
# --------------------------------------------------------------------------


def test_control_the_plain_volume_image_holds_the_large_transactions_rows(at_rest: AtRest) -> None:
    scan = scan_image(at_rest.volumes[CONTROL].image, {"control big": at_rest.markers["control big"].encode()})
    assert scan.hits["control big"], f"the control found nothing in {scan.bytes} bytes: the scan could not tell"


def test_no_fscrypt_volume_image_holds_a_marker_or_a_key(at_rest: AtRest) -> None:
    needles = _needles(at_rest)
    found = {}
    for host in FSCRYPT_NODES:
        scan = scan_image(at_rest.volumes[host].image, needles)
        assert scan.bytes == VOLUME_MIB << 20
        found[host] = {name: hits for name, hits in scan.hits.items() if hits}
    assert found == {h: {} for h in FSCRYPT_NODES}


def test_no_persistent_file_of_an_fscrypt_host_holds_a_marker_or_a_key(at_rest: AtRest) -> None:
    needles = {**_needles(at_rest), **at_rest.access_secrets()}
    scan = scan_upper_dirs(at_rest.testbed, needles, hosts=list(FSCRYPT_NODES))
    assert scan.files > 0
    hits = {name: sorted(paths) for name, paths in scan.hits.items() if paths}
    # Each node's access key rests in exactly one root-only file, on that node: the one the unwrap reads.
    for h in FSCRYPT_NODES:
        assert hits.pop(f"{h} secret access key", []) == [f"{h}:{CREDENTIALS_PATH}"]
    assert hits == {}


# --------------------------------------------------------------------------
# The verify tool's own controls, on these nodes
# --------------------------------------------------------------------------


def _verify(at: AtRest, host: str, *args: str) -> tuple[int, dict[str, Any]]:
    size = "1" if host == CONTROL else "3"
    result = at.testbed.exec(host, ["mariadb-kms-verify", "--expect-size", size, *args], timeout=900)
    assert result.stdout.strip(), f"{host}: mariadb-kms-verify printed no report: {result.stderr[-2000:]}"
    return result.rc, json.loads(result.stdout)


def test_control_verify_on_the_plain_node_not_allowed_names_the_datadir_and_the_spill_page(at_rest: AtRest) -> None:
    rc, report = _verify(at_rest, CONTROL, "--canary", "--wait", "60", "--datadir-encryption", "none")
    assert rc == 1
    assert any(g.startswith("datadir: not encrypted below MariaDB") for g in report["gaps"])
    assert report["canary"]["spill_pages_with_marker"], report["canary"]
    assert any("Galera's spill page" in g for g in report["gaps"])


def test_control_a_system_versioned_myisam_table_is_a_gap_and_the_scanner_finds_its_canary(at_rest: AtRest) -> None:
    tb, host = at_rest.testbed, "atr1"
    marker = f"atrest-myisam-{secrets.token_hex(10)}"
    sql(tb, host, f"""
CREATE TABLE atrest.myisam_history (id INT PRIMARY KEY, note VARCHAR(100)) ENGINE=MyISAM WITH SYSTEM VERSIONING;
INSERT INTO atrest.myisam_history VALUES (1, '{marker}'), (2, '{marker}');
UPDATE atrest.myisam_history SET note = CONCAT(note, '-v2');
FLUSH TABLES atrest.myisam_history;
""")  # noqa: S608
    try:
        _rc, report = _verify(at_rest, host, "--no-canary-spill", "--datadir-encryption", "fscrypt")
        assert "tables: atrest.myisam_history uses MyISAM, which cannot be encrypted" in report["gaps"]
        # verify's own scanner, run on the node: with the key present the file reads in clear.
        found = check(tb, host, ["python3", "-c", (
            "import importlib.machinery, sys\n"
            "v = importlib.machinery.SourceFileLoader('v', '/usr/local/sbin/mariadb-kms-verify').load_module()\n"
            "r = v.scan_for_marker(['/var/lib/mysql/atrest'], sys.stdin.buffer.read(), open('/proc/mounts').read())\n"
            "print('\\n'.join(r.found))\n")], input=marker.encode()).stdout.split()
        assert "/var/lib/mysql/atrest/myisam_history.MYD" in found
    finally:
        sql(tb, host, "DROP TABLE atrest.myisam_history;")


def test_control_with_secure_file_priv_empty_load_data_reads_the_keyfile(at_rest: AtRest) -> None:
    tb, host = at_rest.testbed, FAILS_APPLY
    cnf = "/etc/mysql/mariadb.conf.d/99-test-secure-file-priv-off.cnf"
    tb.put_file(host, cnf, "[mariadb]\nsecure_file_priv =\n", 0o644)
    try:
        assert tb.exec(host, ["systemctl", "restart", "mariadb"], timeout=900).rc == 0
        wait_synced(tb, host, 3, timeout=900)
        out = sql(tb, host, f"""
CREATE TEMPORARY TABLE atrest.stolen (line LONGBLOB);
LOAD DATA INFILE '{KEYFILE_PATH}' INTO TABLE atrest.stolen FIELDS TERMINATED BY '' ESCAPED BY '';
SELECT SHA2(line, 256) FROM atrest.stolen;
""")  # noqa: S608
        expected = hashlib.sha256(f"1;{at_rest.data_keys['cluster'].hex()}".encode()).hexdigest()
        assert expected in out.split()  # the plaintext key, read by SQL (compared by digest: never printed)
        _rc, report = _verify(at_rest, host, "--no-canary-spill")
        assert any(g.startswith(f"sql paths: LOAD DATA INFILE on {KEYFILE_PATH} succeeded") for g in report["gaps"])
    finally:
        tb.exec(host, ["rm", "-f", cnf])
        assert tb.exec(host, ["systemctl", "restart", "mariadb"], timeout=900).rc == 0
        wait_synced(tb, host, 3, timeout=900)


# --------------------------------------------------------------------------
# After MariaDB stops: the key leaves the kernel (last: it stops a node)
# --------------------------------------------------------------------------


def test_after_a_stop_the_key_is_absent_and_the_volume_is_ciphertext(at_rest: AtRest) -> None:
    tb, host = at_rest.testbed, "atr3"
    assert tb.exec(host, ["systemctl", "stop", "mariadb"], timeout=300).rc == 0
    deadline = time.monotonic() + 120
    while (state := unit_state(tb, host, "mariadb-kms-datadir-key.service")) not in ("inactive", "failed"):
        assert time.monotonic() < deadline, f"the datadir key unit is still {state} after MariaDB stopped"
        time.sleep(0.5)
    assert state == "inactive"
    assert check(tb, host, ["mariadb-kms-fscrypt", "key-status"]).stdout.strip() == "absent"
    assert tb.exec(host, ["mountpoint", "-q", "/var/lib/mysql"]).rc != 0
    names = check(tb, host, ["ls", "/srv/mariadb-kms/data"]).stdout.split()
    assert names and "mysql" not in names and "ibdata1" not in names  # names are encrypted too
    assert tb.exec(host, ["cat", ERROR_LOG]).rc != 0  # the error log is unreadable without the key
    at_rest.volumes[host].sync()
    scan = scan_image(at_rest.volumes[host].image, _needles(at_rest))
    assert {name: hits for name, hits in scan.hits.items() if hits} == {}
    assert start(tb, host).rc == 0
    assert check(tb, host, ["mariadb-kms-fscrypt", "key-status"]).stdout.strip() == "present"
    wait_synced(tb, host, 3)
