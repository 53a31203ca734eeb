"""A new cluster CA key on real hosts, under the bank-transfer load and a packet capture: no restart, no refusal.

The program's plan is deployed on three on-prem testbed hosts (``rehearsal/runner``), TLS on every
channel. Then the three `pulumi up`s of docs/runbooks/credentials.md, each recorded from the program with
its stage's config, and of each exactly the remote commands the engine would run
(``rehearsal/runner.engine_runs``), carried out in the recorded order (``Deployment.run_only``):

1. ``tlsCaOtherGeneration: 2``: every node trusts both CAs (one bundle file);
2. ``tlsCaGeneration: 2``, ``tlsCaOtherGeneration: 1``: node certificates from the new CA;
3. ``tlsCaGeneration: 2``: only the new CA is trusted.

Each stage is the tls step and ``mariadb-kms-tls reload`` (FLUSH SSL, socket.ssl_reload) node after node.
Throughout: the workload's clients connect over TLS verified against a bundle of both CAs (what a client
holds during a rotation); a sampler counts the nodes not Synced at each moment; canary rows are written
over TLS and replicated; tcpdump captures the bridge. Afterwards: every mariadbd has its PID, no
acknowledged write is lost, no client was refused (no connection error), at most one node was ever not
Synced, each node serves a certificate issued by the new CA and refuses a peer from the old one, and the
canary is in no captured payload. Control: a client that does not ask for TLS sends its user name in
the clear, and the search finds that name on 3306 in the same capture.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from components.tls_material import CA_CERT_PATH, CERT_PATH, KEY_PATH
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import sql, wait_synced, wsrep_status
from rehearsal.packet_capture import capture, read_streams
from rehearsal.runner import Deployment, ProgramStack, deploy, engine_runs, onprem_config
from rehearsal.testbed import Testbed
from rehearsal.workload import DATABASE, PORT, BankWorkload, pymysql_connect, setup_sql

HOSTS = ("node1", "node2", "node3")
STAGES: dict[str, dict[str, Any]] = {
    "trust both": {"tlsCaOtherGeneration": 2},
    "issue from the new CA": {"tlsCaGeneration": 2, "tlsCaOtherGeneration": 1},
    "drop the old CA": {"tlsCaGeneration": 2},
}


def mariadbd_pid(testbed: Testbed, host: str) -> str:
    return testbed.exec(host, ["systemctl", "show", "-p", "MainPID", "--value", "mariadb"]).stdout.strip()


def issuer_cn(testbed: Testbed, host: str, port: int) -> str:
    """The issuer CN of the certificate the node serves on ``port`` (its Galera port or, over the MySQL
    protocol's STARTTLS, its client port), read from a handshake on the node itself."""
    starttls = "-starttls mysql" if port == PORT else ""
    # Galera authenticates both ends: the node's own certificate is the client's.
    address = testbed.hosts[host].address  # Galera listens on the node's address
    shake = testbed.exec(host, ["sh", "-c", f"openssl s_client -connect {address}:{port} {starttls} "
                                f"-cert {CERT_PATH} -key {KEY_PATH} </dev/null 2>/dev/null "
                                "| openssl x509 -noout -issuer -nameopt RFC2253"], timeout=60)
    return shake.stdout.strip()


class SyncedSampler:
    """Counts, once a second, how many nodes are not Synced in a Primary component of three."""

    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        self.worst = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _not_synced(self, host: str) -> bool:
        try:
            s = wsrep_status(self.testbed, host)
        except Exception:  # a node that does not answer is not Synced
            return True
        return (s.get("wsrep_local_state_comment"), s.get("wsrep_cluster_status"),
                s.get("wsrep_cluster_size")) != ("Synced", "Primary", "3")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.worst = max(self.worst, sum(self._not_synced(h) for h in HOSTS))
            self.samples += 1
            self._stop.wait(1.0)

    def __enter__(self) -> SyncedSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@dataclass
class Rotation:
    testbed: Testbed
    stages: dict[str, list[str]]  # stage -> the commands its `pulumi up` ran
    pids_before: dict[str, str]
    pids_after: dict[str, str]
    workload: Any
    worst_not_synced: int
    samples: int
    served: dict[str, dict[int, str]]  # host -> port -> issuer CN, after the last stage
    old_ca_cn: str
    new_ca_cn: str
    old_peer_trusted_before: dict[str, bool]
    old_peer_refused: dict[str, bool]
    bytes_per_service: dict[int, int]
    canary_found_on: set[int]
    control_found_on: set[int]
    seconds: dict[str, float] = field(default_factory=dict)


def plaintext_login_attempt(address: str, user: str) -> None:
    """A client that does not ask for TLS: its handshake response (with the user name) goes in the clear,
    and require_secure_transport refuses it afterwards."""
    import pymysql

    try:
        pymysql.connect(host=address, port=PORT, user=user, password="x", ssl_disabled=True, connect_timeout=5)
    except pymysql.err.MySQLError:
        return
    raise AssertionError("a client without TLS was let in")


def write_canaries(address: str, password: str, ca: Path, canary: str, n: int) -> None:
    import pymysql

    conn = pymysql.connect(host=address, port=PORT, user="bank", password=password, database=DATABASE,
                           ssl_ca=str(ca), ssl_verify_cert=True, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO bank.canary (note) VALUES (%s)", (f"{canary}-{n}",))
        conn.commit()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def rotation(testbed: Testbed, kms: KmsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotation]:
    out = tmp_path_factory.mktemp("ca-rotation")
    try:
        config = onprem_config(testbed, HOSTS, gcacheSize="64M")
        stack = ProgramStack(kms)
        deployed: Deployment = deploy(testbed, stack, config)
        base = deployed.program
        old_bundle = testbed.read_file("node1", CA_CERT_PATH)
        old_ca_cn = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"],
                                   input=old_bundle, capture_output=True, check=True).stdout.decode().strip()

        password = secrets.token_urlsafe(18)
        sql(testbed, "node1", setup_sql(20, 1000, "bank", password)
            + f"CREATE TABLE {DATABASE}.canary (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(128));\n"
            + f"GRANT SELECT, INSERT ON {DATABASE}.canary TO 'bank'@'%';\n")
        # What a client holds during a rotation: the program's bundle of both CAs (the first stage's output).
        programs = {name: stack.record({**config, **change}, testbed) for name, change in STAGES.items()}
        bundle = out / "clients-ca.pem"
        staged = programs["trust both"]
        bundle.write_bytes(_ca_pem_of(staged))
        old_peer = out / "old-peer"
        _keep_old_peer_material(testbed, old_peer)
        # Control for the trust check: before the rotation every node accepts the old certificate.
        trusted_before = {h: _old_cert_trusted(testbed, h) for h in HOSTS}

        canary = f"mkcanary-ca-{secrets.token_hex(10)}"
        control = f"ctl{secrets.token_hex(6)}"
        addresses = [testbed.hosts[h].address for h in HOSTS]
        pids_before = {h: mariadbd_pid(testbed, h) for h in HOSTS}
        stages: dict[str, list[str]] = {}
        seconds: dict[str, float] = {}
        pcap = out / "rotation.pcap"
        with capture(testbed.settings.bridge, pcap), SyncedSampler(testbed) as sampler:
            load = BankWorkload(addresses, user="bank", password=password, duration=3600, max_transfers=10**7,
                                connect=pymysql_connect("bank", password, io_timeout=10, ca=bundle)).start()
            time.sleep(5)
            previous = base
            for i, (name, head) in enumerate(programs.items()):
                names = engine_runs(previous, head)
                stages[name] = names
                t = time.monotonic()
                Deployment(testbed, head).run_only(names)
                seconds[name] = round(time.monotonic() - t, 1)
                write_canaries(addresses[i % len(addresses)], password, bundle, canary, i)
                previous = head
            plaintext_login_attempt(addresses[0], control)
            time.sleep(5)
            load.stop()
            load.wait(120)
        for h in HOSTS:
            wait_synced(testbed, h, 3, timeout=300)
        report = load.report(load.audit())
        pids_after = {h: mariadbd_pid(testbed, h) for h in HOSTS}
        new_bundle = testbed.read_file("node1", CA_CERT_PATH)
        new_ca_cn = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"],
                                   input=new_bundle, capture_output=True, check=True).stdout.decode().strip()
        served = {h: {p: issuer_cn(testbed, h, p) for p in (4567, PORT)} for h in HOSTS}
        refused = {h: not _old_cert_trusted(testbed, h) for h in HOSTS}
        streams = read_streams(pcap)
        yield Rotation(
            testbed, stages, pids_before, pids_after, report, sampler.worst, sampler.samples, served,
            old_ca_cn.removeprefix("subject="), new_ca_cn.removeprefix("subject="), trusted_before, refused,
            streams.bytes_per_service(), streams.services_containing(canary.encode()),
            streams.services_containing(control.encode()), seconds,
        )
    finally:
        for host in HOSTS:
            testbed.exec(host, ["systemctl", "disable", "--now", "--quiet", "mariadb"], timeout=300)
            testbed.exec(host, ["apt-get", "clean"], timeout=120)
            testbed.exec(host, ["rm", "-rf", "/root/old-peer"], timeout=60)


def _ca_pem_of(program: Any) -> bytes:
    """The CA bundle the program hands node1 (the tls step's stdin), as a client would get it from the output."""
    from rehearsal.plan import decode_put

    cmd = program.command("node1-ssh-tls")
    return bytes(decode_put(str(cmd.stdin))[CA_CERT_PATH][0])


def _keep_old_peer_material(testbed: Testbed, where: Path) -> None:
    """node1's certificate from the old CA (public), copied on each host to check trust against later."""
    cert = testbed.read_file("node1", CERT_PATH)
    for h in HOSTS:
        testbed.exec(h, ["install", "-d", "-m", "0700", "/root/old-peer"], check=True)
        testbed.put_file(h, "/root/old-peer/cert.pem", cert, 0o644)
    where.write_text("kept on the hosts under /root/old-peer\n")


def _old_cert_trusted(testbed: Testbed, host: str) -> bool:
    """Whether the node's installed CA file (what FLUSH SSL and socket.ssl_reload load) accepts a certificate
    from the old CA (node1's first one, kept under /root/old-peer)."""
    return testbed.exec(host, ["openssl", "verify", "-CAfile", CA_CERT_PATH, "/root/old-peer/cert.pem"]).rc == 0


def test_each_stage_ran_only_the_tls_steps_and_the_verification(rotation: Rotation) -> None:
    for name, names in rotation.stages.items():
        steps = sorted({n.split("-ssh-")[-1] if "-ssh-" in n else n.split("-", 1)[1] for n in names})
        assert steps == ["tls", "tls-reload", "verification-run"], (name, names)
        assert len(names) == 3 * len(HOSTS), (name, names)
    print("stage timings (s):", rotation.seconds)


def test_nobody_restarted_and_no_client_was_refused(rotation: Rotation) -> None:
    assert all(p not in ("", "0") for p in rotation.pids_before.values())
    assert rotation.pids_after == rotation.pids_before
    report = rotation.workload
    print("workload:", report.to_dict())
    assert report.acknowledged > 0
    assert report.acknowledged_lost == 0 and report.invariant_violations == 0
    assert report.errors_by_kind.get("connection", 0) == 0, report.errors_by_kind
    assert report.errors_by_kind.get("other", 0) == 0, report.errors_by_kind


def test_at_most_one_node_was_ever_not_synced(rotation: Rotation) -> None:
    assert rotation.samples > 10
    assert rotation.worst_not_synced <= 1


def test_every_node_serves_a_certificate_from_the_new_ca_and_no_longer_trusts_the_old_one(rotation: Rotation) -> None:
    assert " g2" in rotation.new_ca_cn and " g2" not in rotation.old_ca_cn, (rotation.old_ca_cn, rotation.new_ca_cn)
    for host, ports in rotation.served.items():
        for port, issuer in ports.items():
            assert issuer.removeprefix("issuer=") == rotation.new_ca_cn, (host, port, issuer)
    assert rotation.old_peer_trusted_before == dict.fromkeys(HOSTS, True)
    assert rotation.old_peer_refused == dict.fromkeys(HOSTS, True)


def test_the_capture_holds_no_canary_and_finds_the_plaintext_control(rotation: Rotation) -> None:
    assert rotation.bytes_per_service[PORT] > 0 and rotation.bytes_per_service[4567] > 0, rotation.bytes_per_service
    assert rotation.control_found_on == {PORT}
    assert rotation.canary_found_on == set()
