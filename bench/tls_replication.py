"""What TLS costs Galera replication: the same workloads with every TLS channel off and on, side by side in one run.

A 3-node cluster on a testbed of its own (prefix ``mkbnch``, subnet 10.231.7.0/24), installed as the
program installs on-prem nodes (tests/node/tls_cluster.py), certificates of ClusterCa's shape. For each
repetition the cluster is restarted with TLS off, then with TLS on (the default config; Galera cannot
switch a running cluster), and each workload runs on node1 through its unix socket, so only replication
crosses the network:

- ``small``: N single-row INSERT transactions of a short row (latency-bound: each commit waits for the
  write-set to reach every node);
- ``large``: fewer transactions of a 64 KiB row (bandwidth- and cipher-bound).

Per run: time from the first statement until node3 has applied the last write-set (its
wsrep_last_committed reaches node1's), as transactions and MB of row data per second. Prints a table with
the median of each and the TLS/plaintext ratio. Asserts nothing (it is not a test); needs root.

    python bench/tls_replication.py [--repeats 3] [--small 2000] [--large 300]
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests" / "node"):
    sys.path.insert(0, str(path))

from tls_cluster import TLS_OFF, TlsCluster  # noqa: E402

from rehearsal.kms_server import KmsServer  # noqa: E402
from rehearsal.testbed import Settings, Testbed  # noqa: E402

NAMES = ("node1", "node2", "node3")
SETTINGS = Settings(prefix="mkbnch", subnet=ipaddress.IPv4Network("10.231.7.0/24"))


@dataclass(frozen=True)
class Workload:
    name: str
    transactions: int
    row_bytes: int


@dataclass(frozen=True)
class Result:
    workload: str
    tls: bool
    seconds: float
    transactions: int
    row_bytes: int

    @property
    def tx_per_s(self) -> float:
        return self.transactions / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.transactions * self.row_bytes / self.seconds / 1e6


def last_committed(cl: TlsCluster, name: str) -> int:
    return int(cl.status(name, "wsrep_last_committed") or 0)


def restart(cl: TlsCluster, *, tls: bool) -> None:
    cl.stop_all()
    cl.configure(cl.config() if tls else cl.config(**TLS_OFF))
    cl.bootstrap("node1")
    for name in NAMES[1:]:
        cl.roll(name)


def run_workload(cl: TlsCluster, workload: Workload, *, tls: bool) -> Result:
    table = f"bench.{workload.name}"
    cl.sql("node1", f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, "
                    "v LONGBLOB NOT NULL);")
    statement = f"INSERT INTO {table} (v) VALUES (REPEAT('x', {workload.row_bytes}));\n"  # noqa: S608 - constants
    script = statement * workload.transactions  # autocommit: one transaction per statement
    cl.testbed.put_file("node1", "/root/bench.sql", script)
    start = time.monotonic()
    cl.check("node1", "mariadb < /root/bench.sql", timeout=1800)
    target = last_committed(cl, "node1")
    while last_committed(cl, "node3") < target:
        time.sleep(0.05)
    seconds = time.monotonic() - start
    return Result(workload.name, tls, seconds, workload.transactions, workload.row_bytes)


def table(results: list[Result], workloads: list[Workload]) -> str:
    lines = [f"{'workload':<26} {'TLS':<4} {'runs (s)':<26} {'median tx/s':>11} {'median MB/s':>11}"]
    medians: dict[tuple[str, bool], float] = {}
    for w in workloads:
        for tls in (False, True):
            runs = [r for r in results if r.workload == w.name and r.tls == tls]
            tx = statistics.median(r.tx_per_s for r in runs)
            mb = statistics.median(r.mb_per_s for r in runs)
            medians[(w.name, tls)] = tx
            label = f"{w.name} ({w.transactions} x {w.row_bytes} B)"
            secs = " ".join(f"{r.seconds:.2f}" for r in runs)
            lines.append(f"{label:<26} {'on' if tls else 'off':<4} {secs:<26} {tx:>11.1f} {mb:>11.2f}")
        ratio = medians[(w.name, True)] / medians[(w.name, False)]
        lines.append(f"{'':<26} TLS/plaintext throughput: {ratio:.2f} ({(1 - ratio) * 100:+.0f}% cost)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=2000, help="transactions of the small-row workload")
    parser.add_argument("--large", type=int, default=300, help="transactions of the 64 KiB-row workload")
    args = parser.parse_args()
    workloads = [Workload("small", args.small, 100), Workload("large", args.large, 64 * 1024)]
    results: list[Result] = []
    with Testbed(NAMES, settings=SETTINGS) as bed:
        bed.boot()
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            cl = TlsCluster(bed, kms, NAMES)
            cl.install()
            cl.issue_all()
            cl.configure(cl.config(**TLS_OFF))
            cl.bootstrap("node1")
            for name in NAMES[1:]:
                cl.roll(name)
            cl.sql("node1", "CREATE DATABASE IF NOT EXISTS bench;")
            for repeat in range(args.repeats):
                for tls in (False, True):
                    restart(cl, tls=tls)
                    for w in workloads:
                        result = run_workload(cl, w, tls=tls)
                        results.append(result)
                        print(f"repeat {repeat + 1} TLS {'on ' if tls else 'off'} {w.name:<6} {result.seconds:7.2f} s "
                              f"{result.tx_per_s:8.1f} tx/s {result.mb_per_s:7.2f} MB/s", flush=True)
    print()
    print(table(results, workloads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
