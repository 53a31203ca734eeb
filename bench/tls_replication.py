"""What TLS costs Galera replication: the same workloads with every TLS channel off and on, side by side in one run.

A 3-node all-on-premises cluster on a testbed of its own (prefix ``mkbnch``, subnet 10.231.7.0/24;
MARIADB_KMS_BENCH_PREFIX/_SUBNET override them), deployed by the program's own plan
(``rehearsal/runner``), with the program's certificates. Two recordings of one stack, every TLS channel
off by config and the default config (TLS on), share the KMS key and the data key. For each repetition
the cluster is stopped and the TLS-off plan run, then stopped again and the TLS-on plan run (Galera
cannot switch a running cluster), and each workload runs on node1 through its unix socket, so only
replication crosses the network:

- ``small``: N single-row INSERT transactions of a short row (latency-bound: each commit waits for the
  write-set to reach every node);
- ``large``: fewer transactions of a 64 KiB row (bandwidth- and cipher-bound).

Per run: time from the first statement until node3 has applied the last write-set (its
wsrep_last_committed reaches node1's), as transactions and MB of row data per second. Prints a table with
the median of each and the TLS/plaintext ratio. Asserts nothing (it is not a test); needs root.

    python -m bench.tls_replication [--repeats 3] [--small 2000] [--large 300]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import time
from dataclasses import dataclass

from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import check, sql, status, stop
from rehearsal.runner import TLS_OFF, Deployment, Program, ProgramStack, deploy, onprem_config
from rehearsal.testbed import Settings, Testbed

NAMES = ("node1", "node2", "node3")
SETTINGS = Settings(
    prefix=os.environ.get("MARIADB_KMS_BENCH_PREFIX", "mkbnch"),
    subnet=ipaddress.IPv4Network(os.environ.get("MARIADB_KMS_BENCH_SUBNET", "10.231.7.0/24")),
)


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


def last_committed(bed: Testbed, name: str) -> int:
    return int(status(bed, name, "wsrep_last_committed") or 0)


def restart(bed: Testbed, program: Program) -> None:
    """Every node stopped (node1 last, so it may bootstrap), then the program's whole plan for ``program``."""
    for name in reversed(NAMES):
        stop(bed, name)
    Deployment(bed, program, quiet=True).run()


def run_workload(bed: Testbed, workload: Workload, *, tls: bool) -> Result:
    table = f"bench.{workload.name}"
    sql(bed, "node1", f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, "
                      "v LONGBLOB NOT NULL);")
    statement = f"INSERT INTO {table} (v) VALUES (REPEAT('x', {workload.row_bytes}));\n"  # noqa: S608 - constants
    script = statement * workload.transactions  # autocommit: one transaction per statement
    bed.put_file("node1", "/root/bench.sql", script)
    start = time.monotonic()
    check(bed, "node1", "mariadb < /root/bench.sql", timeout=1800)
    target = last_committed(bed, "node1")
    while last_committed(bed, "node3") < target:
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
            stack = ProgramStack(kms)
            plain = deploy(bed, stack, onprem_config(bed, NAMES, **TLS_OFF), quiet=True).program
            programs = {False: plain, True: stack.record(onprem_config(bed, NAMES), bed)}
            sql(bed, "node1", "CREATE DATABASE IF NOT EXISTS bench;")
            for repeat in range(args.repeats):
                for tls in (False, True):
                    restart(bed, programs[tls])
                    for w in workloads:
                        result = run_workload(bed, w, tls=tls)
                        results.append(result)
                        print(f"repeat {repeat + 1} TLS {'on ' if tls else 'off'} {w.name:<6} {result.seconds:7.2f} s "
                              f"{result.tx_per_s:8.1f} tx/s {result.mb_per_s:7.2f} MB/s", flush=True)
    print()
    print(table(results, workloads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
