"""`make reliability`: faults under the bank-transfer workload on the rehearsal's cluster.

The cluster is the one ``make demo`` stands up, from ``Pulumi.rehearsal.yaml`` and the program's own plan:
two "EC2" hosts booted by cloud-init from their recorded user-data and one on-prem host reached by the SSH
steps, in two Galera segments (``rehearsal/demo``'s phases, reused as they are). It runs on the testbed
prefix and subnet (``MARIADB_KMS_TESTBED_PREFIX``/``_SUBNET``), so ``make demo`` can run beside it.

Every test here is marked ``reliability`` and runs only when that marker is selected (``-m reliability``),
so ``make test`` (``pytest tests``) leaves them out. Each scenario appends its figures; the session prints
them as a table and writes them as JSON (``MARIADB_KMS_RELIABILITY_JSON``, default ``reliability.json`` in
the testbed's run directory).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for path in (REPO_ROOT, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from harness import RESULTS, VERIFY_RETRIED, ReliabilityCluster, stand_up, table  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = "reliability" in (config.getoption("markexpr", "") or "")
    kept, dropped = [], []
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.reliability)
            (kept if chosen else dropped).append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if VERIFY_RETRIED:
        terminalreporter.write_line(f"verification failed once at stand-up and passed again: {VERIFY_RETRIED}")
    if not RESULTS:
        return
    terminalreporter.write_line("")
    for line in table(RESULTS).splitlines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def reliability_cluster() -> Iterator[ReliabilityCluster]:
    """The rehearsal's three nodes, Synced, with the bank made and each node holding its own IAM access key."""
    if os.geteuid() != 0 or shutil.which("systemd-nspawn") is None or shutil.which("nft") is None:
        reason = "the reliability scenarios need root, systemd-nspawn and nft (`make deps`)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with stand_up() as cluster:
        try:
            yield cluster
        finally:
            report = Path(os.environ.get("MARIADB_KMS_RELIABILITY_JSON",
                                         str(cluster.testbed.run_dir / "reliability.json")))
            report.write_text(json.dumps([r.to_dict() for r in RESULTS], indent=2) + "\n")
