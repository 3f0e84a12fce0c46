"""From a small real sweep to the report: the analysis reads what the sweep logged, while it runs and after."""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from analysis import load_runs
from tests.sweep_helpers import FASHION_DIR, REPO, SweepProcess, finished_counts, run_sweep, sweep_env

GRID = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
        "--batchnorm", "both", "--train-size", "1000", "--test-size", "200", "--workers", "2"]


def _analyse(uri: str, experiment: str, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", "--experiment", experiment, "--tracking-uri", uri,
                           "--out", str(out)], cwd=REPO, env=sweep_env(), capture_output=True, text=True,
                          timeout=300)


def _analysis_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.run_kind = 'analysis'", ViewType.ACTIVE_ONLY,
                              order_by=["attributes.start_time ASC"])


def test_sweep_to_report_while_running_and_after_adding_seeds(fashion_mnist_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # A sweep still running: the analysis uses what is FINISHED so far.
    sweep = SweepProcess(*GRID, "--seeds", "0-1", "--epochs", "30", "--tracking-uri", uri, "--experiment", "e2e",
                         cwd=tmp_path)
    try:
        sweep.wait_started()
        deadline = time.monotonic() + 180
        while sum(finished_counts(uri, "e2e").values()) < 2:
            assert time.monotonic() < deadline and sweep.proc.poll() is None, sweep.output
            time.sleep(0.2)
        before = sum(finished_counts(uri, "e2e").values())
        during = _analyse(uri, "e2e", tmp_path / "during")
        assert sweep.wait(600) == 0, sweep.output
    finally:
        sweep.kill()
    assert during.returncode == 0, during.stderr
    used = int(_analysis_runs(uri, "e2e")[0].data.params["n_runs"])
    assert before <= used < 8 or used == 8  # a snapshot of what was FINISHED, never a RUNNING run

    # Seeds added later: the next analysis uses all of them, and never loads an analysis run as a trial.
    more = run_sweep(*GRID, "--seeds", "0-2", "--epochs", "30", "--tracking-uri", uri, "--experiment", "e2e",
                     cwd=tmp_path)
    assert more.returncode == 0 and "4 to run" in more.stderr, more.stderr
    after = _analyse(uri, "e2e", tmp_path / "after")
    assert after.returncode == 0, after.stderr
    latest = _analysis_runs(uri, "e2e")[-1]
    assert latest.data.params["n_runs"] == "12" and latest.data.params["n_seeds"] == "3"

    df = load_runs("e2e", uri)
    assert df["run_id"].nunique() == 12 and len(df) == 12 * 31
    assert set(df["weight_scale"]) == {0.1, 0.01} and set(df["seed"]) == {0, 1, 2}

    out = tmp_path / "after"
    for name in ("grid", "curves", "final_accuracy", "difference"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["weight_scale"]) == {0.1, 0.01}
    assert (summary["n"] == 3).all()
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["weight_scale"]) == {0.1, 0.01}
    report = (out / "report.md").read_text()
    assert "grid.png" in report and "difference.png" in report
    assert "0.1" in report and "0.01" in report
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(latest.info.run_id)}
    assert {"grid.png", "difference.png", "summary.csv", "comparison.csv", "report.md"} <= artifacts
