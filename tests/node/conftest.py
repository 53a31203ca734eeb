"""Fixtures for tests on real Debian hosts: the testbed, its package repository and the KMS emulator.

Every test in tests/node is marked ``node``. Without root or systemd-nspawn the fixtures skip, naming the
reason; under CI (``CI`` set) they fail instead, because CI runs as root and a skip there would hide a
broken setup.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
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
    from rehearsal.testbed import Settings, Testbed

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


def settings_beside_session(tag: str, offset: int) -> Settings:
    """A testbed of a module's own, apart from the session's so both can run at once: the session's prefix
    with ``tag`` appended (cut to six characters) and its subnet's third octet moved up by ``offset``."""
    from rehearsal.testbed import Settings

    base = Settings.from_env()
    octets = str(base.subnet.network_address).split(".")
    octets[2] = str((int(octets[2]) + offset) % 256)
    return Settings(prefix=(base.prefix + tag)[:6], subnet=ipaddress.IPv4Network(".".join(octets) + "/24"))


def settings_from_env(name: str, prefix: str, subnet: str) -> Settings:
    """A testbed of a module's own at a fixed place, moved by ``MARIADB_KMS_<NAME>_TESTBED_PREFIX``/``_SUBNET``."""
    from rehearsal.testbed import Settings

    return Settings(
        prefix=os.environ.get(f"MARIADB_KMS_{name}_TESTBED_PREFIX", prefix),
        subnet=ipaddress.IPv4Network(os.environ.get(f"MARIADB_KMS_{name}_TESTBED_SUBNET", subnet)),
    )


def release_hosts(testbed: Testbed, hosts: Iterable[str]) -> None:
    """What a module leaves for the next one on the same hosts: MariaDB stopped and disabled, apt's cache empty.

    A node that tried at boot to join a cluster that is gone would hold up a restart, and the packages apt
    keeps in its cache would stop a later install from fetching them (the testbed's own tests check that
    it does).
    """
    for host in hosts:
        testbed.exec(host, ["systemctl", "disable", "--now", "--quiet", "mariadb"], timeout=300)
        testbed.exec(host, ["apt-get", "clean"], timeout=120)


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
