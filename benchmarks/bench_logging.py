"""What MLflow costs the sweep per trial: the driver's exact calls, against SQLite and a real ``mlflow server``.

Per trial the sweep's driver (pipeline/sweep.py with pipeline/tracker.py ``Tracker``) does:

1. ``create_run``: ``MlflowClient.create_run`` with the trial's tags, where it runs included (a one-node
   cluster, as the sweep's own local Ray; after its task is submitted);
2. ``log_batch``: one ``log_batch`` of every epoch (21 epochs x 3 metrics) with the params and no tags (a default
   trial takes well under the 2 s flush interval, so its epochs go in one batch, its last);
3. ``rival_runs``: the search for other sweeps' runs (the check before FINISHED). The sweep holds the trials that
   end within ``--flush-seconds`` (2 s) of each other for one search, so it is timed once per
   ``trials_per_search`` trials and its time shared among them: ``finish_search`` is that share;
4. ``end_run``: ``set_terminated`` FINISHED.

(The claims' rival search reuses the last one while it is under 5 s old; with trials ending every second or so it
never searches itself.) ``trials_per_search`` is what the sweep's default grid gives: ``workers x flush-seconds /
trial seconds``, rounded down (the trials that end while the first one waits; the first one itself not counted),
from the ``trial`` section's default-trial time in ``python -m benchmarks.run_all``; 6 by default here.

Those calls, through the same ``Tracker`` methods, are timed here for ``--trials`` trials of the default grid in
a fresh experiment (so the searches see a store that grows as in a real sweep), against a fresh SQLite store and
against ``mlflow server --host 127.0.0.1`` on another fresh SQLite store (started by tests/topology.py's
``mlflow_server``). Reports the median and mean ms per trial and per call.

    python -m benchmarks.bench_logging [--trials 160] [--no-server] [--json PATH]

(It starts a server: run it in a loopback-only network namespace.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EXPERIMENT = "bench-logging"
SUPPRESS_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
CALLS = ("create_run", "log_batch", "finish_search", "end_run")
#: ``trials_per_search`` without a measured trial time: 2 workers x 2 s / 0.63 s (a default float64 trial here).
DEFAULT_TRIALS_PER_SEARCH = 6


def trials_per_search(trial_seconds: float, workers: int = 2) -> int:
    """How many trials of the sweep share one exactly-once search: those that end while the first waits
    ``--flush-seconds`` (at least one)."""
    from pipeline.sweep import DEFAULT_FLUSH_SECONDS

    return max(1, int(workers * DEFAULT_FLUSH_SECONDS / trial_seconds))


def epoch_records(epochs: int, rng_seed: int = 0) -> list[tuple[int, dict[str, float], int]]:
    """``(epoch, metrics, timestamp ms)`` for epochs 0..epochs, as the Ray task streams them."""
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    now = int(time.time() * 1000)
    return [(e, {"train_acc": float(rng.random()), "train_loss": float(rng.random() * 2),
                 "test_acc": float(rng.random())}, now + 25 * e) for e in range(epochs + 1)]


def run_tags(sweep_id: str, driver: str) -> dict[str, str]:
    """The tags a trial run is created with, shaped as the sweep's on its own one-node Ray (where it runs included)."""
    import numpy as np

    return {"run_kind": "trial", "sweep_id": sweep_id, "dataset": "fashion-mnist", "dataset_sha256": "0" * 64,
            "code_version": "bench", "driver": driver,
            "ray_node": uuid.uuid4().hex * 2, "ray_node_ip": "127.0.0.1", "numpy_version": np.__version__}


def time_tracker(uri: str, grid: list[dict], *, warmup: int = 3, experiment: str = EXPERIMENT,
                 per_search: int = DEFAULT_TRIALS_PER_SEARCH) -> dict:
    """Time the sweep's per-trial MLflow calls for every trial of ``grid`` against ``uri``, the trials in groups of
    ``per_search`` that share one search before their FINISHED, as in the sweep.

    The store is set up (schema, experiment) and ``warmup`` throw-away trials run before timing starts.
    """
    import numpy as np

    from pipeline import tracker as tracking
    from pipeline.trials import params_of, run_name, trial_key

    tracker = tracking.Tracker(uri, retry_seconds=30)
    exp_id = tracker.ensure_experiment(experiment)
    sweep_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    driver = tracking.driver_identity()
    tags = run_tags(sweep_id, driver)

    from pipeline.sweep import RIVAL_CLOCK_MARGIN_MS

    since_ms = int(time.time() * 1000) - RIVAL_CLOCK_MARGIN_MS  # as the sweep searches, from its planning time

    def some_trials(configs: list[dict]) -> list[dict[str, float]]:
        times: list[dict[str, float]] = [{} for _ in configs]
        mine = []
        for config, own in zip(configs, times, strict=True):
            key = trial_key(config)
            t = time.perf_counter()
            run_id, start_time = tracker.create_run(
                exp_id, run_name(config), dict(tags, trial_key=key, heartbeat=f"{time.time():.0f}"))
            own["create_run"] = time.perf_counter() - t
            t = time.perf_counter()
            tracker.log_batch(run_id, epoch_records(config["epochs"]), {}, params_of(config))
            own["log_batch"] = time.perf_counter() - t
            mine.append(tracking.RunInfo(run_id, key, "RUNNING", start_time, sweep_id, driver, time.time()))
        t = time.perf_counter()
        rivals = tracker.rival_runs(exp_id, sweep_id, since_ms)
        search_s = time.perf_counter() - t
        for run, own in zip(mine, times, strict=True):
            t = time.perf_counter()
            if tracking.winner(run, [r for r in rivals if r.trial_key == run.trial_key], 900) is not None:
                raise RuntimeError("benchmark claim lost: the store is not fresh")
            tracker.end_run(run.run_id, "FINISHED")
            own["end_run"] = time.perf_counter() - t
            own["finish_search"] = search_s / len(configs)
            own["total"] = sum(own.values())
        return times

    some_trials([dict(grid[0], seed=10_000 + i) for i in range(warmup)])  # distinct keys: never rivals of timed ones
    per_trial = [times for start in range(0, len(grid), per_search)
                 for times in some_trials(grid[start:start + per_search])]
    totals_ms = [p["total"] * 1000 for p in per_trial]
    return {
        "uri_kind": "server" if uri.startswith("http") else "sqlite",
        "trials": len(per_trial),
        "trials_per_search": per_search,
        "ms_per_trial_median": statistics.median(totals_ms),
        "ms_per_trial_mean": statistics.fmean(totals_ms),
        "ms_per_trial_p90": float(np.percentile(totals_ms, 90)),
        "ms_per_call_median": {c: statistics.median(p[c] * 1000 for p in per_trial) for c in CALLS},
    }


def time_floor(uri: str, grid: list[dict], *, warmup: int = 3, experiment: str = EXPERIMENT + "-floor") -> dict:
    """What any tracker must pay MLflow to record one trial run: the fewest calls a run with these data takes,
    made with a bare ``MlflowClient`` (no retry wrapper, no claim search): ``create_run`` with the trial's tags
    (where it runs included), one ``log_batch`` of every epoch with the params, ``set_terminated``.

    The sweep's cost above this floor is its exactly-once search; the floor itself is MLflow's (its SQL store
    writes each metric value as an ORM row, about 0.2 ms apiece here: 63 per default trial).
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from pipeline.trials import params_of, run_name, trial_key

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(f"{experiment}-{uuid.uuid4().hex[:6]}")
    tags = run_tags("floor", "host:1:2")

    def one_trial(config: dict) -> float:
        start = time.perf_counter()
        run = client.create_run(exp_id, start_time=int(time.time() * 1000), run_name=run_name(config),
                                tags=dict(tags, trial_key=trial_key(config),
                                          heartbeat=f"{time.time():.0f}"))
        run_id = run.info.run_id
        client.log_batch(run_id,
                         metrics=[Metric(k, float(v), ts, e) for e, values, ts in epoch_records(config["epochs"])
                                  for k, v in values.items()],
                         params=[Param(k, v) for k, v in params_of(config).items()])
        client.set_terminated(run_id, "FINISHED")
        return time.perf_counter() - start

    for i in range(warmup):
        one_trial(dict(grid[0], seed=10_000 + i))
    totals_ms = [one_trial(config) * 1000 for config in grid]
    return {"calls": ["create_run", "log_batch", "set_terminated"], "trials": len(totals_ms),
            "ms_per_trial_median": statistics.median(totals_ms), "ms_per_trial_mean": statistics.fmean(totals_ms)}


def bench_logging(grid: list[dict], *, server: bool = True, suppressed_url_variant: bool = True,
                  per_search: int = DEFAULT_TRIALS_PER_SEARCH) -> dict:
    """``{"sqlite": ..., "server": ...}``: :func:`time_tracker` against each store, both fresh.

    Against a server, MLflow's ``set_terminated`` also fetches the run again (``GET runs/get``) to print
    "View run ... at: URL" to stdout, unless ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` is true; the sweep
    does not set it, so ``server`` includes that cost (the prints are captured here, and counted).
    With ``suppressed_url_variant`` the server is timed a second time with the variable set
    (``server_url_suppressed``), on a fresh experiment of the same store.
    """
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bns-bench-log-") as tmp:
        out["sqlite"] = time_tracker(f"sqlite:///{Path(tmp) / 'direct.db'}", grid, per_search=per_search)
        out["sqlite"]["floor"] = time_floor(f"sqlite:///{Path(tmp) / 'direct.db'}", grid)
        if server:
            from tests.topology import mlflow_server

            with mlflow_server(f"sqlite:///{Path(tmp) / 'server.db'}") as srv:
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    out["server"] = time_tracker(srv.url, grid, per_search=per_search)
                out["server"]["stdout_lines_printed_by_mlflow"] = len(printed.getvalue().splitlines())
                with contextlib.redirect_stdout(io.StringIO()):
                    out["server"]["floor"] = time_floor(srv.url, grid)
                if suppressed_url_variant:
                    previous = os.environ.get(SUPPRESS_URL_ENV)
                    os.environ[SUPPRESS_URL_ENV] = "true"
                    try:
                        printed = io.StringIO()
                        with contextlib.redirect_stdout(printed):
                            out["server_url_suppressed"] = time_tracker(
                                srv.url, grid, experiment=EXPERIMENT + "-suppressed", per_search=per_search)
                        out["server_url_suppressed"]["stdout_lines_printed_by_mlflow"] = len(
                            printed.getvalue().splitlines())
                    finally:
                        if previous is None:
                            os.environ.pop(SUPPRESS_URL_ENV, None)
                        else:
                            os.environ[SUPPRESS_URL_ENV] = previous
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_sweep import grid_args, sweep_grid

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid-seeds", type=int, default=5, help="trials of the default grid with these seeds")
    parser.add_argument("--no-server", action="store_true", help="SQLite only")
    parser.add_argument("--trials-per-search", type=int, default=DEFAULT_TRIALS_PER_SEARCH,
                        help="trials sharing one exactly-once search (workers x flush seconds / trial seconds)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.grid_seeds < 1 or args.trials_per_search < 1:
        parser.exit(2, "bench_logging: error: --grid-seeds and --trials-per-search must be >= 1\n")
    _, _, grid = sweep_grid(grid_args(args.grid_seeds))
    result = bench_logging(grid, server=not args.no_server, per_search=args.trials_per_search)
    for kind, r in result.items():
        calls = ", ".join(f"{c} {v:.1f}" for c, v in r["ms_per_call_median"].items())
        floor = f"; MLflow's floor for one run {r['floor']['ms_per_trial_median']:.1f} ms" if "floor" in r else ""
        print(f"{kind:6s}: {r['ms_per_trial_median']:.1f} ms/trial median ({r['ms_per_trial_mean']:.1f} mean) "
              f"over {r['trials']} trials; per call ms: {calls}{floor}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
