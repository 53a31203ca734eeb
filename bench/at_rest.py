"""What encryption at rest costs: plain against the program's default config on one node, side by side.

One testbed host runs a server per variant at once (bench/single_node.py), each under the node's exact
config as the program's own plan deployed it, and sysbench loads one server at a time through its unix socket:

- ``plain``: the node's config without the encryption file (no key plugin, no flag);
- the flags added one by one: ``tables``; ``+redo``; ``+binlog``; ``+temp`` (temporary tablespace, temporary
  files, on-disk temporary tables); ``default`` (+ Aria: every flag, exactly the program's default file,
  AES_CTR);
- ``kernel-logs``: the stack config's ``logEncryption: kernel``, the default file with innodb_encrypt_log and
  encrypt_binlog OFF (the logs left to the volume's encryption, which this host's loop volume does below);
- ``cbc``: every flag with ``file_key_management_encryption_algorithm = AES_CBC`` (its own fresh datadir).

Each round runs every variant of a workload once, in an order reversed every other round (A B C … C B A
…), and each variant's figure is the ratio to ``plain`` within a round, summarised by bench/stats.py
(median, spread, bootstrap 95% interval). ``mariadbd`` CPU-seconds per 1,000 transactions come from
/proc/<pid>/stat. Workloads: sysbench ``oltp_read_write``, ``oltp_write_only`` and ``oltp_point_select`` in
memory (data well inside the buffer pool) and I/O-bound (data larger than the buffer pool). Prints a
table and writes the raw runs as JSON. Asserts nothing (it is not a test); needs root.

    python -m bench.at_rest [--rounds 7] [--seconds 15] [--parts rw-mem,wo-mem,ps-mem,rw-io] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.single_node import BENCH_PACKAGES, SideBySide, Variant, machine
from bench.stats import compare, per_thousand
from components.mycnf import LOG_FLAGS
from rehearsal.kms_server import KmsServer
from rehearsal.runner import TLS_OFF, ProgramStack, deploy, onprem_config
from rehearsal.testbed import Settings, Testbed

REPO = Path(__file__).resolve().parent.parent

OFF_EXCEPT_TABLES = {
    "innodb_encrypt_log": "OFF",
    "innodb_encrypt_temporary_tables": "OFF",
    "encrypt_tmp_files": "OFF",
    "encrypt_tmp_disk_tables": "OFF",
    "encrypt_binlog": "OFF",
    "aria_encrypt_tables": "OFF",
}


def _without(*flags: str) -> dict[str, str]:
    return {k: v for k, v in OFF_EXCEPT_TABLES.items() if k not in flags}


TEMP_FLAGS = ("innodb_encrypt_temporary_tables", "encrypt_tmp_files", "encrypt_tmp_disk_tables")
VARIANTS = (
    Variant("plain", encrypted=False),
    Variant("tables", encrypted=True, changes=OFF_EXCEPT_TABLES),
    Variant("redo", encrypted=True, changes=_without("innodb_encrypt_log")),
    Variant("binlog", encrypted=True, changes=_without("innodb_encrypt_log", "encrypt_binlog")),
    Variant("temp", encrypted=True, changes=_without("innodb_encrypt_log", "encrypt_binlog", *TEMP_FLAGS)),
    Variant("default", encrypted=True),
    # What logEncryption kernel renders: the default file with the two log flags OFF (tests/unit/test_bench_stats.py).
    Variant("kernel-logs", encrypted=True, changes={flag: "OFF" for flag in LOG_FLAGS}),
    Variant("cbc", encrypted=True, changes={"file_key_management_encryption_algorithm": "AES_CBC"}),
)
LABELS = {"tables": "tables", "redo": "+ redo", "binlog": "+ binlog", "temp": "+ temp", "default": "+ Aria = default",
          "kernel-logs": "logs to kernel", "cbc": "default, AES_CBC"}


@dataclass(frozen=True)
class Part:
    key: str
    workload: str
    db: str
    variants: tuple[str, ...]


MEM_DB = ("sbmem", 4, 10_000)  # ~10 MB: well inside the 64 MB buffer pool
IO_DB = ("sbio", 4, 150_000)  # ~150 MB: more than twice the buffer pool
ALL = tuple(v.name for v in VARIANTS)
PARTS = {
    "rw-mem": Part("rw-mem", "oltp_read_write", "sbmem", ALL),
    "wo-mem": Part("wo-mem", "oltp_write_only", "sbmem", ALL),
    "ps-mem": Part("ps-mem", "oltp_point_select", "sbmem", ("plain", "default")),
    "rw-io": Part("rw-io", "oltp_read_write", "sbio", ("plain", "default")),
}


def only_variants(part: Part, wanted: str) -> Part:
    """The part with only the named variants, plain first; an empty selection keeps them all."""
    names = [n for n in wanted.split(",") if n]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise ValueError(f"--variants: unknown {', '.join(unknown)}; expected some of {', '.join(ALL)}")
    if not names:
        return part
    kept = tuple(v for v in part.variants if v == "plain" or v in names)
    if len(kept) < 2:
        raise ValueError(f"--variants {wanted}: the {part.key} part has none of them besides plain "
                         f"(it runs {', '.join(part.variants)})")
    return Part(part.key, part.workload, part.db, kept)


def summarize(runs: list[dict[str, object]], part: Part) -> list[dict[str, object]]:
    rows = []
    mine = [r for r in runs if r["part"] == part.key]
    rounds = sorted({int(str(r["round"])) for r in mine})

    def series(variant: str, key: str) -> list[float]:
        by_round = {int(str(r["round"])): float(str(r[key])) for r in mine if r["variant"] == variant}
        return [by_round[i] for i in rounds]

    plain_tps = series("plain", "tps")
    plain_cpu = series("plain", "cpu_per_1k")
    for variant in part.variants[1:]:
        tps = compare(plain_tps, series(variant, "tps"))
        cpu = compare(plain_cpu, series(variant, "cpu_per_1k"))
        rows.append({
            "part": part.key, "workload": part.workload, "variant": variant,
            "tps_ratio": tps.as_dict(), "cost_median": tps.cost, "cost_upper95": tps.cost_upper,
            "cpu_per_1k_plain": statistics.median(plain_cpu),
            "cpu_per_1k": statistics.median(series(variant, "cpu_per_1k")),
            "cpu_ratio": cpu.as_dict(),
        })
    return rows


def table(rows: list[dict[str, object]]) -> str:
    out = [f"{'part':<7} {'variant':<17} {'TPS ratio median':>16} {'min..max':>12} {'95% CI':>13} "
           f"{'cost (upper)':>13} {'CPU-s/1k tx plain→var':>22} {'CPU/tx ratio, 95% CI':>22}"]
    for row in rows:
        r, c = row["tps_ratio"], row["cpu_ratio"]
        assert isinstance(r, dict) and isinstance(c, dict)
        ci = r["ci95"]
        out.append(
            f"{row['part']!s:<7} {LABELS[str(row['variant'])]:<17} {r['median']:>16.3f} "
            f"{r['min']:>5.2f}..{r['max']:<5.2f} {ci[0]:>6.3f}..{ci[1]:<5.3f} "
            f"{float(str(row['cost_median'])) * 100:>5.1f}% ({float(str(row['cost_upper95'])) * 100:>4.1f}%) "
            f"{float(str(row['cpu_per_1k_plain'])):>9.3f} → {float(str(row['cpu_per_1k'])):<8.3f} "
            f"{c['median']:>7.3f} {c['ci95'][0]:.3f}..{c['ci95'][1]:.3f}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=15, help="length of one sysbench run")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks" / "at_rest.json")
    parser.add_argument("--variants", default="",
                        help=f"comma-separated subset of {', '.join(ALL)} (plain is always run): more rounds of the "
                             "comparisons that matter in the same time")
    parser.add_argument("--report", type=Path, help="print the table of an earlier run's JSON and stop")
    args = parser.parse_args()
    if args.report:
        print(table(json.loads(args.report.read_text())["summary"]))
        return 0
    try:
        parts = [only_variants(PARTS[p], args.variants) for p in args.parts.split(",") if p]
    except (KeyError, ValueError) as exc:
        parser.error(str(exc))
    needed = [v for v in VARIANTS if any(v.name in p.variants for p in parts)]
    record: dict[str, object] = {"machine_start": machine(), "goal_ratio": 0.97,
                                 "command": " ".join(["python -m bench.at_rest", *sys.argv[1:]]),
                                 "seconds": args.seconds, "threads": args.threads, "rounds": args.rounds,
                                 "buffer_pool": "64M", "datasets": {"sbmem": MEM_DB[1:], "sbio": IO_DB[1:]}}
    runs: list[dict[str, object]] = []
    with Testbed(["bench"], settings=Settings.from_env(), repo_packages=BENCH_PACKAGES) as bed:
        bed.boot()
        # TLS has no bearing on a unix-socket client of one node: off, as a user turns it off in the config.
        config = onprem_config(bed, ["bench"], gcacheSize="64M", **TLS_OFF)
        print("deploying a one-node cluster by the program's plan", flush=True)
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            deploy(bed, ProgramStack(kms), config)
        servers = SideBySide(bed, "bench", needed)
        servers.take_over()
        print("initialising and starting", ", ".join(v.name for v in needed), flush=True)
        servers.init_and_start()
        record["config_default"] = servers.config_text(next(v for v in VARIANTS if v.name == "default"))
        for db, tables, rows in (MEM_DB, IO_DB):
            users = {v for p in parts if p.db == db for v in p.variants}
            for name in sorted(users):
                t0 = time.monotonic()
                servers.prepare(name, db, tables, rows)
                print(f"prepared {db} on {name} in {time.monotonic() - t0:.0f} s", flush=True)
        for part in parts:
            dataset = MEM_DB if part.db == "sbmem" else IO_DB
            for name in part.variants:  # warm up: buffer pool and caches, not measured
                servers.run(name, part.workload, part.db, dataset[1], dataset[2], args.threads, 5)
            for rnd in range(args.rounds):
                order = part.variants if rnd % 2 == 0 else tuple(reversed(part.variants))
                for name in order:
                    res = servers.run(name, part.workload, part.db, dataset[1], dataset[2], args.threads,
                                      args.seconds)
                    load = open("/proc/loadavg").read().split()[0]
                    runs.append({"part": part.key, "round": rnd, "variant": name, "tps": res.tps,
                                 "transactions": res.transactions, "seconds": res.seconds,
                                 "cpu_seconds": res.cpu_seconds,
                                 "cpu_per_1k": per_thousand(res.cpu_seconds, res.transactions), "load1": load})
                    print(f"{part.key} round {rnd + 1} {name:<8} {res.tps:9.1f} tx/s  "
                          f"{per_thousand(res.cpu_seconds, res.transactions):.3f} CPU-s/1k tx  load {load}",
                          flush=True)
    rows = [row for part in parts for row in summarize(runs, part)]
    record.update({"machine_end": machine(), "runs": runs, "summary": rows})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print()
    print(f"{args.rounds} rounds, {args.seconds} s per run, {args.threads} sysbench threads; ratio = variant/plain "
          "within a round; cost = 1 - ratio, (upper) from the 95% bootstrap interval")
    print(table(rows))
    print(f"raw runs: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
