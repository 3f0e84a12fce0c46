"""The history cache of the analysis: ended runs' histories kept per store, read back only while valid."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric

from analysis import load_runs
from analysis.histories import HistoryCache, fingerprint, store_key
from tests.mlflow_fixtures import create_experiment, log_trial_run, make_store, trial_config

EPOCHS = 3


def _history(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"train_acc": rng.uniform(0, 1, EPOCHS + 1), "test_acc": rng.uniform(0, 1, EPOCHS + 1),
            "train_loss": rng.uniform(0, 3, EPOCHS + 1)}


def _log_seeds(client, exp_id, seeds, rng) -> list[str]:
    return [log_trial_run(client, exp_id, trial_config(w, bn, seed, epochs=EPOCHS), _history(rng))
            for w in (0.01, 0.1) for bn in (True, False) for seed in seeds]


@pytest.fixture
def store(tmp_path):
    uri, client = make_store(tmp_path / "store")
    return uri, client, create_experiment(client, "exp", tmp_path / "artifacts")


def test_adding_seeds_fetches_only_the_new_runs_and_gives_the_frame_of_no_cache(store, tmp_path):
    uri, client, exp_id = store
    rng = np.random.default_rng(0)
    first = _log_seeds(client, exp_id, (0, 1), rng)
    # a NaN, and a value logged twice at one step (the later counts): kept as such by the cache
    later = int(time.time() * 1000) + 10**6
    client.log_batch(first[0], metrics=[Metric("train_loss", float("nan"), later, 1),
                                        Metric("test_acc", 0.5, later, 2)])
    cache = tmp_path / "cache"
    loaded = load_runs("exp", uri, cache_dir=cache)
    assert loaded.attrs["history_counts"] == {"cached": 0, "fetched": 8}
    again = load_runs("exp", uri, cache_dir=cache)
    assert again.attrs["history_counts"] == {"cached": 8, "fetched": 0}
    pd.testing.assert_frame_equal(again, loaded)
    row = again.set_index(["run_id", "epoch"]).loc[first[0]]
    assert np.isnan(row.loc[1, "train_loss"]) and row.loc[2, "test_acc"] == 0.5

    _log_seeds(client, exp_id, (2,), rng)
    more = load_runs("exp", uri, cache_dir=cache)
    assert more.attrs["history_counts"] == {"cached": 8, "fetched": 4}
    pd.testing.assert_frame_equal(more, load_runs("exp", uri))  # the same as without a cache
    assert load_runs("exp", uri).attrs["history_counts"] == {"cached": 0, "fetched": 12}


def test_a_run_that_changed_after_it_was_cached_is_fetched_again(store, tmp_path):
    uri, client, exp_id = store
    run_ids = _log_seeds(client, exp_id, (0,), np.random.default_rng(1))
    cache = tmp_path / "cache"
    load_runs("exp", uri, cache_dir=cache)
    # MLflow's client lets anyone log to an ended run: its latest value changes, so its cached history is stale
    client.log_batch(run_ids[0], metrics=[Metric("train_acc", 0.999, int(time.time() * 1000), EPOCHS + 1)])
    changed = load_runs("exp", uri, cache_dir=cache)
    assert changed.attrs["history_counts"] == {"cached": 3, "fetched": 1}
    assert changed.set_index(["run_id", "epoch"]).loc[(run_ids[0], EPOCHS + 1), "train_acc"] == 0.999
    pd.testing.assert_frame_equal(changed, load_runs("exp", uri))


def test_a_run_that_has_not_ended_is_never_cached(store):
    uri, client, exp_id = store
    rng = np.random.default_rng(2)
    running = log_trial_run(client, exp_id, trial_config(0.1, True, 0, epochs=EPOCHS), _history(rng),
                            status="RUNNING")
    ended = log_trial_run(client, exp_id, trial_config(0.1, True, 1, epochs=EPOCHS), _history(rng))
    assert fingerprint(client.get_run(running), "train_acc") is None
    print_ = fingerprint(client.get_run(ended), "train_acc")
    assert print_ is not None and print_ != fingerprint(client.get_run(ended), "test_acc")


@pytest.mark.parametrize("breakage", ["not-sqlite", "under-a-file"])
def test_an_unusable_cache_is_left_aside_with_one_warning(store, tmp_path, caplog, breakage):
    uri, client, exp_id = store
    _log_seeds(client, exp_id, (0,), np.random.default_rng(3))
    cache = tmp_path / "cache"
    if breakage == "not-sqlite":
        cache.mkdir()
        HistoryCache(cache, uri).path.write_bytes(b"not a database, " * 100)
    else:  # the folder cannot be made (as on a read-only disk, also for root)
        (tmp_path / "file").write_text("")
        cache = tmp_path / "file" / "cache"
    with caplog.at_level(logging.WARNING, logger="analysis.histories"):
        df = load_runs("exp", uri, cache_dir=cache)
    assert df.attrs["history_counts"] == {"cached": 0, "fetched": 4}
    pd.testing.assert_frame_equal(df, load_runs("exp", uri))
    warnings = [r for r in caplog.records if r.name == "analysis.histories"]
    assert len(warnings) == 1 and "left aside" in warnings[0].getMessage()


def test_a_store_is_named_by_where_it_is_without_credentials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store_key("sqlite:///mlflow.db") == store_key(f"sqlite:///{tmp_path}/mlflow.db")
    assert store_key("http://alice:secret@127.0.0.1:5000") == store_key("http://127.0.0.1:5000")
    assert store_key("http://127.0.0.1:5000") != store_key("http://127.0.0.1:5001")
    assert store_key("sqlite:///a.db") != store_key("sqlite:///b.db")
