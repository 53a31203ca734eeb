"""PNG plots from a side-by-side benchmark's JSON (bench/at_rest.py, bench/in_transit.py, bench/program_eval.py).

Per JSON file, two figures:

- ``<stem>-ratios.png``: for each part, every pair ratio (variant/baseline within a round) as a dot, the
  median as a bar and the bootstrap 95% interval as a whisker, with lines at 1.0 and at the 3% goal;
- ``<stem>-cpu.png``: the same for mariadbd CPU-seconds per transaction (the goal line mirrored above 1);
- ``<stem>-rounds.png``: throughput of every run in round order per variant, so drift and pairing show;

and for bench/program_eval.py's JSON one, ``<stem>-cpu.png``: CPU seconds by node count per tree measured.

    python -m bench.plots [docs/benchmarks/at_rest.json …] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

BENCH_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


def ratio_figure(data: dict[str, Any], title: str, goal: float, key: str = "tps_ratio") -> Any:
    rows = data["summary"]
    parts = list(dict.fromkeys(r["part"] for r in rows))
    fig, axes = plt.subplots(1, len(parts), figsize=(max(5.6, 4.2 * len(parts)), 4.2), squeeze=False, sharey=True)
    for ax, part in zip(axes[0], parts, strict=True):
        mine = [r for r in rows if r["part"] == part]
        for x, row in enumerate(mine):
            r = row[key]
            n = len(r["ratios"])
            xs = [x + (i - (n - 1) / 2) * 0.05 for i in range(n)]
            ax.scatter(xs, r["ratios"], s=14, color="tab:blue", alpha=0.7, zorder=3)
            ax.hlines(r["median"], x - 0.3, x + 0.3, color="black", linewidth=2, zorder=4)
            ax.vlines(x, r["ci95"][0], r["ci95"][1], color="tab:red", linewidth=3, alpha=0.6, zorder=2)
        ax.set_xlim(-0.6, len(mine) - 0.4)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.axhline(goal, color="tab:green", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(mine)), [str(r["variant"]) for r in mine], rotation=35, ha="right")
        ax.set_title(f"{part} ({mine[0].get('workload', '')})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    what = "throughput" if key == "tps_ratio" else "mariadbd CPU-s per transaction"
    axes[0][0].set_ylabel(f"{what}, ratio to baseline per pair", fontsize=8)
    fig.suptitle(f"{title}: {what}\ndots = pairs, bar = median, red = bootstrap 95% CI, dashed = goal", fontsize=9)
    fig.tight_layout()
    return fig


def rounds_figure(data: dict[str, Any], title: str) -> Any:
    runs = data["runs"]
    parts = list(dict.fromkeys(r["part"] for r in runs))
    fig, axes = plt.subplots(1, len(parts), figsize=(max(5.6, 4.2 * len(parts)), 3.8), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        mine = [r for r in runs if r["part"] == part]
        for variant in dict.fromkeys(r["variant"] for r in mine):
            pts = sorted((r["round"], r["tps"]) for r in mine if r["variant"] == variant)
            ax.plot([p[0] + 1 for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=variant)
        ax.set_title(part, fontsize=9)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("transactions/s")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{title}: every run, in round order", fontsize=9)
    fig.tight_layout()
    return fig


def program_figure(data: dict[str, Any]) -> Any:
    """bench/program_eval.py's JSON: process CPU seconds of ``up`` and ``preview`` by node count, per tree, every
    process's median as a dot and the median over them as a line."""
    rows = data["rows"]
    trees = list(data.get("trees") or dict.fromkeys(r.get("tree", "") for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, mode in zip(axes, ("up", "preview"), strict=True):
        for i, tree in enumerate(trees):
            mine = [r for r in rows if r.get("tree", "") == tree]
            sizes = sorted({r["nodes"] for r in mine})
            ax.scatter([r["nodes"] + (i - 0.5) * 0.3 for r in mine], [r[f"{mode}_cpu_s"] for r in mine],
                       s=14, alpha=0.7, color=f"C{i}")
            medians = [statistics.median(r[f"{mode}_cpu_s"] for r in mine if r["nodes"] == n) for n in sizes]
            ax.plot(sizes, medians, marker="o", color=f"C{i}", label=tree)
        ax.axhline(1.0, color="tab:green", linestyle="--", linewidth=0.8)
        ax.set_title(f"{mode}", fontsize=9)
        ax.set_xlabel("nodes")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("process CPU seconds per evaluation")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"program evaluation under mocks ({data.get('date', '')}, load {' '.join(data.get('loadavg', []))})\n"
                 "dots = each process's median, line = median over processes, dashed = 1 s goal", fontsize=9)
    fig.tight_layout()
    return fig


def plottable(data: dict[str, Any]) -> bool:
    """A JSON these figures can draw: program_eval's, or side-by-side runs with throughput and CPU pair ratios
    (not the SST part's speed ratios, nor a run that only profiled)."""
    if "trees" in data:
        return True
    rows = data.get("summary") or []
    return bool(rows) and all("tps_ratio" in row and "cpu_ratio" in row for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, nargs="*",
                        help=f"default: every JSON in {BENCH_DIR.relative_to(BENCH_DIR.parent.parent)} they can draw")
    parser.add_argument("--out", type=Path, default=None, help="directory for the PNGs (default: beside the JSON)")
    parser.add_argument("--goal", type=float, default=None,
                        help="ratio drawn as the goal line (default: the JSON's goal_ratio, else 0.97)")
    args = parser.parse_args()
    if args.json:
        chosen = [(path, json.loads(path.read_text())) for path in args.json]
    else:
        everything = [(path, json.loads(path.read_text())) for path in sorted(BENCH_DIR.glob("*.json"))]
        chosen = [(path, data) for path, data in everything if plottable(data)]
    for path, data in chosen:
        out = args.out or path.parent
        out.mkdir(parents=True, exist_ok=True)
        if "trees" in data:  # bench/program_eval.py
            target = out / f"{path.stem}-cpu.png"
            fig = program_figure(data)
            fig.savefig(target, dpi=110)
            plt.close(fig)
            print(target)
            continue
        goal = args.goal if args.goal is not None else float(data.get("goal_ratio", 0.97))
        figures = (("ratios", ratio_figure(data, path.stem, goal)),
                   ("cpu", ratio_figure(data, path.stem, 2 - goal, key="cpu_ratio")),
                   ("rounds", rounds_figure(data, path.stem)))
        for suffix, fig in figures:
            target = out / f"{path.stem}-{suffix}.png"
            fig.savefig(target, dpi=110)
            plt.close(fig)
            print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
