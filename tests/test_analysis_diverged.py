"""Diverged trials (FAILED with failure_reason 'diverged...') are results: counted by default, left out on request."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import load_runs
from analysis.figures import plot_grid
from analysis.load import CHANCE, diverged_counts, without_diverged
from analysis.stats import arm_summary, paired_comparison
from tests.mlflow_fixtures import create_experiment, log_trial_run, make_store, trial_config

EPOCHS = 3


def _history(level: float) -> dict[str, list[float]]:
    return {"train_acc": [0.1, level, level, level], "test_acc": [0.1, level, level, level],
            "train_loss": [2.3, 1.0, 0.5, 0.4]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """BN learns at W=1 and 0.01; plain learns at 0.01 and diverges at W=1 for seeds 0 and 1 (seed 0 at epoch 1
    with a measured accuracy of 0.097, seed 1 at epoch 2 with no accuracy logged there); seed 2 finishes at 0.1."""
    root = tmp_path_factory.mktemp("diverged")
    uri, client = make_store(root)
    exp = create_experiment(client, "div", root / "artifacts")
    for seed in (0, 1, 2):
        for w in (1.0, 0.01):
            log_trial_run(client, exp, trial_config(w, True, seed, epochs=EPOCHS), _history(0.8 + seed / 100))
        log_trial_run(client, exp, trial_config(0.01, False, seed, epochs=EPOCHS), _history(0.5 + seed / 100))
    plain = trial_config(1.0, False, 0, epochs=EPOCHS)
    log_trial_run(client, exp, plain, {"train_acc": [0.1, 0.097], "test_acc": [0.1, 0.099],
                                       "train_loss": [2.3, float("inf")]},
                  status="FAILED", failure_reason="diverged: train_loss is not finite at epoch 1")
    log_trial_run(client, exp, trial_config(1.0, False, 1, epochs=EPOCHS),
                  {"train_acc": [0.1, 0.3, float("nan")], "test_acc": [0.1, 0.3, float("nan")],
                   "train_loss": [2.3, 1.9, float("nan")]},
                  status="FAILED", failure_reason="diverged: train_loss is not finite at epoch 2")
    log_trial_run(client, exp, trial_config(1.0, False, 2, epochs=EPOCHS), _history(0.1))
    # a crash is not a divergence, and is not counted as one
    log_trial_run(client, exp, trial_config(0.01, False, 7, epochs=EPOCHS), _history(0.5), status="FAILED",
                  failure_reason="WorkerCrashedError: ...")
    return uri


def test_counted_diverged_trials_keep_their_measured_accuracy_to_the_last_epoch(store):
    df = load_runs("div", store)
    assert df.attrs["diverged_policy"] == "count"
    assert df["run_id"].nunique() == 12 and df["diverged"].sum() == 2 * (EPOCHS + 1)
    assert diverged_counts(df) == {(1.0, False): 2}
    assert [d["seed"] for d in df.attrs["diverged"]] == [0, 1]
    seed0 = df[(df["weight_scale"] == 1.0) & ~df["use_batchnorm"] & (df["seed"] == 0)].set_index("epoch")
    assert seed0.index.tolist() == [0, 1, 2, 3]
    assert seed0["train_acc"].tolist() == [0.1, 0.097, 0.097, 0.097]
    assert seed0["test_acc"].tolist() == [0.1, 0.099, 0.099, 0.099]
    assert seed0.loc[0, "train_loss"] == 2.3 and seed0.loc[2:, "train_loss"].isna().all()
    seed1 = df[(df["weight_scale"] == 1.0) & ~df["use_batchnorm"] & (df["seed"] == 1)].set_index("epoch")
    assert seed1["train_acc"].tolist() == [0.1, 0.3, CHANCE, CHANCE]  # nothing measured at the divergence
    assert 7 not in set(df["seed"])  # the crash is neither a result nor a divergence

    row = paired_comparison(df).set_index(["weight_scale", "metric"]).loc[(1.0, "train_acc")]
    assert row["n_plain"] == 3 and row["n_pairs"] == 3 and row["cs_n"] == 3
    assert row["mean_plain"] == pytest.approx((0.097 + CHANCE + 0.1) / 3)
    assert math.isfinite(row["ci_low"]) and math.isfinite(row["p_ttest"])

    fig = plot_grid(arm_summary(df), "train_acc", diverged=diverged_counts(df), counted=True)
    texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.get_axes()}
    assert texts["W=1.00"] == ["n: BN 3, plain 3 (2 diverged)"]
    assert texts["W=0.01"] == []  # the same n everywhere and nothing diverged: nothing to say


def test_excluded_diverged_trials_are_counted_apart_as_before(store):
    loaded = load_runs("div", store, diverged="exclude")
    derived = without_diverged(load_runs("div", store))
    for df in (loaded, derived):
        assert df.attrs["diverged_policy"] == "exclude"
        assert df["run_id"].nunique() == 10 and not df["diverged"].any()
        assert diverged_counts(df) == {(1.0, False): 2}
        row = paired_comparison(df).set_index(["weight_scale", "metric"]).loc[(1.0, "train_acc")]
        assert row["n_plain"] == 1 and row["n_pairs"] == 1 and np.isnan(row["ci_low"])
    assert loaded[["trial_key", "epoch", "train_acc"]].equals(derived[["trial_key", "epoch", "train_acc"]])

    fig = plot_grid(arm_summary(loaded), "train_acc", diverged=diverged_counts(loaded))
    texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.get_axes()}
    assert texts["W=1.00"] == ["n: BN 3, plain 1 (+2 diverged)"]


def test_an_unknown_policy_is_refused(store):
    with pytest.raises(ValueError, match="diverged must be one of"):
        load_runs("div", store, diverged="chance")
