"""What every reliability scenario shares: the cluster, the workload around a fault, and the figures.

A scenario is::

    with Scenario(cluster, "one host rebooted") as sc:
        ...inject the fault...
        sc.fault_over()                 # the moment the fault ends (or was injected, for a crash)
        sc.wait_all_synced()            # every node Synced in a Primary component of 3, timed from fault_over
    # on exit: the workload stops, the bank is audited, state transfers are read from each node's journal

The figures (``Figures``) are appended to ``RESULTS``: time until every node was Synced again without a human
(or the timed runbook where a human is expected), acknowledged writes lost, invariant violations, client
errors and the longest gap without an acknowledged commit, and SST or IST per node.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cluster_setup import ClusterKey, FakeCredentials, journal_cursor, journal_since, wsrep_status

from rehearsal.kms_server import KmsServer
from rehearsal.testbed import Testbed
from rehearsal.workload import BankWorkload, WorkloadReport

HOSTS = ("node1", "node2", "node3")
SYNCED_TIMEOUT = 300.0


@dataclass
class ReliabilityCluster:
    testbed: Testbed
    kms: KmsServer
    key: ClusterKey
    users: dict[str, str]  # host -> its IAM user in the emulator
    credentials: dict[str, FakeCredentials] = field(repr=False)
    db_password: str = field(repr=False)
    db_user: str = "bank"
    accounts: int = 20
    initial: int = 1000

    def address(self, host: str) -> str:
        return self.testbed.hosts[host].address

    def workload(self, duration: float) -> BankWorkload:
        return BankWorkload(
            [self.address(h) for h in HOSTS], user=self.db_user, password=self.db_password,
            accounts=self.accounts, initial=self.initial, duration=duration, max_transfers=10**7,
        )


@dataclass
class Figures:
    scenario: str
    healed_s: float | None  # fault over -> every node Synced, without a human; None where a human is expected
    runbook_s: float | None  # the timed runbook, where a human is expected
    acknowledged: int
    acknowledged_lost: int
    invariant_violations: int
    unacknowledged_commits: int
    client_errors: int
    errors_by_kind: dict[str, int]
    longest_gap_s: float
    state_transfer: dict[str, str]  # host -> SST | IST | none
    notes: str = ""
    evidence: dict[str, str] = field(default_factory=dict)  # host -> the journal line behind state_transfer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RESULTS: list[Figures] = []


def all_synced(testbed: Testbed, size: int = len(HOSTS)) -> bool:
    for host in HOSTS:
        try:
            status = wsrep_status(testbed, host)
        except Exception:  # a host that is down or booting answers nothing
            return False
        if (status.get("wsrep_cluster_status"), status.get("wsrep_local_state_comment"),
                status.get("wsrep_cluster_size")) != ("Primary", "Synced", str(size)):
            return False
    return True


IST_LINE = re.compile(r"Receiving IST|IST received")
# MariaDB starts its SST script as joiner before every state transfer, IST included; the donor is told
# "--bypass" when it sends IST. So a joiner's SST is: the joiner script ran, and no IST arrived.
JOINER_LINE = re.compile(r"--role 'joiner'")


def state_transfer(journal: str) -> tuple[str, str]:
    """SST, IST or none, and the journal line that says so, from a node's mariadb.service journal."""
    for line in journal.splitlines():
        if IST_LINE.search(line):
            return "IST", line.strip()[:200]
    for line in journal.splitlines():
        if JOINER_LINE.search(line):
            return "SST", line.strip()[:200]
    return "none", ""


def nft(testbed: Testbed, host: str, script: str) -> None:
    """An nftables script in the host's network namespace (this machine's nft, the host's netns)."""
    subprocess.run(["ip", "netns", "exec", testbed.hosts[host].machine, "nft", "-f", "-"],
                   input=script.encode(), check=True, capture_output=True, timeout=30)


def nft_flush(testbed: Testbed, host: str) -> None:
    subprocess.run(["ip", "netns", "exec", testbed.hosts[host].machine, "nft", "delete", "table", "inet", "fault"],
                   check=False, capture_output=True, timeout=30)


class Scenario:
    def __init__(self, cluster: ReliabilityCluster, name: str, *, max_duration: float = 900.0) -> None:
        self.cluster = cluster
        self.name = name
        self.max_duration = max_duration
        self.fault_over_at: float | None = None
        self.healed_s: float | None = None
        self.runbook_s: float | None = None
        self.notes: list[str] = []
        self.cursors: dict[str, str] = {}
        self.figures: Figures | None = None
        self.evidence: dict[str, str] = {}

    def __enter__(self) -> Scenario:
        tb = self.cluster.testbed
        deadline = time.monotonic() + SYNCED_TIMEOUT
        while not all_synced(tb):  # a scenario starts from a whole cluster
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: the cluster is not whole before the scenario")
            time.sleep(1)
        self.cursors = {h: journal_cursor(tb, h) for h in HOSTS}
        self.load = self.cluster.workload(self.max_duration).start()
        time.sleep(5)  # the workload runs before the fault
        return self

    def fault_over(self) -> None:
        self.fault_over_at = time.monotonic()

    def wait_all_synced(self, timeout: float = SYNCED_TIMEOUT) -> float:
        start = self.fault_over_at if self.fault_over_at is not None else time.monotonic()
        deadline = start + timeout
        while not all_synced(self.cluster.testbed):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: not every node Synced within {timeout:.0f}s")
            time.sleep(0.5)
        self.healed_s = round(time.monotonic() - start, 1)
        return self.healed_s

    def note(self, text: str) -> None:
        self.notes.append(text)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        time.sleep(5)  # the workload runs on the healed cluster too
        self.load.stop()
        self.load.wait(60)
        if exc_type is not None:
            self._keep_journals()
            return
        report: WorkloadReport = self.load.report(self.load.audit())
        tb = self.cluster.testbed
        found = {h: state_transfer(journal_since(tb, h, self.cursors[h], "mariadb.service")) for h in HOSTS}
        transfers = {h: kind for h, (kind, _) in found.items()}
        self.evidence = {h: line for h, (_, line) in found.items() if line}
        self.figures = Figures(
            scenario=self.name, healed_s=self.healed_s, runbook_s=self.runbook_s,
            acknowledged=report.acknowledged, acknowledged_lost=report.acknowledged_lost,
            invariant_violations=report.invariant_violations, unacknowledged_commits=report.unacknowledged_commits,
            client_errors=report.client_errors, errors_by_kind=report.errors_by_kind,
            longest_gap_s=report.longest_gap_s, state_transfer=transfers, notes="; ".join(self.notes),
            evidence=self.evidence,
        )
        RESULTS.append(self.figures)


    def _keep_journals(self) -> None:
        """A failed scenario leaves each node's journal since its start beside the JSON report."""
        tb = self.cluster.testbed
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        out = tb.run_dir / f"reliability-failed-{slug}.log"
        with open(out, "w", encoding="utf-8") as f:
            for host in HOSTS:
                try:
                    text = journal_since(tb, host, self.cursors[host])
                except Exception as e:  # a host that is down has no journal to give
                    text = f"(no journal: {e})"
                f.write(f"===== {host}\n{text}\n")
        print(f"{self.name}: journals kept in {out}")


def table(results: list[Figures]) -> str:
    head = ("| scenario | healed without a human (s) | runbook (s) | acknowledged | lost | invariant violations "
            "| client errors | longest gap (s) | state transfer |")
    lines = [head, "|" + "---|" * 9]
    for r in results:
        transfers = ", ".join(f"{h} {t}" for h, t in r.state_transfer.items() if t != "none") or "none"
        healed = "-" if r.healed_s is None else r.healed_s
        runbook = "-" if r.runbook_s is None else r.runbook_s
        lines.append(
            f"| {r.scenario} | {healed} | {runbook}"
            f" | {r.acknowledged} | {r.acknowledged_lost} | {r.invariant_violations} | {r.client_errors} "
            f"| {r.longest_gap_s} | {transfers} |"
        )
    return "\n".join(lines)
