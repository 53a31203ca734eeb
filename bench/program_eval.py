"""How long the program takes to evaluate, and how much memory, under the unit-test mocks, by node count.

Each measurement runs in a fresh Python process, so imports are measured on their own (``import
pulumi_aws`` alone is a large share) and one size's caches never help the next. Per size: import time;
wall time and process CPU time of ``up`` and of ``preview`` (median of ``--repeats`` runs, untraced,
after one warm-up run of a 3-node program in the same process; on a loaded machine the CPU time is the
steadier figure, since wall time also counts the time spent waiting for a core) and the full garbage
collections per run; then peak Python memory of each, from a separate run under tracemalloc (which slows
Python down several times, so it never touches the times). Also the CPU milliseconds per node^2, which
stays flat where the work grows with n^2 (each node's config lists every member) and climbs where
something grows faster. Prints a table and writes JSON; asserts nothing.

``--against REF`` measures a second tree side by side: the git revision REF, exported into a temporary
directory, and this checkout, one fresh process each per size and round, in an order reversed every
other round (A B, B A, ...), so both see the same machine load.

    python -m bench.program_eval [--sizes 3,9,15,27] [--repeats 3] [--json FILE]
    python -m bench.program_eval --against HEAD~1 --rounds 3     # before/after, side by side
    python -m bench.program_eval --profile 15 [--sort tottime]   # cProfile of one up run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
THIS = "this checkout"


def _child(root: Path, size: int, repeats: int, profile: str) -> dict[str, Any]:
    """Runs inside the fresh process, on the program and mocks of ``root``."""
    started = time.perf_counter()
    # The mocks live in tests/unit (no package); the tree measured comes first, so --against runs its code.
    sys.path[:0] = [str(root), str(root / "tests" / "unit")]
    import gc
    import tracemalloc

    from mocks import run_program

    from bench.program_scale import config_with

    imports = time.perf_counter() - started
    run_program(config_with(3, 2 / 3), preview=False)  # warm-up: first-call caches, not measured
    config = config_with(size, 2 / 3)
    if profile:
        import cProfile
        import pstats

        # Timed by process CPU, not the wall clock: on a loaded machine the wall clock counts waiting for a core.
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        run_program(config, preview=False)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats(profile).print_stats(40)
        return {}
    full = [0]  # generation-2 collections started since the last reset

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full[0] += 1

    gc.callbacks.append(count)
    out: dict[str, Any] = {"nodes": size, "imports_s": imports}
    for mode, preview in (("up", False), ("preview", True)):
        times, cpu, fulls = [], [], []
        for _ in range(repeats):
            gc.collect()
            full[0] = 0
            t0, c0 = time.perf_counter(), time.process_time()
            run_program(config, preview=preview)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            fulls.append(full[0])
        gc.collect()
        tracemalloc.start()
        run_program(config, preview=preview)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[f"{mode}_s"] = statistics.median(times)
        out[f"{mode}_runs_s"] = times
        out[f"{mode}_cpu_s"] = statistics.median(cpu)
        out[f"{mode}_cpu_runs_s"] = cpu
        out[f"{mode}_full_collections_per_run"] = statistics.mean(fulls)
        out[f"{mode}_peak_mib"] = peak / 2**20
    return out


def measure(root: Path, size: int, repeats: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.program_eval", "--child", str(size), "--root", str(root),
         "--repeats", str(repeats)],
        capture_output=True, text=True, check=True, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def export_tree(ref: str, into: Path) -> str:
    """``ref`` of this repository as plain files under ``into``; returns its commit."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return commit


HEADER = (f"{'tree':>13} {'nodes':>5} {'imports s':>9} {'up s':>6} {'up CPU s':>8} {'preview s':>9} "
          f"{'preview CPU s':>13} {'up CPU ms/n^2':>13} {'full GC/up':>10} {'peak MiB up':>11} "
          f"{'peak MiB preview':>16}")


def row_line(tree: str, row: dict[str, Any]) -> str:
    size = row["nodes"]
    return (f"{tree[:13]:>13} {size:>5} {row['imports_s']:>9.2f} {row['up_s']:>6.2f} {row['up_cpu_s']:>8.2f} "
            f"{row['preview_s']:>9.2f} {row['preview_cpu_s']:>13.2f} {row['up_cpu_s'] / size**2 * 1000:>13.2f} "
            f"{row['up_full_collections_per_run']:>10.1f} {row['up_peak_mib']:>11.1f} {row['preview_peak_mib']:>16.1f}")


def summary(rows: list[dict[str, Any]], trees: list[str]) -> list[dict[str, Any]]:
    """Per size and tree, the median over rounds of each process's median; with two trees, B/A per round."""
    out = []
    for size in dict.fromkeys(r["nodes"] for r in rows):
        entry: dict[str, Any] = {"nodes": size}
        for tree in trees:
            mine = [r for r in rows if r["nodes"] == size and r["tree"] == tree]
            entry[tree] = {k: statistics.median(r[k] for r in mine)
                           for k in ("imports_s", "up_s", "up_cpu_s", "preview_s", "preview_cpu_s",
                                     "up_peak_mib", "preview_peak_mib", "up_full_collections_per_run")}
        if len(trees) == 2:
            base, new = ([r for r in rows if r["nodes"] == size and r["tree"] == t] for t in trees)
            for key in ("up_cpu_s", "preview_cpu_s"):
                ratios = [b[key] / a[key] for a, b in zip(base, new, strict=True)]
                entry[f"{key}_ratio"] = {"median": statistics.median(ratios), "pairs": ratios}
        out.append(entry)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,9,15,27")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per process (median)")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per size and tree")
    parser.add_argument("--against", metavar="REF", help="also measure this git revision, side by side")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks" / "program_eval.json")
    parser.add_argument("--profile", type=int, default=0, help="profile one up run of this many nodes instead")
    parser.add_argument("--sort", default="cumulative", help="cProfile sort key for --profile (e.g. tottime)")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.profile:
        result = _child(args.root, args.child or args.profile, args.repeats, args.sort if args.profile else "")
        print(json.dumps(result))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="program-eval-"))
    try:
        trees: dict[str, Path] = {}
        commits: dict[str, str] = {}
        if args.against:
            commits[args.against] = export_tree(args.against, scratch)
            trees[args.against] = scratch
        trees[THIS] = REPO
        names = list(trees)
        load_start = open("/proc/loadavg").read().split()[:3]
        rows: list[dict[str, Any]] = []
        print(HEADER)
        for rnd in range(args.rounds):
            for size in sizes:
                for tree in (names if rnd % 2 == 0 else names[::-1]):
                    row = {"tree": tree, "round": rnd, **measure(trees[tree], size, args.repeats)}
                    rows.append(row)
                    print(row_line(tree, row), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load = open("/proc/loadavg").read().split()[:3]
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "mem_total_kib": int(open("/proc/meminfo").readline().split()[1]),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "loadavg_start": load_start,
        "loadavg": load,
        "command": "python -m bench.program_eval " + " ".join(sys.argv[1:]),
        "trees": {name: commits.get(name, "working tree") for name in names},
        "rows": rows,
        "summary": summary(rows, names),
    }
    if len(names) == 2:
        print("\nmedian over rounds, CPU seconds (B/A ratio of CPU, median of the rounds' pairs):")
        for entry in result["summary"]:
            a, b = entry[names[0]], entry[names[1]]
            print(f"{entry['nodes']:>5} nodes: up {a['up_cpu_s']:.3f} -> {b['up_cpu_s']:.3f} "
                  f"({entry['up_cpu_s_ratio']['median']:.3f}); preview {a['preview_cpu_s']:.3f} -> "
                  f"{b['preview_cpu_s']:.3f} ({entry['preview_cpu_s_ratio']['median']:.3f})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"load {' '.join(load_start)} at the start, {' '.join(load)} at the end; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
