"""How long the program takes to evaluate, and how much memory, under the unit-test mocks, by node count.

Each size runs in a fresh Python process, so imports are measured on their own (``import pulumi_aws``
alone is a large share) and one size's caches never help the next. Per size: import time; wall time and
process CPU time of ``up`` and of ``preview`` (median of ``--repeats`` runs, untraced, after one warm-up run
of a 3-node program in the same process; on a loaded machine the CPU time is the steadier figure, since
wall time also counts the time spent waiting for a core); then peak Python memory of each, from a
separate run under tracemalloc (which slows Python down several times, so it never touches the times).
Also the CPU milliseconds per node^2, which stays flat where the work grows with n^2 (each node's
config lists every member) and climbs where something grows faster. Prints a table and writes JSON; asserts nothing.

    python bench/program_eval.py [--sizes 3,9,15,27] [--repeats 3] [--json FILE]
    python bench/program_eval.py --profile 27      # cProfile of one up run: where the time goes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _child(size: int, repeats: int, profile: bool) -> dict[str, Any]:
    """Runs inside the fresh process."""
    started = time.perf_counter()
    for path in (REPO, REPO / "tests" / "unit", REPO / "bench"):
        sys.path.insert(0, str(path))
    import gc
    import tracemalloc

    from mocks import run_program
    from program_scale import config_with

    imports = time.perf_counter() - started
    run_program(config_with(3, 2 / 3), preview=False)  # warm-up: first-call caches, not measured
    config = config_with(size, 2 / 3)
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        run_program(config, preview=False)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
        return {}
    out: dict[str, Any] = {"nodes": size, "imports_s": imports}
    for mode, preview in (("up", False), ("preview", True)):
        times, cpu = [], []
        for _ in range(repeats):
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            run_program(config, preview=preview)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        gc.collect()
        tracemalloc.start()
        run_program(config, preview=preview)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[f"{mode}_s"] = statistics.median(times)
        out[f"{mode}_runs_s"] = times
        out[f"{mode}_cpu_s"] = statistics.median(cpu)
        out[f"{mode}_peak_mib"] = peak / 2**20
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,9,15,27")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks" / "program_eval.json")
    parser.add_argument("--profile", type=int, default=0, help="profile one up run of this many nodes instead")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.profile:
        result = _child(args.child or args.profile, args.repeats, bool(args.profile))
        print(json.dumps(result))
        return 0
    rows = []
    print(f"{'nodes':>5} {'imports s':>9} {'up s':>6} {'up CPU s':>8} {'preview s':>9} {'preview CPU s':>13} "
          f"{'up CPU ms/n^2':>13} {'peak MiB up':>11} {'peak MiB preview':>16}")
    for size in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--child", str(size), "--repeats", str(args.repeats)],
                              capture_output=True, text=True, check=True, cwd=REPO,
                              env={**os.environ, "PYTHONHASHSEED": "0"})
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{size:>5} {row['imports_s']:>9.2f} {row['up_s']:>6.2f} {row['up_cpu_s']:>8.2f} "
              f"{row['preview_s']:>9.2f} {row['preview_cpu_s']:>13.2f} {row['up_cpu_s'] / size**2 * 1000:>13.2f} "
              f"{row['up_peak_mib']:>11.1f} {row['preview_peak_mib']:>16.1f}", flush=True)
    load = open("/proc/loadavg").read().split()[:3]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "nproc": os.cpu_count(), "kernel": os.uname().release, "loadavg": load,
                                     "command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    print(f"load {' '.join(load)}; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
