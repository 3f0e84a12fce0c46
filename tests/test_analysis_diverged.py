"""Diverged trials (FAILED with failure_reason 'diverged...') stay out of the statistics but are counted."""

from __future__ import annotations

import numpy as np

from analysis import load_runs
from analysis.figures import plot_grid
from analysis.load import diverged_counts
from analysis.stats import arm_summary, paired_comparison
from tests.mlflow_fixtures import create_experiment, log_trial_run, make_store, trial_config

EPOCHS = 2


def _history(level: float) -> dict[str, list[float]]:
    return {"train_acc": [0.1, level, level], "test_acc": [0.1, level, level], "train_loss": [2.3, 1.0, 0.5]}


def test_diverged_trials_are_counted_apart_and_annotated(tmp_path):
    uri, client = make_store(tmp_path)
    exp = create_experiment(client, "div", tmp_path / "artifacts")
    for seed in (0, 1, 2):
        for w in (1.0, 0.01):
            log_trial_run(client, exp, trial_config(w, True, seed, epochs=EPOCHS), _history(0.8 + seed / 100))
        log_trial_run(client, exp, trial_config(0.01, False, seed, epochs=EPOCHS), _history(0.5 + seed / 100))
        # plain at w=1 diverges for seeds 0 and 1; seed 2 finishes
        if seed < 2:
            log_trial_run(client, exp, trial_config(1.0, False, seed, epochs=EPOCHS),
                          {"train_acc": [0.1, float("nan")], "test_acc": [0.1, float("nan")],
                           "train_loss": [2.3, float("nan")]},
                          status="FAILED", failure_reason="diverged: train_loss is not finite at epoch 1")
        else:
            log_trial_run(client, exp, trial_config(1.0, False, seed, epochs=EPOCHS), _history(0.1))
    # a crash is not a divergence, and is not counted as one
    log_trial_run(client, exp, trial_config(0.01, False, 7, epochs=EPOCHS), _history(0.5), status="FAILED",
                  failure_reason="WorkerCrashedError: ...")

    df = load_runs("div", uri)
    assert df["run_id"].nunique() == 10
    assert diverged_counts(df) == {(1.0, False): 2}
    assert [d["seed"] for d in df.attrs["diverged"]] == [0, 1]
    comparison = paired_comparison(df)
    row = comparison[(comparison["weight_scale"] == 1.0) & (comparison["metric"] == "train_acc")].iloc[0]
    assert row["n_plain"] == 1 and row["n_pairs"] == 1 and np.isnan(row["ci_low"])

    fig = plot_grid(arm_summary(df), "train_acc", diverged=diverged_counts(df))
    texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.get_axes()}
    assert texts["W=1.00"] == ["n: BN 3, plain 1 (+2 diverged)"]
    assert texts["W=0.01"] == ["n: BN 3, plain 3"]
