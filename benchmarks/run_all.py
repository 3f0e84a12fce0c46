"""The benchmark suite (issue 6): one command, a table of every number against its target, and a JSON file.

    tests/loopback-only python -m benchmarks.run_all [--quick] [--json PATH]

Sections (``--only`` picks some; see benchmarks/README.md for what each number means):

- ``trial``     one default trial, plain/batchnorm x float64/float32: median time, and the fraction of its
                matrix-product limit (FLOPs counted from the config, rates measured here on its shapes);
- ``logging``   the sweep driver's MLflow calls per trial, SQLite and ``mlflow server``: ms and % of a trial;
- ``analysis``  ``analysis.load_runs`` of 1000 runs x 21 epochs, SQLite and server (bench_analysis_load);
- ``memory``    a worker's peak RSS for the default trial, the driver's RSS, the data put into Ray once;
- ``grid``      the default grid (160 trials): the sweep's efficiency against the ideal (sum of compute
                times / workers), and its peers in the same run: Ray Tune (defaults, reuse_actors; with
                MLflowLoggerCallback) and a plain process pool. Wall-time ratios within each repetition.

Anything that starts Ray or a server needs a loopback-only network namespace (the command above).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SECTIONS = ("trial", "logging", "analysis", "memory", "grid")
NEEDS_LOOPBACK = {"logging", "analysis", "memory", "grid"}
DEFAULT_JSON = REPO / "benchmarks" / "results" / "latest.json"
#: Peers of the sweep run in the grid section, by name: (kind, reuse_actors, MLflowLoggerCallback).
PEERS = {
    "pool": ("pool", False, False),
    "tune_reuse_mlflow": ("tune", True, True),
    "tune_default_mlflow": ("tune", False, True),
    "tune_reuse": ("tune", True, False),
    "tune_default": ("tune", False, False),
}
DEFAULT_PEERS = ("pool", "tune_reuse_mlflow", "tune_default_mlflow")
#: The drift probe: every this many-th trial of the grid (32 of 160), timed alone right before and right after
#: each sweep run. Its time against the same trials' in the compute phase says how much slower (or faster) the
#: machine was around the sweep than while its ideal was measured.
DRIFT_PROBE_EVERY = 5


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_avg() -> list[float]:
    """1, 5 and 15 minute load averages (other processes share the 2 cores: read medians with this)."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_ticks() -> tuple[int, int]:
    """``(stolen, total)`` CPU ticks of all CPUs since boot (``/proc/stat``; (0, 0) where there is none).

    Stolen ticks are those the hypervisor gave to other guests while this machine wanted to run: on a shared
    host they slow every measurement down, whatever runs here, so each section and grid run records its share.
    """
    from benchmarks.bench_sweep import proc_stat_ticks

    fields = proc_stat_ticks()
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def steal_since(before: tuple[int, int]) -> float:
    """The fraction of CPU time stolen by the hypervisor since ``before`` (a :func:`cpu_ticks` reading)."""
    stolen, total = (now - then for now, then in zip(cpu_ticks(), before, strict=True))
    return stolen / total if total > 0 else 0.0


def machine_info() -> dict:
    """What the numbers were measured on."""
    import mlflow
    import numpy as np
    import ray
    from threadpoolctl import threadpool_info

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "ray": ray.__version__, "mlflow": mlflow.__version__, "git_commit": commit,
        "blas": [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} threads={i.get('num_threads')}"
                 for i in threadpool_info()],
    }


def only_loopback() -> bool:
    """True inside a network namespace whose only interface is ``lo``."""
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ------------------------------------------------------------------------------------------------ sections


def section_trial(reps: int) -> dict:
    """Median time of one default trial per variant, and its fraction of the matrix-product limit."""
    from threadpoolctl import threadpool_limits

    from benchmarks import bench_trial, flops, trial_profile

    data, source = bench_trial.load_data(None)
    config = bench_trial.BASE_CONFIG
    products = flops.trial_products(config)
    times: dict = {v: [] for v in bench_trial.VARIANTS}
    rate_samples: dict[str, list[dict]] = {"float64": [], "float32": []}
    with threadpool_limits(limits=1):
        for dtype, bn in bench_trial.VARIANTS:  # warm-up
            bench_trial.time_trial({**config, "dtype": dtype, "use_batchnorm": bn}, data)
        for _ in range(reps):  # trials and matmul rates interleaved: the same noise reaches both
            for dtype, bn in bench_trial.VARIANTS:
                times[dtype, bn].append(bench_trial.time_trial({**config, "dtype": dtype, "use_batchnorm": bn}, data))
            for dtype in rate_samples:
                rate_samples[dtype].append(flops.measure_rates(products, dtype, samples=3))
        # where the time beyond the products goes: one profiled trial per variant, numpy's cost per call
        profiles = {v: trial_profile.profile_trial({**config, "dtype": v[0], "use_batchnorm": v[1]}, data)
                    for v in bench_trial.VARIANTS}
        call_costs = {dtype: trial_profile.numpy_call_costs(dtype) for dtype in rate_samples}
    limits = {}
    for dtype, samples in rate_samples.items():
        rates = {key: {"median_s": statistics.median(s[key]["median_s"] for s in samples),
                       "best_s": min(s[key]["best_s"] for s in samples)} for key in samples[0]}
        limits[dtype] = flops.matmul_limit(products, rates)
        limits[dtype]["limit_best_rates_s"] = flops.matmul_limit(products, rates, stat="best_s")["limit_s"]
    variants = []
    for dtype, bn in bench_trial.VARIANTS:
        wall = [w for w, _ in times[dtype, bn]]
        cpu = [c for _, c in times[dtype, bn]]
        median = statistics.median(wall)
        variants.append({"dtype": dtype, "use_batchnorm": bn, "median_s": median, "min_s": min(wall),
                         "median_cpu_s": statistics.median(cpu), "times_s": wall,
                         "limit_s": limits[dtype]["limit_s"], "fraction_of_limit": limits[dtype]["limit_s"] / median,
                         "achieved_gflops_per_s": limits[dtype]["gflops"] / median,
                         "profile": profiles[dtype, bn]})
    return {"data": source, "reps": reps, "config": config, "gflop": flops.total_flops(products) / 1e9,
            "gflop_with_input_dx": flops.total_flops(flops.trial_products(config, input_dx=True)) / 1e9,
            "limits": limits, "variants": variants, "numpy_call_costs": call_costs}


def default_trial_seconds(results: dict) -> float | None:
    """Compute time of an average default trial: the mean of the float64 plain and batchnorm medians
    (the default grid is float64, half of it each arm)."""
    trial = results.get("trial")
    if not trial:
        return None
    return statistics.fmean(v["median_s"] for v in trial["variants"] if v["dtype"] == "float64")


def section_logging(grid: list[dict], trial_seconds: float | None, workers: int) -> dict:
    """The sweep's MLflow calls per trial; the trials that share a search as many as end within ``--flush-seconds``
    at the ``trial`` section's time (the default if it did not run)."""
    from benchmarks.bench_logging import DEFAULT_TRIALS_PER_SEARCH, bench_logging, trials_per_search

    per_search = trials_per_search(trial_seconds, workers) if trial_seconds else DEFAULT_TRIALS_PER_SEARCH
    return bench_logging(grid, server=True, per_search=per_search)


def section_analysis(runs: int, repeats: int) -> dict:
    """``bench_analysis_load`` in a fresh process: its first call is really cold, and this process's MLflow
    settings (pipeline.tracker sets a 15 s HTTP timeout and no retries for the sweep) do not leak into it."""
    from benchmarks.bench_sweep import bench_env, tail

    with tempfile.TemporaryDirectory(prefix="bns-bench-an-") as tmp:
        path = Path(tmp) / "analysis.json"
        env = {k: v for k, v in bench_env().items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
        res = subprocess.run([sys.executable, "-m", "benchmarks.bench_analysis_load", "--runs", str(runs),
                              "--repeats", str(repeats), "--json", str(path)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
        if res.returncode != 0 or not path.exists():
            raise RuntimeError(f"bench_analysis_load exited {res.returncode}: {tail(res.stdout + res.stderr)}")
        _say(res.stdout.strip())
        return json.loads(path.read_text())


def section_memory(sweep_args: list[str], workers: int) -> dict:
    from benchmarks.bench_memory import bench_memory

    return bench_memory(sweep_args, workers)


def section_grid(sweep_args: list[str], workers: int, reps: int, tune_reps: int, peers: list[str]) -> dict:
    """The sweep against the ideal and against its peers; every repetition runs all of them back to back.

    Each repetition first computes the grid's trials one at a time in this process (its ideal), then runs the
    sweep and the peers: this machine's speed drifts by tens of percent over minutes (CPU time moves with the wall
    time, so it is not time stolen by the host), and an ideal measured once, minutes before a run, can be far off.
    Even within a repetition it drifts: a probe (every ``DRIFT_PROBE_EVERY``-th trial, alone) timed right before
    and right after the sweep gives the machine's speed around the sweep against the compute phase's
    (``drift.factor`` > 1: slower), and ``efficiency_drift_corrected`` is the efficiency against the ideal scaled
    by it. The target is judged on the plain ``efficiency``.
    """
    from benchmarks import bench_peers, bench_sweep

    ns, base, grid = bench_sweep.sweep_grid(sweep_args)
    data = bench_sweep.sweep_data(ns, base)
    probe = grid[::DRIFT_PROBE_EVERY]

    def probe_seconds() -> float:
        return sum(bench_sweep.trial_compute_wall_cpu(config, data)[0] for config in probe)

    names = ["sweep", *peers]
    repetitions = []
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: drift in load spreads over all
        rep_result: dict = {"order": order, "load_before": load_avg()}
        _say(f"[grid] rep {rep + 1}/{reps}: computing the {len(grid)} trials one at a time (single-threaded BLAS) ...")
        ticks = cpu_ticks()
        compute, compute_cpu = bench_sweep.compute_times(grid, data)
        compute_sum, compute_cpu_sum = sum(compute), sum(compute_cpu)
        ideal = compute_sum / workers
        rep_result["compute"] = {"times_s": compute, "cpu_times_s": compute_cpu, "sum_s": compute_sum,
                                 "cpu_sum_s": compute_cpu_sum, "ideal_s": ideal, "host_steal": steal_since(ticks)}
        _say(f"[grid]   compute {compute_sum:.1f} s (CPU {compute_cpu_sum:.1f} s) -> ideal {ideal:.1f} s with "
             f"{workers} workers")
        probe_in_compute = sum(compute[::DRIFT_PROBE_EVERY])
        with tempfile.TemporaryDirectory(prefix="bns-bench-grid-") as tmp:
            for position, name in enumerate(order):
                if name.startswith("tune") and rep >= tune_reps:
                    continue
                where = Path(tmp) / name
                if name == "sweep":
                    # the drift probe right before the sweep (unless the compute phase just ended) and right after
                    before = probe_seconds() if position > 0 else probe_in_compute
                _say(f"[grid] rep {rep + 1}/{reps}: {name} ...")
                ticks = cpu_ticks()
                if name == "sweep":
                    run = bench_sweep.run_sweep(sweep_args, workers, where)
                    run.update(bench_sweep.efficiency(run, ideal))
                    run["efficiency_vs_cpu_ideal"] = compute_cpu_sum / workers / run["wall_s"]
                    # What the trials cost beside each other: their compute summed inside the sweep's tasks
                    # against the same trials computed one at a time in this process.
                    run["slowdown_vs_alone"] = run["trials_compute_s"] / compute_sum
                    # and their CPU time, which waiting for a CPU does not stretch: above 1, the trials did more
                    # work inside the sweep's workers than alone
                    run["cpu_slowdown_vs_alone"] = run["trials_cpu_s"] / compute_cpu_sum
                    run["cpu_budget"] = cpu_budget(run, compute_cpu_sum, workers)
                else:
                    kind, reuse, mlflow = PEERS[name]
                    run = bench_peers.run_peer(kind, sweep_args, where, workers=workers, reuse_actors=reuse,
                                               mlflow=mlflow)
                    if kind == "pool":
                        run["slowdown_vs_alone"] = run["compute_sum_s"] / compute_sum
                run["host_steal"] = steal_since(ticks)
                if name == "sweep":
                    after = probe_seconds()
                    drift = (before + after) / 2 / probe_in_compute
                    run["drift"] = {"probe_trials": len(probe), "in_compute_s": probe_in_compute, "before_s": before,
                                    "after_s": after, "factor": drift}
                    run["efficiency_drift_corrected"] = ideal * drift / run["wall_s"]
                    # The same command with one more seed, on the store the sweep just filled: what a user who comes
                    # back to add a seed waits for (Ray starts beside the plan, which reads the store first).
                    _say(f"[grid] rep {rep + 1}/{reps}: sweep adding a seed to that store ...")
                    run["add_seed"] = bench_sweep.run_sweep(bench_sweep.with_next_seed(sweep_args), workers, where)
                _say(f"[grid]   {name}: {run['wall_s']:.1f} s wall (host took {100 * run['host_steal']:.1f} % "
                     "of the CPU time)")
                rep_result[name] = run
            rep_result["ray_fixed"] = bench_sweep.run_ray_fixed(workers, Path(tmp) / "ray_fixed")
            _say(f"[grid]   bare Ray start, one task per worker, shutdown: {rep_result['ray_fixed']['wall_s']:.1f} s")
        rep_result["load_after"] = load_avg()
        sweep_wall = rep_result["sweep"]["wall_s"]
        rep_result["ratios"] = {f"{p}_over_sweep": rep_result[p]["wall_s"] / sweep_wall for p in peers
                                if p in rep_result}
        # The best efficiency a sweep could reach if everything but Ray's own start and stop were free.
        rep_result["efficiency_bound_ray_fixed"] = ideal / (ideal + rep_result["ray_fixed"]["wall_s"])
        if "pool" in rep_result:
            # ... and if its trials ran beside each other as well as the pool's do (which includes interpreter
            # start-up and data loading) and it added nothing but Ray's own start and stop.
            rep_result["efficiency_bound_pool_and_ray"] = ideal / (rep_result["pool"]["wall_s"]
                                                                   + rep_result["ray_fixed"]["wall_s"])
        repetitions.append(rep_result)

    sweeps = [r["sweep"] for r in repetitions]
    computes = [r["compute"] for r in repetitions]
    ratio_names = sorted({k for r in repetitions for k in r["ratios"]})
    summary = {
        "trials": len(grid), "workers": workers, "reps": reps, "tune_reps": min(tune_reps, reps),
        "compute_sum_s": _median(c["sum_s"] for c in computes),
        "compute_sum_range_s": [min(c["sum_s"] for c in computes), max(c["sum_s"] for c in computes)],
        "compute_median_s": _median(statistics.median(c["times_s"]) for c in computes),
        "ideal_s": _median(c["ideal_s"] for c in computes),
        "compute_cpu_sum_s": _median(c["cpu_sum_s"] for c in computes),
        "ideal_cpu_s": _median(c["cpu_sum_s"] / workers for c in computes),
        "efficiency_vs_cpu_ideal": _median(s["efficiency_vs_cpu_ideal"] for s in sweeps),
        "sweep_wall_median_s": _median(s["wall_s"] for s in sweeps),
        "sweep_total_median_s": _median(s["sweep_total_s"] for s in sweeps),
        "ray_ready_median_s": _median(s["ray_ready_s"] for s in sweeps),
        "add_seed_trials": sweeps[0]["add_seed"]["trials_run"],
        "add_seed_ray_ready_median_s": _median(s["add_seed"]["ray_ready_s"] for s in sweeps),
        "add_seed_wall_median_s": _median(s["add_seed"]["wall_s"] for s in sweeps),
        "efficiency": _median(s["efficiency"] for s in sweeps),
        "efficiency_sweep_total": _median(s["efficiency_sweep_total"] for s in sweeps),
        "efficiency_excl_startup": _median(s["efficiency_excl_startup"] for s in sweeps),
        "drift_factor": _median(s["drift"]["factor"] for s in sweeps),
        "efficiency_drift_corrected": _median(s["efficiency_drift_corrected"] for s in sweeps),
        "in_flight_median_s": _median(s["mlflow"]["in_flight_median_s"] for s in sweeps),
        "sweep_cpu_s": {k: _median(s["memory"]["cpu_s"][k] for s in sweeps) for k in ("driver", "workers", "others")},
        "peer_wall_median_s": {p: _median(r[p]["wall_s"] for r in repetitions if p in r) for p in peers},
        "ratios": {k: _median(r["ratios"].get(k) for r in repetitions) for k in ratio_names},
        "ray_fixed_median_s": _median(r["ray_fixed"]["wall_s"] for r in repetitions),
        "ray_fixed_phases_median_s": {k: _median(r["ray_fixed"][k] for r in repetitions)
                                      for k in ("import_s", "init_s", "first_tasks_s", "shutdown_s")},
        "efficiency_bound_ray_fixed": _median(r["efficiency_bound_ray_fixed"] for r in repetitions),
        "sweep_trials_compute_median_s": _median(s["trials_compute_s"] for s in sweeps),
        "orchestration_efficiency": _median(s["orchestration_efficiency"] for s in sweeps),
        "slowdown_in_sweep": _median(s["slowdown_vs_alone"] for s in sweeps),
        "cpu_slowdown_in_sweep": _median(s["cpu_slowdown_vs_alone"] for s in sweeps),
        "sweep_mlflow_ms_per_trial": _median(s["mlflow_ms_per_trial"] for s in sweeps),
        "sweep_cpu_budget": {k: _median(s["cpu_budget"].get(k) for s in sweeps)
                             for k in ("busy_core_s", "idle_core_s", "busy_fraction", "trials_alone_cpu_s",
                                       "beyond_trials_cpu_s", "outside_sweep_cpu_s", "workers_beyond_trials_cpu_s",
                                       "efficiency_bound_cpu_work")},
    }
    pools = [r["pool"] for r in repetitions if "pool" in r]
    if pools:
        summary["slowdown_in_pool"] = _median(p["slowdown_vs_alone"] for p in pools)
        summary["efficiency_bound_pool_and_ray"] = _median(r["efficiency_bound_pool_and_ray"] for r in repetitions
                                                           if "efficiency_bound_pool_and_ray" in r)
    # per trial, the median over the repetitions of its time alone
    per_trial = list(zip(*(c["times_s"] for c in computes), strict=True))
    per_trial_cpu = list(zip(*(c["cpu_times_s"] for c in computes), strict=True))
    return {"summary": summary, "compute_times_s": [statistics.median(t) for t in per_trial],
            "compute_cpu_times_s": [statistics.median(t) for t in per_trial_cpu], "repetitions": repetitions}


def cpu_budget(run: dict, trials_cpu_s: float, workers: int) -> dict:
    """Where the machine's CPU time went while a sweep ran (``run``: :func:`bench_sweep.run_sweep`'s result), against
    ``trials_cpu_s``, the CPU time its trials take computed one at a time in this process.

    - ``busy_core_s`` / ``idle_core_s`` / ``steal_core_s``: all CPUs of the machine from the sweep's start to its
      exit (``/proc/stat``); ``busy_fraction`` = busy / (busy + idle + steal);
    - ``beyond_trials_cpu_s`` = busy - ``trials_cpu_s``: everything besides the trials' own arithmetic: the driver,
      Ray's daemons, the Ray workers beyond that arithmetic (their start-up, and the trials computing slower beside
      the rest), this benchmark's sampler, the kernel;
    - ``outside_sweep_cpu_s`` = busy - the CPU the sampler saw in the sweep's process tree (driver, workers, Ray's
      daemons; ``memory.cpu_s``): the sampler itself, the kernel, other processes, and what the tree's sampling
      missed (each process's last half second);
    - ``workers_beyond_trials_cpu_s`` = the Ray workers' CPU - ``trials_cpu_s``: their start-up, Ray's work in them,
      and the trials computing slower beside the rest. With the driver's and the daemons' ``memory.cpu_s`` and
      ``outside_sweep_cpu_s`` it adds up to ``beyond_trials_cpu_s``;
    - ``efficiency_bound_cpu_work`` (only where the workers fill the machine, one per CPU): the efficiency the sweep
      would reach if no CPU were ever idle: ``trials_cpu_s / busy``. Its efficiency against the CPU ideal is this
      bound times ``busy_fraction`` (up to ticks): a busy fraction near 1 means the sweep waits for nothing, so
      only less CPU work beside the trials can raise its efficiency.
    """
    machine = run["machine_cpu_s"]
    busy, idle, steal = machine["busy"], machine["idle"], machine["steal"]
    tree = sum(run["memory"]["cpu_s"].values())
    budget = {"busy_core_s": busy, "idle_core_s": idle, "steal_core_s": steal,
              "busy_fraction": busy / (busy + idle + steal) if busy > 0 else None,
              "trials_alone_cpu_s": trials_cpu_s, "beyond_trials_cpu_s": busy - trials_cpu_s,
              "outside_sweep_cpu_s": busy - tree,
              "workers_beyond_trials_cpu_s": run["memory"]["cpu_s"]["workers"] - trials_cpu_s}
    if machine["cpus"] == workers and busy > 0:
        budget["efficiency_bound_cpu_work"] = trials_cpu_s / busy
    return budget


def add_floors_bound(results: dict) -> None:
    """``grid.summary.efficiency_bound_floors``: the efficiency a sweep would reach if it cost nothing beyond what
    its parts cost on their own, each measured in this run: the 2-process pool's wall (its trials beside each
    other, interpreters, data), Ray alone (start, first tasks, stop) and MLflow's floor for every trial's run
    (the ``logging`` section's bare create_run + log_batch + set_terminated, SQLite), that CPU time shared by the
    workers. Needs both sections and a pool run; MLflow's import and a new store's schema are left out, so it is
    an upper bound."""
    grid, logging_ = results.get("grid"), results.get("logging")
    if not grid or not logging_ or "floor" not in logging_.get("sqlite", {}):
        return
    s = grid["summary"]
    pool = s["peer_wall_median_s"].get("pool")
    if pool is None:
        return
    mlflow_s = logging_["sqlite"]["floor"]["ms_per_trial_median"] / 1000 * s["trials"] / s["workers"]
    s["efficiency_bound_floors"] = s["ideal_s"] / (pool + s["ray_fixed_median_s"] + mlflow_s)


# ------------------------------------------------------------------------------------------------ targets


def targets(results: dict) -> list[dict]:
    """Every target of issue 6 that these results measure: name, measured value, target, met."""
    out: list[dict] = []

    def add(name: str, value: float | None, op: str, bound: float, unit: str = "") -> None:
        if value is None:
            return
        met = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
        out.append({"name": name, "value": value, "target": f"{op} {bound:g}{unit}", "unit": unit, "met": met})

    trial = results.get("trial")
    if trial:
        for v in trial["variants"]:
            arm = "batchnorm" if v["use_batchnorm"] else "plain"
            add(f"trial {v['dtype']} {arm}: fraction of matmul limit", v["fraction_of_limit"], ">=",
                0.6 if v["dtype"] == "float64" else 0.5)
    grid = results.get("grid")
    if grid:
        s = grid["summary"]
        add(f"sweep efficiency, {s['trials']} trials, {s['workers']} workers, Ray start-up included",
            s["efficiency"], ">=", 0.85)
        r = s["ratios"]
        add("Tune reuse_actors+MLflowLoggerCallback wall / sweep wall", r.get("tune_reuse_mlflow_over_sweep"),
            ">=", 3.0, "x")
        add("Tune defaults+MLflowLoggerCallback wall / sweep wall", r.get("tune_default_mlflow_over_sweep"),
            ">=", 5.0, "x")
        if r.get("pool_over_sweep"):
            add("sweep wall / 2-process pool wall", 1 / r["pool_over_sweep"], "<=", 1.25, "x")
    logging_ = results.get("logging")
    trial_s = default_trial_seconds(results) or (
        grid["summary"]["compute_median_s"] if grid else None)
    if logging_ and trial_s:
        for kind in ("sqlite", "server", "server_url_suppressed"):
            if kind in logging_:
                add(f"MLflow logging per trial ({kind}), % of a default trial",
                    100 * logging_[kind]["ms_per_trial_median"] / 1000 / trial_s, "<=", 3.0, "%")
    analysis = results.get("analysis")
    if analysis:
        for kind in ("sqlite", "server"):
            if kind in analysis:
                for load in ("first", "repeat"):
                    add(f"load_runs {analysis['runs']} runs x {analysis['epochs'] + 1} epochs ({kind}, {load})",
                        analysis[kind][f"{load}_median_s"], "<=", 5.0, " s")
                add(f"load_runs {analysis['runs']} runs x {analysis['epochs'] + 1} epochs ({kind}, cold)",
                    analysis[kind]["cold_s"], "<=", 5.0, " s")
    memory = results.get("memory")
    if memory:
        add("trial peak RSS, fresh process, data as the sweep passes it", memory["trial"]["peak_mb"], "<", 300,
            " MB")
        add("trial peak RSS, fresh process with ray imported", memory["trial_with_ray_imported"]["peak_mb"], "<",
            300, " MB")
        add("Ray worker peak RSS during the sweep (sampled)", memory["sweep"]["sampled_rss"]["worker_mb"], "<",
            300, " MB")
        add("ray.put calls of the sweep driver (the data set once)", memory["sweep"]["ray_put_calls"], "<=", 1)
    return out


def ratios(results: dict) -> dict[str, float]:
    """The dimensionless figures of the run, flat (each is a positive finite number)."""
    out: dict[str, float] = {}
    if results.get("trial"):
        for v in results["trial"]["variants"]:
            arm = "batchnorm" if v["use_batchnorm"] else "plain"
            out[f"trial_{v['dtype']}_{arm}_fraction_of_limit"] = v["fraction_of_limit"]
    if results.get("grid"):
        s = results["grid"]["summary"]
        out["sweep_efficiency"] = s["efficiency"]
        out["sweep_efficiency_excl_startup"] = s["efficiency_excl_startup"]
        for key in ("efficiency_drift_corrected", "efficiency_bound_ray_fixed", "efficiency_bound_pool_and_ray",
                    "efficiency_bound_floors", "orchestration_efficiency"):
            if key in s:
                out["sweep_" + key] = s[key]
        budget = s.get("sweep_cpu_budget", {})
        for key in ("busy_fraction", "efficiency_bound_cpu_work"):
            if budget.get(key):
                out["sweep_" + key] = budget[key]
        out.update({k: v for k, v in s["ratios"].items() if v is not None})
    trial_s = default_trial_seconds(results) or (
        results["grid"]["summary"]["compute_median_s"] if results.get("grid") else None)
    if results.get("logging") and trial_s:
        for kind, r in results["logging"].items():
            out[f"logging_{kind}_fraction_of_trial"] = r["ms_per_trial_median"] / 1000 / trial_s
    return out


# ------------------------------------------------------------------------------------------------ the table


def table(results: dict) -> str:
    """The human-readable summary: the measurements, then every target with met / NOT MET."""
    lines = []
    trial = results.get("trial")
    if trial:
        lines.append(f"One default trial ({trial['gflop']:.2f} GFLOP of matrix products; "
                     f"{trial['gflop_with_input_dx']:.2f} with the input gradient), median of {trial['reps']}:")
        lines.append(f"  {'dtype':8} {'arm':10} {'median s':>9} {'limit s':>8} {'of limit':>9} {'GFLOP/s':>8}")
        for v in trial["variants"]:
            arm = "batchnorm" if v["use_batchnorm"] else "plain"
            lines.append(f"  {v['dtype']:8} {arm:10} {v['median_s']:9.3f} {v['limit_s']:8.3f} "
                         f"{100 * v['fraction_of_limit']:8.0f}% {v['achieved_gflops_per_s']:8.1f}")
        for dtype, lim in trial["limits"].items():
            lines.append(f"  matmul rate on the trial's shapes, {dtype}, 1 thread: {lim['gflops_per_s']:.1f} GFLOP/s "
                         "(" + ", ".join(f"{p['kind']} {p['m']}x{p['k']}x{p['n']} {p['gflops_per_s']:.0f}"
                                         for p in lim["products"]) + ")")
        if "numpy_call_costs" in trial:
            lines.append("  one profiled trial each, seconds by layer kind (in training; evaluation: every inference "
                         "pass):")
            for v in trial["variants"]:
                arm = "batchnorm" if v["use_batchnorm"] else "plain"
                lines.append(f"    {v['dtype']:8} {arm:10} {v['profile']['instrumented_s']:.3f} s = "
                             + ", ".join(f"{k} {t:.3f}" for k, t in v["profile"]["seconds"].items() if t >= 0.0005))
            for dtype, c in trial["numpy_call_costs"].items():
                lines.append(f"  numpy per call, {dtype}: (100, 100) elementwise {c['elementwise_us']:.1f} us, with a "
                             f"row-broadcast vector {c['row_broadcast_us']:.1f} us; on 100-vectors "
                             f"{c['vector_us']:.1f} us")
    grid = results.get("grid")
    if grid:
        s = grid["summary"]
        lines.append(f"Grid of {s['trials']} trials, {s['workers']} workers ({s['reps']} reps; Tune {s['tune_reps']}):")
        lo, hi = s["compute_sum_range_s"]
        lines.append(f"  compute in one process {s['compute_sum_s']:.1f} s (CPU {s.get('compute_cpu_sum_s', 0):.1f} s;"
                     f" {lo:.1f}-{hi:.1f} s over the repetitions, each measured right before its runs)"
                     f" -> ideal {s['ideal_s']:.1f} s")
        lines.append(f"  pipeline.sweep: wall {s['sweep_wall_median_s']:.1f} s (its own total "
                     f"{s['sweep_total_median_s']:.1f} s, Ray and data ready after {s['ray_ready_median_s']:.1f} s)"
                     f" -> efficiency {s['efficiency']:.2f}, {s['efficiency_excl_startup']:.2f} without start-up")
        if "add_seed_trials" in s:
            lines.append(f"  the same command with one more seed, on the store it filled ({s['add_seed_trials']} "
                         f"trials run): wall {s['add_seed_wall_median_s']:.1f} s, Ray and the plan ready after "
                         f"{s['add_seed_ray_ready_median_s']:.1f} s")
        if "drift_factor" in s:
            lines.append(f"  the machine around each sweep (a probe of every {DRIFT_PROBE_EVERY}th trial, alone, right "
                         f"before and after it) was {s['drift_factor']:.2f}x as slow as while the ideal was measured"
                         f" -> efficiency against the ideal at that speed {s['efficiency_drift_corrected']:.2f}")
        if "ray_fixed_median_s" in s:
            ph = s["ray_fixed_phases_median_s"]
            lines.append(f"  Ray alone (a process that imports and starts it as the sweep does, runs one trivial "
                         f"task per worker and shuts it down): {s['ray_fixed_median_s']:.1f} s "
                         f"(import {ph['import_s']:.1f}, init {ph['init_s']:.1f}, first tasks "
                         f"{ph['first_tasks_s']:.1f}, shutdown {ph['shutdown_s']:.1f}) -> with nothing else costing "
                         f"anything, efficiency could reach {s['efficiency_bound_ray_fixed']:.2f}")
        if "sweep_trials_compute_median_s" in s:
            lines.append(f"  the trials computed {s['sweep_trials_compute_median_s']:.1f} s inside the sweep "
                         f"({s['slowdown_in_sweep']:.2f}x their time alone"
                         + (f"; {s['slowdown_in_pool']:.2f}x inside the pool" if "slowdown_in_pool" in s else "")
                         + f"; their CPU time {s['cpu_slowdown_in_sweep']:.2f}x their CPU time alone"
                         + f"); once Ray was up the workers were busy {100 * s['orchestration_efficiency']:.0f} % "
                         "of the time")
        if "efficiency_bound_pool_and_ray" in s:
            lines.append(f"  the pool's wall plus Ray alone caps the efficiency at "
                         f"{s['efficiency_bound_pool_and_ray']:.2f}")
        if "efficiency_bound_floors" in s:
            lines.append(f"  ... and with MLflow's own floor for {s['trials']} runs spread over the workers as well: "
                         f"{s['efficiency_bound_floors']:.2f}")
        cpu = s.get("sweep_cpu_s", {})
        lines.append(f"  a trial is RUNNING {s['in_flight_median_s']:.2f} s (median; computes "
                     f"{s['compute_median_s']:.2f} s alone); CPU seconds during the sweep: driver "
                     f"{cpu.get('driver', 0):.1f}, Ray workers {cpu.get('workers', 0):.1f}, Ray daemons "
                     f"{cpu.get('others', 0):.1f}")
        budget = s.get("sweep_cpu_budget", {})
        if budget.get("busy_fraction") is not None:
            lines.append(f"  the machine's CPUs were busy {100 * budget['busy_fraction']:.1f} % of the sweep's wall "
                         f"(idle {budget['idle_core_s']:.1f} core-s): {budget['busy_core_s']:.1f} busy core-s, "
                         f"of which the trials alone need {budget['trials_alone_cpu_s']:.1f} and the rest "
                         f"{budget['beyond_trials_cpu_s']:.1f} (of those, medians: the Ray workers beyond the "
                         f"trials' own {budget['workers_beyond_trials_cpu_s']:.1f}, outside the sweep's processes "
                         f"{budget['outside_sweep_cpu_s']:.1f}; the driver and the daemons as above)")
        if budget.get("efficiency_bound_cpu_work") is not None:
            lines.append(f"  -> with no CPU ever idle the sweep's CPU work caps its efficiency at "
                         f"{budget['efficiency_bound_cpu_work']:.2f}")
        if "sweep_mlflow_ms_per_trial" in s:
            lines.append(f"  the sweep's driver spent {s['sweep_mlflow_ms_per_trial']:.1f} ms per trial in MLflow "
                         "calls (wall time, the CPUs shared with the workers)")
        for peer, wall in s["peer_wall_median_s"].items():
            ratio = s["ratios"].get(f"{peer}_over_sweep")
            if wall is not None:
                lines.append(f"  {peer:22s} wall {wall:7.1f} s = {ratio:.2f} x the sweep")
    logging_ = results.get("logging")
    if logging_:
        for kind, r in logging_.items():
            calls = ", ".join(f"{c} {v:.1f}" for c, v in r["ms_per_call_median"].items())
            lines.append(f"MLflow per trial ({kind}): {r['ms_per_trial_median']:.1f} ms median, "
                         f"{r['ms_per_trial_mean']:.1f} mean ({calls} ms; one search per "
                         f"{r.get('trials_per_search', 1)} trials)")
            if "floor" in r:
                lines.append(f"  MLflow's own floor for one such run (create_run, one log_batch, set_terminated on a "
                             f"bare client): {r['floor']['ms_per_trial_median']:.1f} ms median")
    analysis = results.get("analysis")
    if analysis:
        for kind in ("sqlite", "server"):
            if kind in analysis:
                a = analysis[kind]
                lines.append(f"load_runs {analysis['runs']} runs ({kind}): cold {a['cold_s']:.2f} s, "
                             f"first {a['first_median_s']:.2f} s, repeat {a['repeat_median_s']:.2f} s")
    memory = results.get("memory")
    if memory:
        sw = memory["sweep"]
        lines.append(f"Memory: trial peak RSS {memory['trial']['peak_mb']:.0f} MB "
                     f"({memory['trial_with_ray_imported']['peak_mb']:.0f} MB with ray imported); sweep: "
                     f"driver peak {sw['driver_maxrss_mb']:.0f} MB, Ray worker peak "
                     f"{sw['sampled_rss']['worker_mb']:.0f} MB, ray.put x{sw['ray_put_calls']} "
                     f"({sum(sw['ray_put_mb']):.1f} MB), object store at end {sw['object_store_at_end']}")
    steal = {k: v["host_steal"] for k, v in results.get("load", {}).items() if "host_steal" in v}
    if steal:
        lines.append("CPU time the host gave to other guests meanwhile (slows everything here): "
                     + ", ".join(f"{k} {100 * v:.1f} %" for k, v in steal.items()))
    for section, message in results.get("errors", {}).items():
        lines.append(f"Section {section} FAILED: {message[:300]}")
    rows = results.get("targets", [])
    if rows:
        width = max(len(r["name"]) for r in rows)
        lines.append("")
        lines.append(f"{'target':{width}}  {'measured':>10}  {'wanted':>10}  met")
        for r in rows:
            value = f"{100 * r['value']:.0f}%" if "fraction" in r["name"] else f"{r['value']:.3g}{r['unit']}"
            wanted = r["target"].replace(">= 0.6", ">= 60%").replace(">= 0.5", ">= 50%")
            lines.append(f"{r['name']:{width}}  {value:>10}  {wanted:>10}  {'met' if r['met'] else 'NOT MET'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a fast pass: 1 seed (32 trials), 1 repetition, 2 trial reps, 100 runs for load_runs")
    p.add_argument("--json", type=Path, default=None,
                   help=f"write the results here (default {DEFAULT_JSON.relative_to(REPO)}; with --quick: none)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections ({', '.join(SECTIONS)})")
    p.add_argument("--grid-seeds", type=int, help="seeds 0..N-1 of the default grid (default 5: 160 trials)")
    p.add_argument("--reps", type=int, help="repetitions of the grid runs (default 3; --quick 1)")
    p.add_argument("--tune-reps", type=int, help="of those, how many also run Ray Tune (default 1)")
    p.add_argument("--trial-reps", type=int, help="timed repetitions per trial variant (default 7; --quick 2)")
    p.add_argument("--analysis-runs", type=int, help="runs for load_runs (default 1000; --quick 100)")
    p.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                   help=f"peers of the sweep in the grid section ({', '.join(PEERS)})")
    p.add_argument("--workers", type=int, default=2, help="workers of the sweep and its peers (default 2)")
    g = p.add_argument_group("shrinking the grid (smoke tests only: the targets are about the default grid)")
    g.add_argument("--weight-scales", help="comma list instead of the 16 default scales")
    g.add_argument("--epochs", type=int)
    g.add_argument("--train-size", type=int)
    g.add_argument("--test-size", type=int)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def usage(message: str) -> int:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2

    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if not sections or set(sections) - set(SECTIONS):
        return usage(f"--only {args.only!r}: choose from {', '.join(SECTIONS)}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if set(peers) - set(PEERS):
        return usage(f"--peers {args.peers!r}: choose from {', '.join(PEERS)}")
    def given(value: int | None, quick: int, full: int) -> int:
        return value if value is not None else (quick if args.quick else full)

    seeds = given(args.grid_seeds, 1, 5)
    reps = given(args.reps, 1, 3)
    tune_reps = given(args.tune_reps, 1, 1)
    trial_reps = given(args.trial_reps, 2, 7)
    analysis_runs = given(args.analysis_runs, 100, 1000)
    for name, value in (("--grid-seeds", seeds), ("--reps", reps), ("--trial-reps", trial_reps),
                        ("--analysis-runs", analysis_runs), ("--workers", args.workers)):
        if value < 1:
            return usage(f"{name} must be >= 1 (got {value})")
    if tune_reps < 0:
        return usage(f"--tune-reps must be >= 0 (got {tune_reps})")
    if NEEDS_LOOPBACK & set(sections) and not only_loopback():
        return usage("these sections start Ray or servers: run inside a loopback-only network namespace, "
                     "tests/loopback-only python -m benchmarks.run_all ...")
    json_path = args.json if args.json is not None else (None if args.quick else DEFAULT_JSON)

    from benchmarks.bench_sweep import grid_args, sweep_grid

    try:
        sweep_args = grid_args(seeds, weight_scales=args.weight_scales, epochs=args.epochs,
                               train_size=args.train_size, test_size=args.test_size)
        _, _, grid = sweep_grid(sweep_args)
    except (SystemExit, ValueError) as exc:
        return usage(f"bad grid options ({exc})")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    results: dict = {
        "benchmark": "bnsweep run_all",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "settings": {"quick": args.quick, "sections": sections, "grid_seeds": seeds, "grid_trials": len(grid),
                     "sweep_args": sweep_args, "reps": reps, "tune_reps": tune_reps, "trial_reps": trial_reps,
                     "analysis_runs": analysis_runs, "workers": args.workers, "peers": peers},
        "load": {},
        "section_seconds": {},
    }
    for section in SECTIONS:
        if section not in sections:
            continue
        _say(f"== {section} (load {load_avg()})")
        before = load_avg()
        ticks = cpu_ticks()
        t0 = time.perf_counter()
        try:
            if section == "trial":
                results["trial"] = section_trial(trial_reps)
            elif section == "logging":
                results["logging"] = section_logging(grid, default_trial_seconds(results), args.workers)
            elif section == "analysis":
                results["analysis"] = section_analysis(analysis_runs, 3 if not args.quick else 2)
            elif section == "memory":
                results["memory"] = section_memory(sweep_args, args.workers)
            elif section == "grid":
                results["grid"] = section_grid(sweep_args, args.workers, reps, tune_reps, peers)
        except Exception as exc:  # noqa: BLE001 - one section failing must not lose the others
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            results.setdefault("errors", {})[section] = message[:2000]
            _say(f"[{section}] FAILED: {message[:500]}")
        results["section_seconds"][section] = time.perf_counter() - t0
        results["load"][section] = {"before": before, "after": load_avg(), "host_steal": steal_since(ticks)}
        if json_path:  # after every section: a later failure does not lose what was measured
            _write_json(json_path, results)
    add_floors_bound(results)
    results["targets"] = targets(results)
    results["ratios"] = ratios(results)
    results["total_seconds"] = time.perf_counter() - started

    print(table(results))
    if json_path:
        _write_json(json_path, results)
        _say(f"wrote {json_path}")
    bad = [k for k, v in results["ratios"].items() if not (math.isfinite(v) and v > 0)]
    if bad:
        _say(f"warning: non-positive or non-finite figures: {', '.join(bad)}")
    if results.get("errors"):
        _say(f"sections that failed: {', '.join(results['errors'])}")
        return 1
    return 0


def _write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
