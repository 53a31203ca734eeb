"""What the day-2 scenarios share: the demo's cluster, the bank-transfer load around one `up`, the figures.

A scenario is::

    with Day2Scenario(cluster, "add an on-prem node", members=["aws-a", "aws-b", "dc-1"]) as sc:
        sc.up(config_file)              # `python -m rehearsal up --config FILE`, as `make demo-up` runs it
    sc.figures                          # after the block: the workload audited, the journals read

``members`` are the nodes that belong to the cluster before and after the change: they are the ones the
"at most one not Synced" rule is about (a joining node is not Synced until it has joined, a leaving one
stops being a member on purpose). Every node of the stack is sampled all the same.

Figures (``Figures``): wall time of the `up`, nodes whose mariadbd restarted, the most members not Synced
at once (sampled about once a second over TCP, as a client sees them), acknowledged writes lost, invariant
violations, client errors and the longest gap without an acknowledged commit, SST or IST per node (from
the node's error log, which the program keeps on the data volume, since the scenario began).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.mycnf import ERROR_LOG
from components.tls_material import CA_CERT_PATH
from rehearsal.testbed import Settings, Testbed
from rehearsal.up import attach
from rehearsal.workload import BankWorkload, setup_sql

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
        import pymysql

        # requireSecureTransport is on: clients use TLS, verified against the cluster's CA.
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.check_hostname = False  # node certificates name the node; clients here dial addresses
        return pymysql.connect(host=address, port=3306, user=self.user, password=self.password, database="bank",
                               autocommit=False, connect_timeout=timeout, read_timeout=timeout,
                               write_timeout=timeout, ssl=context)

    def workload(self, nodes: Sequence[str]) -> BankWorkload:
        return BankWorkload([self.addresses[n] for n in nodes], accounts=self.accounts, initial=self.initial,
                            duration=3600, max_transfers=10**7, connect=self.connect)

    def sample(self, node: str) -> tuple[str, float] | None:
        """(wsrep_local_state_comment, when mariadbd started) as a client sees it; None when it does not answer."""
        try:
            conn = self.connect(self.addresses[node], timeout=2.0)
        except Exception:
            return None
        try:
            cur = conn.cursor()
            cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state_comment', 'Uptime')")
            values = {str(k): str(v) for k, v in cur.fetchall()}
            return values.get("wsrep_local_state_comment", ""), time.time() - float(values.get("Uptime", "0"))
        except Exception:
            return None
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
# MariaDB runs its SST script as joiner before every state transfer, IST included; "--bypass" tells the donor
# it sends IST. So SST is: the joiner script ran and no IST arrived.
JOINER_LINE = re.compile(r"--role 'joiner'")


def state_transfer(journal: str) -> str:
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
        self.samples: list[dict[str, tuple[str, float] | None]] = []
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
        while not self._stop.is_set():
            self.samples.append({n: self.cluster.sample(n) for n in self.nodes})
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
            if a[1] - b[1] > 5 or any(s.get(n) is None for s in self.samples):
                restarted.append(n)
        def not_synced(sample: dict[str, tuple[str, float] | None]) -> list[str]:
            return [n for n in self.members if (v := sample.get(n)) is None or v[0] != "Synced"]

        worst_sample = max(self.samples, key=lambda s: len(not_synced(s)), default={})
        worst = len(not_synced(worst_sample))
        # Which members and in which state, at the worst moment: a donor (Donor/Desynced) reads differently
        # from a second node down.
        at_worst = ", ".join(f"{n} {(v[0] if (v := worst_sample.get(n)) else 'down')}"
                             for n in not_synced(worst_sample))
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
            max_members_not_synced=worst, acknowledged=report.acknowledged,
            acknowledged_lost=report.acknowledged_lost, invariant_violations=report.invariant_violations,
            client_errors=report.client_errors, errors_by_kind=report.errors_by_kind,
            longest_gap_s=report.longest_gap_s, state_transfer=transfers,
            steps_run=steps, notes=f"worst moment: {at_worst}" if at_worst else "",
        )
        RESULTS.append(self.figures)


def table(results: Sequence[Figures]) -> str:
    head = ("| scenario | wall (s) | steps run | nodes restarted | max members not Synced | acknowledged | lost "
            "| client errors | longest gap (s) | state transfer |")
    lines = [head, "|" + "---|" * 10]
    for f in results:
        st = ", ".join(f"{n} {k}" for n, k in f.state_transfer.items() if k != "none") or "none"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(f.errors_by_kind.items()))
        lines.append(f"| {f.scenario} | {f.wall_s} | {f.steps_run} | {', '.join(f.nodes_restarted) or 'none'} "
                     f"| {f.max_members_not_synced} | {f.acknowledged} | {f.acknowledged_lost} "
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
