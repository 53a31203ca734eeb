"""Encryption in transit on real hosts, proved by a packet capture on the testbed bridge.

One 3-node all-on-premises cluster, deployed by the program's own plan (``rehearsal/runner``: the
program recorded under the rehearsal's mocks, its remote commands run on the hosts in the recorded
order), on a testbed of its own (prefix ``mktls``, subnet 10.231.6.0/24; MARIADB_KMS_TLS_TESTBED_PREFIX
/_SUBNET override them), so it runs beside the default testbed. The certificates are the program's
(ClusterCa, whose pulumi-tls resources the rehearsal's mocks answer with real ones: rehearsal/tls_values).

The same scenario runs twice, under one capture each (tcpdump on the bridge, ports 3306, 4444, 4567,
4568), around the program's plan: the install runs before the capture; under it node1 bootstraps and
node2 joins by SST (the program's steps); a canary goes into a table comment (the .frm, which SST
copies) and into rows written by a client over TCP from another host and replicated to node2; the plan
goes on: node3 joins by SST with the canary on its donor, and the program's verification runs; then
node2 is stopped, more canary rows written, and node2's recorded roll step rejoins it by IST.

- CONTROL, every TLS channel turned off by stack config: the canary is found on each of the four ports,
  so the capture and its search can fail; the program's verification passes (it passes the flags for
  what config turned off), the verify tool without those flags reports each channel as a gap; a client
  without TLS gets in.
- TLS (the default config), re-recorded for the same stack (same KMS key and data key) on the same hosts,
  every datadir removed first so the cluster is new and both joiners take an SST: the canary is in no
  captured payload although every port carried traffic; every node verifies encrypted on every channel;
  a client without TLS is refused.

Then, on the TLS cluster: a node whose certificate comes from another CA cannot join (the program's TLS
step puts its own back); and a renewal (the program's CA certificate renewed with its key, every node
certificate re-issued with its key) rolled one node at a time with ``mariadb-kms-tls reload`` keeps a
client loop succeeding on every node throughout.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import settings_from_env
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from error_log import error_log_since
from pulumi.runtime import rpc

from components.tls_material import CA_CERT_PATH, KEY_PATH, tls_files
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import check, epoch, sql, status, stop
from rehearsal.packet_capture import SERVICE_PORTS, capture, read_streams
from rehearsal.plan import decode_put
from rehearsal.recorder import Types
from rehearsal.runner import TLS_OFF, Deployment, ProgramStack, deploy, onprem_config
from rehearsal.testbed import ExecResult, Testbed
from rehearsal.tls_certs import Issued, LocalCa

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
# The program's steps the scenario holds the plan before.
BOOTSTRAP = "cluster-bootstrap"
LAST_JOIN = "node3-ssh-roll"


@dataclass
class Hosts:
    testbed: Testbed
    kms: KmsServer
    stack: ProgramStack

    def address(self, name: str) -> str:
        return self.testbed.hosts[name].address


@dataclass
class Run:
    """What one scenario run saw."""

    deployed: Deployment
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
def hosts(request: pytest.FixtureRequest) -> Iterator[Hosts]:
    _require_testbed(request.config)
    with Testbed(NAMES, settings=settings_from_env("TLS", "mktls", "10.231.6.0/24")) as bed:
        bed.boot()
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            yield Hosts(bed, kms, ProgramStack(kms))


def client(hosts: Hosts, host: str, target: str, statements: str, *, tls: bool = True, user: str = "app",
           password: str = "") -> ExecResult:
    """A TCP client on ``host`` talking to ``target``: over TLS verifying the server against the cluster CA,
    or (tls=False) insisting on no TLS. The password goes in a 0600 option file, never in argv."""
    option_file = f"/root/.{user}-client.cnf"
    hosts.testbed.put_file(host, option_file, f"[client]\npassword={password}\n", 0o600)
    argv = ["mariadb", f"--defaults-extra-file={option_file}", "--batch", "--skip-column-names",
            "-h", hosts.address(target), "-P", "3306", "-u", user, "--connect-timeout=10"]
    if tls:
        argv += ["--ssl", f"--ssl-ca={CA_CERT_PATH}", "--ssl-verify-server-cert"]
    else:
        argv += ["--skip-ssl"]
    return hosts.testbed.exec(host, argv, input=statements, timeout=300)


def put_tls(hosts: Hosts, name: str, ca_cert_pem: str, issued: Issued) -> None:
    """TLS material placed by hand, with the program's paths, modes and owners (components.tls_material)."""
    for path, (content, mode, owner) in tls_files(ca_cert_pem, issued.cert_pem, issued.key_pem).items():
        hosts.testbed.put_file(name, path, content, mode, owner)


def _journal_since(hosts: Hosts, name: str, since: int, source: str = "--unit=mariadb") -> str:
    argv = ["journalctl", source, "--no-pager", "-o", "cat", "--since", f"@{since}"]
    journal = check(hosts.testbed, name, argv).stdout
    # mariadbd's own messages are in its error log on the data volume, not in the journal.
    return journal + (error_log_since(hosts.testbed, name, since) if source == "--unit=mariadb" else "")


def _count(hosts: Hosts, name: str, table: str, expected: int, timeout: float = 120) -> int:
    """The table's row count on ``name`` once it reaches ``expected`` (a node applies write-sets a little after
    the commit returns on another), or what it is when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        out = sql(hosts.testbed, name, f"SELECT COUNT(*) FROM canary.{table};")  # noqa: S608 - a generated name
        count = int(out.split()[-1])
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


def _verify(hosts: Hosts, name: str, *flags: str) -> dict[str, Any]:
    result = hosts.testbed.exec(name, [VERIFY, "--expect-size", "3", *flags], timeout=300)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _tls_gaps(report: dict[str, Any]) -> list[str]:
    return [g for g in report["gaps"] if g.startswith("tls:")]


def _client_ok(result: ExecResult, what: str) -> None:
    assert result.rc == 0, f"{what}: {result.stderr}"


def run_scenario(hosts: Hosts, config: Mapping[str, Any], *, tls: bool, pcap: Path) -> Run:
    tb = hosts.testbed
    marker = f"tlscanary{secrets.token_hex(12)}"
    table = f"t{secrets.token_hex(4)}"
    values = ", ".join(f"('{marker}')" for _ in range(ROWS))
    # The puts and the install (package downloads) before the capture; every later step under it.
    deployed = deploy(tb, hosts.stack, config, stop_before=BOOTSTRAP)
    with capture(tb.settings.bridge, pcap):
        start = epoch(tb, "node1")
        deployed.run(stop_before=LAST_JOIN)  # node1 bootstraps, node2 joins: an SST
        sql(tb, "node1", f"CREATE USER IF NOT EXISTS app@'%' IDENTIFIED BY '{APP_PASSWORD}';"
                         "CREATE DATABASE IF NOT EXISTS canary; GRANT ALL ON canary.* TO app@'%';")
        # The canary through a client connection: in the table definition (the .frm SST copies) and in rows.
        workload = (
            f"CREATE TABLE canary.{table} (id INT AUTO_INCREMENT PRIMARY KEY, "  # noqa: S608 - generated values only
            f"v VARCHAR(200) COMMENT '{marker}') COMMENT = '{marker}';"
            f"INSERT INTO canary.{table} (v) VALUES {values};"
            "SHOW SESSION STATUS LIKE 'Ssl_version';"
        )
        tls_client = client(hosts, CLIENT_HOST, "node1", workload, tls=tls, password=APP_PASSWORD)
        _client_ok(tls_client, "the canary workload")
        assert _count(hosts, "node2", table, ROWS) == ROWS, "replicated to the second node"
        deployed.run()  # node3 joins by SST with the canary table on its donor; the program's verification
        assert _count(hosts, "node3", table, ROWS) == ROWS, "the third node has the rows after its SST"
        # IST: the second node misses writes while it is down and gets them back from a donor's gcache.
        stop(tb, "node2")
        more = f"INSERT INTO canary.{table} (v) VALUES {values};"  # noqa: S608 - generated names and markers only
        _client_ok(client(hosts, CLIENT_HOST, "node1", more, tls=tls, password=APP_PASSWORD),
                   "writes while node2 is down")
        rejoin = epoch(tb, "node2")
        deployed.run_command("node2-ssh-roll")  # the program's roll step: starts the node and waits for Synced
        assert _count(hosts, "node2", table, 2 * ROWS) == 2 * ROWS, "node2 caught up"
        assert _count(hosts, "node3", table, 2 * ROWS) == 2 * ROWS, "replicated to every node"
    streams = read_streams(pcap)
    ist_log = _journal_since(hosts, "node2", rejoin)
    run = Run(
        deployed=deployed,
        marker=marker,
        bytes_per_service=streams.bytes_per_service(),
        found_on=streams.services_containing(marker.encode()),
        sst_joiners=[n for n in ("node2", "node3") if SST_DATA in _journal_since(hosts, n, start, SST_JOINER_LOG)],
        ist_rejoined="IST received" in ist_log and SST_DATA not in _journal_since(hosts, "node2", rejoin,
                                                                                   SST_JOINER_LOG),
        ist_log=ist_log[-3000:],
        plain_client=client(hosts, CLIENT_HOST, "node1", "SELECT 'plain'", tls=False, password=APP_PASSWORD),
        tls_client=tls_client,
    )
    for name in NAMES:
        run.verify[name] = _verify(hosts, name)
        run.verify_flags_off[name] = _verify(hosts, name, *ALL_OFF)
    return run


@pytest.fixture(scope="module")
def control(hosts: Hosts, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_scenario(hosts, onprem_config(hosts.testbed, NAMES, **TLS_OFF), tls=False,
                        pcap=tmp_path_factory.mktemp("control") / "bridge.pcap")


@pytest.fixture(scope="module")
def encrypted(hosts: Hosts, control: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same scenario with the default config (every channel on), after the control run."""
    tb = hosts.testbed
    # Not the program's doing: the control's cluster goes, so this run starts a new one on the same hosts
    # and both joiners take an SST (InnoDB keeps the Galera position, so a kept datadir could rejoin by IST).
    # The stack is the same, so the key and the data key are too; the program's install makes new datadirs.
    for name in reversed(NAMES):
        stop(tb, name)
    for name in NAMES:
        check(tb, name, ["find", "/var/lib/mysql", "-mindepth", "1", "-delete"])
    return run_scenario(hosts, onprem_config(tb, NAMES), tls=True, pcap=tmp_path_factory.mktemp("tls") / "bridge.pcap")


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


def test_control_the_programs_verification_passes_with_the_channels_config_turned_off(control: Run) -> None:
    deployed = control.deployed
    names = deployed.program.verification_commands
    assert sorted(deployed.outcomes[n].node for n in names) == list(NAMES)
    for name in names:
        assert all(f"--tls-off {ch}" in deployed.program.command(name).create for ch in TLS_CHANNELS), name
        report = json.loads(deployed.report(name))
        assert (report["ok"], _tls_gaps(report)) == (True, []), f"{name}: {report['gaps']}"
        assert {report["tls"][ch]["state"] for ch in TLS_CHANNELS} == {"off by config"}


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


def test_a_client_without_tls_is_refused(hosts: Hosts, encrypted: Run) -> None:
    refused = encrypted.plain_client
    # MariaDB 10.11 answers a refused plaintext login as "Access denied" (1045); the same account and password
    # over TLS get in, and the control run let the same plaintext login in: the transport is what is refused.
    assert refused.rc != 0 and "ERROR 1045" in refused.stderr, refused
    again = client(hosts, CLIENT_HOST, "node1", "SELECT @@require_secure_transport", tls=True, password=APP_PASSWORD)
    assert again.rc == 0 and again.stdout.strip() == "1", again


def program_ca(run: Run) -> LocalCa:
    """The program's cluster CA (its key from the recorded SelfSignedCert, its certificate as nodes got it),
    so a renewal here is what the program's renews: a new CA certificate with the same key."""
    program = run.deployed.program
    recorded = program.recording.one(Types.TLS_SELF_SIGNED_CERT)
    key = load_pem_private_key(str(rpc.unwrap_rpc_secret(recorded.input("privateKeyPem"))).encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = LocalCa(str(program.config["clusterName"]), stack=program.stack)
    ca.key = key
    ca.cert = x509.load_pem_x509_certificate(node_tls(run, "node1")[CA_CERT_PATH].encode())
    ca.subject = ca.cert.subject
    return ca


def node_tls(run: Run, name: str) -> dict[str, str]:
    """What the program's TLS step puts on a node: {path: content} (the CA certificate, its own, its key)."""
    stdin = next(s.stdin for s in run.deployed.program.sent if s.command.name == f"{name}-ssh-tls")
    assert stdin is not None
    return {path: content.decode() for path, (content, _mode, _owner) in decode_put(stdin).items()}


def test_a_node_with_a_certificate_from_another_ca_cannot_join(hosts: Hosts, encrypted: Run) -> None:
    tb = hosts.testbed
    stop(tb, "node3")
    # Same names as the program's CA, another key: only the signature tells them apart.
    program = encrypted.deployed.program
    foreign = LocalCa(str(program.config["clusterName"]), stack=program.stack)
    put_tls(hosts, "node3", foreign.cert_pem, foreign.issue("node3", hosts.address("node3")))
    since = epoch(tb, "node1")
    check(tb, "node3", ["systemctl", "reset-failed", "mariadb"])
    check(tb, "node3", ["systemctl", "start", "--no-block", "mariadb"])
    refusals: list[str] = []  # node1's own files (the program's CA) dialling node3's Galera port
    try:
        deadline = time.monotonic() + 45  # a failed join gives up after ~30 s; the unit then retries
        while time.monotonic() < deadline:
            if _running(tb, "node3"):
                assert status(tb, "node3", "wsrep_local_state_comment") != "Synced"
            assert status(tb, "node1", "wsrep_cluster_size") == "2"
            shake = _handshake(hosts, "node1", "node3")
            if "CONNECTED" in shake.stdout:  # node3's Galera port answered (it listens while it tries to join)
                assert shake.rc != 0, f"node1 accepted the foreign certificate: {shake.stdout[-1000:]}"
                refusals.append(shake.stdout + shake.stderr)
            time.sleep(3)
        # Whichever side dials first refuses first: node1 logs its own "certificate verify failed", or node3's
        # "unknown ca" alert when node3 refused node1's certificate. The handshakes prove node1's side as well
        # (the renewal test's handshakes between the program's certificates are their control).
        assert refusals, "node3's Galera port never answered while it tried to join"
        assert all("certificate verify failed" in r for r in refusals), refusals[-1][-1000:]
        journal = _journal_since(hosts, "node1", since)
        assert "certificate verify failed" in journal or "tlsv1 alert unknown ca" in journal, journal[-2000:]
    finally:
        stop(tb, "node3")
    # The program's own steps put it right: its TLS material again, then its roll.
    encrypted.deployed.run_command("node3-ssh-tls")
    encrypted.deployed.run_command("node3-ssh-roll")
    assert status(tb, "node1", "wsrep_cluster_size") == "3"


def _running(tb: Testbed, name: str) -> bool:
    return tb.exec(name, ["mariadb", "-e", "SELECT 1"]).rc == 0


class ClientLoop(threading.Thread):
    """A client that keeps writing and reading on every node in turn, over TLS, until stopped."""

    def __init__(self, hosts: Hosts) -> None:
        super().__init__(daemon=True)
        self.hosts = hosts
        self.stopping = threading.Event()
        self.ok: dict[str, int] = dict.fromkeys(NAMES, 0)
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            target = NAMES[i % len(NAMES)]
            result = client(
                self.hosts, CLIENT_HOST, target,
                f"INSERT INTO canary.renewal (node, n) VALUES ('{target}', {i}); "  # noqa: S608 - constants only
                "SELECT COUNT(*) FROM canary.renewal;",
                password=APP_PASSWORD,
            )
            if result.rc == 0:
                self.ok[target] += 1
            else:
                self.failures.append(f"{target}: {result.stderr.strip()}")
            i += 1


def _handshake(hosts: Hosts, client_host: str, server: str) -> ExecResult:
    """``client_host`` opens a TLS connection to ``server``'s Galera port with its own files, as Galera does."""
    return hosts.testbed.exec(client_host, (
        f"openssl s_client -connect {hosts.address(server)}:4567 -CAfile /etc/mysql/tls/ca.pem "
        "-cert /etc/mysql/tls/node-cert.pem -key /etc/mysql/tls/node-key.pem -verify_return_error </dev/null"
    ), timeout=30)


def test_renewal_rolled_one_node_at_a_time_keeps_the_cluster_serving(hosts: Hosts, encrypted: Run) -> None:
    tb = hosts.testbed
    sql(tb, "node1", "CREATE TABLE IF NOT EXISTS canary.renewal (id INT AUTO_INCREMENT PRIMARY KEY, "
                     "node VARCHAR(20), n INT); GRANT ALL ON canary.* TO app@'%';")
    old_sha = {n: json.loads(check(tb, n, [TLS_TOOL, "inspect"]).stdout)["served"]["replication"]["sha256"]
               for n in NAMES}
    ca = program_ca(encrypted)
    loop = ClientLoop(hosts)
    loop.start()
    try:
        time.sleep(3)
        # The worst case of an early renewal: the CA certificate is renewed (same key), so every node
        # certificate is re-issued under it (same node keys), and nodes take them one after another.
        ca.renew()
        renewed: list[str] = []
        for name in NAMES:
            issued = ca.issue(name, hosts.address(name), key_pem=node_tls(encrypted, name)[KEY_PATH])
            put_tls(hosts, name, ca.cert_pem, issued)
            reload = check(tb, name, [TLS_TOOL, "reload"])
            assert "replication: serves the installed certificate" in reload.stdout, reload.stdout
            assert "clients: serves the installed certificate" in reload.stdout, reload.stdout
            renewed.append(name)
            # Mixed state: renewed and not-yet-renewed nodes still accept each other, both ways.
            for other in NAMES:
                if other != name:
                    for a, b in ((name, other), (other, name)):
                        shake = _handshake(hosts, a, b)
                        assert shake.rc == 0, f"{a} -> {b} after renewing {renewed}: {shake.stderr[-500:]}"
            assert status(tb, "node1", "wsrep_cluster_size") == "3"
            time.sleep(2)
    finally:
        loop.stopping.set()
        loop.join(timeout=120)
    assert loop.failures == [], loop.failures[:5]
    assert min(loop.ok.values()) >= 3, loop.ok
    for name in NAMES:
        served = json.loads(check(tb, name, [TLS_TOOL, "inspect"]).stdout)["served"]
        assert served["replication"]["sha256"] != old_sha[name]
        assert served["clients"]["matches_file"] is True
        assert _tls_gaps(_verify(hosts, name)) == []
