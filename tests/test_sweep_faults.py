"""Faults on one machine: a worker process killed mid-trial, the driver killed mid-sweep, Ctrl-C."""

from __future__ import annotations

import signal
import threading
import time

import psutil
from mlflow.tracking import MlflowClient

from tests.sweep_helpers import (
    FASHION_DIR,
    SweepProcess,
    finished_counts,
    run_sweep,
    trial_runs,
    trial_workers,
)

#: Trials long enough (a second or two each) to be caught in the middle.
SLOW = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
        "--batchnorm", "both", "--epochs", "40", "--train-size", "1000", "--test-size", "200",
        "--flush-seconds", "0.2", "--workers", "2"]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _assert_each_trial_finished_once_with_full_history(uri: str, experiment: str, n_trials: int, epochs: int):
    counts = finished_counts(uri, experiment)
    assert len(counts) == n_trials and set(counts.values()) == {1}, counts
    client = MlflowClient(uri)
    for run in trial_runs(uri, experiment, ("FINISHED",)):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_acc"))
        assert steps == list(range(epochs + 1)), (run.info.run_name, steps)


def test_a_worker_killed_mid_trial_is_retried_and_logged_exactly_once(fashion_mnist_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # One worker: the trials run one after another, so one trial or another streams for the whole sweep (~5 s), not
    # for the second or two two workers take, which a test's first look into a new store (~1 s, more on a busy
    # machine) could miss altogether.
    sweep = SweepProcess(*SLOW, "--workers", "1", "--seeds", "0", "--tracking-uri", uri, "--experiment",
                         "kill-worker", cwd=tmp_path)
    try:
        sweep.wait_started()
        client = MlflowClient(uri)

        def streaming_worker():
            """A worker whose trial has already sent epochs to MLflow."""
            running = trial_runs(uri, "kill-worker", ("RUNNING",))
            started = [r for r in running if client.get_metric_history(r.info.run_id, "train_acc")]
            workers = trial_workers()
            return workers[0] if started and workers else None

        _wait_for(streaming_worker, 120, "a trial to stream epochs").kill()
        code = sweep.wait(300)
    finally:
        sweep.kill()
    assert code == 0, sweep.output
    _assert_each_trial_finished_once_with_full_history(uri, "kill-worker", 4, 40)
    assert len(trial_runs(uri, "kill-worker")) == 4  # the retried task kept its one run


def test_a_worker_killed_before_its_trial_sent_an_epoch_is_recorded_as_retried(fashion_mnist_dir, tmp_path):
    """After the first trials (one item per epoch) the driver asks for an item per --flush-seconds: 30 s here, so
    every later trial sends its epochs in one item at its end. A worker killed while it trains such a trial has sent
    nothing but where it runs; its retry is recorded all the same."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [*SLOW, "--epochs", "80", "--flush-seconds", "30", "--seeds", "0", "--tracking-uri", uri,
            "--experiment", "kill-early"]
    sweep = SweepProcess(*args, cwd=tmp_path)
    try:
        sweep.wait_started()
        # all 4 runs claimed: the two first trials have ended, the two last train, each to send one item
        workers = _wait_for(lambda: len(trial_runs(uri, "kill-early")) == 4 and trial_workers(), 120,
                            "the last two trials to start")
        workers[0].kill()
        code = sweep.wait(300)
    finally:
        sweep.kill()
    assert code == 0, sweep.output
    _assert_each_trial_finished_once_with_full_history(uri, "kill-early", 4, 80)
    attempts = sorted(r.data.tags.get("task_attempts", "1") for r in trial_runs(uri, "kill-early"))
    assert attempts == ["1", "1", "1", "2"], sweep.output
    assert "1 retried after losing their worker" in sweep.output


def test_a_killed_driver_leaves_orphans_that_the_next_sweep_ends_and_reruns(fashion_mnist_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # One worker: trials end one by one and the later ones wait unclaimed, several seconds in which the driver is
    # killed with some trials finished, one running and some not started (two workers claim all 8 in ~4 s).
    args = [*SLOW, "--workers", "1", "--seeds", "0-1", "--tracking-uri", uri, "--experiment", "kill-driver"]
    sweep = SweepProcess(*args, cwd=tmp_path)
    try:
        sweep.wait_started()

        def mid_sweep():
            statuses = [r.info.status for r in trial_runs(uri, "kill-driver")]
            return "FINISHED" in statuses and "RUNNING" in statuses

        _wait_for(mid_sweep, 180, "one trial finished and one running")
        sweep.proc.send_signal(signal.SIGKILL)
        sweep.wait(30)
    finally:
        sweep.kill()
    before = {r.info.run_id: r.info.status for r in trial_runs(uri, "kill-driver")}
    orphans = [run_id for run_id, status in before.items() if status == "RUNNING"]
    assert orphans and len(before) < 8

    again = run_sweep(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"Ended {len(orphans)} orphaned RUNNING run(s)" in again.stderr
    _assert_each_trial_finished_once_with_full_history(uri, "kill-driver", 8, 40)
    client = MlflowClient(uri)
    for run_id in orphans:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["failure_reason"].startswith("orphaned")


def test_ctrl_c_ends_unfinished_runs_killed_exits_130_and_rerun_finishes(fashion_mnist_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [*SLOW, "--seeds", "0-1", "--tracking-uri", uri, "--experiment", "ctrl-c"]
    sweep = SweepProcess(*args, cwd=tmp_path)
    try:
        sweep.wait_started()
        _wait_for(lambda: any(r.info.status == "RUNNING" for r in trial_runs(uri, "ctrl-c")), 180, "a running trial")
        sweep.proc.send_signal(signal.SIGINT)
        code = sweep.wait(120)
    finally:
        sweep.kill()
    assert code == 130, sweep.output
    assert "Resume with the same command" in sweep.output
    statuses = [r.info.status for r in trial_runs(uri, "ctrl-c")]
    assert "RUNNING" not in statuses and "KILLED" in statuses

    again = run_sweep(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    _assert_each_trial_finished_once_with_full_history(uri, "ctrl-c", 8, 40)


def test_ctrl_c_records_the_trials_that_ended_complete_while_they_wait_for_their_check(fashion_mnist_dir, tmp_path):
    """A trial that ended waits up to --flush-seconds for the search that makes it FINISHED exactly once (one search
    serves every trial that ends meanwhile). Ctrl-C in that wait still records it FINISHED: it is a result, and only
    the trials still computing end KILLED."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # With a long flush a running trial logs nothing until it ends: a RUNNING run with metrics has ended complete.
    args = [*SLOW, "--seeds", "0-2", "--flush-seconds", "120", "--tracking-uri", uri, "--experiment", "held"]
    sweep = SweepProcess(*args, cwd=tmp_path)
    try:
        sweep.wait_started()
        held = _wait_for(lambda: [r.info.run_id for r in trial_runs(uri, "held", ("RUNNING",)) if r.data.metrics],
                         180, "a trial that ended and waits for its check")
        sweep.proc.send_signal(signal.SIGINT)
        code = sweep.wait(120)
    finally:
        sweep.kill()
    assert code == 130, sweep.output
    client = MlflowClient(uri)
    for run_id in held:
        assert client.get_run(run_id).info.status == "FINISHED", sweep.output
    statuses = [r.info.status for r in trial_runs(uri, "held")]
    assert "RUNNING" not in statuses and "KILLED" in statuses, statuses
    finished = statuses.count("FINISHED")
    assert f"Interrupted: {finished} trial(s) finished" in sweep.output, sweep.output

    again = run_sweep(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    _assert_each_trial_finished_once_with_full_history(uri, "held", 12, 40)


def test_a_cancelled_preparer_writes_nothing_to_mlflow(fashion_mnist_dir, tmp_path, capsys):
    """The thread that plans against MLflow while Ray starts stops at its next step after Ctrl-C."""
    from pipeline.sweep import _prepare, build_parser, trial_grid
    from pipeline.trials import trial_key

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = build_parser().parse_args([*SLOW, "--seeds", "0", "--tracking-uri", uri, "--experiment", "prepared"])
    base, grid = trial_grid(args)
    keys = [trial_key(c) for c in grid]

    cancelled, out, data_ready = threading.Event(), {}, threading.Event()
    cancelled.set()
    _prepare(args, uri, base, grid, keys, out, cancelled, data_ready)
    assert set(out) == {"data"} and data_ready.is_set()  # the data is loaded first (the first trials need it)
    assert capsys.readouterr().err == "" and not (tmp_path / "mlflow.db").exists()

    out = {}
    _prepare(args, uri, base, grid, keys, out, threading.Event())  # the same, not cancelled
    assert "error" not in out and len(out["plan"].todo) == len(grid) == 4
    assert MlflowClient(uri).get_experiment_by_name("prepared").experiment_id == out["plan"].exp_id


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_ctrl_c_while_ray_starts_exits_130_in_one_line_records_nothing_and_leaves_no_ray_behind(
        fashion_mnist_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = SweepProcess(*SLOW, "--seeds", "0", "--tracking-uri", uri, "--experiment", "ctrl-c-start", cwd=tmp_path)
    try:
        # Ray is starting once the driver has a child (its GCS server): seconds before the first trial could.
        children = _wait_for(lambda: psutil.Process(sweep.proc.pid).children(recursive=True), 60, "Ray to start")
        sweep.proc.send_signal(signal.SIGINT)
        code = sweep.wait(60)
    finally:
        sweep.kill()
    assert code == 130, sweep.output
    assert "interrupted while starting; no trial had started" in sweep.output, sweep.output
    assert "Traceback" not in sweep.output and "trials in the grid" not in sweep.output, sweep.output
    assert trial_runs(uri, "ctrl-c-start") == []
    _wait_for(lambda: not any(_alive(c) for c in children), 30, "Ray's processes to end with the driver")
