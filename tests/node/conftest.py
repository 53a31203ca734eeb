"""Fixtures for tests on real Debian hosts: the testbed, its package repository and the KMS emulator.

Every test in tests/node is marked ``node``. Without root or systemd-nspawn the fixtures skip, naming the
reason; under CI (``CI`` set) they fail instead, because CI runs as root and a skip there would hide a
broken setup.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

NODE_TESTS = Path(__file__).resolve().parent
REPO_ROOT = NODE_TESTS.parents[1]
if str(REPO_ROOT) not in sys.path:  # `pytest tests` puts only the tests' own directories on sys.path
    sys.path.insert(0, str(REPO_ROOT))

if TYPE_CHECKING:
    from rehearsal.kms_server import KmsServer
    from rehearsal.pkgrepo import RepoServer
    from rehearsal.testbed import Testbed

HOST_NAMES = ("node1", "node2", "node3")
REQUIRED_TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "ip", "apt-ftparchive")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, so mark only the ones under this directory.
    for item in items:
        if NODE_TESTS in item.path.resolve().parents:
            item.add_marker(pytest.mark.node)


def testbed_unavailable() -> str | None:
    """Why real hosts cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "the testbed needs root (network namespaces, systemd-nspawn, overlay mounts)"
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is missing: run `make deps`"
    return None


def require_testbed() -> None:
    reason = testbed_unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI runs as root and must run the node tests, but: {reason}", pytrace=False)
    pytest.skip(reason)


# Module scope: every module installs its own cluster (its own key) on these hosts, and a datadir made
# under one module's key cannot start under the next one's. Booting three hosts takes seconds.
@pytest.fixture(scope="module")
def testbed() -> Iterator[Testbed]:
    """Three hosts booted from the bare rootfs for one test module, torn down after it."""
    require_testbed()
    from rehearsal.testbed import Testbed

    with Testbed(HOST_NAMES) as bed:
        bed.boot()
        yield bed


@pytest.fixture(scope="module")
def pkgrepo(testbed: Testbed) -> RepoServer:
    """The local package repository, served on the bridge (hosts already have its apt source)."""
    assert testbed.repo is not None
    return testbed.repo


@pytest.fixture(scope="module")
def kms(testbed: Testbed) -> Iterator[KmsServer]:
    """moto's KMS server on the bridge address, reachable from every host."""
    from rehearsal.kms_server import KmsServer

    # Its pidfile lives in the testbed's run directory, so `down` stops it after a crashed session.
    with KmsServer(testbed.bridge_address, state_dir=testbed.run_dir) as server:
        yield server
