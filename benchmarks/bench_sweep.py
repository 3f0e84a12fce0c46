"""End-to-end wall time of ``python -m pipeline.sweep`` against the ideal, and the grid every peer runs.

The ideal for ``W`` workers is ``sum(compute time of every trial) / W``: the compute time of each trial is
measured by training the very same trials in this process, one after the other, with one BLAS thread (what a
Ray task gets), on the data exactly as the sweep hands it to its tasks. The efficiency is ``ideal / wall``:

- ``wall_s``: the sweep process's wall time measured from outside (``Popen`` to exit): Python start-up and
  imports, Ray start-up, data loading, every trial, MLflow, shut-down;
- ``sweep_total_s`` / ``ray_ready_s``: what the sweep itself prints ("done in X s (Ray and data ready after
  Y s; ...)"), so Ray start-up is also shown separately and excluded in ``efficiency_excl_startup``;
- ``trials_compute_s``: what it prints as the trials' own compute time, summed over the tasks ("trials computed
  Z s"). Against the compute measured in this process it shows how much slower a trial computes beside the
  others (two trials on two cores share caches and memory bandwidth; the driver and Ray's daemons take turns),
  and ``orchestration_efficiency`` = ``Z / workers / (X - Y)`` how busy the workers were once Ray was up;
- ``mlflow_s`` / ``mlflow_ms_per_trial``: what it prints as the time its driver spent in MLflow calls once trials
  ran ("MLflow calls took ..."): wall time with the CPUs shared with the workers, so above ``bench_logging``'s.

While the sweep runs, the RSS of its process tree is sampled (driver, Ray workers, Ray's own daemons).
Afterwards the runs are read back from MLflow: all must be FINISHED, and their start/end times give how long
the trials were in flight.

    python -m benchmarks.bench_sweep [--grid-seeds 5] [--workers 2] [--json PATH]

(It starts Ray: run it in a loopback-only network namespace.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
EXPERIMENT = "bench-sweep"
#: Environment of every Ray-starting subprocess of the benchmarks.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "PYTHONUNBUFFERED": "1",
}
_DONE_RE = re.compile(r"done in (?P<total>[0-9.]+) s \(Ray and data ready after (?P<ready>[0-9.]+) s; trials computed "
                      r"(?P<computed>[0-9.]+) s on (?P<workers>\d+) workers, (?P<cpu>[0-9.]+) CPU-s\): "
                      r"(?P<ran>\d+) run")
_MLFLOW_RE = re.compile(r"MLflow calls took (?P<s>[0-9.]+) s of the driver \((?P<ms>[0-9.]+) ms per trial\)")


# ------------------------------------------------------------------------------------------------ the grid


def grid_args(seeds: int, *, weight_scales: str | None = None, epochs: int | None = None,
              train_size: int | None = None, test_size: int | None = None, dataset: str = "fashion-mnist",
              data_dir: str | None = None) -> list[str]:
    """The ``pipeline.sweep`` options of a benchmark grid: the default grid (16 scales x both arms) with
    seeds ``0..seeds-1``; the other options only to shrink it for smoke tests."""
    out = ["--dataset", dataset, "--batchnorm", "both", "--seeds", f"0-{seeds - 1}"]
    if data_dir:
        out += ["--data-dir", data_dir]
    if weight_scales:
        out += ["--weight-scales", weight_scales]
    for flag, value in (("--epochs", epochs), ("--train-size", train_size), ("--test-size", test_size)):
        if value is not None:
            out += [flag, str(value)]
    return out


def with_next_seed(args: list[str]) -> list[str]:
    """The same ``pipeline.sweep`` options with one more seed (``--seeds 0-N`` -> ``--seeds 0-(N+1)``): a user coming
    back to a store to add a seed."""
    i = args.index("--seeds") + 1
    first, _, last = args[i].partition("-")
    return [*args[:i], f"{first}-{int(last or first) + 1}", *args[i + 1:]]


def sweep_grid(args: list[str]) -> tuple[argparse.Namespace, dict, list[dict]]:
    """``(parsed sweep args, trial base, trial configs)`` exactly as ``python -m pipeline.sweep ARGS`` plans."""
    from pipeline.sweep import build_parser, trial_grid

    ns = build_parser().parse_args(args)
    return ns, *trial_grid(ns)


def sweep_data(ns: argparse.Namespace, base: dict) -> tuple:
    """``(x_train, t_train, x_test, t_test)`` exactly as the sweep puts them into Ray's object store."""
    from pipeline.sweep import trial_data

    return trial_data(ns, base)[0]


def trial_compute_time(config: dict, data: tuple) -> float:
    """Seconds one trial computes, as the Ray task does it: one BLAS thread, stopped at divergence."""
    return trial_compute_wall_cpu(config, data)[0]


def trial_compute_wall_cpu(config: dict, data: tuple) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one trial computed as the Ray task does it (one BLAS thread,
    stopped at divergence, with its malloc settings). With one thread the CPU time is the compute time other
    processes cannot inflate."""
    from model.trial import iter_trial
    from pipeline.malloc import keep_freed_memory

    keep_freed_memory()
    wall, cpu = time.perf_counter(), time.process_time()
    with threadpool_limits(limits=1):
        for _, record in iter_trial(config, *data):
            if not math.isfinite(record["train_loss"]):
                break
    return time.perf_counter() - wall, time.process_time() - cpu


def compute_times(grid: list[dict], data: tuple) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of every trial of ``grid``, run one after the other in this process."""
    trial_compute_wall_cpu(grid[0], data)  # warm-up: first-call costs are not a trial's
    both = [trial_compute_wall_cpu(config, data) for config in grid]
    return [w for w, _ in both], [c for _, c in both]


# ------------------------------------------------------------------------------------------- process trees


#: Ray's per-node agents (Ray 2.60) also take a ``ray::`` process title, but are daemons, not workers.
RAY_AGENT_TITLES = frozenset({"ray::DashboardAgent", "ray::RuntimeEnvAgent"})


def is_ray_worker(title: str) -> bool:
    """Whether a process title is a Ray worker's: ``ray::IDLE``, ``ray::train_trial``, ``ray::ImplicitFunc``...,
    but not one of Ray's agents."""
    return title.startswith("ray::") and title not in RAY_AGENT_TITLES


class TreeSampler:
    """Samples the RSS of a process and all its descendants every ``interval`` seconds (in a thread).

    Ray workers are the processes :func:`is_ray_worker` says are; everything else below the root (``others``) is
    Ray's own daemons (GCS, raylet, agents) or, for a process pool, its workers.
    Peaks are in MB (10^6 bytes).
    """

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid = pid
        self.interval = interval
        self.peak = {"driver_mb": 0.0, "worker_mb": 0.0, "workers_total_mb": 0.0, "others_total_mb": 0.0,
                     "tree_total_mb": 0.0}
        self.max_workers = 0
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds at its last sample)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        driver = workers_total = others = 0.0
        worker_max = 0.0
        n_workers = 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss / 1e6
                title = " ".join(proc.cmdline()[:1])
                cpu = proc.cpu_times()
            except psutil.Error:
                continue
            if proc.pid == self.pid:
                driver = rss
                kind = "driver"
            elif is_ray_worker(title) or self._cpu.get(proc.pid, ("",))[0] == "workers":
                # (once a worker, always: an exiting worker's title is gone by the last samples)
                workers_total += rss
                worker_max = max(worker_max, rss)
                n_workers += 1
                kind = "workers"
            else:
                others += rss
                kind = "others"
            self._cpu[proc.pid] = (kind, cpu.user + cpu.system)
        for key, value in (("driver_mb", driver), ("worker_mb", worker_max), ("workers_total_mb", workers_total),
                           ("others_total_mb", others), ("tree_total_mb", driver + workers_total + others)):
            self.peak[key] = max(self.peak[key], value)
        self.max_workers = max(self.max_workers, n_workers)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def result(self) -> dict:
        """Peak RSS per kind, and CPU seconds per kind (each process as of its last sample, so a process
        that lived less than one interval is missed and the last interval of each is not counted)."""
        cpu = {"driver": 0.0, "workers": 0.0, "others": 0.0}
        for kind, seconds in self._cpu.values():
            cpu[kind] += seconds
        return {**{k: round(v, 1) for k, v in self.peak.items()}, "max_worker_processes": self.max_workers,
                "cpu_s": {k: round(v, 1) for k, v in cpu.items()}, "interval_s": self.interval}


def proc_stat_ticks() -> list[int]:
    """The machine's CPU ticks since boot, all CPUs together, as ``/proc/stat``'s first line gives them (user, nice,
    system, idle, iowait, irq, softirq, steal); an empty list where there is none."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return []


def machine_cpu_seconds() -> dict[str, float]:
    """CPU seconds of all the machine's CPUs since boot, by what they did: ``busy`` (user, nice, system, irq,
    softirq), ``idle`` (idle, iowait) and ``steal`` (given by the hypervisor to other guests); zeros without
    ``/proc/stat``."""
    ticks = proc_stat_ticks() + [0] * 8
    hz = os.sysconf("SC_CLK_TCK")
    return {"busy": (sum(ticks[0:3]) + ticks[5] + ticks[6]) / hz, "idle": (ticks[3] + ticks[4]) / hz,
            "steal": ticks[7] / hz}


def run_timed(cmd: list[str], *, cwd: Path, env: dict, log_path: Path, timeout: float = 3600,
              sample_memory: bool = True) -> dict:
    """Run ``cmd``; returns ``{"wall_s", "returncode", "output", "memory", "machine_cpu_s"}`` (output: stdout+stderr
    text; ``machine_cpu_s``: :func:`machine_cpu_seconds` spent by the whole machine meanwhile, and its ``cpus``)."""
    with open(log_path, "w") as log:
        machine_before = machine_cpu_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid) if sample_memory else None
        try:
            if sampler:
                sampler.__enter__()
            proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
        wall = time.perf_counter() - t0
        machine = {k: v - machine_before[k] for k, v in machine_cpu_seconds().items()}
    output = log_path.read_text(errors="replace")
    return {"wall_s": wall, "returncode": proc.returncode, "output": output,
            "memory": sampler.result() if sampler else None, "machine_cpu_s": {**machine, "cpus": os.cpu_count()}}


def bench_env(**extra: str) -> dict[str, str]:
    """This process's environment for a benchmark subprocess: the repo importable, quiet, no stray URIs."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(QUIET_ENV)
    env.update(extra)
    return env


def tail(text: str, lines: int = 8) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------ the sweep


def read_runs(uri: str, experiment: str) -> dict:
    """Statuses of the trial runs and how long they were in flight (start to end, from MLflow)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], "tags.run_kind = 'trial'", ViewType.ACTIVE_ONLY, max_results=50000)
    statuses: dict[str, int] = {}
    durations = []
    finish_ms = []  # the worker's timestamp of the last epoch -> the run's end_time: the driver's finishing
    reasons = []
    for r in runs:
        statuses[r.info.status] = statuses.get(r.info.status, 0) + 1
        if r.info.status == "FAILED":
            reasons.append(r.data.tags.get("failure_reason", ""))
        if r.info.end_time and r.info.start_time:
            durations.append((r.info.end_time - r.info.start_time) / 1000)
            last = max((m.timestamp for m in r.data._metric_objs), default=None)
            if last is not None:
                finish_ms.append(r.info.end_time - last)
    first = min((r.info.start_time for r in runs), default=0)
    last = max((r.info.end_time or 0 for r in runs), default=0)
    return {"runs": len(runs), "statuses": statuses, "failure_reasons": reasons, "in_flight_sum_s": sum(durations),
            "in_flight_median_s": statistics.median(durations) if durations else None,
            "last_epoch_to_end_median_ms": statistics.median(finish_ms) if finish_ms else None,
            "first_start_to_last_end_s": (last - first) / 1000 if runs else None}


def run_sweep(sweep_args: list[str], workers: int, tmp: Path, *, timeout: float = 3600,
              cmd_prefix: list[str] | None = None) -> dict:
    """Run ``python -m pipeline.sweep SWEEP_ARGS --workers W`` into a fresh SQLite store under ``tmp``.

    ``cmd_prefix`` replaces ``[python, -m, pipeline.sweep]`` (e.g. a wrapper that counts ``ray.put`` calls).
    Raises RuntimeError when the sweep fails or does not report its total.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cmd = [*(cmd_prefix or [sys.executable, "-m", "pipeline.sweep"]), *sweep_args, "--workers", str(workers),
           "--tracking-uri", uri, "--experiment", EXPERIMENT]
    res = run_timed(cmd, cwd=tmp, env=bench_env(), log_path=tmp / "sweep.log", timeout=timeout)
    match = _DONE_RE.search(res["output"])
    # Exit 1 with a summary is a sweep that ran everything but had FAILED trials: in the default grid the
    # plain nets with the largest weight scales diverge, which is a result (FAILED "diverged"), not an error.
    if not match or res["returncode"] not in (0, 1):
        raise RuntimeError(f"sweep failed (exit {res['returncode']}): {tail(res['output'])}")
    runs = read_runs(uri, EXPERIMENT)
    if any(not reason.startswith("diverged") for reason in runs["failure_reasons"]):
        raise RuntimeError(f"sweep had failures other than divergence: {runs['failure_reasons'][:5]}")
    total, ready, computed = (float(match[k]) for k in ("total", "ready", "computed"))
    mlflow = _MLFLOW_RE.search(res["output"])
    if not mlflow:
        raise RuntimeError(f"the sweep did not report its MLflow time: {tail(res['output'])}")
    return {"wall_s": res["wall_s"], "sweep_total_s": total, "ray_ready_s": ready, "trials_run": int(match["ran"]),
            "trials_compute_s": computed, "trials_cpu_s": float(match["cpu"]),
            "mlflow_s": float(mlflow["s"]), "mlflow_ms_per_trial": float(mlflow["ms"]),
            "orchestration_efficiency": computed / int(match["workers"]) / (total - ready),
            "returncode": res["returncode"], "memory": res["memory"], "machine_cpu_s": res["machine_cpu_s"],
            "mlflow": runs,
            "output_tail": tail(res["output"], 3)}


#: A process that starts Ray as the sweep does, runs one trivial task per worker and shuts Ray down.
_RAY_FIXED_CODE = """
import json, sys, time
t0 = time.perf_counter()
from pipeline import cluster
import ray
t1 = time.perf_counter()
cpus = cluster.connect(None, int(sys.argv[1]))
t2 = time.perf_counter()
ray.get([ray.remote(num_cpus=1)(lambda: 1).remote() for _ in range(cpus)])
t3 = time.perf_counter()
cluster.disconnect()
t4 = time.perf_counter()
print("RAY_FIXED " + json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "first_tasks_s": t3 - t2,
                                 "shutdown_s": t4 - t3}), flush=True)
"""


def run_ray_fixed(workers: int, tmp: Path) -> dict:
    """What Ray costs a sweep whatever its trials: a process that imports Ray, starts it exactly as the sweep
    does (``pipeline.cluster.connect``), runs one trivial task per worker and shuts it down, timed from outside
    like the sweep (``wall_s``), with its phases measured inside."""
    tmp.mkdir(parents=True, exist_ok=True)
    res = run_timed([sys.executable, "-c", _RAY_FIXED_CODE, str(workers)], cwd=tmp, env=bench_env(),
                    log_path=tmp / "ray_fixed.log", timeout=300, sample_memory=False)
    inside = [json.loads(line.split(" ", 1)[1]) for line in res["output"].splitlines() if line.startswith("RAY_FIXED ")]
    if res["returncode"] != 0 or not inside:
        raise RuntimeError(f"bare Ray start/stop failed (exit {res['returncode']}): {tail(res['output'])}")
    return {"wall_s": res["wall_s"], **inside[0]}


def efficiency(run: dict, ideal_s: float) -> dict:
    """Efficiency figures of one sweep run against the ideal."""
    return {
        "efficiency": ideal_s / run["wall_s"],
        "efficiency_sweep_total": ideal_s / run["sweep_total_s"],
        "efficiency_excl_startup": ideal_s / (run["sweep_total_s"] - run["ray_ready_s"]),
        "outside_overhead_s": run["wall_s"] - run["sweep_total_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid-seeds", type=int, default=5, help="seeds 0..N-1 (default 5: 160 trials)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=1, help="sweep runs (default 1)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.grid_seeds < 1 or args.workers < 1 or args.reps < 1:
        parser.exit(2, "bench_sweep: error: --grid-seeds, --workers and --reps must be >= 1\n")
    sargs = grid_args(args.grid_seeds)
    ns, base, grid = sweep_grid(sargs)
    data = sweep_data(ns, base)
    times, _ = compute_times(grid, data)
    ideal = sum(times) / args.workers
    print(f"{len(grid)} trials: compute {sum(times):.1f} s in one process, ideal with {args.workers} workers "
          f"{ideal:.1f} s", file=sys.stderr)
    runs = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="bns-bench-sweep-") as tmp:
            run = run_sweep(sargs, args.workers, Path(tmp) / f"rep{rep}")
        run.update(efficiency(run, ideal))
        runs.append(run)
        print(f"sweep: {run['wall_s']:.1f} s wall (Ray ready after {run['ray_ready_s']:.1f} s), "
              f"efficiency {run['efficiency']:.2f}", file=sys.stderr)
    result = {"trials": len(grid), "workers": args.workers, "compute_sum_s": sum(times), "ideal_s": ideal,
              "compute_times_s": times, "runs": runs,
              "efficiency_median": statistics.median(r["efficiency"] for r in runs)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("compute_times_s", "runs")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
