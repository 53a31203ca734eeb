"""Removing a node on real hosts: the others take the shorter member list without a restart, the node leaves.

A 3-node kms-envelope cluster installed as the program installs it
(``cluster_setup``); then what the first `pulumi up` with ``decommission:
true`` on node3 carries out: node1 and node2 get a config without node3 and
run ``mariadb-kms-roll`` (no restart: the same mariadbd keeps running), node3
runs ``mariadb-kms-decommission --wipe-data``, and verification on the others
expects 2 members.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from cluster_setup import (
    FakeCredentials,
    bootstrap,
    cluster_config,
    in_parallel,
    install_node,
    join,
    make_cluster_key,
    rendered_mycnf,
    sql,
    verify_args,
    wait_synced,
    wsrep_status,
)

from components.node_files import BLOB_PATH, CREDENTIALS_PATH, DATADIR, MYCNF_NODE_PATH
from rehearsal.kms_server import KmsServer
from rehearsal.testbed import Testbed

HOSTS = ("node1", "node2", "node3")
STAYING = ("node1", "node2")


def mariadbd_pid(testbed: Testbed, host: str) -> str:
    return testbed.exec(host, ["systemctl", "show", "-p", "MainPID", "--value", "mariadb"]).stdout.strip()


@pytest.fixture(scope="module")
def cluster(testbed: Testbed, kms: KmsServer) -> Iterator[dict[str, str]]:
    key = make_cluster_key(kms, "mariadb-kms day-2 node tests")
    config = cluster_config(testbed, HOSTS)
    credentials = FakeCredentials.generate()
    try:
        in_parallel(HOSTS, lambda h: install_node(
            testbed, h, cluster=config, key=key, kms=kms, credentials=credentials,
        ))
        bootstrap(testbed, "node1")
        join(testbed, "node2", 2)
        join(testbed, "node3", 3)
        for h in HOSTS:  # what the program's roll records after each start
            assert testbed.exec(h, ["mariadb-kms-roll", "--mark-applied"]).rc == 0
        smaller = cluster_config(testbed, STAYING)
        yield {h: rendered_mycnf(testbed, smaller, h, key)[MYCNF_NODE_PATH] for h in STAYING}
    finally:
        for h in HOSTS:
            testbed.exec(h, ["systemctl", "unmask", "--quiet", "mariadb", "mariadb-kms-unwrap"], timeout=60)
            testbed.exec(h, ["systemctl", "disable", "--now", "--quiet", "mariadb"], timeout=300)
            testbed.exec(h, ["rm", "-f", "/var/lib/mariadb-kms/decommissioned"], timeout=60)
            testbed.exec(h, ["apt-get", "clean"], timeout=120)


def test_the_others_take_the_shorter_member_list_without_a_restart(
    testbed: Testbed, cluster: dict[str, str]
) -> None:
    for h in STAYING:
        pid = mariadbd_pid(testbed, h)
        put = testbed.exec(h, ["tee", MYCNF_NODE_PATH], input=cluster[h])
        assert put.rc == 0
        rolled = testbed.exec(h, ["mariadb-kms-roll", "--timeout", "120"], timeout=180)
        assert rolled.rc == 0, rolled.stderr
        assert "nothing to restart" in rolled.stdout
        assert mariadbd_pid(testbed, h) == pid
    assert wsrep_status(testbed, "node1").get("wsrep_cluster_size") == "3"  # node3 still a member, as it should be


def test_decommission_leaves_and_the_others_verify_two_members(testbed: Testbed, cluster: dict[str, str]) -> None:
    sql(testbed, "node1", "CREATE DATABASE IF NOT EXISTS day2; CREATE TABLE IF NOT EXISTS day2.t (id INT PRIMARY KEY);"
        " REPLACE INTO day2.t VALUES (1);")
    left = testbed.exec("node3", ["mariadb-kms-decommission", "--wipe-data"], timeout=600)
    assert left.rc == 0, left.stderr
    for h in STAYING:
        wait_synced(testbed, h, 2, timeout=30)  # a graceful leave: no suspect timeout to sit out
    for path in (BLOB_PATH, CREDENTIALS_PATH, "/run/mariadb-kms/keyfile"):
        assert testbed.exec("node3", ["test", "-e", path]).rc != 0, path
    assert testbed.exec("node3", ["find", DATADIR, "-mindepth", "1"]).stdout.strip() == ""
    assert testbed.exec("node3", ["systemctl", "is-enabled", "mariadb"]).stdout.strip() == "masked"
    refused = testbed.exec("node3", ["mariadb-kms-roll", "--timeout", "30"])
    assert refused.rc != 0 and "decommissioned" in refused.stderr
    config = cluster_config(testbed, STAYING)
    for h in STAYING:
        report = testbed.exec(h, ["mariadb-kms-verify", "--canary", "--expect-size", "2", *verify_args(config)],
                              timeout=600)
        assert report.rc == 0, report.stdout[-2000:]
        assert json.loads(report.stdout)["ok"] is True
    assert sql(testbed, "node2", "SELECT COUNT(*) FROM day2.t").strip() == "1"
