"""Encryption in transit on real hosts, proved by a packet capture on the testbed bridge.

One 3-node cluster, installed as the program installs on-prem nodes (tests/node/tls_cluster.py), on a
testbed of its own (prefix ``mktls``, subnet 10.231.6.0/24; MARIADB_KMS_TLS_TESTBED_PREFIX/_SUBNET
override them), so it runs beside the default testbed. Certificates have ClusterCa's shape, made with
``cryptography`` (rehearsal/tls_certs.py): pulumi-tls cannot run here.

The same scenario runs twice, under one capture each (tcpdump on the bridge, ports 3306, 4444, 4567,
4568): a canary in a table comment (the .frm, which SST copies) and in rows written by a client over TCP
from another host; replication of those rows to a second node; a third node joining by SST; the second
node stopped, more canary rows written, and that node rejoining by IST.

- CONTROL, every TLS channel turned off by config: the canary is found on each of the four ports, so the
  capture and its search can fail; the verify tool reports each channel as a gap unless told (by the
  flags the program passes) that config turned it off; a client without TLS gets in.
- TLS (the default config): the canary is in no captured payload although every port carried traffic;
  every node verifies encrypted on every channel; a client without TLS is refused.

Then, on the TLS cluster: a node whose certificate comes from another CA cannot join; and a renewal (the
CA certificate renewed with its key, every node certificate re-issued) rolled one node at a time with
``mariadb-kms-tls reload`` keeps a client loop succeeding on every node throughout.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from error_log import error_log_since
from tls_cluster import TLS_OFF, TlsCluster

from rehearsal.kms_server import KmsServer
from rehearsal.packet_capture import SERVICE_PORTS, capture, read_streams
from rehearsal.testbed import ExecResult, Settings, Testbed
from rehearsal.tls_certs import LocalCa

NAMES = ("node1", "node2", "node3")
CLIENT_HOST = "node3"  # the client program runs there and talks TCP across the bridge
APP_PASSWORD = "app-" + secrets.token_hex(8)
ROWS = 20
TLS_TOOL = "/usr/local/sbin/mariadb-kms-tls"
VERIFY = "/usr/local/sbin/mariadb-kms-verify"
ALL_OFF = ["--tls-off", "replication", "--tls-off", "sst", "--tls-off", "clients", "--tls-off", "secure-transport"]
TLS_CHANNELS = ("clients", "secure-transport", "replication", "sst")
# What a joiner's SST script logs when a whole backup arrived; the server logs "SST received" after an IST too.
# The script logs through `logger`, whose short-lived messages journald may not attribute to mariadb.service,
# so they are read by their syslog identifier.
SST_DATA = "Preparing the backup at"
SST_JOINER_LOG = "--identifier=-wsrep-sst-joiner"


def _settings() -> Settings:
    return Settings(
        prefix=os.environ.get("MARIADB_KMS_TLS_TESTBED_PREFIX", "mktls"),
        subnet=ipaddress.IPv4Network(os.environ.get("MARIADB_KMS_TLS_TESTBED_SUBNET", "10.231.6.0/24")),
    )


@dataclass
class Run:
    """What one scenario run saw."""

    marker: str
    bytes_per_service: dict[int, int]
    found_on: set[int]
    sst_joiners: list[str]
    ist_rejoined: bool
    ist_log: str
    plain_client: ExecResult
    tls_client: ExecResult | None
    verify: dict[str, dict[str, Any]] = field(default_factory=dict)
    verify_flags_off: dict[str, dict[str, Any]] = field(default_factory=dict)


def _require_testbed(config: pytest.Config) -> None:
    """tests/node/conftest.py's rule (skip, or fail under CI, when real hosts cannot run), found among the
    plugins: importing a module named ``conftest`` would get whichever directory's conftest came last."""
    path = str(Path(__file__).with_name("conftest.py"))
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) == path:
            plugin.require_testbed()
            return
    raise AssertionError(f"{path} is not loaded")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[TlsCluster]:
    _require_testbed(request.config)
    with Testbed(NAMES, settings=_settings()) as bed:
        bed.boot()
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            cl = TlsCluster(bed, kms, NAMES)
            cl.install()
            yield cl


def _epoch(cl: TlsCluster, name: str) -> int:
    return int(cl.check(name, ["date", "+%s"]).stdout.strip())


def _journal_since(cl: TlsCluster, name: str, since: int, source: str = "--unit=mariadb") -> str:
    journal = cl.check(name, ["journalctl", source, "--no-pager", "-o", "cat", "--since", f"@{since}"]).stdout
    # mariadbd's own messages are in its error log on the data volume, not in the journal.
    return journal + (error_log_since(cl.testbed, name, since) if source == "--unit=mariadb" else "")


def _count(cl: TlsCluster, name: str, table: str, expected: int, timeout: float = 120) -> int:
    """The table's row count on ``name`` once it reaches ``expected`` (a node applies write-sets a little after
    the commit returns on another), or what it is when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        out = cl.sql(name, f"SELECT COUNT(*) FROM canary.{table};")  # noqa: S608 - a generated table name
        count = int(out.split()[-1])
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


def _verify(cl: TlsCluster, name: str, *flags: str) -> dict[str, Any]:
    result = cl.testbed.exec(name, [VERIFY, "--expect-size", "3", *flags], timeout=300)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _tls_gaps(report: dict[str, Any]) -> list[str]:
    return [g for g in report["gaps"] if g.startswith("tls:")]


def _client_ok(result: ExecResult, what: str) -> None:
    assert result.rc == 0, f"{what}: {result.stderr}"


def run_scenario(cl: TlsCluster, *, tls: bool, pcap: Path) -> Run:
    marker = f"tlscanary{secrets.token_hex(12)}"
    table = f"t{secrets.token_hex(4)}"
    values = ", ".join(f"('{marker}')" for _ in range(ROWS))
    with capture(cl.testbed.settings.bridge, pcap):
        start = _epoch(cl, "node1")
        cl.bootstrap("node1")
        cl.roll("node2")  # a fresh joiner: SST
        cl.sql("node1", f"CREATE USER IF NOT EXISTS app@'%' IDENTIFIED BY '{APP_PASSWORD}';"
                        "CREATE DATABASE IF NOT EXISTS canary; GRANT ALL ON canary.* TO app@'%';")
        # The canary through a client connection: in the table definition (the .frm SST copies) and in rows.
        workload = (
            f"CREATE TABLE canary.{table} (id INT AUTO_INCREMENT PRIMARY KEY, "  # noqa: S608 - generated values only
            f"v VARCHAR(200) COMMENT '{marker}') COMMENT = '{marker}';"
            f"INSERT INTO canary.{table} (v) VALUES {values};"
            "SHOW SESSION STATUS LIKE 'Ssl_version';"
        )
        tls_client = cl.client(CLIENT_HOST, "node1", workload, tls=tls, password=APP_PASSWORD)
        _client_ok(tls_client, "the canary workload")
        assert _count(cl, "node2", table, ROWS) == ROWS, "replicated to the second node"
        cl.roll("node3")  # a fresh joiner: SST, with the canary table on the donor
        assert _count(cl, "node3", table, ROWS) == ROWS, "the third node has the rows after its SST"
        # IST: the second node misses writes while it is down and gets them back from a donor's gcache.
        cl.stop("node2")
        more = f"INSERT INTO canary.{table} (v) VALUES {values};"  # noqa: S608 - generated names and markers only
        _client_ok(cl.client(CLIENT_HOST, "node1", more, tls=tls, password=APP_PASSWORD), "writes while node2 is down")
        rejoin = _epoch(cl, "node2")
        cl.roll("node2")
        assert _count(cl, "node2", table, 2 * ROWS) == 2 * ROWS, "node2 caught up"
        assert _count(cl, "node3", table, 2 * ROWS) == 2 * ROWS, "replicated to every node"
    streams = read_streams(pcap)
    ist_log = _journal_since(cl, "node2", rejoin)
    run = Run(
        marker=marker,
        bytes_per_service=streams.bytes_per_service(),
        found_on=streams.services_containing(marker.encode()),
        sst_joiners=[n for n in ("node2", "node3") if SST_DATA in _journal_since(cl, n, start, SST_JOINER_LOG)],
        ist_rejoined="IST received" in ist_log and SST_DATA not in _journal_since(cl, "node2", rejoin, SST_JOINER_LOG),
        ist_log=ist_log[-3000:],
        plain_client=cl.client(CLIENT_HOST, "node1", "SELECT 'plain'", tls=False, password=APP_PASSWORD),
        tls_client=tls_client,
    )
    for name in NAMES:
        run.verify[name] = _verify(cl, name)
        run.verify_flags_off[name] = _verify(cl, name, *ALL_OFF)
    return run


@pytest.fixture(scope="module")
def control(cluster: TlsCluster, tmp_path_factory: pytest.TempPathFactory) -> Run:
    cluster.configure(cluster.config(**TLS_OFF))
    return run_scenario(cluster, tls=False, pcap=tmp_path_factory.mktemp("control") / "bridge.pcap")


@pytest.fixture(scope="module")
def encrypted(cluster: TlsCluster, control: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same scenario with the default config (every channel on), after the control run."""
    cluster.stop_all()  # node1 stops last: it is the one safe to bootstrap
    cluster.issue_all()
    cluster.configure(cluster.config())
    for name in ("node2", "node3"):
        # New members again, so they join by SST: InnoDB keeps the Galera position (wsrep-recover finds
        # it even without grastate.dat) and a donor's gcache could serve it by IST.
        cluster.check(name, ["find", "/var/lib/mysql", "-mindepth", "1", "-delete"])
        cluster.check(name, ["/usr/local/sbin/mariadb-kms-install"], timeout=600)
    return run_scenario(cluster, tls=True, pcap=tmp_path_factory.mktemp("tls") / "bridge.pcap")


# --------------------------------------------------------------------------
# The control run: TLS off by config
# --------------------------------------------------------------------------


def test_control_every_channel_carried_the_canary_in_plaintext(control: Run) -> None:
    assert control.sst_joiners == ["node2", "node3"]
    assert control.ist_rejoined, control.ist_log
    assert control.found_on == set(SERVICE_PORTS), (
        f"the capture must find the canary on every port when TLS is off: {control.found_on}, "
        f"bytes {control.bytes_per_service}"
    )


def test_control_verify_fails_each_plaintext_channel_unless_config_turned_it_off(control: Run) -> None:
    for name, report in control.verify.items():
        states = {ch: report["tls"][ch]["state"] for ch in TLS_CHANNELS}
        assert states == dict.fromkeys(TLS_CHANNELS, "GAP"), f"{name}: {states}"
        gaps = _tls_gaps(report)
        for channel in TLS_CHANNELS:
            assert any(g.startswith(f"tls: {channel}:") for g in gaps), f"{name}: no {channel} gap in {gaps}"
        off = control.verify_flags_off[name]
        assert _tls_gaps(off) == [], f"{name}: {_tls_gaps(off)}"
        assert {off["tls"][ch]["state"] for ch in TLS_CHANNELS} == {"off by config"}


def test_control_a_client_without_tls_gets_in(control: Run) -> None:
    assert control.plain_client.rc == 0 and "plain" in control.plain_client.stdout, control.plain_client.stderr


# --------------------------------------------------------------------------
# The default config: every channel encrypted
# --------------------------------------------------------------------------


def test_no_captured_payload_holds_the_canary(encrypted: Run) -> None:
    assert encrypted.sst_joiners == ["node2", "node3"]
    assert encrypted.ist_rejoined, encrypted.ist_log
    for port in SERVICE_PORTS:
        assert encrypted.bytes_per_service[port] > 0, f"no traffic captured on {port}: {encrypted.bytes_per_service}"
    assert encrypted.found_on == set(), f"the canary crossed the bridge in plaintext on {encrypted.found_on}"


def test_the_client_workload_ran_over_tls(encrypted: Run) -> None:
    assert encrypted.tls_client is not None
    assert "TLSv1.3" in encrypted.tls_client.stdout, encrypted.tls_client.stdout


def test_every_node_verifies_encrypted_on_every_channel(encrypted: Run) -> None:
    for name, report in encrypted.verify.items():
        assert _tls_gaps(report) == [], f"{name}: {_tls_gaps(report)}"
        tls = report["tls"]
        assert {tls[ch]["state"] for ch in TLS_CHANNELS} == {"encrypted"}, name
        assert tls["replication"]["served"]["ok"] is True
        assert tls["clients"]["served"]["matches_file"] is True
        assert tls["sst"]["ssl_mode"] == "VERIFY_IDENTITY" and tls["sst"]["verifies_peer"] is True


def test_a_client_without_tls_is_refused(cluster: TlsCluster, encrypted: Run) -> None:
    refused = encrypted.plain_client
    # MariaDB 10.11 answers a refused plaintext login as "Access denied" (1045); the same account and password
    # over TLS get in, and the control run let the same plaintext login in: the transport is what is refused.
    assert refused.rc != 0 and "ERROR 1045" in refused.stderr, refused
    again = cluster.client(CLIENT_HOST, "node1", "SELECT @@require_secure_transport", tls=True, password=APP_PASSWORD)
    assert again.rc == 0 and again.stdout.strip() == "1", again


def test_a_node_with_a_certificate_from_another_ca_cannot_join(cluster: TlsCluster, encrypted: Run) -> None:
    cluster.stop("node3")
    foreign = LocalCa("mariadb-kms")  # same names, another key: only the signature tells them apart
    cluster.put_tls("node3", foreign.issue("node3", cluster.address("node3")))
    since = _epoch(cluster, "node1")
    cluster.check("node3", ["systemctl", "reset-failed", "mariadb"])
    cluster.check("node3", ["systemctl", "start", "--no-block", "mariadb"])
    try:
        deadline = time.monotonic() + 45  # a failed join gives up after ~30 s; the unit then retries
        while time.monotonic() < deadline:
            if _running(cluster, "node3"):
                assert cluster.status("node3", "wsrep_local_state_comment") != "Synced"
            assert cluster.status("node1", "wsrep_cluster_size") == "2"
            time.sleep(3)
        assert "certificate verify failed" in _journal_since(cluster, "node1", since)
    finally:
        cluster.stop("node3")
    cluster.put_tls("node3", cluster.issued["node3"])
    cluster.roll("node3")
    assert cluster.status("node1", "wsrep_cluster_size") == "3"


def _running(cluster: TlsCluster, name: str) -> bool:
    return cluster.testbed.exec(name, ["mariadb", "-e", "SELECT 1"]).rc == 0


class ClientLoop(threading.Thread):
    """A client that keeps writing and reading on every node in turn, over TLS, until stopped."""

    def __init__(self, cluster: TlsCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stopping = threading.Event()
        self.ok: dict[str, int] = dict.fromkeys(NAMES, 0)
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            target = NAMES[i % len(NAMES)]
            result = self.cluster.client(
                CLIENT_HOST, target,
                f"INSERT INTO canary.renewal (node, n) VALUES ('{target}', {i}); "  # noqa: S608 - constants only
                "SELECT COUNT(*) FROM canary.renewal;",
                password=APP_PASSWORD,
            )
            if result.rc == 0:
                self.ok[target] += 1
            else:
                self.failures.append(f"{target}: {result.stderr.strip()}")
            i += 1


def _handshake(cluster: TlsCluster, client: str, server: str) -> ExecResult:
    """``client`` opens a TLS connection to ``server``'s Galera port with its own files, as Galera does."""
    return cluster.testbed.exec(client, (
        f"openssl s_client -connect {cluster.address(server)}:4567 -CAfile /etc/mysql/tls/ca.pem "
        "-cert /etc/mysql/tls/node-cert.pem -key /etc/mysql/tls/node-key.pem -verify_return_error </dev/null"
    ), timeout=30)


def test_renewal_rolled_one_node_at_a_time_keeps_the_cluster_serving(cluster: TlsCluster, encrypted: Run) -> None:
    cluster.sql("node1", "CREATE TABLE IF NOT EXISTS canary.renewal (id INT AUTO_INCREMENT PRIMARY KEY, "
                         "node VARCHAR(20), n INT); GRANT ALL ON canary.* TO app@'%';")
    old_sha = {n: json.loads(cluster.check(n, [TLS_TOOL, "inspect"]).stdout)["served"]["replication"]["sha256"]
               for n in NAMES}
    loop = ClientLoop(cluster)
    loop.start()
    try:
        time.sleep(3)
        # The worst case of an early renewal: the CA certificate is renewed (same key), so every node
        # certificate is re-issued under it (same node keys), and nodes take them one after another.
        cluster.ca.renew()
        renewed: list[str] = []
        for name in NAMES:
            cluster.issued[name] = cluster.ca.issue(name, cluster.address(name), key_pem=cluster.issued[name].key_pem)
            cluster.put_tls(name, cluster.issued[name])
            reload = cluster.check(name, [TLS_TOOL, "reload"])
            assert "replication: serves the installed certificate" in reload.stdout, reload.stdout
            assert "clients: serves the installed certificate" in reload.stdout, reload.stdout
            renewed.append(name)
            # Mixed state: renewed and not-yet-renewed nodes still accept each other, both ways.
            for other in NAMES:
                if other != name:
                    for a, b in ((name, other), (other, name)):
                        shake = _handshake(cluster, a, b)
                        assert shake.rc == 0, f"{a} -> {b} after renewing {renewed}: {shake.stderr[-500:]}"
            assert cluster.status("node1", "wsrep_cluster_size") == "3"
            time.sleep(2)
    finally:
        loop.stopping.set()
        loop.join(timeout=120)
    assert loop.failures == [], loop.failures[:5]
    assert min(loop.ok.values()) >= 3, loop.ok
    for name in NAMES:
        served = json.loads(cluster.check(name, [TLS_TOOL, "inspect"]).stdout)["served"]
        assert served["replication"]["sha256"] != old_sha[name]
        assert served["clients"]["matches_file"] is True
        assert _tls_gaps(_verify(cluster, name)) == []
