"""What the day-2 scenarios share: the demo's cluster, the bank-transfer load around one `up`, the figures.

A scenario is::

    with Day2Scenario(cluster, "add an on-prem node", members=["aws-a", "aws-b", "dc-1"]) as sc:
        sc.up(config_file)              # `python -m rehearsal up --config FILE`, as `make demo-up` runs it
    sc.figures                          # after the block: the workload audited, the journals read

``members`` are the nodes that belong to the cluster before and after the change: they are the ones the
"at most one not Synced" rule is about (a joining node is not Synced until it has joined, a leaving one
stops being a member on purpose). Every node of the stack is sampled all the same.

Figures (``Figures``): wall time of the `up`, nodes whose mariadbd restarted, the most members out at once
(no answer, out of the primary component or not wsrep_ready: the service-level rule, at most one) and the
most not Synced at once (the strict count, which adds a state transfer's Donor/Desynced donor), both
sampled about once a second over TCP as a client sees them, every member at once (``rehearsal.availability``
reads the samples), acknowledged writes lost, invariant
violations, client errors and the longest gap without an acknowledged commit, SST or IST per node (from
the node's error log, which the program keeps on the data volume, since the scenario began).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.mycnf import ERROR_LOG
from components.tls_material import CA_CERT_PATH
from rehearsal.availability import Probe, Sample, availability
from rehearsal.testbed import Settings, Testbed
from rehearsal.up import attach
from rehearsal.workload import BankWorkload, pymysql_connect, setup_sql

REPO = Path(__file__).resolve().parents[2]
# The scenarios run on the demo's own testbed: a user's MARIADB_KMS_DEMO_PREFIX/SUBNET, else one of their own.
DEFAULT_PREFIX, DEFAULT_SUBNET = "mkday2", "10.231.9.0/24"
SYNCED_TIMEOUT = 300.0


def scenario_env() -> dict[str, str]:
    return {
        "MARIADB_KMS_DEMO_PREFIX": os.environ.get("MARIADB_KMS_DEMO_PREFIX", DEFAULT_PREFIX),
        "MARIADB_KMS_DEMO_SUBNET": os.environ.get("MARIADB_KMS_DEMO_SUBNET", DEFAULT_SUBNET),
    }


def settings() -> Settings:
    env = scenario_env()
    return Settings(prefix=env["MARIADB_KMS_DEMO_PREFIX"], subnet=ipaddress.IPv4Network(env["MARIADB_KMS_DEMO_SUBNET"]))


def rehearsal(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m rehearsal ARGS`` (what the make targets run), on the scenarios' testbed."""
    return subprocess.run([sys.executable, "-m", "rehearsal", *args], cwd=REPO, env={**os.environ, **scenario_env()},
                          capture_output=True, text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------


@dataclass
class DemoCluster:
    """The demo's cluster, with the bank and a TLS client for it."""

    addresses: dict[str, str]  # node -> address, every node the stack has had
    password: str = field(repr=False)
    ca_file: Path
    user: str = "bank"
    accounts: int = 20
    initial: int = 1000

    def testbed(self) -> Testbed:
        """The running testbed as the last `up` left it (host PIDs change when a host restarts)."""
        return attach(settings())

    def connect(self, address: str, timeout: float = 5.0) -> Any:
        # requireSecureTransport is on: clients use TLS, verified against the cluster's CA.
        return pymysql_connect(self.user, self.password, timeout=timeout, io_timeout=timeout, ca=self.ca_file)(address)

    def workload(self, nodes: Sequence[str]) -> BankWorkload:
        return BankWorkload([self.addresses[n] for n in nodes], accounts=self.accounts, initial=self.initial,
                            duration=3600, max_transfers=10**7, connect=self.connect)

    def sample(self, node: str) -> tuple[str, float] | None:
        """(wsrep_local_state_comment, when mariadbd started) as a client sees it; None when it does not answer."""
        p, _why = self.probe(node)
        return None if p is None else (p.state, p.started)

    def probe(self, node: str) -> tuple[Probe | None, str]:
        """The member's state, primary component and readiness as a client sees them; else (None, why not)."""
        try:
            conn = self.connect(self.addresses[node], timeout=2.0)
        except Exception as exc:
            return None, f"connect: {exc}"[:120]
        try:
            cur = conn.cursor()
            cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state_comment', 'Uptime', "
                        "'wsrep_cluster_status', 'wsrep_ready')")
            v = {str(k): str(v) for k, v in cur.fetchall()}
            return Probe(v.get("wsrep_local_state_comment", ""), v.get("wsrep_cluster_status") == "Primary",
                         v.get("wsrep_ready") == "ON", time.time() - float(v.get("Uptime", "0"))), ""
        except Exception as exc:
            return None, f"query: {exc}"[:120]
        finally:
            conn.close()


def prepare_bank(nodes: Sequence[str], addresses: dict[str, str], tmp: Path) -> DemoCluster:
    """The bank's database and user on the running cluster (as root on the first node), and the CA for TLS."""
    tb = attach(settings())
    password = secrets.token_urlsafe(18)
    ca = tmp / "ca.pem"
    ca.write_bytes(tb.read_file(nodes[0], CA_CERT_PATH))
    cluster = DemoCluster(dict(addresses), password, ca)
    result = tb.exec(nodes[0], ["mariadb", "--batch"], input=setup_sql(cluster.accounts, cluster.initial,
                                                                       cluster.user, password), timeout=120)
    assert result.rc == 0, result.stderr[-2000:]
    return cluster


# --------------------------------------------------------------------------
# One scenario
# --------------------------------------------------------------------------

IST_LINE = re.compile(r"Receiving IST|IST received")
# MariaDB runs its SST script as joiner before every state transfer, IST included ("--bypass" tells the
# donor it sends IST), and then logs "Installed new state from SST" either way. A full SST installs a state
# other than the one the joiner started from (a new node starts from none); an IST installs its own.
JOINER_LINE = re.compile(r"--role 'joiner'")
STARTED_AT = re.compile(r"--role 'joiner'.*--wsrep_start_position=(\S+?)'?$", re.M)
INSTALLED = re.compile(r"Installed new state from SST: (\S+)")


def state_transfer(journal: str) -> str:
    started, installed = STARTED_AT.findall(journal), INSTALLED.findall(journal)
    if any(i != s for s, i in zip(started, installed, strict=False)):
        return "SST"
    if IST_LINE.search(journal):
        return "IST"
    if JOINER_LINE.search(journal):
        return "SST"
    return "none"


def error_log_size(tb: Testbed, node: str) -> int:
    out = tb.exec(node, ["stat", "-c", "%s", ERROR_LOG]).stdout.strip()
    return int(out) if out.isdigit() else 0


@dataclass
class Figures:
    scenario: str
    wall_s: float
    nodes_restarted: list[str]
    max_members_not_synced: int
    acknowledged: int
    acknowledged_lost: int
    invariant_violations: int
    client_errors: int
    errors_by_kind: dict[str, int]
    longest_gap_s: float
    state_transfer: dict[str, str]
    steps_run: int
    notes: str = ""
    max_members_out: int = 0  # no answer, non-Primary or not ready: the service-level figure
    worst_out: str = ""
    worst_not_synced: str = ""
    extra_not_synced: list[str] = field(default_factory=list)  # not Synced, usable, and not a serving donor
    not_synced_episodes: list[str] = field(default_factory=list)  # member, state, when, how long

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RESULTS: list[Figures] = []


class Day2Scenario:
    def __init__(self, cluster: DemoCluster, name: str, *, members: Sequence[str], nodes: Sequence[str],
                 load_on: Sequence[str] | None = None) -> None:
        self.cluster = cluster
        self.name = name
        self.members = list(members)
        self.nodes = list(nodes)  # every node sampled: members, joiners and leavers
        self.load_on = list(load_on or members)
        self.samples: list[Sample] = []
        self.no_answer: list[dict[str, str]] = []  # per sample: why a member did not answer
        self.outputs: list[subprocess.CompletedProcess[str]] = []
        self.wall_s = 0.0
        self.figures: Figures | None = None
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, daemon=True, name=f"day2-monitor-{name}")

    def __enter__(self) -> Day2Scenario:
        deadline = time.monotonic() + SYNCED_TIMEOUT
        while not all((s := self.cluster.sample(n)) is not None and s[0] == "Synced" for n in self.members):
            assert time.monotonic() < deadline, f"{self.name}: the cluster is not whole before the scenario"
            time.sleep(1)
        self.before = {n: self.cluster.sample(n) for n in self.nodes}
        tb = self.cluster.testbed()
        # The program points log_error at the volume, so state transfers are read there, from this offset on.
        self.log_offsets = {n: error_log_size(tb, n) for n in self.nodes if n in tb.hosts and tb.hosts[n].leader_pid}
        self.load = self.cluster.workload(self.load_on).start()
        self._monitor.start()
        time.sleep(5)  # the load runs before the change
        return self

    def up(self, config: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = rehearsal("up", "--config", str(config), *args, timeout=timeout)
        self.wall_s += time.monotonic() - started
        self.outputs.append(proc)
        return proc

    def _watch(self) -> None:
        began = time.monotonic()
        # Every member probed at the same moment, so "at once" means at once.
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            while not self._stop.is_set():
                at = time.monotonic() - began
                got = dict(zip(self.nodes, pool.map(self.cluster.probe, self.nodes), strict=True))
                self.samples.append(Sample(round(at, 2), {n: p for n, (p, _w) in got.items()}))
                self.no_answer.append({n: w for n, (p, w) in got.items() if p is None})
                self._stop.wait(1.0)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        time.sleep(5)  # the load runs on the changed cluster too
        self._stop.set()
        self._monitor.join(30)
        self.load.stop()
        self.load.wait(60)
        if exc_type is not None:
            return
        report = self.load.report(self.load.audit())
        after = {n: self.cluster.sample(n) for n in self.nodes}
        restarted = []
        for n in self.nodes:
            b, a = self.before.get(n), after.get(n)
            if b is None or a is None:
                continue  # joined or left: not a restart
            if a[1] - b[1] > 5 or any(s.probes.get(n) is None for s in self.samples):
                restarted.append(n)
        seen = availability(self.samples, self.members)
        self._keep_samples()
        tb = self.cluster.testbed()
        transfers: dict[str, str] = {}
        for n in self.nodes:
            if n not in tb.hosts or not tb.hosts[n].leader_pid:
                transfers[n] = "down"
                continue
            offset = self.log_offsets.get(n, 0)
            text = tb.exec(n, ["tail", "-c", f"+{offset + 1}", ERROR_LOG], timeout=60).stdout
            transfers[n] = state_transfer(text)
        steps = sum(len(re.findall(r"^\[.*\] up: .* ok in ", p.stderr, flags=re.M)) for p in self.outputs)
        self.figures = Figures(
            scenario=self.name, wall_s=round(self.wall_s, 1), nodes_restarted=restarted,
            max_members_not_synced=seen.max_not_synced, acknowledged=report.acknowledged,
            acknowledged_lost=report.acknowledged_lost, invariant_violations=report.invariant_violations,
            client_errors=report.client_errors, errors_by_kind=report.errors_by_kind,
            longest_gap_s=report.longest_gap_s, state_transfer=transfers,
            steps_run=steps, max_members_out=seen.max_out, worst_out=seen.worst_out,
            worst_not_synced=seen.worst_not_synced, extra_not_synced=seen.extra,
            not_synced_episodes=[str(e) for e in seen.episodes],
        )
        RESULTS.append(self.figures)

    def _keep_samples(self) -> None:
        """Every sample in a JSON file for reading afterwards (states only, no secrets)."""
        where = Path(tempfile.gettempdir()) / "mariadb-kms-day2"
        where.mkdir(exist_ok=True)
        path = where / (settings().prefix + "-" + re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") + ".json")
        path.write_text(json.dumps([{"at": s.at, "probes": {n: asdict(p) if p else None for n, p in s.probes.items()},
                                     "no_answer": w} for s, w in zip(self.samples, self.no_answer, strict=True)]))
        print(f"\n{self.name}: samples in {path}")


def table(results: Sequence[Figures]) -> str:
    head = ("| scenario | wall (s) | steps run | nodes restarted | max members out | max not Synced (who) "
            "| acknowledged | lost | client errors | longest gap (s) | state transfer |")
    lines = [head, "|" + "---|" * 11]
    for f in results:
        st = ", ".join(f"{n} {k}" for n, k in f.state_transfer.items() if k != "none") or "none"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(f.errors_by_kind.items()))
        lines.append(f"| {f.scenario} | {f.wall_s} | {f.steps_run} | {', '.join(f.nodes_restarted) or 'none'} "
                     f"| {f.max_members_out} | {f.max_members_not_synced}"
                     f"{f' ({who})' if (who := f.worst_not_synced.partition(': ')[2]) else ''} "
                     f"| {f.acknowledged} | {f.acknowledged_lost} "
                     f"| {f.client_errors}{f' ({kinds})' if kinds else ''} "
                     f"| {f.longest_gap_s} | {st} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# A higher MariaDB version in the hosts' package sources
# --------------------------------------------------------------------------


def offer_bumped_version(nodes: Sequence[str], tmp: Path) -> str:
    """Debian's MariaDB packages repacked with a bumped version, as a file repository on every node; the version.

    The node tests' repack (tests/node/test_day2_upgrade_on_hosts.py): same binaries, bumped version and
    inter-package relations. It exercises the rolling mechanics, not a real schema upgrade.
    """
    import io
    import tarfile

    node_tests = str(REPO / "tests" / "node")
    if node_tests not in sys.path:
        sys.path.insert(0, node_tests)
    from test_day2_upgrade_on_hosts import BUMP_DIR, bumped_repository

    from rehearsal.pkgrepo import REPO_PACKAGES, ensure_repo
    from rehearsal.rootfs import ensure_bare_rootfs

    tb = attach(settings())
    old = tb.exec(nodes[0], ["dpkg-query", "-W", "-f=${Version}", "mariadb-server"]).stdout.strip()
    new = bumped_repository(ensure_repo(ensure_bare_rootfs(), REPO_PACKAGES), tmp / "bump", old)
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        tar.add(tmp / "bump", arcname=BUMP_DIR.lstrip("/"))
        line = f"deb [trusted=yes] file:{BUMP_DIR} ./\n".encode()
        info = tarfile.TarInfo("etc/apt/sources.list.d/mariadb-kms-bump.list")
        info.size, info.mode = len(line), 0o644
        tar.addfile(info, io.BytesIO(line))
    for n in nodes:
        placed = tb.exec(n, ["tar", "-xf", "-", "-C", "/", "--no-same-owner"], input=payload.getvalue(), timeout=300)
        assert placed.rc == 0, placed.stderr
    return new
