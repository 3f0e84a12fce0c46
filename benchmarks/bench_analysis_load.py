"""How fast does ``analysis.load_runs`` read a sweep: SQLite store and ``mlflow server``.

Creates ``--runs`` synthetic trial runs (default 1000 = 20 weight scales x 2 arms x 25 seeds) with
``--epochs``+1 steps of 3 metrics each (design.md schema, one ``log_batch`` per run) in a fresh SQLite
store, starts ``mlflow server --host 127.0.0.1 --port <free>`` on that store, and times ``load_runs``
against both: the first call in the process (``cold``: includes MLflow's client/store set-up; a fresh
server's workers get their slow first requests before timing, reported apart) and the median of
``--repeats`` further calls (``warm``), with the median time of each phase. With ``--compare`` it also
times the ways of fetching one metric's histories for all runs (column query, bulk store query,
bulk-interval, one call per run -- the last timed on 100 runs and scaled), which is how the strategy in
analysis/histories.py was chosen.

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


def time_load(uri: str, repeats: int, expected_rows: int) -> dict:
    times = []
    phases = []
    strategy = None
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        df = load_runs(EXPERIMENT, uri)
        times.append(time.perf_counter() - t0)
        if len(df) != expected_rows:
            raise RuntimeError(f"load_runs returned {len(df)} rows, expected {expected_rows}")
        strategy = df.attrs["history_strategy"]
        phases.append(df.attrs["timings_s"])
    warm_phases = {k: statistics.median(p[k] for p in phases[1:]) for k in phases[0]}
    return {"cold_s": times[0], "warm_median_s": statistics.median(times[1:]), "warm_s": times[1:],
            "warm_median_phases_s": warm_phases, "rows": expected_rows, "strategy": strategy}


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


def compare_fetches(uri: str, key: str = "train_acc") -> dict:
    """Seconds to fetch one metric's history for every run, by each way MLflow offers."""
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.tracking import MlflowClient

    from analysis import histories

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    ids = [r.info.run_id for r in client.search_runs([exp.experiment_id], max_results=50000)]
    store = histories.tracking_store(client)
    out = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t0

    sample = ids[:100]
    t0 = time.perf_counter()
    for r in sample:
        client.get_metric_history(r, key)
    out["client.get_metric_history per run (scaled from 100 runs)"] = (
        (time.perf_counter() - t0) * len(ids) / len(sample))
    if isinstance(store, RestStore):
        timed("REST ajax get-history-bulk, 1 request in flight",
              lambda: [histories._get_json(store, histories.AJAX_BULK_ENDPOINT,
                                           {"run_id": ids[i:i + 100], "metric_key": key,
                                            "max_results": 25000}) for i in range(0, len(ids), 100)])
        timed("REST ajax get-history-bulk, 4 in flight (used)",
              lambda: histories.fetch_ajax_bulk(store, client, ids, [key], 21))
        timed("REST get-history-bulk-interval, 4 in flight",
              lambda: histories.fetch_bulk_interval(store, client, ids, [key]))
    else:
        timed("column query on the store's SqlMetric model (used)",
              lambda: histories.fetch_sql_columns(store, ids, [key]))
        timed("store.get_metric_history_bulk (fallback)", lambda: histories.fetch_sql_bulk(store, ids, [key]))
        timed("store.get_metric_history_bulk_interval",
              lambda: store.get_metric_history_bulk_interval(ids, key, 2500, None, None))
    return {"n_runs": len(ids), "metric": key, "seconds": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="trial runs to create (default 1000)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per run; steps = epochs+1 (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="warm timings per store (default 5)")
    parser.add_argument("--no-server", action="store_true", help="time the SQLite store only")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the alternative fetch strategies (default on)")
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

        result["sqlite"] = time_load(uri, args.repeats, rows)
        if args.compare:
            result["sqlite"]["fetch_one_metric"] = compare_fetches(uri)
        if not args.no_server:
            proc, url = start_mlflow_server(uri, root / "server")
            try:
                warm = warm_up_server(url)
                result["server"] = time_load(url, args.repeats, rows)
                result["server"]["server_warm_up_s"] = warm
                if args.compare:
                    result["server"]["fetch_one_metric"] = compare_fetches(url)
            finally:
                stop_mlflow_server(proc)

    for backend in ("sqlite", "server"):
        if backend not in result:
            continue
        r = result[backend]
        print(f"{backend:6s} load_runs ({r['rows']} rows, {r['strategy']}): cold {r['cold_s']:.2f} s, "
              f"warm median {r['warm_median_s']:.2f} s over {args.repeats}")
        if "server_warm_up_s" in r:
            print(f"         (before timing: the fresh server's first requests took {r['server_warm_up_s']:.1f} s)")
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in r["warm_median_phases_s"].items())
        print(f"         warm median phases: {phases}")
        for name, sec in r.get("fetch_one_metric", {}).get("seconds", {}).items():
            print(f"         fetch train_acc of all runs via {name}: {sec:.2f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
