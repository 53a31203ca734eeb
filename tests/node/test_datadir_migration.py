"""An existing node moves to an fscrypt-encrypted datadir by SST, one node, under the bank-transfer load.

Three on-prem hosts, each with a data volume stand-in (a loop-backed ext4 ``-O encrypt`` image bound at
/srv/mariadb-kms, read byte for byte from this machine's side), run the program's plan with
``onPremDatadirEncryption: none`` (``allowPlainDatadir``): what a stack made before datadir encryption looks
like. What MariaDB itself never encrypts holds a marker in clear: a view's SQL (``.frm``) and a trigger's
body (``.TRG``).

Then, as docs/at-rest.md's runbook says:
1. the stack is recorded again with ``fscrypt`` and the commands the engine would run for that change
   (``rehearsal/engine_rules``) are carried out: every node's verification reports the datadir as a gap
   (the step fails), and nothing else changes on the nodes (datadir.conf stays, no node restarts);
2. on ONE node, while the load runs: ``systemctl stop mariadb``, ``mariadb-kms-fscrypt migrate`` (the old
   datadir, log/ and secure-file-priv/ to ``plain-<time>/`` on the same volume, the bind line out of fstab,
   datadir.conf says fscrypt), ``mariadb-kms-install``, ``systemctl start mariadb``.

What it shows: the node joined by SST (its error log), the view and trigger came back through it, its
verification with ``--datadir-encryption fscrypt`` passes, no acknowledged transfer was lost and the bank's
invariant holds, the two other nodes never left Primary and were only ever Synced or the SST's donor.

The volume image: the old datadir was renamed on the same volume, so its plaintext blocks are still on the
device. The test shows that (the marker is in the image after the move: the runbook's wipe is needed, and
the scan can find it), then does the runbook's last step (remove ``plain-<time>/``, fill the free space with
zeros, remove the fill) and shows the marker nowhere in the image, while the node serves the view from its
encrypted datadir. What it cannot show: blocks an SSD keeps aside from the filesystem (a loop image has
none); that is why the runbook calls a new volume the clean way.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from error_log import error_log_since
from plaintext_probe import flush_to_disk

from rehearsal.engine_rules import plan_changes
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import check, sql, wait_synced, wsrep_status
from rehearsal.runner import DeployFailed, Deployment, ProgramStack, attach_volumes, deploy, engine_runs, onprem_config
from rehearsal.testbed import Settings, Testbed
from rehearsal.volumes import LoopVolume, scan_image
from rehearsal.workload import BankWorkload, setup_sql

HOSTS = ("mg1", "mg2", "mg3")
MOVED = "mg3"
VOLUME_MIB = 1024  # sparse; the old and the new datadir both fit while the old one waits to be wiped
# The workload's pymysql client connects without TLS; replication and SST keep theirs.
CONFIG: dict[str, Any] = {"gcacheSize": "64M", "requireSecureTransport": False}
EMPTY_STATE = re.compile(r"Local state: 0{8}-0{4}-0{4}-0{4}-0{12}:-1")


class StateMonitor:
    """Every node's wsrep state, sampled at once, until stopped."""

    def __init__(self, testbed: Testbed, hosts: tuple[str, ...]) -> None:
        self.testbed, self.hosts = testbed, hosts
        self.samples: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="state-monitor")

    def _state(self, host: str) -> str:
        status = wsrep_status(self.testbed, host)
        return f"{status.get('wsrep_local_state_comment', 'down')}/{status.get('wsrep_cluster_status', 'none')}"

    def _run(self) -> None:
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            while not self._stop.is_set():
                self.samples.append(dict(zip(self.hosts, pool.map(self._state, self.hosts), strict=True)))
                self._stop.wait(0.5)

    def start(self) -> StateMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def seen(self, host: str) -> set[str]:
        return {s[host] for s in self.samples}


@dataclass
class Migration:
    testbed: Testbed
    volumes: dict[str, LoopVolume]
    before: Deployment
    up: Deployment
    runs: list[str]
    up_failure: str
    marker: str
    data_key: bytes = field(repr=False)
    load: dict[str, Any] = field(default_factory=dict)
    states: dict[str, set[str]] = field(default_factory=dict)
    samples: int = 0
    steps: dict[str, str] = field(default_factory=dict)  # runbook step -> its output
    seconds: dict[str, float] = field(default_factory=dict)
    error_log: str = ""
    datadir_conf_after_up: dict[str, str] = field(default_factory=dict)
    scan_after_move: dict[str, list[int]] = field(default_factory=dict)
    scan_plain_node: dict[str, list[int]] = field(default_factory=dict)
    scan_after_wipe: dict[str, list[int]] = field(default_factory=dict)
    verify_after: dict[str, Any] = field(default_factory=dict)
    verify_rc: int = -1
    verify_command: str = ""
    leftovers: list[str] = field(default_factory=list)  # what owns a block still holding a needle, if any
    up_outcomes: dict[str, Any] = field(default_factory=dict)  # the up with fscrypt, before any node moved


def _require_testbed(config: pytest.Config) -> None:
    from pathlib import Path

    path = str(Path(__file__).with_name("conftest.py"))
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) == path:
            plugin.require_testbed()
            return
    raise AssertionError(f"{path} is not loaded")


def _plain_objects(marker: str) -> str:
    # A view's SQL lives in its .frm and a trigger's body in its .TRG: MariaDB encrypts neither.
    return f"""
CREATE DATABASE IF NOT EXISTS moved;
CREATE TABLE moved.t (id INT PRIMARY KEY, note VARCHAR(100)) ENGINE=InnoDB;
CREATE VIEW moved.v AS SELECT '{marker}-view' AS note;
CREATE TRIGGER moved.tr BEFORE INSERT ON moved.t FOR EACH ROW SET NEW.note = CONCAT('{marker}-trigger', NEW.id);
INSERT INTO moved.t (id) VALUES (1), (2);
"""  # noqa: S608


def _runbook_step(bed: Testbed, at: Migration, name: str, argv: list[str], timeout: float = 1200) -> str:
    started = time.monotonic()
    result = bed.exec(MOVED, argv, timeout=timeout)
    at.seconds[name] = time.monotonic() - started
    said = (result.stdout + result.stderr).strip()
    at.steps[name] = said
    assert result.rc == 0, f"{name}: exit {result.rc}\n{said[-4000:]}"
    return said


def _owners(volume: LoopVolume, hits: dict[str, list[int]]) -> list[str]:
    """For a failure's message: which inode (if any) owns each block a needle was found in (debugfs, read-only)."""
    out = []
    for name, offsets in hits.items():
        for offset in offsets[:4]:
            block = offset // 4096
            icheck = subprocess.run(["debugfs", "-c", "-R", f"icheck {block}", str(volume.image)],
                                    capture_output=True, text=True, timeout=120, check=False).stdout.strip()
            out.append(f"{name} at byte {offset} (block {block}): {icheck.splitlines()[-1] if icheck else '?'}")
    return out


def _image_hits(volume: LoopVolume, needles: dict[str, bytes]) -> dict[str, list[int]]:
    volume.sync()
    return {name: hits for name, hits in scan_image(volume.image, needles).hits.items() if hits}


@pytest.fixture(scope="module")
def migration(request: pytest.FixtureRequest) -> Iterator[Migration]:
    _require_testbed(request.config)
    with Testbed(HOSTS, settings=Settings.from_env()) as bed:
        volumes = attach_volumes(bed, size_mib=VOLUME_MIB)
        bed.boot(timeout=900)
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            stack = ProgramStack(kms)
            config = onprem_config(bed, HOSTS, onPremDatadirEncryption="none", allowPlainDatadir=True, **CONFIG)
            before = deploy(bed, stack, config, quiet=True)
            data_key = kms.client().decrypt(CiphertextBlob=before.program.data_key_blob,
                                            EncryptionContext=before.program.encryption_context)["Plaintext"]
            marker = f"migrated-{secrets.token_hex(8)}"
            sql(bed, "mg1", _plain_objects(marker))
            password = secrets.token_urlsafe(18)
            sql(bed, "mg1", setup_sql(20, 1000, "bank", password))
            for host in HOSTS:
                wait_synced(bed, host, 3, timeout=600)
                flush_to_disk(bed, host)

            # 1. The next `pulumi up`, with fscrypt.
            after = stack.record({**config, "onPremDatadirEncryption": "fscrypt"}, bed)
            runs = engine_runs(before.program, after)
            assert not [c for c in plan_changes(before.program.recording, after.recording) if c.blocked]
            up = Deployment(bed, after, quiet=True,
                            outcomes={n: o for n, o in before.outcomes.items() if n not in runs and o.ok})
            verifications = set(after.verification_commands)
            up.run_only([n for n in runs if n not in verifications], timeout=1800)
            failures = []
            for name in [n for n in runs if n in verifications]:  # each on its own: a failure stops a batch
                try:
                    up.run_command(name, timeout=1200)
                except DeployFailed as failed:
                    failures.append(str(failed))
            at = Migration(bed, volumes, before, up, runs, "\n".join(failures), marker, data_key)
            # Kept apart: the moved node's verification runs again later, on the same deployment.
            at.up_outcomes = {n: up.outcomes[n] for n in runs}
            at.datadir_conf_after_up = {h: bed.read_file(h, "/etc/mariadb-kms/datadir.conf").decode() for h in HOSTS}

            # 2. One node moves, under load.
            load = BankWorkload([bed.hosts[h].address for h in HOSTS], user="bank", password=password,
                                duration=3600, max_transfers=10**7)
            monitor = StateMonitor(bed, HOSTS).start()
            load.start()
            time.sleep(5)
            moved_at = time.time()
            try:
                _runbook_step(bed, at, "stop", ["systemctl", "stop", "mariadb"], timeout=600)
                _runbook_step(bed, at, "migrate", ["mariadb-kms-fscrypt", "migrate"])
                _runbook_step(bed, at, "install", ["mariadb-kms-install"])
                _runbook_step(bed, at, "start", ["systemctl", "start", "mariadb"], timeout=1800)
                wait_synced(bed, MOVED, 3, timeout=900)
                time.sleep(10)  # transfers through the moved node too
            finally:
                load.stop()
                load.wait(120)
                monitor.stop()
            report = load.report(load.audit())
            at.load = {"acknowledged": report.acknowledged, "lost": report.acknowledged_lost,
                       "invariant_violations": report.invariant_violations, "client_errors": report.client_errors,
                       "errors_by_kind": report.errors_by_kind, "longest_gap_s": report.longest_gap_s}
            at.states = {h: monitor.seen(h) for h in HOSTS}
            at.samples = len(monitor.samples)
            at.error_log = error_log_since(bed, MOVED, moved_at - 5)

            # The runbook's last step, after the node is back: the old plaintext blocks on this volume.
            needles = {"marker": marker.encode(), "data key": data_key, "data key (hex)": data_key.hex().encode()}
            flush_to_disk(bed, MOVED)
            at.scan_after_move = _image_hits(volumes[MOVED], needles)
            at.scan_plain_node = _image_hits(volumes["mg1"], {"marker": marker.encode()})
            old = [line.split()[-1] for line in at.steps["migrate"].splitlines()
                   if " to /srv/mariadb-kms/plain-" in line]
            assert old, at.steps["migrate"]
            plain_dir = old[0].rsplit("/", 1)[0]
            _runbook_step(bed, at, "wipe", ["mariadb-kms-fscrypt", "wipe", plain_dir], timeout=3600)
            at.scan_after_wipe = _image_hits(volumes[MOVED], needles)
            at.leftovers = _owners(volumes[MOVED], at.scan_after_wipe)
            # The program's own verification of the moved node, as the up with fscrypt records it.
            name = f"{MOVED}-verification-run"
            at.verify_command = after.command(name).create
            try:
                up.run_command(name, timeout=1200)
                at.verify_rc = 0
            except DeployFailed:
                rc = up.outcomes[name].rc
                at.verify_rc = -1 if rc is None else rc
            out = up.outcomes[name].stdout
            at.verify_after = json.loads(out) if out.strip() else {"stderr": up.outcomes[name].stderr[-3000:]}
            print(f"datadir migration of {MOVED}: runbook steps {({k: round(v, 1) for k, v in at.seconds.items()})} s; "
                  f"load {at.load}; states seen {({h: sorted(s) for h, s in at.states.items()})} "
                  f"({at.samples} samples); engine ran {runs}; wipe: {at.steps['wipe']}; marker in the image after "
                  f"the move {at.scan_after_move}, after the wipe {at.scan_after_wipe} {at.leftovers}")
            yield at


# --------------------------------------------------------------------------
# The `pulumi up` with fscrypt, before any node moved
# --------------------------------------------------------------------------


def test_the_up_with_fscrypt_reports_every_unmoved_node_as_a_gap_and_changes_nothing_else(
    migration: Migration,
) -> None:
    at = migration
    verifications = at.up.program.verification_commands
    assert set(verifications) <= set(at.runs), at.runs
    # The engine's other runs: the seed (its stdin holds the new datadir.conf, written only where missing).
    others = sorted(set(at.runs) - set(verifications))
    assert all(n.endswith("seed") for n in others), others
    assert at.up_failure.count(", step ") == len(verifications), at.up_failure
    for name in verifications:
        outcome = at.up_outcomes[name]
        assert not outcome.ok, name
        report = json.loads(outcome.stdout)
        assert report["datadir_encryption"]["mode"] == "fscrypt"
        assert any(g.startswith("datadir:") for g in report["gaps"]), (name, report["gaps"])
    for host, conf in at.datadir_conf_after_up.items():
        assert conf.splitlines()[-1] == "encryption=none", host  # seeded once, never rolled
    assert not any(n.endswith("-ssh-roll") for n in at.runs), at.runs  # no node restarted


# --------------------------------------------------------------------------
# The move of one node
# --------------------------------------------------------------------------


def test_the_moved_node_joined_by_sst_into_an_encrypted_datadir(migration: Migration) -> None:
    at, bed = migration, migration.testbed
    # A state transfer from nothing: the joiner's local state is the empty one, so only an SST can serve it
    # (an IST of the write-sets committed during the SST may follow it).
    assert EMPTY_STATE.search(at.error_log), at.error_log[-3000:]
    assert "SST received" in at.error_log, at.error_log[-3000:]
    for directory in ("/srv/mariadb-kms/data", "/srv/mariadb-kms/log", "/srv/mariadb-kms/secure-file-priv"):
        policy = check(bed, MOVED, ["mariadb-kms-fscrypt", "policy", directory]).stdout.strip()
        assert len(policy) == 32, (directory, policy)
    mount = check(bed, MOVED, ["findmnt", "-n", "-o", "FSROOT", "--mountpoint", "/var/lib/mysql"]).stdout.split()
    assert mount == ["/data"], mount
    assert "mariadb-kms-install" not in bed.read_file(MOVED, "/etc/fstab").decode()  # no bind line left
    assert bed.read_file(MOVED, "/etc/mariadb-kms/datadir.conf").decode().splitlines()[-1] == "encryption=fscrypt"
    # What MariaDB does not encrypt came through the SST, into the encrypted datadir.
    rows = sql(bed, MOVED, "SELECT note FROM moved.v; SELECT note FROM moved.t ORDER BY id;").split()
    assert rows == [f"{at.marker}-view", f"{at.marker}-trigger1", f"{at.marker}-trigger2"]


def test_verify_with_datadir_encryption_fscrypt_passes_on_the_moved_node(migration: Migration) -> None:
    report = migration.verify_after
    assert "--datadir-encryption fscrypt" in migration.verify_command
    assert migration.verify_rc == 0 and report.get("gaps") == [], report.get("gaps", report)
    assert report["datadir_encryption"]["state"] == "encrypted (fscrypt v2, AES-256-XTS)", report


def test_no_acknowledged_transfer_was_lost_and_the_others_stayed_synced(migration: Migration) -> None:
    at = migration
    assert at.load["acknowledged"] > 0
    assert at.load["lost"] == 0 and at.load["invariant_violations"] == 0, at.load
    for host in HOSTS:
        if host != MOVED:
            # Synced, or the SST's donor; always in the Primary component.
            assert at.states[host] <= {"Synced/Primary", "Donor/Desynced/Primary"}, (host, at.states[host])
    assert at.states[MOVED] - {"Synced/Primary"}, "the monitor never saw the moved node out of Synced"


# --------------------------------------------------------------------------
# The volume image, byte for byte
# --------------------------------------------------------------------------


def test_control_the_old_datadir_left_plaintext_on_the_volume_until_wiped(migration: Migration) -> None:
    # The runbook's last step is needed: the renamed datadir's blocks hold the view's SQL in clear. And the
    # scan can find the marker (a node still on `none` holds it too).
    assert migration.scan_after_move.get("marker"), migration.scan_after_move
    assert migration.scan_plain_node.get("marker"), migration.scan_plain_node


def test_after_the_wipe_the_moved_nodes_volume_holds_no_marker_and_no_key(migration: Migration) -> None:
    assert migration.scan_after_wipe == {}, migration.leftovers
