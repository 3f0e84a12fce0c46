"""float32 against float64: the final test accuracy and the CPU time of default trials, the same trials in both.

The default trial (Fashion-MNIST, 1000 training samples, 20 epochs, 784-100x5-10 ReLU, SGD 0.01, batch 100) for
5 seeds x batchnorm on/off x a few weight scales, once in float64 and once in float32 (both start from the same
float64-drawn weights and see the same mini-batches). Prints the accuracy differences and the median CPU-time
ratio float32 / float64 per arm, and draws ``docs/results/float32_accuracy.png``: float32's final test accuracy
against float64's, one point per trial, with the line y = x. One BLAS thread; about a minute.

    python -m benchmarks.bench_dtype [--seeds 5] [--figure PATH] [--json PATH] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from benchmarks.bench_trial import BASE_CONFIG, load_data, write_json
from model import run_trial

WEIGHT_SCALES = (1.0, 0.1, 0.01, "he")
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "results" / "float32_accuracy.png"


def final_accuracy(config: dict, data: tuple) -> tuple[float, float]:
    """``(final test accuracy, CPU seconds)`` of one trial."""
    (x_train, t_train), (x_test, t_test) = data
    start = time.process_time()
    history = run_trial(config, x_train, t_train, x_test, t_test)
    return history.test_acc[-1], time.process_time() - start


def measure(seeds: int, data: tuple) -> list[dict]:
    """One row per (weight scale, arm, seed): both dtypes' final test accuracy and CPU seconds."""
    rows = []
    with threadpool_limits(limits=1):
        for scale in WEIGHT_SCALES:
            for bn in (False, True):
                for seed in range(seeds):
                    row = {"weight_scale": scale, "use_batchnorm": bn, "seed": seed}
                    for dtype in ("float64", "float32"):
                        config = {**BASE_CONFIG, "weight_scale": scale, "use_batchnorm": bn, "seed": seed,
                                  "dtype": dtype}
                        row[f"acc_{dtype}"], row[f"cpu_{dtype}"] = final_accuracy(config, data)
                    rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Accuracy differences (float32 - float64) and median CPU ratios (float32 / float64), per arm and overall."""
    out = {}
    for arm, bn in (("plain", False), ("batchnorm", True), ("all", None)):
        sel = [r for r in rows if bn is None or r["use_batchnorm"] == bn]
        diffs = [r["acc_float32"] - r["acc_float64"] for r in sel]
        out[arm] = {
            "trials": len(sel),
            "mean_diff": statistics.fmean(diffs),
            "max_abs_diff": max(abs(d) for d in diffs),
            "identical": sum(d == 0 for d in diffs),
            "median_cpu_ratio": statistics.median(r["cpu_float32"] / r["cpu_float64"] for r in sel),
        }
    return out


def draw(rows: list[dict], summary: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    for bn, color, label in ((False, "tab:blue", "plain"), (True, "tab:orange", "batchnorm")):
        sel = [r for r in rows if r["use_batchnorm"] == bn]
        ax.scatter([r["acc_float64"] for r in sel], [r["acc_float32"] for r in sel], s=25, alpha=0.7,
                   color=color, label=f"{label} ({len(sel)} trials)")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1, label="y = x (same accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("final test accuracy in float64")
    ax.set_ylabel("final test accuracy in float32 (same trial)")
    s = summary["all"]
    scales = ", ".join(str(w) for w in WEIGHT_SCALES)
    ax.set_title("Does training in float32 change the result?\n"
                 f"Fashion-MNIST, 1000 samples, 20 epochs, weight scales {scales}, 5 seeds", fontsize=10)
    ax.text(0.98, 0.02, f"float32 - float64: mean {s['mean_diff']:+.4f}, largest difference {s['max_abs_diff']:.3f}\n"
            f"float32 CPU time: {s['median_cpu_ratio']:.2f} x float64's (median)",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=9)
    ax.legend(loc="upper left", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per weight scale and arm (default 5)")
    parser.add_argument("--figure", type=Path, default=FIGURE, help=f"where the figure goes (default {FIGURE})")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the summary as JSON to PATH")
    parser.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX files (default: the usual places)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    try:
        data, source = load_data(args.data_dir)
    except ValueError as exc:
        parser.exit(2, f"bench_dtype: error: {exc}\n")
    rows = measure(args.seeds, data)
    summary = summarize(rows)
    print(f"float32 vs float64 on {source} data, {len(rows)} trials per dtype")
    print(f"{'arm':10} {'trials':>6} {'mean f32-f64':>13} {'max |diff|':>11} {'identical':>9} {'cpu f32/f64':>12}")
    for arm, s in summary.items():
        print(f"{arm:10} {s['trials']:6} {s['mean_diff']:+13.4f} {s['max_abs_diff']:11.3f} {s['identical']:9} "
              f"{s['median_cpu_ratio']:12.3f}")
    draw(rows, summary, args.figure)
    if args.json:
        write_json(args.json, {"benchmark": "bench_dtype", "data": source, "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
