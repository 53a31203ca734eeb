"""Nothing in plaintext at rest, even what MariaDB cannot encrypt, and no SQL path to the key: on real hosts.

Its own testbed (prefix ``mkar``, subnet 10.231.9.0/24; MARIADB_KMS_ATREST_TESTBED_PREFIX/_SUBNET change
them), two on-prem nodes in one Galera cluster, each with a data volume stand-in: a loop-backed ext4 image
made on this machine with ``-O encrypt`` and bound into the host at /srv/mariadb-kms (rehearsal/volumes.py).

- ``atr1``: datadir encryption ``fscrypt``. mariadb-kms-install sets the policy on the volume's empty
  ``data/`` directory (bound at /var/lib/mysql) before MariaDB initialises it, with a key derived from the
  cluster data key; mariadb-kms-datadir-key.service adds it before each start and removes it after.
- ``atr2``: datadir encryption ``none``: the control, the same volume and the same workload.

A transaction several times larger than Galera's in-memory write-set (4 MiB) makes Galera write its rows
to ``0x…_data.*`` pages in the datadir while it commits. A watcher in the host forces those pages to the
volume (sync) while they exist, and the volume's image is then read byte for byte from this machine's side:
on the fscrypt node the marker is nowhere in it, on the control it is.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cluster_setup import (
    ClusterKey,
    FakeCredentials,
    bootstrap,
    cluster_config,
    in_parallel,
    install_node,
    join,
    make_cluster_key,
    sql,
    unit_state,
    verify_args,
    wait_synced,
)

from components.config import ClusterConfig
from components.mycnf import ERROR_LOG, SECURE_FILE_PRIV_DIR
from components.node_files import BLOB_PATH, CREDENTIALS_PATH, KEYFILE_PATH
from rehearsal.kms_server import KmsServer
from rehearsal.testbed import Settings, Testbed
from rehearsal.volumes import LoopVolume, make_volumes, scan_image

FSCRYPT_NODE, PLAIN_NODE = "atr1", "atr2"
HOSTS = (FSCRYPT_NODE, PLAIN_NODE)
DATADIR_MODE = {FSCRYPT_NODE: "fscrypt", PLAIN_NODE: "none"}
PROBE_DIR = "/run/mariadb-kms-test"  # tmpfs in the host
BIG_ROWS = 4000  # x about 8 KB: a 32 MB INSERT, then its UPDATE and DELETE, in one transaction
DATADIR_CONF = "/etc/mariadb-kms/datadir.conf"
CONTROL_CNF = "/etc/mysql/mariadb.conf.d/99-test-secure-file-priv-off.cnf"

# Runs in a host while the large transaction commits: every Galera spill page that appears in the datadir
# is pushed to the volume (sync) again and again while it exists, so the image shows what it held.
SPILL_SYNC_PY = """\
import json, os, sys, time
base, ready, stop = sys.argv[1:4]
seen, syncs = set(), 0
open(ready, "w").close()
while not os.path.exists(stop):
    pages = [n for n in os.listdir(base) if n.startswith("0x") and ("_data." in n or "_keys." in n)]
    seen.update(pages)
    if pages:
        os.sync()
        syncs += 1
    time.sleep(0.02)
print(json.dumps({"seen": sorted(seen), "syncs": syncs}))
"""


def _settings() -> Settings:
    return Settings(
        prefix=os.environ.get("MARIADB_KMS_ATREST_TESTBED_PREFIX", "mkar"),
        subnet=ipaddress.IPv4Network(os.environ.get("MARIADB_KMS_ATREST_TESTBED_SUBNET", "10.231.9.0/24")),
    )


def _require_testbed(config: pytest.Config) -> None:
    path = str(Path(__file__).with_name("conftest.py"))
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) == path:
            plugin.require_testbed()
            return
    raise AssertionError(f"{path} is not loaded")


@dataclass
class AtRest:
    testbed: Testbed
    kms: KmsServer
    key: ClusterKey
    config: ClusterConfig
    volumes: dict[str, LoopVolume]
    credentials: FakeCredentials = field(repr=False)
    data_key: bytes = field(repr=False)

    def secrets(self) -> dict[str, bytes]:
        return {
            "data key (raw)": self.data_key,
            "data key (hex)": self.data_key.hex().encode(),
            "secret access key": self.credentials.secret_access_key.encode(),
        }


@pytest.fixture(scope="module")
def at_rest(request: pytest.FixtureRequest) -> Iterator[AtRest]:
    _require_testbed(request.config)
    with Testbed(HOSTS, settings=_settings()) as bed:
        volumes = make_volumes(bed.run_dir, {h: True for h in HOSTS})
        try:
            for host, volume in volumes.items():
                bed.volumes[host] = volume.mount_point
            bed.boot()
            with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
                key = make_cluster_key(kms)
                config = cluster_config(bed, HOSTS)
                credentials = FakeCredentials.generate()
                data_key = kms.client().decrypt(CiphertextBlob=key.blob)["Plaintext"]

                def install(host: str) -> None:
                    bed.put_file(host, DATADIR_CONF, f"encryption={DATADIR_MODE[host]}\n", 0o644)
                    install_node(bed, host, cluster=config, key=key, kms=kms, credentials=credentials)

                in_parallel(HOSTS, install)
                bootstrap(bed, FSCRYPT_NODE)
                join(bed, PLAIN_NODE, 2)
                yield AtRest(bed, kms, key, config, volumes, credentials, data_key)
        finally:
            bed.teardown()
            for volume in volumes.values():
                volume.remove()


def _verify(at: AtRest, host: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = at.testbed.exec(
        host, ["mariadb-kms-verify", "--expect-size", "2", *verify_args(at.config), *args], timeout=900
    )
    assert result.stdout.strip(), f"{host}: mariadb-kms-verify printed no report: {result.stderr[-2000:]}"
    return result.rc, json.loads(result.stdout)


def _big_transaction(marker: str) -> str:
    m = "'" + marker + "'"  # letters, digits and '-' only
    return f"""
CREATE DATABASE IF NOT EXISTS atrest;
CREATE TABLE IF NOT EXISTS atrest.big (id INT PRIMARY KEY, marker VARCHAR(100) NOT NULL, pad MEDIUMTEXT NOT NULL)
  ENGINE=InnoDB;
START TRANSACTION;
INSERT INTO atrest.big SELECT seq, {m}, REPEAT({m}, 160) FROM atrest.seq_1_to_{BIG_ROWS};
UPDATE atrest.big SET marker = CONCAT(marker, '-updated');
DELETE FROM atrest.big WHERE id % 2 = 0;
COMMIT;
DELETE FROM atrest.big;
"""  # noqa: S608


@dataclass
class SpillRun:
    marker: str
    watch: dict[str, Any]
    seconds: float


def _spill_and_sync(at: AtRest, host: str) -> SpillRun:
    """The large transaction on ``host`` while the watcher pushes its spill pages to the volume."""
    tb = at.testbed
    marker = f"atrest-{host}-{secrets.token_hex(10)}"
    ready, stop = f"{PROBE_DIR}/spill.ready", f"{PROBE_DIR}/spill.stop"
    tb.exec(host, ["install", "-d", "-m", "0700", PROBE_DIR], check=True)
    tb.put_file(host, f"{PROBE_DIR}/spill_sync.py", SPILL_SYNC_PY, 0o700)
    tb.exec(host, ["rm", "-f", ready, stop], check=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        watcher = pool.submit(tb.exec, host, ["python3", f"{PROBE_DIR}/spill_sync.py", "/var/lib/mysql", ready, stop],
                              None, 900)
        while tb.exec(host, ["test", "-e", ready]).rc != 0:
            assert not watcher.done(), watcher.result()
            time.sleep(0.1)
        started = time.monotonic()
        try:
            sql(tb, host, _big_transaction(marker), timeout=900)
        finally:
            seconds = time.monotonic() - started
            tb.exec(host, ["touch", stop])
        watched = watcher.result()
    assert watched.rc == 0, watched.stderr
    at.volumes[host].sync()
    return SpillRun(marker, json.loads(watched.stdout), seconds)


@pytest.fixture(scope="module")
def spills(at_rest: AtRest) -> dict[str, SpillRun]:
    return {host: _spill_and_sync(at_rest, host) for host in HOSTS}


# --------------------------------------------------------------------------
# The volume, the kernel's key, the layout
# --------------------------------------------------------------------------


def test_the_fscrypt_ioctls_work_inside_a_host_and_the_datadir_is_encrypted(at_rest: AtRest) -> None:
    tb = at_rest.testbed
    policy = tb.exec(FSCRYPT_NODE, ["mariadb-kms-fscrypt", "policy", "/var/lib/mysql"], check=True).stdout.strip()
    assert len(policy) == 32  # a v2 key identifier
    assert tb.exec(FSCRYPT_NODE, ["mariadb-kms-fscrypt", "key-status"], check=True).stdout.strip() == "present"
    # The control's datadir has no policy, on the same kind of volume.
    assert tb.exec(PLAIN_NODE, ["mariadb-kms-fscrypt", "policy", "/var/lib/mysql"], check=True).stdout.strip() == "none"
    for host in HOSTS:
        mounts = tb.exec(host, ["findmnt", "-n", "-o", "TARGET,FSTYPE,FSROOT", "/var/lib/mysql"], check=True).stdout
        assert mounts.split() == ["/var/lib/mysql", "ext4", "/data"]  # the volume's data/, not its root


def test_ours_lives_beside_the_datadir_secure_file_priv_empty_and_private(at_rest: AtRest) -> None:
    tb = at_rest.testbed
    for host in HOSTS:
        out = tb.exec(host, ["stat", "-c", "%U %a", SECURE_FILE_PRIV_DIR], check=True).stdout.split()
        assert out == ["mysql", "700"]
        assert tb.exec(host, ["find", SECURE_FILE_PRIV_DIR, "-mindepth", "1"], check=True).stdout == ""
        assert tb.exec(host, ["test", "-s", ERROR_LOG]).rc == 0, f"{host}: no error log on the volume"
        pointer = tb.exec(host, ["journalctl", "-u", "mariadb", "--no-pager", "-o", "cat"], check=True).stdout
        assert f"error log is {ERROR_LOG}" in pointer


# --------------------------------------------------------------------------
# The raw volume, during a large transaction
# --------------------------------------------------------------------------


def test_the_large_transaction_spilled_on_both_nodes(spills: dict[str, SpillRun]) -> None:
    for host, run in spills.items():
        assert any("_data." in page for page in run.watch["seen"]), (host, run.watch)
        assert run.watch["syncs"] > 0


def test_control_the_plain_volume_image_holds_the_marker(at_rest: AtRest, spills: dict[str, SpillRun]) -> None:
    scan = scan_image(at_rest.volumes[PLAIN_NODE].image, {"marker": spills[PLAIN_NODE].marker.encode()})
    assert scan.hits["marker"], f"the control found nothing in {scan.bytes} bytes: the scan could not tell"


def test_the_fscrypt_volume_image_holds_no_marker_and_no_secret(at_rest: AtRest,
                                                                 spills: dict[str, SpillRun]) -> None:
    needles = {"marker": spills[FSCRYPT_NODE].marker.encode(), **at_rest.secrets()}
    scan = scan_image(at_rest.volumes[FSCRYPT_NODE].image, needles)
    assert scan.bytes == 1024 << 20
    assert {name: hits for name, hits in scan.hits.items() if hits} == {}


# --------------------------------------------------------------------------
# The verify tool on real nodes
# --------------------------------------------------------------------------


def test_verify_passes_on_the_fscrypt_node_with_a_spilling_canary(at_rest: AtRest) -> None:
    rc, report = _verify(at_rest, FSCRYPT_NODE, "--canary", "--wait", "60", "--datadir-encryption", "fscrypt")
    assert report["gaps"] == [] and rc == 0
    assert report["datadir_encryption"]["state"].startswith("encrypted (fscrypt")
    canary = report["canary"]
    assert canary["found_in"] == [] and canary["spill_pages_seen"], canary
    attempts = report["sql_paths"]["attempts"]
    tried = {(a["how"], a["path"]) for a in attempts}
    for path in (KEYFILE_PATH, BLOB_PATH, CREDENTIALS_PATH, "/proc/self/environ"):
        assert ("LOAD DATA INFILE", path) in tried and ("LOAD_FILE()", path) in tried
    assert not any(a["succeeded"] for a in attempts), attempts


def test_control_verify_on_the_plain_node_names_the_datadir_and_the_spill_page(at_rest: AtRest) -> None:
    rc, report = _verify(at_rest, PLAIN_NODE, "--canary", "--wait", "60", "--datadir-encryption", "none")
    assert rc == 1
    assert any(g.startswith("datadir: not encrypted below MariaDB") for g in report["gaps"])
    assert report["canary"]["spill_pages_with_marker"], report["canary"]
    assert any("Galera's spill page" in g for g in report["gaps"])


def test_a_system_versioned_myisam_table_is_a_gap_and_the_scan_finds_its_canary(at_rest: AtRest) -> None:
    tb = at_rest.testbed
    marker = f"atrest-myisam-{secrets.token_hex(10)}"
    sql(tb, FSCRYPT_NODE, f"""
CREATE DATABASE IF NOT EXISTS atrest;
CREATE TABLE atrest.history (id INT PRIMARY KEY, note VARCHAR(100)) ENGINE=MyISAM WITH SYSTEM VERSIONING;
INSERT INTO atrest.history VALUES (1, '{marker}'), (2, '{marker}');
UPDATE atrest.history SET note = CONCAT(note, '-v2');
FLUSH TABLES atrest.history;
""")  # noqa: S608
    try:
        _rc, report = _verify(at_rest, FSCRYPT_NODE, "--no-canary-spill", "--datadir-encryption", "fscrypt")
        assert "tables: atrest.history uses MyISAM, which cannot be encrypted" in report["gaps"]
        # verify's own scanner, run on the node: with the key present the file reads in clear.
        found = tb.exec(FSCRYPT_NODE, ["python3", "-c", (
            "import importlib.machinery, sys\n"
            "v = importlib.machinery.SourceFileLoader('v', '/usr/local/sbin/mariadb-kms-verify').load_module()\n"
            "r = v.scan_for_marker(['/var/lib/mysql/atrest'], sys.stdin.buffer.read(), open('/proc/mounts').read())\n"
            "print('\\n'.join(r.found))\n")], input=marker.encode(), check=True).stdout.split()
        assert "/var/lib/mysql/atrest/history.MYD" in found
    finally:
        sql(tb, FSCRYPT_NODE, "DROP TABLE atrest.history;")


# --------------------------------------------------------------------------
# No SQL path to the key
# --------------------------------------------------------------------------


def test_control_with_secure_file_priv_empty_load_data_reads_the_keyfile(at_rest: AtRest) -> None:
    tb = at_rest.testbed
    tb.put_file(PLAIN_NODE, CONTROL_CNF, "[mariadb]\nsecure_file_priv =\n", 0o644)
    try:
        assert tb.exec(PLAIN_NODE, ["systemctl", "restart", "mariadb"], timeout=600).rc == 0
        wait_synced(tb, PLAIN_NODE, 2)
        out = sql(tb, PLAIN_NODE, f"""
CREATE DATABASE IF NOT EXISTS atrest;
CREATE TEMPORARY TABLE atrest.stolen (line LONGBLOB);
LOAD DATA INFILE '{KEYFILE_PATH}' INTO TABLE atrest.stolen FIELDS TERMINATED BY '' ESCAPED BY '';
SELECT SHA2(line, 256) FROM atrest.stolen;
""")  # noqa: S608
        expected = hashlib.sha256(f"1;{at_rest.data_key.hex()}".encode()).hexdigest()
        assert expected in out.split()  # the plaintext key, read by SQL (compared by digest: never printed)
        _rc, report = _verify(at_rest, PLAIN_NODE, "--no-canary-spill")
        assert any(g.startswith(f"sql paths: LOAD DATA INFILE on {KEYFILE_PATH} succeeded") for g in report["gaps"])
    finally:
        tb.exec(PLAIN_NODE, ["rm", "-f", CONTROL_CNF])
        assert tb.exec(PLAIN_NODE, ["systemctl", "restart", "mariadb"], timeout=600).rc == 0
        wait_synced(tb, PLAIN_NODE, 2)


# --------------------------------------------------------------------------
# After MariaDB stops: the key leaves the kernel (last: it stops the node)
# --------------------------------------------------------------------------


def test_after_a_stop_the_key_is_absent_and_the_datadir_is_ciphertext(at_rest: AtRest,
                                                                      spills: dict[str, SpillRun]) -> None:
    tb = at_rest.testbed
    assert tb.exec(FSCRYPT_NODE, ["systemctl", "stop", "mariadb"], timeout=300).rc == 0
    deadline = time.monotonic() + 60
    unit = "mariadb-kms-datadir-key.service"
    while (state := unit_state(tb, FSCRYPT_NODE, unit)) not in ("inactive", "failed"):
        assert time.monotonic() < deadline, f"{unit} is still {state} a minute after MariaDB stopped"
        time.sleep(0.5)
    journal = tb.exec(FSCRYPT_NODE, ["journalctl", "-u", unit, "-u", "mariadb-kms-unwrap", "--no-pager", "-o", "cat"]
                      ).stdout
    assert state == "inactive", journal[-3000:]
    while (unwrap := unit_state(tb, FSCRYPT_NODE, "mariadb-kms-unwrap.service")) not in ("inactive", "failed"):
        assert time.monotonic() < deadline, f"the unwrap unit is still {unwrap} a minute after MariaDB stopped"
        time.sleep(0.5)
    journal = tb.exec(FSCRYPT_NODE, ["journalctl", "-u", unit, "-u", "mariadb-kms-unwrap", "--no-pager", "-o", "cat"]
                      ).stdout
    assert unwrap == "inactive", journal[-3000:]
    assert tb.exec(FSCRYPT_NODE, ["mariadb-kms-fscrypt", "key-status"], check=True).stdout.strip() == "absent"
    # The bind mount went first (a mount pins the directory it shows: the key could not fully leave).
    assert tb.exec(FSCRYPT_NODE, ["mountpoint", "-q", "/var/lib/mysql"]).rc != 0
    names = tb.exec(FSCRYPT_NODE, ["ls", "/srv/mariadb-kms/data"], check=True).stdout.split()
    assert names and "mysql" not in names and "ibdata1" not in names  # names are encrypted too
    scan = scan_image(at_rest.volumes[FSCRYPT_NODE].image, {"marker": spills[FSCRYPT_NODE].marker.encode()})
    assert scan.hits["marker"] == []
    # It comes back with the next start: the unit adds the key again.
    assert tb.exec(FSCRYPT_NODE, ["systemctl", "start", "mariadb"], timeout=600).rc == 0
    assert tb.exec(FSCRYPT_NODE, ["mariadb-kms-fscrypt", "key-status"], check=True).stdout.strip() == "present"

