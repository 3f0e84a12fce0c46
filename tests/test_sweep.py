"""The sweep end to end: real local Ray, real MLflow (SQLite file), real Fashion-MNIST."""

from __future__ import annotations

import math
import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from model.trial import run_trial
from pipeline.data import load_dataset
from pipeline.trials import make_grid, trial_key
from tests.idx import write_idx_dataset
from tests.sweep_helpers import (
    FASHION_DIR,
    SMALL,
    SweepProcess,
    finished_counts,
    plan_delayed,
    run_probed_sweep,
    run_sweep,
    trial_runs,
    wait_together,
)

EXPERIMENT = "small"
PARAMS = {"weight_scale", "use_batchnorm", "seed", "epochs", "batch_size", "lr", "optimizer", "train_size",
          "test_size", "dataset", "hidden_size_list", "dtype", "activation"}
TAGS = {"trial_key", "sweep_id", "dataset", "dataset_sha256", "code_version", "numpy_version", "ray_node",
        "run_kind", "driver", "heartbeat", "cell", "arm"}


def expected_keys(seeds: list[int]) -> set[str]:
    base = {"dataset": "fashion-mnist", "train_size": 200, "test_size": 100, "epochs": 2, "batch_size": 100,
            "lr": 0.01, "optimizer": "sgd", "hidden_size_list": [100] * 5, "activation": "relu", "dtype": "float64"}
    return {trial_key(c) for c in make_grid(base, [0.1, 0.01], [True, False], seeds)}


def test_small_sweep_logs_every_trial_once_then_resumes_and_extends(fashion_mnist_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = run_sweep(*SMALL, "--tracking-uri", uri, "--experiment", EXPERIMENT, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "8 to run" in first.stderr and "8 run, 0 skipped" in first.stderr
    # only the sweep's own lines: Ray's and MLflow's start-up messages need --verbose (test below)
    assert first.stderr.startswith("Sweep "), first.stderr[:2000]
    for noise in ("8.8.8.8", "Token authentication", "logging.cc", "Creating initial MLflow database tables"):
        assert noise not in first.stderr
    exp_id = MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id
    assert (f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open "
            f"http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning") in first.stderr
    # the summary says how long the trials computed: more than nothing, at most every worker busy all along
    done = re.search(r"done in ([0-9.]+) s .*; trials computed ([0-9.]+) s on (\d+) workers, ([0-9.]+) CPU-s\)",
                     first.stderr)
    assert done, first.stderr
    total, computed, workers, cpu = float(done.group(1)), float(done.group(2)), int(done.group(3)), float(done.group(4))
    assert 0 < computed <= workers * total
    assert 0 < cpu <= computed + 0.1  # one BLAS thread: CPU time within the trials' own time (rounded to 0.1)
    # and how long its driver spent in MLflow: part of the sweep, shared by its 8 trials
    mlflow = re.search(r"MLflow calls took ([0-9.]+) s of the driver \(([0-9.]+) ms per trial\)", first.stderr)
    assert mlflow, first.stderr
    assert 0 < float(mlflow.group(1)) < total
    assert float(mlflow.group(2)) == pytest.approx(1000 * float(mlflow.group(1)) / 8, abs=0.7)  # s is rounded to 0.01

    runs = trial_runs(uri, EXPERIMENT)
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    assert set(finished_counts(uri, EXPERIMENT)) == expected_keys([0, 1])
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # the sweep made its store a write-ahead-log one
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r.info.run_name for r in runs}
    assert names == {f"w={w} {arm} seed={s}" for w in ("0.1", "0.01") for arm in ("bn", "plain") for s in (0, 1)}

    client = MlflowClient(uri)
    ((x_tr, t_tr), (x_te, t_te)) = load_dataset("fashion-mnist", FASHION_DIR)
    for run in runs:
        p, tags = run.data.params, run.data.tags
        assert PARAMS <= set(p), PARAMS - set(p)
        assert TAGS <= set(tags), TAGS - set(tags)
        assert p["dataset"] == "fashion-mnist" and p["epochs"] == "2" and p["train_size"] == "200"
        assert p["hidden_size_list"] == "[100, 100, 100, 100, 100]" and p["dtype"] == "float64"
        assert tags["dataset"] == "fashion-mnist" and len(tags["dataset_sha256"]) == 64
        assert tags["dataset_verified"] == "true"  # Debian's files are the official ones
        assert tags["numpy_version"] == np.__version__ and tags["run_kind"] == "trial"
        # MLflow's group-by: one line per compared cell and arm
        assert run.info.run_name.startswith(f"{tags['cell']} {tags['arm']} ")
        assert tags["arm"] == ("bn" if p["use_batchnorm"] == "True" else "plain")
        assert len({r.data.tags["sweep_id"] for r in runs}) == 1
        # Every metric at every epoch, exactly once, and equal to training the same trial here.
        config = {"weight_scale": float(p["weight_scale"]), "use_batchnorm": p["use_batchnorm"] == "True",
                  "seed": int(p["seed"]), "dataset": "fashion-mnist", "train_size": 200, "test_size": 100,
                  "epochs": 2, "batch_size": 100, "lr": 0.01, "optimizer": "sgd",
                  "hidden_size_list": [100] * 5, "activation": "relu", "dtype": "float64"}
        assert tags["trial_key"] == trial_key(config)
        history = run_trial(config, x_tr, t_tr, x_te, t_te)
        for name in ("train_acc", "test_acc", "train_loss"):
            points = client.get_metric_history(run.info.run_id, name)
            assert sorted(m.step for m in points) == [0, 1, 2], name
            logged = [m.value for m in sorted(points, key=lambda m: m.step)]
            assert np.allclose(logged, getattr(history, name), rtol=0, atol=1e-12), name

    again = run_sweep(*SMALL, "--tracking-uri", uri, "--experiment", EXPERIMENT, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Nothing to run" in again.stderr
    assert len(trial_runs(uri, EXPERIMENT)) == 8

    args = [a if a != "0-1" else "0-2" for a in SMALL]
    more = run_sweep(*args, "--tracking-uri", uri, "--experiment", EXPERIMENT, cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "8 already FINISHED, 4 to run" in more.stderr
    counts = finished_counts(uri, EXPERIMENT)
    assert set(counts) == expected_keys([0, 1, 2]) and set(counts.values()) == {1}
    assert len({r.data.tags["sweep_id"] for r in trial_runs(uri, EXPERIMENT)}) == 2


def test_a_copy_of_your_own_runs_as_idx_tagged_unverified_with_its_own_sha256(tmp_path):
    """The same files are refused under an official name (a bad-input case) and accepted as ``--dataset idx``."""
    own = write_idx_dataset(tmp_path / "own", n_train=120, n_test=50, gzip=True, seed=3)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--data-dir", str(own.folder), "--weight-scales", "0.1", "--seeds", "0", "--epochs", "1",
            "--train-size", "100", "--test-size", "50", "--workers", "2", "--tracking-uri", uri]
    refused = run_sweep("--dataset", "mnist", *args, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "pass --dataset idx --data-dir" in refused.stderr, refused.stderr
    assert not (tmp_path / "mlflow.db").exists()

    out = run_sweep("--dataset", "idx", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = trial_runs(uri, "batchnorm-weight-scale", ("FINISHED",))
    assert len(runs) == 2
    for run in runs:
        assert run.data.params["dataset"] == "idx"
        assert run.data.tags["dataset_verified"] == "false" and run.data.tags["dataset_sha256"] == own.checksum


_READER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=0.5)
print(db.execute("select count(*) from experiments").fetchone()[0])
"""


def test_a_reader_of_the_sqlite_store_never_waits_for_the_writer(tmp_path):
    """WAL mode: ``mlflow ui`` or ``python -m analysis`` read the store while the sweep holds a write lock on it."""
    from pipeline.tracker import Tracker

    path = tmp_path / "mlflow.db"
    Tracker(f"sqlite:///{path}").ensure_experiment("wal")  # creates the store as the sweep does
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # a rollback-journal store would lock every reader out until COMMIT
    writer.execute("UPDATE experiments SET name = name")
    try:
        read = subprocess.run([sys.executable, "-c", _READER, str(path)], capture_output=True, text=True, timeout=60)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert read.returncode == 0, read.stderr
    assert int(read.stdout) == 2  # MLflow's Default experiment and ours


def test_dry_run_starts_nothing_and_writes_nothing(fashion_mnist_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = run_sweep(*SMALL, "--tracking-uri", uri, "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "8 would run" in out.stdout
    assert not (tmp_path / "mlflow.db").exists()
    rounds = run_sweep(*SMALL, "--tracking-uri", uri, "--dry-run", "--until-width", "0.3", cwd=tmp_path)
    assert ("Then rounds of 2 seed(s) for each weight scale not yet clear (clear: it is narrower than 0.3), up to "
            "50 seeds per scale.") in rounds.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_a_diverging_trial_fails_alone_the_sweep_goes_on_and_a_rerun_skips_it(fashion_mnist_dir, tmp_path):
    """A huge learning rate makes the loss overflow: FAILED with the reason, the rest finish; training is
    deterministic, so a rerun does not run it again unless asked to."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "1,0.01",
            "--batchnorm", "off", "--seeds", "0", "--epochs", "3", "--train-size", "200", "--test-size", "100",
            "--lr", "1e6", "--workers", "2", "--tracking-uri", uri, "--experiment", "diverge"]
    out = run_sweep(*args, "--verbose", cwd=tmp_path)
    # --verbose shows MLflow's own messages too (hidden by default: the first test)
    assert "Creating initial MLflow database tables" in out.stderr, out.stderr
    runs = trial_runs(uri, "diverge")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert failed and len(runs) == 2, out.stderr
    assert out.returncode == 0, out.stderr  # a divergence is a result of the experiment, not a fault
    assert f"{len(failed)} failed ({len(failed)} of them diverged)" in out.stderr
    for run in failed:
        assert run.data.tags["failure_reason"].startswith("diverged: train_loss is not finite at epoch")
        steps = MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss")
        assert math.isnan(max(steps, key=lambda m: m.step).value)  # the non-finite epoch is logged too

    again = run_sweep(*args, cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to run" in again.stderr, again.stderr
    retried = run_sweep(*args, "--retry-diverged", cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert f"0 run, {2 - len(failed)} skipped" in retried.stderr
    assert len(trial_runs(uri, "diverge", ("FAILED",))) == 2 * len(failed)


@pytest.mark.parametrize("extra", [["--workers", "16"]])
def test_sixteen_trials_at_once_into_sqlite_lose_and_duplicate_nothing(fashion_mnist_dir, tmp_path, extra):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
            "--seeds", "0-3", "--epochs", "3", "--train-size", "200", "--test-size", "100",
            "--flush-seconds", "0.01", *extra]
    out = run_sweep(*args, "--tracking-uri", uri, "--experiment", "many", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = trial_runs(uri, "many")
    counts = finished_counts(uri, "many")
    assert len(runs) == 16 and len(counts) == 16 and set(counts.values()) == {1}
    client = MlflowClient(uri)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_acc")]
        assert sorted(steps) == [0, 1, 2, 3]


def test_two_sweeps_started_at_once_on_a_new_store_finish_every_trial_exactly_once(fashion_mnist_dir, tmp_path):
    """On a new SQLite store each sweep starts the grid's first trials before it has even planned (there is nothing
    to skip). Two such sweeps started together compute some trials twice, but record each exactly once: the later
    claim (or, if both were made before either looked, the check before FINISHED) gives way, and its run is deleted."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [*SMALL, "--tracking-uri", uri, "--experiment", "together"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = SweepProcess(*args, cwd=tmp_path / "a"), SweepProcess(*args, cwd=tmp_path / "b")
    codes = wait_together(first, second, timeout=300)
    assert codes == (0, 0), first.output + second.output
    runs = trial_runs(uri, "together")
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs), "losing claims are deleted"
    assert set(finished_counts(uri, "together")) == expected_keys([0, 1])
    # each recorded its share and accounts for the rest: running in the other sweep when it planned, left to it
    # later, or (one that found everything taken when it had planned) "Nothing to run"
    ran = [int(m.group(1)) if (m := re.search(r"(\d+) run, ", p.output)) else 0 for p in (first, second)]
    assert sum(ran) == 8, first.output + second.output
    for p, n in zip((first, second), ran, strict=True):
        others = sum(int(m.group(1)) for pattern in (r"(\d+) left to a concurrent sweep",
                                                     r"(\d+) trial\(s\) are RUNNING in another live sweep")
                     if (m := re.search(pattern, p.output)))
        assert "Nothing to run" in p.output or n + others == 8, p.output


def measured_before_the_plan(uri: str, runs: list) -> int:
    """How many of ``runs`` (trials of one epoch, each with both epochs logged) measured their first epoch before
    the first of them was created, that is before the sweep had made its plan."""
    client = MlflowClient(uri)
    first_run_created = min(r.info.start_time for r in runs)
    count = 0
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "train_acc")
        assert sorted(m.step for m in history) == [0, 1]
        count += min(m.timestamp for m in history) < first_run_created
    return count


def test_on_a_new_store_the_workers_train_the_next_trials_while_the_plan_is_made(fashion_mnist_dir, tmp_path):
    """A new store's plan waits for MLflow's import and the store's schema, or for another sweep making the store
    (held here, so the plan surely comes after Ray's start). The first trials start before it, and each one that ends
    hands its worker the grid's next trial: with trials of a few milliseconds, more than one per worker has measured
    its first epoch before any run exists. Each is still recorded exactly once, with every epoch."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
            "--seeds", "0-4", "--epochs", "1", "--train-size", "100", "--test-size", "100", "--workers", "2",
            "--tracking-uri", uri, "--experiment", "busy"]
    with plan_delayed(tmp_path / "mlflow.db") as env:
        out = run_sweep(*args, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    runs = trial_runs(uri, "busy")
    assert len(runs) == 20 and set(finished_counts(uri, "busy").values()) == {1}
    measured_before = measured_before_the_plan(uri, runs)
    assert measured_before > 2, f"only {measured_before} trials ran before the plan: the workers waited for it"


def test_on_a_store_that_exists_the_workers_train_the_grids_last_trials_while_the_plan_is_made(
        fashion_mnist_dir, tmp_path):
    """On a store that exists the plan waits for MLflow's import and a read of the store's runs (and here for the
    store's lock, held by the test, so that it surely comes after Ray's start). Meanwhile the
    workers train the grid's trials from its end, where added seeds are: those the plan runs are claimed and keep
    what they measured, those already FINISHED are left to end and write nothing, so every trial is recorded exactly
    once; a complete grid starts some too, leaves them all, and says there is nothing to run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
            "--epochs", "1", "--train-size", "100", "--test-size", "100", "--workers", "2",
            "--tracking-uri", uri, "--experiment", "more"]
    first = run_sweep(*args, "--seeds", "0-1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {r.info.run_id for r in trial_runs(uri, "more")}
    assert len(before) == 8

    with plan_delayed(tmp_path / "mlflow.db") as env:
        more = run_sweep(*args, "--seeds", "0-4", cwd=tmp_path, env=env)
    assert more.returncode == 0, more.stderr
    assert "8 already FINISHED, 12 to run" in more.stderr
    runs = trial_runs(uri, "more")
    assert len(runs) == 20 and set(finished_counts(uri, "more").values()) == {1}
    new = [r for r in runs if r.info.run_id not in before]
    assert {int(r.data.params["seed"]) for r in new} == {2, 3, 4}
    measured_before = measured_before_the_plan(uri, new)
    assert measured_before > 2, f"only {measured_before} trials ran before the plan: the workers waited for it"

    with plan_delayed(tmp_path / "mlflow.db") as env:
        again = run_sweep(*args, "--seeds", "0-4", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "Nothing to run: all 20 trials" in again.stderr, again.stderr
    assert len(trial_runs(uri, "more")) == 20


#: Counts the sweep's ray.cancel calls and the trials it submits.
CANCEL_PROBE = """
import ray
from pipeline import tasks
calls = {"cancel": 0, "submitted": 0}
real_cancel, real_remote = ray.cancel, tasks.train_trial.remote
def cancel(*args, **kwargs):
    calls["cancel"] += 1
    return real_cancel(*args, **kwargs)
def remote(*args, **kwargs):
    calls["submitted"] += 1
    return real_remote(*args, **kwargs)
ray.cancel, tasks.train_trial.remote = cancel, remote
"""


def test_trials_the_plan_leaves_out_are_left_to_end_never_cancelled(fashion_mnist_dir, tmp_path):
    """The trials started before the plan that it does not run (here: the grid's last trials are FINISHED, so the
    guess is wrong, and then the whole grid is) keep their workers until they end, and write nothing. The sweep
    never calls ray.cancel: in Ray 2.60, cancelling a generator task whose end is being reported crashes the
    driver (a Ray check failure), which is what a trial ending while the plan is made is; a CI run lost a sweep
    that way."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
            "--epochs", "1", "--train-size", "100", "--test-size", "100", "--workers", "2",
            "--tracking-uri", uri, "--experiment", "left"]

    def probed(*extra: str) -> tuple[subprocess.CompletedProcess, dict]:
        with plan_delayed(tmp_path / "mlflow.db") as env:  # the plan surely comes after the first trials start
            out, calls = run_probed_sweep(CANCEL_PROBE, "calls", *args, *extra, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        return out, calls

    first, calls = probed("--seeds", "1")
    assert "4 run, 0 skipped" in first.stderr and calls["cancel"] == 0

    lower, calls = probed("--seeds", "0-1")  # the grid's end (seed 1) is FINISHED: the early trials are left
    assert "4 already FINISHED, 4 to run" in lower.stderr
    assert calls["submitted"] > 4, f"no trial was started before the plan and left out of it: {calls}"
    assert calls["cancel"] == 0
    assert len(trial_runs(uri, "left")) == 8 and set(finished_counts(uri, "left").values()) == {1}

    complete, calls = probed("--seeds", "0-1")
    assert "Nothing to run: all 8 trials" in complete.stderr, complete.stderr
    assert calls["submitted"] >= 2 and calls["cancel"] == 0  # a trial per worker started, and left
    assert len(trial_runs(uri, "left")) == 8
