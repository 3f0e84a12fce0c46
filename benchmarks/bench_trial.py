"""Time one default trial (the unit of work of a sweep), single-threaded BLAS.

A default trial: 784-100x5-10 ReLU net, weight scale 0.01, 1000 training samples, batch 100, 20 epochs
(200 SGD updates), train and test accuracy on 1000 samples each after every epoch. Timed plain and with
batchnorm, in float64 and float32; the repetitions are interleaved across the four variants so that
noise from other processes spreads over all of them. Prints the median and minimum wall time per
variant, and the median CPU time of the process: with one BLAS thread, CPU time is the compute time
and hardly changes when other processes compete for the cores (wall time then grows).

    python -m benchmarks.bench_trial [--reps 7] [--json PATH] [--data-dir DIR]

Uses real Fashion-MNIST; if it cannot be loaded, random data of the same shapes (and says so).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from model import run_trial
from model.trial import DEFAULT_CONFIG

VARIANTS = [(dtype, bn) for dtype in ("float64", "float32") for bn in (False, True)]
#: The book's default trial (model.trial.DEFAULT_CONFIG: 20 epochs, 1000 samples, batch 100, SGD 0.01) at W=0.01.
BASE_CONFIG = {k: v for k, v in DEFAULT_CONFIG.items() if k != "dtype"} | {"weight_scale": 0.01, "seed": 0}


def load_data(data_dir: str | None) -> tuple[tuple, str]:
    """``(((x_train, t_train), (x_test, t_test)), source)``: the first 1000 samples of each split.

    Without ``data_dir``, missing data falls back to random data (said on stdout); a ``data_dir``
    that does not hold the data is an error (DatasetError)."""
    from pipeline.data import DatasetError, load_dataset

    try:
        (x_train, t_train), (x_test, t_test) = load_dataset("fashion-mnist", data_dir, download=False)
        source = "fashion-mnist"
    except DatasetError as exc:
        if data_dir is not None:
            raise
        print(f"NOTE: real Fashion-MNIST unavailable ({exc}); timing on RANDOM data of the same shapes")
        rng = np.random.default_rng(0)
        x_train, x_test = (rng.random((1000, 784), dtype=np.float32) for _ in range(2))
        t_train, t_test = (rng.integers(0, 10, 1000) for _ in range(2))
        source = "random"
    n = BASE_CONFIG["train_size"]
    return ((x_train[:n], t_train[:n]), (x_test[:n], t_test[:n])), source


def time_trial(config: dict, data: tuple) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one trial."""
    (x_train, t_train), (x_test, t_test) = data
    wall, cpu = time.perf_counter(), time.process_time()
    run_trial(config, x_train, t_train, x_test, t_test)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per variant (default 7)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX files (default: the usual places)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")

    try:
        data, source = load_data(args.data_dir)
    except ValueError as exc:  # DatasetError: --data-dir does not hold the data
        parser.exit(2, f"bench_trial: error: {exc}\n")
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    with threadpool_limits(limits=1):
        blas = [
            f"{info.get('internal_api')} {info.get('version')} threads={info.get('num_threads')}"
            for info in threadpool_info()
        ]
        for dtype, bn in VARIANTS:  # warm-up: first-call costs (imports, page faults) are not timed
            time_trial({**BASE_CONFIG, "dtype": dtype, "use_batchnorm": bn}, data)
        for _ in range(args.reps):
            for dtype, bn in VARIANTS:
                times[dtype, bn].append(time_trial({**BASE_CONFIG, "dtype": dtype, "use_batchnorm": bn}, data))

    print(f"one default trial on {source} data, {args.reps} reps, BLAS: {'; '.join(blas) or 'none found'}")
    print(f"{'dtype':8} {'arm':10} {'median s':>9} {'min s':>7} {'median cpu s':>13}")
    results = []
    for dtype, bn in VARIANTS:
        wall = [w for w, _ in times[dtype, bn]]
        cpu = [c for _, c in times[dtype, bn]]
        median, best, median_cpu = statistics.median(wall), min(wall), statistics.median(cpu)
        arm = "batchnorm" if bn else "plain"
        print(f"{dtype:8} {arm:10} {median:9.3f} {best:7.3f} {median_cpu:13.3f}")
        results.append(
            {
                "dtype": dtype,
                "use_batchnorm": bn,
                "median_s": median,
                "min_s": best,
                "median_cpu_s": median_cpu,
                "times_s": wall,
                "cpu_times_s": cpu,
            }
        )

    if args.json:
        report = {
            "benchmark": "bench_trial",
            "data": source,
            "reps": args.reps,
            "config": BASE_CONFIG,
            "blas": blas,
            "numpy_version": np.__version__,
            "python_version": platform.python_version(),
            "results": results,
        }
        write_json(args.json, report)
    return 0


def write_json(path: str | Path, report: dict) -> None:
    """Write ``report`` as indented JSON to ``path`` (making its folder) and say so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
