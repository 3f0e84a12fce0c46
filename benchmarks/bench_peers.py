"""The peers of ``python -m pipeline.sweep``, on the same grid, the same model and the same data.

- **Ray Tune**: ``tune.Tuner`` with ``tune.grid_search`` over weight_scale x use_batchnorm x seed; the trainable
  trains with ``model.trial.iter_trial`` (one BLAS thread, stops at divergence, as our Ray task) and reports every
  epoch with ``tune.report``; the data goes into the object store once with ``tune.with_parameters``; an
  ``MLflowLoggerCallback`` logs into its own SQLite store; ``storage_path`` is a temp folder. Run with Tune's
  defaults and with ``reuse_actors=True`` (and, optionally, without the callback).
- **Process pool**: ``concurrent.futures.ProcessPoolExecutor(W)`` running the same trials, no Ray, no MLflow
  (the data is handed to each worker process once, by its initializer).

Each peer runs in its own Python process, timed from outside like the sweep, so every wall time includes
interpreter start-up, imports, data loading and (for Tune) Ray start-up. The child prints one JSON line
(``PEER_RESULT {...}``) with its inside timings.

    python -m benchmarks.bench_peers --grid-seeds 5 --storage DIR --mlflow-uri URI [--reuse-actors] tune
    python -m benchmarks.bench_peers --grid-seeds 5 [--workers 2] pool

(Tune starts Ray: run it in a loopback-only network namespace.)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from benchmarks.bench_sweep import bench_env, grid_args, run_timed, sweep_data, sweep_grid, tail

RESULT_PREFIX = "PEER_RESULT "
TUNE_EXPERIMENT = "bench-tune"


# ------------------------------------------------------------------------------------------------ Ray Tune


def tune_trainable(config: dict, data: tuple) -> None:
    """One trial as a Tune function trainable: the same training as ``pipeline.tasks.train_trial``, with the same
    malloc settings (``pipeline.malloc``)."""
    from ray import tune
    from threadpoolctl import threadpool_limits

    from model.trial import iter_trial
    from pipeline.malloc import keep_freed_memory

    keep_freed_memory()
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        for epoch, record in iter_trial(config, *data):
            tune.report({"epoch": epoch, **record, "compute_s": time.perf_counter() - start})
            if not math.isfinite(record["train_loss"]):
                break


def run_tune(sweep_args: list[str], *, workers: int, storage: Path, mlflow_uri: str | None,
             reuse_actors: bool) -> dict:
    """Run the grid through Ray Tune in this process; returns inside timings and trial counts."""
    started = time.perf_counter()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import tune

    ns, base, grid = sweep_grid(sweep_args)
    data = sweep_data(ns, base)
    scales = sorted({c["weight_scale"] for c in grid}, reverse=True)
    arms = sorted({c["use_batchnorm"] for c in grid}, reverse=True)
    seeds = sorted({c["seed"] for c in grid})
    imported = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level=logging.WARNING)
    ray_ready = time.perf_counter()
    callbacks = []
    if mlflow_uri:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri, experiment_name=TUNE_EXPERIMENT,
                                              save_artifact=False))
    param_space = {**base, "weight_scale": tune.grid_search(scales), "use_batchnorm": tune.grid_search(arms),
                   "seed": tune.grid_search(seeds)}
    tuner = tune.Tuner(
        tune.with_parameters(tune_trainable, data=data),
        param_space=param_space,
        tune_config=tune.TuneConfig(reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name="bench", storage_path=str(storage), callbacks=callbacks),
    )
    results = tuner.fit()
    fitted = time.perf_counter()
    errors = sum(1 for r in results if r.error is not None)
    ray.shutdown()
    return {"trials": len(results), "grid": len(grid), "errors": errors,
            "setup_s": imported - started, "ray_init_s": ray_ready - imported, "fit_s": fitted - ray_ready,
            "inside_total_s": time.perf_counter() - started}


# ------------------------------------------------------------------------------------------- process pool

_POOL_DATA: tuple | None = None


def _pool_init(data: tuple) -> None:
    global _POOL_DATA
    _POOL_DATA = data


def _pool_trial(config: dict) -> float:
    from benchmarks.bench_sweep import trial_compute_time

    return trial_compute_time(config, _POOL_DATA)


def run_pool(sweep_args: list[str], *, workers: int) -> dict:
    """Run the grid on a ``ProcessPoolExecutor(workers)`` in this process; returns inside timings."""
    from concurrent.futures import ProcessPoolExecutor

    started = time.perf_counter()
    ns, base, grid = sweep_grid(sweep_args)
    data = sweep_data(ns, base)
    loaded = time.perf_counter()
    with ProcessPoolExecutor(workers, initializer=_pool_init, initargs=(data,)) as pool:
        seconds = list(pool.map(_pool_trial, grid))
    done = time.perf_counter()
    return {"trials": len(seconds), "grid": len(grid), "errors": 0, "setup_s": loaded - started,
            "pool_s": done - loaded, "compute_sum_s": sum(seconds), "inside_total_s": done - started}


# ------------------------------------------------------------------------------------------ from outside


def run_peer(kind: str, sweep_args: list[str], tmp: Path, *, workers: int = 2, reuse_actors: bool = False,
             mlflow: bool = True, timeout: float = 7200) -> dict:
    """Run one peer in a subprocess (``kind`` = ``tune`` or ``pool``); returns its outside wall time, inside
    timings and peak memory. Raises RuntimeError if it fails or did not run the whole grid."""
    tmp.mkdir(parents=True, exist_ok=True)
    opts = ["--workers", str(workers)]
    if kind == "tune":
        opts += ["--storage", str(tmp / "tune")] + (["--reuse-actors"] if reuse_actors else []) + (
            ["--mlflow-uri", f"sqlite:///{tmp / 'tune-mlflow.db'}"] if mlflow else [])
    cmd = [sys.executable, "-m", "benchmarks.bench_peers", *opts, kind, "--", *sweep_args]
    res = run_timed(cmd, cwd=tmp, env=bench_env(), log_path=tmp / f"{kind}.log", timeout=timeout)
    inside = None
    for line in res["output"].splitlines():
        if line.startswith(RESULT_PREFIX):
            inside = json.loads(line[len(RESULT_PREFIX):])
    if res["returncode"] != 0 or inside is None:
        raise RuntimeError(f"{kind} failed (exit {res['returncode']}): {tail(res['output'])}")
    if inside["trials"] != inside["grid"] or inside["errors"]:
        raise RuntimeError(f"{kind} ran {inside['trials']} of {inside['grid']} trials, {inside['errors']} errors")
    return {"wall_s": res["wall_s"], **inside, "memory": res["memory"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Options after -- are pipeline.sweep grid options (default: the "
                                            "default grid on fashion-mnist with --grid-seeds seeds).")
    parser.add_argument("kind", choices=["tune", "pool"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--grid-seeds", type=int, default=5)
    parser.add_argument("--storage", type=Path, help="Tune's storage_path (required for tune)")
    parser.add_argument("--mlflow-uri", help="MLflowLoggerCallback tracking URI (none: no callback)")
    parser.add_argument("--reuse-actors", action="store_true")
    parser.add_argument("sweep_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    sweep_args = [a for a in args.sweep_args if a != "--"] or grid_args(args.grid_seeds)
    if args.workers < 1:
        parser.exit(2, "bench_peers: error: --workers must be >= 1\n")
    if args.kind == "tune":
        if args.storage is None:
            parser.exit(2, "bench_peers: error: tune needs --storage DIR\n")
        result = run_tune(sweep_args, workers=args.workers, storage=args.storage, mlflow_uri=args.mlflow_uri,
                          reuse_actors=args.reuse_actors)
    else:
        result = run_pool(sweep_args, workers=args.workers)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
