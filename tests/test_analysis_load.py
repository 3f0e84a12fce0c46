"""analysis.load_runs against real MLflow stores holding runs with known histories."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric

from analysis import AnalysisError, load_runs
from tests.mlflow_fixtures import (
    create_experiment,
    free_port,
    log_trial_run,
    make_store,
    start_mlflow_server,
    stop_mlflow_server,
    trial_config,
    trial_key,
)

EPOCHS = 4
T0 = 1_700_000_000_000


def random_history(rng: np.random.Generator, epochs: int = EPOCHS) -> dict[str, np.ndarray]:
    return {
        "train_acc": rng.uniform(0, 1, epochs + 1),
        "test_acc": rng.uniform(0, 1, epochs + 1),
        "train_loss": rng.uniform(0, 3, epochs + 1),
    }


@pytest.fixture
def store(tmp_path):
    uri, client = make_store(tmp_path / "store")
    exp_id = create_experiment(client, "exp", tmp_path / "artifacts")
    return uri, client, exp_id


def log_known_grid(client, exp_id, scales=(0.01, 0.5), seeds=(0, 1, 2), rng_seed=1):
    """Log FINISHED trial runs with random known histories; returns {(w, bn, seed): (run_id, hist, cfg)}."""
    rng = np.random.default_rng(rng_seed)
    known = {}
    start = T0
    for w in scales:
        for bn in (True, False):
            for seed in seeds:
                cfg = trial_config(w, bn, seed, epochs=EPOCHS)
                hist = random_history(rng)
                run_id = log_trial_run(client, exp_id, cfg, hist, start_time_ms=start)
                start += 1000
                known[(w, bn, seed)] = (run_id, hist, cfg)
    return known


def db_digest(uri: str) -> str:
    return hashlib.sha256(Path(uri[len("sqlite:///"):]).read_bytes()).hexdigest()


def test_tidy_frame_holds_exactly_the_logged_histories(store):
    uri, client, exp_id = store
    known = log_known_grid(client, exp_id)
    df = load_runs("exp", uri)

    assert list(df.columns[:9]) == ["run_id", "trial_key", "weight_scale", "use_batchnorm", "seed", "epoch",
                                    "train_acc", "test_acc", "train_loss"]
    assert len(df) == len(known) * (EPOCHS + 1)
    assert df["weight_scale"].dtype == np.float64
    assert df["use_batchnorm"].dtype == bool
    for col in ("seed", "epoch", "epochs", "batch_size", "train_size", "test_size"):
        assert df[col].dtype == np.int64, col
    assert df["lr"].dtype == np.float64
    assert set(df["dataset"]) == {"fashion-mnist"}
    assert set(df["hidden_size_list"]) == {"[100, 100, 100, 100, 100]"}
    assert df["start_time"].dt.tz is not None

    for (w, bn, seed), (run_id, hist, cfg) in known.items():
        rows = df[df["run_id"] == run_id].sort_values("epoch")
        assert rows["epoch"].tolist() == list(range(EPOCHS + 1))
        assert set(rows["weight_scale"]) == {w}
        assert set(rows["use_batchnorm"]) == {bn}
        assert set(rows["seed"]) == {seed}
        assert set(rows["trial_key"]) == {trial_key(cfg)}
        for metric, values in hist.items():
            np.testing.assert_array_equal(rows[metric].to_numpy(), values)
    assert df.attrs["duplicates"] == []
    assert df.attrs["skipped"] == []
    assert df.attrs["n_finished_runs"] == len(known)
    assert df.attrs["history_counts"] == {"cached": 0, "fetched": len(known)}


def test_only_finished_trial_runs_count(store):
    """A run that failed for any reason but divergence, was killed, still runs, is no trial or is deleted is no
    result; with --diverged exclude a diverged run is none either (tests/test_analysis_diverged.py counts it)."""
    uri, client, exp_id = store
    known = log_known_grid(client, exp_id, scales=(0.1,), seeds=(0,))
    rng = np.random.default_rng(5)
    others = {}
    for i, status in enumerate(("FAILED", "KILLED", "RUNNING")):
        cfg = trial_config(0.1, True, 10 + i, epochs=EPOCHS)
        others[status] = log_trial_run(client, exp_id, cfg, random_history(rng), status=status,
                                       failure_reason="diverged" if status == "FAILED" else None)
    cfg = trial_config(0.1, True, 20, epochs=EPOCHS)
    others["analysis"] = log_trial_run(client, exp_id, cfg, random_history(rng), run_kind="analysis")
    others["deleted"] = log_trial_run(client, exp_id, trial_config(0.1, True, 21, epochs=EPOCHS),
                                      random_history(rng))
    client.delete_run(others["deleted"])

    others["crashed"] = log_trial_run(client, exp_id, trial_config(0.1, True, 22, epochs=EPOCHS),
                                      random_history(rng), status="FAILED", failure_reason="WorkerCrashedError: ...")

    df = load_runs("exp", uri, diverged="exclude")
    assert set(df["run_id"]) == {run_id for run_id, _, _ in known.values()}
    assert df.attrs["n_finished_runs"] == len(known)
    counted = load_runs("exp", uri)
    assert set(counted["run_id"]) == set(df["run_id"]) | {others["FAILED"]}


def test_duplicate_trial_keys_keep_the_earliest_and_are_reported(store, caplog):
    uri, client, exp_id = store
    rng = np.random.default_rng(2)
    cfg = trial_config(0.01, True, 0, epochs=EPOCHS)
    later = log_trial_run(client, exp_id, cfg, random_history(rng), start_time_ms=T0 + 5000)
    earliest_hist = random_history(rng)
    earliest = log_trial_run(client, exp_id, cfg, earliest_hist, start_time_ms=T0)
    # same start time as another run of one key: the smaller run_id wins
    cfg2 = trial_config(0.01, False, 0, epochs=EPOCHS)
    tie = sorted(log_trial_run(client, exp_id, cfg2, random_history(rng), start_time_ms=T0) for _ in range(2))

    with caplog.at_level(logging.WARNING, logger="analysis.load"):
        df = load_runs("exp", uri)
    assert set(df["run_id"]) == {earliest, tie[0]}
    rows = df[df["run_id"] == earliest].sort_values("epoch")
    np.testing.assert_array_equal(rows["train_acc"].to_numpy(), earliest_hist["train_acc"])
    dups = {d["trial_key"]: d for d in df.attrs["duplicates"]}
    assert dups[trial_key(cfg)]["kept_run_id"] == earliest
    assert dups[trial_key(cfg)]["dropped_run_ids"] == [later]
    assert dups[trial_key(cfg2)]["kept_run_id"] == tie[0]
    assert dups[trial_key(cfg2)]["dropped_run_ids"] == [tie[1]]
    assert dups[trial_key(cfg)]["seed"] == 0 and dups[trial_key(cfg)]["use_batchnorm"] is True
    assert any("several FINISHED runs" in r.getMessage() for r in caplog.records)


def test_nan_values_missing_metrics_and_repeated_steps(store):
    uri, client, exp_id = store
    hist = random_history(np.random.default_rng(3))
    hist["train_loss"][2] = np.nan
    hist["test_acc"][EPOCHS] = np.nan
    nan_run = log_trial_run(client, exp_id, trial_config(0.01, True, 0, epochs=EPOCHS), hist)
    # a run without test data logs no test_acc at all
    no_test = {k: v for k, v in random_history(np.random.default_rng(4)).items() if k != "test_acc"}
    no_test_run = log_trial_run(client, exp_id, trial_config(0.01, False, 0, epochs=EPOCHS), no_test)
    # a value logged twice at one step: the later one counts
    client.log_batch(nan_run, metrics=[Metric("train_acc", 0.123, int(time.time() * 1000) + 10**6, 1)])

    df = load_runs("exp", uri).set_index(["run_id", "epoch"])
    assert np.isnan(df.loc[(nan_run, 2), "train_loss"])
    assert np.isnan(df.loc[(nan_run, EPOCHS), "test_acc"])
    assert df.loc[(nan_run, 1), "train_acc"] == 0.123
    assert df.loc[(nan_run, 0), "train_acc"] == hist["train_acc"][0]
    assert df.loc[no_test_run, "test_acc"].isna().all()
    np.testing.assert_array_equal(df.loc[no_test_run, "train_acc"].to_numpy(), no_test["train_acc"])


def test_unusable_runs_are_skipped_and_listed(store):
    uri, client, exp_id = store
    rng = np.random.default_rng(6)
    good = log_trial_run(client, exp_id, trial_config(0.01, True, 0, epochs=EPOCHS), random_history(rng))
    no_key = log_trial_run(client, exp_id, trial_config(0.01, True, 1, epochs=EPOCHS), random_history(rng))
    client.delete_tag(no_key, "trial_key")
    no_values = log_trial_run(client, exp_id, trial_config(0.01, True, 2, epochs=EPOCHS), {})
    bad = {text: log_trial_run(client, exp_id, {**trial_config(0.01, True, 3 + i, epochs=EPOCHS),
                                                 "weight_scale": text}, random_history(rng))
           for i, text in enumerate(("0", "-0.1", "nan", "inf", "fast"))}
    df = load_runs("exp", uri)
    assert set(df["run_id"]) == {good}
    reasons = {s["run_id"]: s["reason"] for s in df.attrs["skipped"]}
    assert reasons == {no_key: "no trial_key tag", no_values: "no metric values",
                       **{run: f"bad or missing param: weight_scale {text!r} is neither a positive number nor one "
                               "of he, xavier" for text, run in bad.items() if text != "fast"},
                       bad["fast"]: "bad or missing param: could not convert string to float: 'fast'"}


def test_named_weight_scales_load_beside_numbers_and_sort_after_them(store):
    uri, client, exp_id = store
    rng = np.random.default_rng(7)
    runs = {(w, bn): log_trial_run(client, exp_id, {**trial_config(0.01, bn, 0, epochs=EPOCHS), "weight_scale": w},
                                   random_history(rng))
            for w in ("xavier", "0.1", "He", "0.01") for bn in (True, False)}
    df = load_runs("exp", uri)
    assert df.attrs["skipped"] == []
    firsts = df.drop_duplicates("run_id")
    assert firsts["weight_scale"].tolist() == [0.01, 0.01, 0.1, 0.1, "he", "he", "xavier", "xavier"]
    assert firsts["use_batchnorm"].tolist() == [False, True] * 4
    assert set(firsts["run_id"]) == set(runs.values())


def test_no_finished_trials_gives_an_empty_frame_with_the_columns(store):
    uri, client, exp_id = store
    log_trial_run(client, exp_id, trial_config(0.01, True, 0, epochs=EPOCHS),
                  random_history(np.random.default_rng(0)), status="RUNNING")
    df = load_runs("exp", uri)
    assert df.empty
    assert {"run_id", "weight_scale", "use_batchnorm", "seed", "epoch", "train_acc", "test_acc"} <= set(df.columns)


def test_unknown_experiment_raises_and_creates_nothing(store):
    uri, client, _ = store
    before = [e.name for e in client.search_experiments()]
    digest = db_digest(uri)
    with pytest.raises(AnalysisError, match="'nope' not found"):
        load_runs("nope", uri)
    assert [e.name for e in client.search_experiments()] == before
    assert db_digest(uri) == digest


def test_deleted_experiment_is_an_error(store):
    uri, client, exp_id = store
    client.delete_experiment(exp_id)
    with pytest.raises(AnalysisError, match="deleted"):
        load_runs("exp", uri)


def test_missing_sqlite_store_is_not_created(tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(AnalysisError, match="no MLflow store"):
        load_runs("exp", f"sqlite:///{path}")
    assert not path.exists()


def test_non_mlflow_sqlite_file_is_rejected(tmp_path):
    path = tmp_path / "other.db"
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x)")
    con.close()
    before = path.read_bytes()
    with pytest.raises(AnalysisError, match="a SQLite database of another application, not an MLflow store"):
        load_runs("exp", f"sqlite:///{path}")
    assert path.read_bytes() == before


def test_unreachable_server_fails_fast():
    t0 = time.monotonic()
    with pytest.raises(AnalysisError, match="is unreachable"):
        load_runs("exp", f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - t0 < 30  # not MLflow's minutes of retries (a bound, not a benchmark)


def test_tracking_uri_defaults_to_the_environment(store, monkeypatch):
    uri, client, exp_id = store
    known = log_known_grid(client, exp_id, scales=(0.1,), seeds=(0,))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    df = load_runs("exp")
    assert set(df["run_id"]) == {run_id for run_id, _, _ in known.values()}


@pytest.mark.slow
def test_server_load_equals_sqlite_load_and_both_cache_apart(tmp_path):
    """Through a real ``mlflow server`` the same frame as from its SQLite store, NaN included; each store has a cache
    of its own, and a second load through the server reads every history from its cache."""
    uri, client = make_store(tmp_path / "store")
    exp_id = create_experiment(client, "exp", tmp_path / "artifacts")
    known = log_known_grid(client, exp_id, scales=(0.01, 0.1, 1.0), seeds=(0, 1, 2, 3))
    hist = random_history(np.random.default_rng(9))
    hist["train_loss"][1] = np.nan
    nan_run = log_trial_run(client, exp_id, trial_config(0.2, True, 0, epochs=EPOCHS), hist)
    cache = tmp_path / "cache"
    direct = load_runs("exp", uri, cache_dir=cache)
    assert len(direct) == (len(known) + 1) * (EPOCHS + 1)

    proc, url = start_mlflow_server(uri, tmp_path / "server")
    try:
        for cached in (0, len(known) + 1):
            via_server = load_runs("exp", url, cache_dir=cache)
            assert via_server.attrs["history_counts"] == {"cached": cached, "fetched": len(known) + 1 - cached}
            pd.testing.assert_frame_equal(via_server, direct)
            assert np.isnan(via_server.set_index(["run_id", "epoch"]).loc[(nan_run, 1), "train_loss"])
    finally:
        stop_mlflow_server(proc)
    assert len(list(cache.glob("*.sqlite"))) == 2
