"""The benchmark suite's code paths, on a tiny grid: no timing is asserted, only that every piece runs for real
(Ray, Ray Tune, MLflow SQLite and server, the process pool) and that the JSON holds what the README promises."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from benchmarks import bench_logging, flops, run_all

TINY = ["--weight-scales", "0.1,0.01", "--grid-seeds", "1", "--epochs", "2", "--train-size", "200",
        "--test-size", "100", "--reps", "1", "--tune-reps", "1", "--trial-reps", "1", "--analysis-runs", "20",
        "--peers", "pool"]


def test_cpu_ticks_count_the_time_spent_here_and_the_stolen_share_is_part_of_it():
    before = run_all.cpu_ticks()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # busy: at least 0.3 s of CPU ticks pass on some CPU
        pass
    stolen, total = (now - then for now, then in zip(run_all.cpu_ticks(), before, strict=True))
    assert total >= 0.25 * os.sysconf("SC_CLK_TCK") and 0 <= stolen <= total
    assert 0 <= run_all.steal_since(before) <= 1


def test_machine_cpu_seconds_count_this_process_busy_and_add_up_to_the_cpus_wall_time():
    from benchmarks.bench_sweep import machine_cpu_seconds

    before, t0 = machine_cpu_seconds(), time.perf_counter()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # busy: at least 0.3 s of this CPU
        pass
    spent = {k: v - before[k] for k, v in machine_cpu_seconds().items()}
    wall = time.perf_counter() - t0
    assert spent["busy"] >= 0.25 and spent["idle"] >= 0 and spent["steal"] >= 0
    assert sum(spent.values()) == pytest.approx(os.cpu_count() * wall, rel=0.1, abs=0.05)


def test_ray_workers_are_told_from_rays_agents_by_their_process_titles():
    from benchmarks.bench_sweep import is_ray_worker

    assert is_ray_worker("ray::IDLE") and is_ray_worker("ray::train_trial") and is_ray_worker("ray::ImplicitFunc")
    assert not is_ray_worker("ray::DashboardAgent") and not is_ray_worker("ray::RuntimeEnvAgent")
    assert not is_ray_worker("/usr/bin/python") and not is_ray_worker("raylet")


def test_trial_profile_splits_a_trial_by_layer_kind_and_leaves_the_model_as_it_was():
    import numpy as np

    from benchmarks import trial_profile
    from model.layers import Affine, BatchNormalization

    originals = (Affine.forward, BatchNormalization.backward)
    rng = np.random.default_rng(0)
    data = ((rng.random((200, 784)), rng.integers(0, 10, 200)), (rng.random((100, 784)), rng.integers(0, 10, 100)))
    config = {"weight_scale": 0.01, "seed": 0, "epochs": 2, "train_size": 200, "test_size": 100}
    for bn in (False, True):
        profile = trial_profile.profile_trial({**config, "use_batchnorm": bn}, data)
        seconds = profile["seconds"]
        assert list(seconds) == ["affine", "batchnorm", "relu", "softmax_loss", "sgd_update", "evaluation", "other"]
        assert (seconds["batchnorm"] > 0) == bn
        assert all(seconds[k] > 0 for k in ("affine", "relu", "softmax_loss", "sgd_update", "evaluation", "other"))
        assert sum(seconds.values()) == pytest.approx(profile["instrumented_s"])
    assert (Affine.forward, BatchNormalization.backward) == originals
    costs = trial_profile.numpy_call_costs("float32", number=50)
    assert set(costs) == {"elementwise_us", "row_broadcast_us", "vector_us"} and min(costs.values()) > 0


def test_flop_count_of_the_default_trial():
    """784-100x5-10, batch 100, 1000 samples, 20 epochs: counted by hand, product by product."""
    config = {"epochs": 20, "batch_size": 100, "train_size": 1000, "test_size": 1000, "hidden_size_list": [100] * 5}
    steps, layers = 200, [(784, 100)] + [(100, 100)] * 4 + [(100, 10)]
    forward = sum(2 * 100 * k * n for k, n in layers) * steps
    backward_dw = forward  # (k, B) @ (B, n): the same 2*B*k*n per layer
    backward_dx = sum(2 * 100 * k * n for k, n in layers[1:]) * steps  # no gradient for the input
    evaluation = sum(2 * 1000 * k * n for k, n in layers) * 21 * 2  # epochs 0..20, train and test subsets
    products = flops.trial_products(config)
    by_kind = flops.flops_by_kind(products)
    assert by_kind == {"forward": forward, "backward_dW": backward_dw, "backward_dx": backward_dx,
                       "eval": evaluation}
    assert flops.total_flops(products) == 21_221_600_000
    with_dx = flops.trial_products(config, input_dx=True)
    assert flops.total_flops(with_dx) - flops.total_flops(products) == 2 * 100 * 784 * 100 * steps


def test_flop_count_splits_a_short_last_batch():
    config = {"epochs": 3, "batch_size": 4, "train_size": 10, "test_size": 6, "hidden_size_list": [5]}
    products = flops.trial_products(config, input_size=7, output_size=2)
    forward_rows = sorted((p.m, p.count) for p in products if p.kind == "forward" and p.k == 7)
    assert forward_rows == [(2, 3), (4, 6)]  # per epoch two batches of 4 and one of 2
    evals = sorted((p.m, p.count) for p in products if p.kind == "eval" and p.k == 7)
    assert evals == [(6, 4), (10, 4)]  # epochs 0..3, train and test subsets


def test_matmul_limit_adds_up_counted_products():
    config = {"epochs": 1, "batch_size": 10, "train_size": 20, "test_size": 20, "hidden_size_list": [8]}
    products = flops.trial_products(config, input_size=16, output_size=4)
    rates = flops.measure_rates(products, "float32", samples=1, min_sample_s=0.001)
    limit = flops.matmul_limit(products, rates)
    expected = sum(p.count * rates[p.shape_key]["median_s"] for p in products)
    assert limit["limit_s"] == pytest.approx(expected)
    assert limit["flops"] == flops.total_flops(products)
    assert all(row["gflops_per_s"] > 0 for row in limit["products"])


@pytest.mark.parametrize("argv", [["--only", "trial,bogus"], ["--reps", "0"], ["--grid-seeds", "0"],
                                  ["--trial-reps", "0", "--only", "trial"], ["--tune-reps", "-1"],
                                  ["--peers", "dask"], ["--weight-scales", "-1", "--only", "trial"]])
def test_bad_options_exit_2(argv, tmp_path, capsys):
    out = tmp_path / "never.json"  # never the repo's results file, whatever happens
    assert run_all.main([*argv, "--json", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


@pytest.mark.slow
def test_the_whole_suite_on_a_tiny_grid(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert run_all.main([*TINY, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())

    assert set(result) >= {"machine", "settings", "load", "trial", "logging", "analysis", "memory", "grid",
                           "targets", "ratios", "total_seconds"}
    assert result["settings"]["grid_trials"] == 4
    assert set(result["load"]) == set(run_all.SECTIONS)
    assert all(0 <= v["host_steal"] < 1 for v in result["load"].values())
    assert "CPU time the host gave to other guests" in table

    # every ratio is a positive finite number, and each one the README names is there
    assert result["ratios"] and all(math.isfinite(v) and v > 0 for v in result["ratios"].values())
    for name in ("trial_float64_plain_fraction_of_limit", "trial_float32_batchnorm_fraction_of_limit",
                 "sweep_efficiency", "sweep_efficiency_excl_startup", "pool_over_sweep",
                 "logging_sqlite_fraction_of_trial",
                 "logging_server_fraction_of_trial"):
        assert name in result["ratios"], name

    trial = result["trial"]
    assert [(v["dtype"], v["use_batchnorm"]) for v in trial["variants"]] == [
        ("float64", False), ("float64", True), ("float32", False), ("float32", True)]
    assert trial["gflop"] == pytest.approx(21.2216)
    assert {row["kind"] for row in trial["limits"]["float64"]["products"]} == set(flops.KINDS)
    for v in trial["variants"]:
        assert (v["profile"]["seconds"]["batchnorm"] > 0) == v["use_batchnorm"]
    assert set(trial["numpy_call_costs"]) == {"float64", "float32"}

    grid = result["grid"]
    rep = grid["repetitions"][0]
    assert rep["sweep"]["mlflow"]["statuses"] == {"FINISHED": 4}
    assert rep["sweep"]["trials_run"] == 4
    assert rep["sweep"]["ray_ready_s"] < rep["sweep"]["sweep_total_s"] < rep["sweep"]["wall_s"]
    added = rep["sweep"]["add_seed"]  # the same command with one more seed, on the same store: only the new trials
    assert added["trials_run"] == 4 and added["mlflow"]["statuses"] == {"FINISHED": 8}
    assert added["ray_ready_s"] < added["sweep_total_s"] < added["wall_s"]
    assert grid["summary"]["add_seed_ray_ready_median_s"] == added["ray_ready_s"]
    assert "with one more seed" in table
    assert rep["pool"]["trials"] == 4
    assert all(0 <= rep[name]["host_steal"] < 1 for name in ("sweep", "pool"))
    assert len(grid["compute_times_s"]) == len(grid["compute_cpu_times_s"]) == 4
    compute = rep["compute"]  # each repetition measures its own ideal, right before its runs
    assert len(compute["times_s"]) == 4 and compute["ideal_s"] == pytest.approx(sum(compute["times_s"]) / 2)
    assert rep["sweep"]["efficiency"] == pytest.approx(compute["ideal_s"] / rep["sweep"]["wall_s"])
    assert rep["sweep"]["slowdown_vs_alone"] == pytest.approx(rep["sweep"]["trials_compute_s"] / compute["sum_s"])
    assert 0 < rep["sweep"]["trials_cpu_s"] <= rep["sweep"]["trials_compute_s"] + 0.1
    assert rep["sweep"]["cpu_slowdown_vs_alone"] == pytest.approx(rep["sweep"]["trials_cpu_s"] / compute["cpu_sum_s"])
    assert grid["summary"]["cpu_slowdown_in_sweep"] > 0 and "their CPU time alone" in table
    # the driver's CPU is seconds; the workers' on this tiny grid can round to 0.0 (sampled every 0.5 s, to 0.1 s)
    cpu = grid["summary"]["sweep_cpu_s"]
    assert set(cpu) == {"driver", "workers", "others"} and cpu["driver"] > 0 and min(cpu.values()) >= 0
    # Ray's workers, one per CPU of its local instance (max(--workers, CPUs)); its two agents are not workers
    assert 2 <= rep["sweep"]["memory"]["max_worker_processes"] <= max(2, os.cpu_count())
    # the machine's CPU time over the sweep: all CPUs' wall time, split into busy, idle and stolen
    machine, budget = rep["sweep"]["machine_cpu_s"], rep["sweep"]["cpu_budget"]
    assert machine["busy"] + machine["idle"] + machine["steal"] == pytest.approx(
        machine["cpus"] * rep["sweep"]["wall_s"], rel=0.05)
    assert budget["busy_core_s"] == machine["busy"] and 0 < budget["busy_fraction"] <= 1
    assert budget["beyond_trials_cpu_s"] == pytest.approx(machine["busy"] - compute["cpu_sum_s"])
    assert budget["outside_sweep_cpu_s"] == pytest.approx(
        machine["busy"] - sum(rep["sweep"]["memory"]["cpu_s"].values()))
    tree = rep["sweep"]["memory"]["cpu_s"]
    assert budget["beyond_trials_cpu_s"] == pytest.approx(
        tree["driver"] + tree["others"] + budget["workers_beyond_trials_cpu_s"] + budget["outside_sweep_cpu_s"])
    if machine["cpus"] == 2:  # the workers fill the machine: its efficiency is its CPU work's share x busy share
        assert budget["efficiency_bound_cpu_work"] == pytest.approx(compute["cpu_sum_s"] / machine["busy"])
        assert rep["sweep"]["efficiency_vs_cpu_ideal"] == pytest.approx(
            budget["efficiency_bound_cpu_work"] * budget["busy_fraction"], rel=0.05)
        assert "sweep_efficiency_bound_cpu_work" in result["ratios"]
    else:
        assert "efficiency_bound_cpu_work" not in budget
    assert grid["summary"]["sweep_cpu_budget"]["busy_core_s"] == budget["busy_core_s"]
    assert "CPUs were busy" in table
    fixed = rep["ray_fixed"]
    assert 0 < fixed["init_s"] < fixed["wall_s"] and fixed["shutdown_s"] > 0 and fixed["first_tasks_s"] > 0
    assert 0 < grid["summary"]["efficiency_bound_ray_fixed"] < 1
    summary = grid["summary"]
    assert 0 < rep["sweep"]["trials_compute_s"] <= 2 * rep["sweep"]["sweep_total_s"]
    assert 0 < rep["sweep"]["mlflow_s"] < rep["sweep"]["sweep_total_s"] and rep["sweep"]["mlflow_ms_per_trial"] > 0
    assert 0 < summary["orchestration_efficiency"] <= 1
    assert summary["slowdown_in_sweep"] > 0 and summary["slowdown_in_pool"] > 0
    assert 0 < summary["efficiency_bound_pool_and_ray"] < summary["efficiency_bound_ray_fixed"]
    # the drift probe: the first of every DRIFT_PROBE_EVERY trials, timed alone around the sweep
    drift = rep["sweep"]["drift"]
    assert drift["probe_trials"] == len(range(0, 4, run_all.DRIFT_PROBE_EVERY))
    assert drift["in_compute_s"] == pytest.approx(sum(compute["times_s"][::run_all.DRIFT_PROBE_EVERY]))
    assert drift["factor"] == pytest.approx((drift["before_s"] + drift["after_s"]) / 2 / drift["in_compute_s"])
    assert rep["sweep"]["efficiency_drift_corrected"] == pytest.approx(
        compute["ideal_s"] * drift["factor"] / rep["sweep"]["wall_s"])
    # MLflow's floor for every run on top of the pool and Ray alone: a lower cap than either alone
    assert 0 < summary["efficiency_bound_floors"] < summary["efficiency_bound_pool_and_ray"]
    assert summary["efficiency_bound_floors"] == pytest.approx(summary["ideal_s"] / (
        summary["peer_wall_median_s"]["pool"] + summary["ray_fixed_median_s"]
        + result["logging"]["sqlite"]["floor"]["ms_per_trial_median"] / 1000 * 4 / 2))
    assert "sweep_efficiency_drift_corrected" in result["ratios"]
    assert "sweep_efficiency_bound_floors" in result["ratios"]

    for kind in ("sqlite", "server"):
        calls = result["logging"][kind]["ms_per_call_median"]
        assert set(calls) == {"create_run", "log_batch", "finish_search", "end_run"}
        assert result["logging"][kind]["trials"] == 4
        # the trials that end within --flush-seconds of each other share one exactly-once search, as in the sweep
        assert result["logging"][kind]["trials_per_search"] == bench_logging.trials_per_search(
            run_all.default_trial_seconds(result), 2)
        floor = result["logging"][kind]["floor"]
        assert floor["trials"] == 4 and floor["ms_per_trial_median"] > 0
    assert result["analysis"]["sqlite"]["rows"] == 20 * 21

    memory = result["memory"]
    assert memory["sweep"]["ray_put_calls"] == 1
    assert memory["sweep"]["object_store_at_end"]["plasma_objects"] >= 1
    assert 0 < memory["trial"]["after_imports_mb"] <= memory["trial"]["peak_mb"]
    assert memory["trial_with_ray_imported"]["after_imports_mb"] > memory["trial"]["after_imports_mb"]

    names = {t["name"] for t in result["targets"]}
    assert any("sweep efficiency" in n for n in names) and any("load_runs" in n for n in names)
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    assert "sweep efficiency" in table and ("NOT MET" in table or " met" in table)


def test_ab_trial_times_a_revision_against_the_working_tree(tmp_path, capsys):
    """Both versions of model/ really run, each in its own worker (the revision's from a git archive), in pairs."""
    from benchmarks import ab_trial

    out = tmp_path / "ab.json"
    assert ab_trial.main(["--base", "HEAD", "--reps", "2", "--epochs", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["base_commit"] == ab_trial._commit("HEAD") and len(report["base_commit"]) == 40
    assert "bns-ab-" in report["model_a"]
    assert Path(report["model_b"]) == ab_trial.REPO / "model" / "__init__.py"
    assert [(v["dtype"], v["use_batchnorm"]) for v in report["variants"]] == ab_trial.VARIANTS
    for v in report["variants"]:
        assert len(v["cpu_s"]["A"]) == len(v["cpu_s"]["B"]) == 2
        assert all(0 < s < 60 for s in v["cpu_s"]["A"] + v["cpu_s"]["B"])
        assert 0 < v["ratio_b_over_a"] < 10
    assert "B / A" in capsys.readouterr().out


def test_ab_trial_refuses_an_unknown_revision(capsys):
    from benchmarks import ab_trial

    with pytest.raises(SystemExit) as exc:
        ab_trial.main(["--base", "no-such-revision-here", "--reps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ab_trial: error: --base 'no-such-revision-here' is not a commit") and "\n" not in err


def test_ab_trial_reports_a_worker_that_dies_and_leaves_no_worker_behind(capfd):
    """A trial that fails in a worker (here: epochs 0 is refused) ends the comparison with a one-line error and
    exit 1, and both worker processes are gone."""
    from benchmarks import ab_trial

    with pytest.raises(SystemExit) as exc:
        ab_trial.main(["--base", "HEAD", "--reps", "1", "--epochs", "0"])
    assert exc.value.code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ab_trial: error: the worker for ") and "exited (code 1)" in err[-1]
    assert any("epochs must be an integer >= 1" in line for line in err)  # the worker's own reason, above
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"from benchmarks.bench_trial import BASE_CONFIG" in cmdline.read_bytes():
                left.append(cmdline.parent.name)
        except OSError:  # the process ended meanwhile
            pass
    assert left == []
