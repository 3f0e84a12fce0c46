"""``python -m analysis`` on temporary real MLflow stores: files, the analysis run, and the error cases."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import ViewType

from analysis import load_runs
from analysis.cli import main
from analysis.scales import scale_labels
from tests.mlflow_fixtures import (
    create_experiment,
    free_port,
    log_grid,
    log_trial_run,
    make_store,
    start_mlflow_server,
    stop_mlflow_server,
    trial_config,
)

REPO = Path(__file__).resolve().parents[1]
SCALES = (1.0, 0.1, 0.01, 0.001)
SEEDS = (0, 1, 2)
FILES = {"grid.png", "grid.svg", "curves.png", "curves.svg", "final_accuracy.png", "final_accuracy.svg",
         "difference.png", "difference.svg", "summary.csv", "comparison.csv", "intervals.csv", "report.md"}


@pytest.fixture(autouse=True)
def _restore_http_env(monkeypatch):
    """The CLI sets MLflow's HTTP retry env vars; keep them from leaking into other tests."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, os.environ.get(name, "2"))


@pytest.fixture
def sweep(tmp_path):
    uri, client = make_store(tmp_path / "store")
    exp_id = create_experiment(client, "sweep", tmp_path / "artifacts")
    logged = log_grid(client, exp_id, SCALES, SEEDS, epochs=3)
    return uri, client, exp_id, logged


def db_digest(uri: str) -> str:
    return hashlib.sha256(Path(uri[len("sqlite:///"):]).read_bytes()).hexdigest()


def all_runs(client, exp_id):
    return client.search_runs([exp_id], run_view_type=ViewType.ALL, max_results=1000)


def test_cli_writes_files_and_logs_one_analysis_run(sweep, tmp_path, capsys):
    uri, client, exp_id, logged = sweep
    out = tmp_path / "out"
    assert main(["--experiment", "sweep", "--tracking-uri", uri, "--out", str(out), "--width", "0.05"]) == 0
    captured = capsys.readouterr()
    assert {p.name for p in out.iterdir()} == FILES
    assert f"wrote {out / 'report.md'}" in captured.out
    assert "loaded 24 runs" in captured.err

    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == len(SCALES) * 2 * 3 * 4  # scales x arms x metrics x epochs
    comparison = pd.read_csv(out / "comparison.csv")
    assert sorted(comparison["weight_scale"].unique()) == sorted(SCALES)
    assert set(comparison["n_pairs"]) == {3}
    report = (out / "report.md").read_text()
    for w in SCALES:
        assert f"| {scale_labels(SCALES)[w]} |" in report

    analysis_runs = [r for r in all_runs(client, exp_id) if r.data.tags.get("run_kind") == "analysis"]
    assert len(analysis_runs) == 1
    run = analysis_runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("analysis ")
    assert run.data.params["n_runs"] == "24"
    assert run.data.params["n_weight_scales"] == "4"
    assert run.data.params["seeds_per_arm"] == "3"
    assert run.data.params["width"] == "0.05"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == FILES
    assert run.info.run_id in captured.out

    # each cell's mean and intervals by number of seeds: the CS at 3 seeds is the one in comparison.csv, and
    # MLflow's history of it has one value per seed (step = n)
    intervals = pd.read_csv(out / "intervals.csv")
    assert len(intervals) == len(SCALES) * 2 * 3 and set(intervals["n"]) == {1, 2, 3}
    w = SCALES[2]
    key = f"test_acc/W{scale_labels(SCALES)[w]}"
    row = comparison.set_index(["weight_scale", "metric"]).loc[(w, "test_acc")]
    assert run.data.metrics[f"{key}/cs_low"] == pytest.approx(row["cs_low"])
    assert run.data.metrics[f"{key}/ci_high"] == pytest.approx(row["ci_high"])
    cs_high = client.get_metric_history(run.info.run_id, f"{key}/cs_high")
    assert [m.step for m in cs_high] == [1, 2, 3]
    assert [m.value for m in cs_high] == sorted((m.value for m in cs_high), reverse=True)  # it only narrows
    assert [m.step for m in client.get_metric_history(run.info.run_id, f"{key}/ci_low")] == [2, 3]


def test_rerun_ignores_the_analysis_run_and_sees_added_seeds(sweep, tmp_path, capsys):
    uri, client, exp_id, logged = sweep
    out = tmp_path / "out"
    assert main(["--experiment", "sweep", "--tracking-uri", uri, "--out", str(out)]) == 0
    df = load_runs("sweep", uri)
    assert set(df["run_id"]) == {t.run_id for t in logged}
    # seeds added later, and a sweep still running: only FINISHED runs count
    added = log_grid(client, exp_id, SCALES, (3,), epochs=3, rng_seed=7)
    log_trial_run(client, exp_id, trial_config(0.1, True, 4, epochs=3),
                  {"train_acc": [0.1, 0.2]}, status="RUNNING")
    capsys.readouterr()
    assert main(["--experiment", "sweep", "--tracking-uri", uri, "--out", str(out)]) == 0
    assert "loaded 32 runs" in capsys.readouterr().err
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["n_pairs"]) == {4}
    runs = all_runs(client, exp_id)
    analysis = [r for r in runs if r.data.tags.get("run_kind") == "analysis"]
    assert sorted(r.data.params["n_runs"] for r in analysis) == ["24", "32"]
    assert len(runs) == len(logged) + len(added) + 1 + 2


def test_duplicates_are_printed_and_reported(sweep, tmp_path, capsys):
    uri, client, exp_id, logged = sweep
    first = logged[0]
    dup = log_trial_run(client, exp_id, first.config, first.history, start_time_ms=10**13)
    assert main(["--experiment", "sweep", "--tracking-uri", uri, "--out", str(tmp_path / "o"), "--no-log"]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("duplicate trial"))
    assert first.run_id in line and dup in line
    assert dup in (tmp_path / "o" / "report.md").read_text()
    assert not [r for r in all_runs(client, exp_id) if r.data.tags.get("run_kind") == "analysis"]


def test_default_out_dir_scale_and_metric_options(sweep, tmp_path, monkeypatch, capsys):
    uri, client, exp_id, _ = sweep
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["--experiment", "sweep", "--scale", "0.2", "--metric", "test_acc", "--no-log"]) == 0
    out = tmp_path / "analysis-out" / "sweep"
    assert {p.name for p in out.iterdir()} == FILES
    err = capsys.readouterr().err
    assert "nearest present scale W=0.10" in err
    report = (out / "report.md").read_text()
    assert "Train and test accuracy at W=0.10" in report
    assert "Test accuracy per weight scale" in report


def test_unknown_experiment_exits_2_and_leaves_the_store_untouched(sweep, tmp_path, capsys):
    uri, client, exp_id, _ = sweep
    experiments = [e.name for e in client.search_experiments(view_type=ViewType.ALL)]
    digest = db_digest(uri)
    assert main(["--experiment", "nope", "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m analysis: error: experiment 'nope' not found")
    assert [e.name for e in client.search_experiments(view_type=ViewType.ALL)] == experiments
    assert db_digest(uri) == digest
    assert not (tmp_path / "o").exists()


def test_experiment_without_finished_trials_exits_2_and_logs_nothing(tmp_path, capsys):
    uri, client = make_store(tmp_path / "store")
    exp_id = create_experiment(client, "empty", tmp_path / "artifacts")
    rng = np.random.default_rng(0)
    log_trial_run(client, exp_id, trial_config(0.1, True, 0, epochs=2),
                  {"train_acc": rng.uniform(size=3)}, status="FAILED")
    log_trial_run(client, exp_id, trial_config(0.1, True, 1, epochs=2),
                  {"train_acc": rng.uniform(size=3)}, run_kind="analysis")
    digest = db_digest(uri)
    assert main(["--experiment", "empty", "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "python -m analysis: error: experiment 'empty' at " in err and "has no FINISHED trial runs" in err
    assert db_digest(uri) == digest
    assert len(all_runs(client, exp_id)) == 2


def test_missing_store_exits_2_without_creating_it(tmp_path, capsys):
    path = tmp_path / "absent.db"
    assert main(["--experiment", "x", "--tracking-uri", f"sqlite:///{path}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("python -m analysis: error: no MLflow store at")
    assert not path.exists()


def test_bad_option_values_are_usage_errors(capsys):
    for argv in (["--width", "0"], ["--width", "abc"], ["--scale", "-1"], ["--metric", "loss"], ["--alpha", "2"]):
        with pytest.raises(SystemExit) as exc:
            main(["--experiment", "x", *argv])
        assert exc.value.code == 2, argv
        assert "error:" in capsys.readouterr().err


def test_module_entry_point_help_and_unreachable_server(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    shown = subprocess.run([sys.executable, "-m", "analysis", "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0
    for option, default in (("--experiment", "batchnorm-weight-scale"), ("--tracking-uri", "sqlite:///mlflow.db"),
                            ("--out", "analysis-out/<experiment>"), ("--scale", "0.01"), ("--metric", "train_acc"),
                            ("--width", "0.02")):
        assert option in shown.stdout and default in shown.stdout, option
    url = f"http://127.0.0.1:{free_port()}"
    failed = subprocess.run([sys.executable, "-m", "analysis", "--experiment", "x", "--tracking-uri", url],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"python -m analysis: error: tracking server {url} is unreachable")
    assert not (tmp_path / "analysis-out").exists()


@pytest.mark.slow
def test_cli_against_a_real_mlflow_server(sweep, tmp_path, capsys):
    uri, client, exp_id, logged = sweep
    proc, url = start_mlflow_server(uri, tmp_path / "server")
    try:
        out = tmp_path / "out"
        cache = tmp_path / "cache"
        assert main(["--experiment", "sweep", "--tracking-uri", url, "--out", str(out), "--cache-dir", str(cache)]) == 0
        assert f"(histories: 0 from the cache in {cache}, 24 fetched)" in capsys.readouterr().err
        assert {p.name for p in out.iterdir()} == FILES
        from mlflow.tracking import MlflowClient

        remote = MlflowClient(url)
        runs = remote.search_runs([exp_id], "tags.run_kind = 'analysis'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert {a.path for a in remote.list_artifacts(runs[0].info.run_id)} == FILES
        assert main(["--experiment", "sweep", "--tracking-uri", url, "--out", str(out), "--cache-dir", str(cache),
                     "--no-log"]) == 0
        assert f"(histories: 24 from the cache in {cache}, 0 fetched)" in capsys.readouterr().err
        assert main(["--experiment", "nope", "--tracking-uri", url]) == 2
        assert "error: experiment 'nope' not found" in capsys.readouterr().err
        assert "nope" not in [e.name for e in remote.search_experiments()]
    finally:
        stop_mlflow_server(proc)


def test_diverged_trials_are_counted_by_default_and_the_report_gives_both_policies(sweep, tmp_path, capsys):
    """Plain at W=1 diverges for seeds 3 and 4 (added to the 3-seed grid): counted, W=1 has 5 pairs; with
    --diverged exclude it has 3, and both reports show the cells that read differently."""
    uri, client, exp_id, _ = sweep
    for seed in (3, 4):
        log_trial_run(client, exp_id, trial_config(1.0, True, seed, epochs=3),
                      {"train_acc": [0.1, 0.6, 0.7, 0.8], "test_acc": [0.1, 0.6, 0.7, 0.8],
                       "train_loss": [2.3, 1.0, 0.8, 0.6]})
        log_trial_run(client, exp_id, trial_config(1.0, False, seed, epochs=3),
                      {"train_acc": [0.1, 0.098], "test_acc": [0.1, 0.101], "train_loss": [2.3, float("nan")]},
                      status="FAILED", failure_reason="diverged: train_loss is not finite at epoch 1")
    pairs = {}
    for policy in ("count", "exclude"):
        out = tmp_path / policy
        args = ["--experiment", "sweep", "--tracking-uri", uri, "--out", str(out), "--no-log"]
        assert main(args + (["--diverged", policy] if policy == "exclude" else [])) == 0
        comparison = pd.read_csv(out / "comparison.csv").set_index(["weight_scale", "metric"])
        pairs[policy] = int(comparison.loc[(1.0, "test_acc"), "n_pairs"])
        assert comparison.loc[(1.0, "test_acc"), "plain_diverged"] == 2
        report = (out / "report.md").read_text()
        assert "## Diverged trials: counted or left out" in report
        other = "exclude" if policy == "count" else "count"
        assert f"with --diverged {other} (BN \u2212 plain" in report
        assert f"| test accuracy | {scale_labels(SCALES)[1.0]} |" in report
        assert f"2 trial(s) diverged (non-finite loss; {'counted as results' if policy == 'count' else 'FAILED'}" \
            in report
    assert pairs == {"count": 5, "exclude": 3}
    assert "counted as nets that failed to learn (--diverged count)" in capsys.readouterr().out
