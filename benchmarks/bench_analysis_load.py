"""How fast does ``analysis.load_runs`` read a sweep: SQLite store and ``mlflow server``, first and repeated.

Creates ``--runs`` synthetic trial runs (default 1000 = 20 weight scales x 2 arms x 25 seeds) with
``--epochs``+1 steps of 3 metrics each (design.md schema, one ``log_batch`` per run) in a fresh SQLite
store, starts ``mlflow server --host 127.0.0.1 --port <free>`` on that store, and times ``load_runs``
against both, as the analysis CLI calls it (with a history cache folder): ``first`` loads start from an empty
cache (every history fetched with ``MlflowClient.get_metric_history``), ``repeat`` loads read the cache the
first load filled -- the analysis a user runs again after adding seeds. ``cold_s`` is the process's very first
load (MLflow's client and store set up too); then the median of ``--repeats`` first/repeat pairs, with the median
time of each phase. A fresh server's workers get their slow first requests before timing (reported apart).

Run it in a loopback-only network namespace (it starts a server)::

    tests/loopback-only python -m benchmarks.bench_analysis_load --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.load import load_runs  # noqa: E402
from tests.mlflow_fixtures import (  # noqa: E402
    create_experiment,
    log_grid,
    make_store,
    start_mlflow_server,
    stop_mlflow_server,
)

EXPERIMENT = "bench-analysis-load"


def build_store(root: Path, n_runs: int, epochs: int) -> tuple[str, float]:
    """A store with ``n_runs`` FINISHED trial runs; returns (uri, seconds taken)."""
    seeds = 25
    n_scales = max(1, n_runs // (2 * seeds))
    if n_scales * 2 * seeds != n_runs:
        seeds = max(1, n_runs // 2)
        n_scales = 1
    uri, client = make_store(root)
    t0 = time.perf_counter()
    exp_id = create_experiment(client, EXPERIMENT, root / "artifacts")
    log_grid(client, exp_id, np.logspace(0, -4, num=n_scales), range(seeds), epochs=epochs)
    return uri, time.perf_counter() - t0


def time_load(uri: str, repeats: int, expected_rows: int, cache_root: Path) -> dict:
    """``cold_s``, and the medians of ``repeats`` first loads (empty cache) and repeat loads (the cache filled)."""
    first, repeat, phases = [], [], []
    for i in range(repeats + 1):
        cache = cache_root / f"{i}"
        for kind, times in (("first", first), ("repeat", repeat)):
            t0 = time.perf_counter()
            df = load_runs(EXPERIMENT, uri, cache_dir=cache)
            times.append(time.perf_counter() - t0)
            if len(df) != expected_rows:
                raise RuntimeError(f"load_runs returned {len(df)} rows, expected {expected_rows}")
            counts = df.attrs["history_counts"]
            if (kind == "repeat") != (counts["fetched"] == 0):
                raise RuntimeError(f"{kind} load: histories {counts}")
            if i > 0:
                phases.append((kind, df.attrs["timings_s"]))
    median_phases = {kind: {k: statistics.median(p[k] for n, p in phases if n == kind) for k in phases[0][1]}
                     for kind in ("first", "repeat")}
    return {"cold_s": first[0], "first_median_s": statistics.median(first[1:]), "first_s": first[1:],
            "repeat_median_s": statistics.median(repeat[1:]), "repeat_s": repeat[1:],
            "median_phases_s": median_phases, "rows": expected_rows}


def warm_up_server(url: str, rounds: int = 2, parallel: int = 4) -> float:
    """Send the fresh server's workers their first (slow) requests; returns the seconds taken."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        for _ in range(rounds):
            list(pool.map(lambda _: client.search_runs([exp_id], max_results=1000), range(parallel)))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="trial runs to create (default 1000)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per run; steps = epochs+1 (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="first/repeat pairs timed per store (default 3)")
    parser.add_argument("--no-server", action="store_true", help="time the SQLite store only")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this path")
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    result: dict = {"runs": args.runs, "epochs": args.epochs, "metrics": 3, "repeats": args.repeats,
                    "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        root = Path(tmp)
        print(f"creating {args.runs} runs x {args.epochs + 1} steps x 3 metrics ...", file=sys.stderr)
        uri, create_s = build_store(root, args.runs, args.epochs)
        result["create_runs_s"] = create_s
        print(f"  created in {create_s:.1f} s", file=sys.stderr)
        rows = args.runs * (args.epochs + 1)

        result["sqlite"] = time_load(uri, args.repeats, rows, root / "cache-sqlite")
        if not args.no_server:
            proc, url = start_mlflow_server(uri, root / "server")
            try:
                warm = warm_up_server(url)
                result["server"] = time_load(url, args.repeats, rows, root / "cache-server")
                result["server"]["server_warm_up_s"] = warm
            finally:
                stop_mlflow_server(proc)

    for backend in ("sqlite", "server"):
        if backend not in result:
            continue
        r = result[backend]
        print(f"{backend:6s} load_runs ({r['rows']} rows): cold {r['cold_s']:.2f} s; median of {args.repeats}: "
              f"first {r['first_median_s']:.2f} s, repeat {r['repeat_median_s']:.2f} s")
        if "server_warm_up_s" in r:
            print(f"         (before timing: the fresh server's first requests took {r['server_warm_up_s']:.1f} s)")
        for kind, phases in r["median_phases_s"].items():
            print(f"         {kind} load, median phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
