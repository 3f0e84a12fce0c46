"""The sweep against a real ``mlflow server`` on 127.0.0.1 (SQLite behind it), started by the test."""

from __future__ import annotations

import re
import signal
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.sweep_helpers import FASHION_DIR, SMALL, SweepProcess, finished_counts, run_sweep, trial_runs
from tests.topology import mlflow_server


@pytest.fixture()
def server(tmp_path):
    with mlflow_server(f"sqlite:///{tmp_path}/server.db") as srv:
        yield srv


def test_small_sweep_against_a_tracking_server_resumes_and_extends(fashion_mnist_dir, tmp_path, server):
    uri = server.url
    first = run_sweep(*SMALL, "--tracking-uri", uri, "--experiment", "served", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "8 run, 0 skipped" in first.stderr
    assert f"open {uri}/#/experiments/" in first.stderr
    counts = finished_counts(uri, "served")
    assert len(counts) == 8 and set(counts.values()) == {1}
    client = MlflowClient(uri)
    for run in trial_runs(uri, "served"):
        for name in ("train_acc", "test_acc", "train_loss"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, name)) == [0, 1, 2]
        assert {"trial_key", "sweep_id", "dataset_sha256", "ray_node", "code_version"} <= set(run.data.tags)
    assert not (tmp_path / "mlflow.db").exists(), "nothing may go to the local default store"

    again = run_sweep(*SMALL, "--tracking-uri", uri, "--experiment", "served", cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to run" in again.stderr, again.stderr

    more = run_sweep(*[a if a != "0-1" else "0-2" for a in SMALL], "--tracking-uri", uri, "--experiment", "served",
                     cwd=tmp_path)
    assert more.returncode == 0 and "4 to run" in more.stderr, more.stderr
    counts = finished_counts(uri, "served")
    assert len(counts) == 12 and set(counts.values()) == {1}


def test_sixteen_trials_at_once_into_a_server_lose_and_duplicate_nothing(fashion_mnist_dir, tmp_path, server):
    args = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
            "--seeds", "0-3", "--epochs", "3", "--train-size", "200", "--test-size", "100",
            "--flush-seconds", "0.01", "--workers", "16"]
    out = run_sweep(*args, "--tracking-uri", server.url, "--experiment", "many", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = finished_counts(server.url, "many")
    assert len(trial_runs(server.url, "many")) == 16 and len(counts) == 16 and set(counts.values()) == {1}
    client = MlflowClient(server.url)
    for run in trial_runs(server.url, "many"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_acc")) == [0, 1, 2, 3]


def test_ctrl_c_while_the_server_is_down_stops_at_once_and_the_next_sweep_finishes_everything(
        fashion_mnist_dir, tmp_path, server):
    args = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
            "--seeds", "0", "--epochs", "40", "--train-size", "1000", "--test-size", "200", "--flush-seconds", "0.2",
            "--workers", "2", "--tracking-uri", server.url, "--experiment", "down", "--tracking-retry", "600"]
    sweep = SweepProcess(*args, cwd=tmp_path)
    try:
        sweep.wait_started()
        deadline = time.monotonic() + 120
        while not any(r.info.status == "RUNNING" for r in trial_runs(server.url, "down")):
            assert time.monotonic() < deadline and sweep.proc.poll() is None, sweep.output
            time.sleep(0.1)
        server.stop(kill=True)
        while "retrying in" not in sweep.output:  # the sweep waits for the store: its retry budget is 600 s
            assert time.monotonic() < deadline and sweep.proc.poll() is None, sweep.output
            time.sleep(0.1)
        sweep.proc.send_signal(signal.SIGINT)
        code = sweep.wait(60)  # not the 600 s budget: Ctrl-C ends the wait, the cleanup gives up after seconds
    finally:
        sweep.kill()
        if not server.running:
            server.start()
    assert code == 130, sweep.output
    assert "their runs stay RUNNING until the next sweep ends them as orphans" in sweep.output, sweep.output
    assert "Traceback" not in sweep.output, sweep.output
    left = [r for r in trial_runs(server.url, "down") if r.info.status == "RUNNING"]
    assert left

    again = run_sweep(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"Ended {len(left)} orphaned RUNNING run(s)" in again.stderr
    counts = finished_counts(server.url, "down")
    assert len(counts) == 4 and set(counts.values()) == {1}


def test_a_server_down_past_the_retry_budget_ends_the_sweep_with_the_exact_count(fashion_mnist_dir, tmp_path, server):
    """The count of trials not recorded is what the store lacks, also for a trial being claimed or ended just then."""
    args = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
            "--seeds", "0-3", "--epochs", "30", "--train-size", "500", "--test-size", "100", "--flush-seconds", "0.2",
            "--workers", "2", "--tracking-uri", server.url, "--experiment", "gone", "--tracking-retry", "2"]
    sweep = SweepProcess(*args, cwd=tmp_path)
    try:
        sweep.wait_started()
        deadline = time.monotonic() + 120
        while sum(r.info.status == "FINISHED" for r in trial_runs(server.url, "gone")) < 2:
            assert time.monotonic() < deadline and sweep.proc.poll() is None, sweep.output
            time.sleep(0.05)
        server.stop(kill=True)
        code = sweep.wait(120)
    finally:
        sweep.kill()
        if not server.running:
            server.start()
    assert code == 1, sweep.output
    found = re.search(r"stayed unavailable for 2s .*\. (\d+) trial\(s\) were recorded; (\d+) were not", sweep.output)
    assert found, sweep.output
    recorded, not_recorded = int(found.group(1)), int(found.group(2))
    assert recorded == len(finished_counts(server.url, "gone")) >= 2
    assert recorded + not_recorded == 16
