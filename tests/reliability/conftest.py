"""`make reliability`: faults under the bank-transfer workload on a 3-node testbed cluster.

Every test here is marked ``reliability`` and runs only when that marker is selected (``-m reliability``),
so ``make test`` (``pytest tests``) leaves them out. The cluster is made once, in ``reliability_cluster``,
the one place to change how it is set up. Each scenario appends its figures; the session prints them as a
table and writes them as JSON (``MARIADB_KMS_RELIABILITY_JSON``, default ``reliability.json`` in the
testbed's run directory).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for path in (REPO_ROOT, REPO_ROOT / "tests" / "node"):  # the node tests' cluster_setup helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from harness import HOSTS, RESULTS, ReliabilityCluster, table  # noqa: E402

if TYPE_CHECKING:
    from rehearsal.kms_server import KmsServer
    from rehearsal.testbed import Testbed


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
    if not RESULTS:
        return
    terminalreporter.write_line("")
    for line in table(RESULTS).splitlines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    if os.geteuid() != 0 or shutil.which("systemd-nspawn") is None or shutil.which("nft") is None:
        reason = "the reliability scenarios need root, systemd-nspawn and nft (`make deps`)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    from rehearsal.testbed import Testbed

    with Testbed(HOSTS) as bed:
        bed.boot()
        yield bed
        report = Path(os.environ.get("MARIADB_KMS_RELIABILITY_JSON", str(bed.run_dir / "reliability.json")))
        report.write_text(json.dumps([r.to_dict() for r in RESULTS], indent=2) + "\n")


@pytest.fixture(scope="session")
def kms(testbed: Testbed) -> Iterator[KmsServer]:
    """moto's KMS with IAM authentication on: each node has its own access key, and a deleted one is refused."""
    from rehearsal.kms_server import KmsServer

    with KmsServer(testbed.bridge_address, state_dir=testbed.run_dir, iam_auth=True) as server:
        yield server


@pytest.fixture(scope="session")
def reliability_cluster(testbed: Testbed, kms: KmsServer) -> Iterator[ReliabilityCluster]:
    """Three nodes installed as the program installs them, each with its own access key; bootstrapped once."""
    from cluster_setup import (
        FakeCredentials,
        bootstrap,
        cluster_config,
        in_parallel,
        install_node,
        join,
        make_cluster_key,
        sql,
    )

    from rehearsal.workload import setup_sql

    key = make_cluster_key(kms, "mariadb-kms reliability")
    config = cluster_config(testbed, HOSTS)
    users = {h: f"onprem-{h}" for h in HOSTS}
    credentials = {h: FakeCredentials(*kms.node_access_key(users[h])) for h in HOSTS}
    in_parallel(
        HOSTS, lambda h: install_node(testbed, h, cluster=config, key=key, kms=kms, credentials=credentials[h])
    )
    bootstrap(testbed, HOSTS[0])
    for size, host in enumerate(HOSTS[1:], start=2):
        join(testbed, host, size)
    password = secrets.token_urlsafe(18)
    cluster = ReliabilityCluster(testbed, kms, key, users, credentials, password)
    sql(testbed, HOSTS[0], setup_sql(cluster.accounts, cluster.initial, cluster.db_user, password))
    yield cluster
