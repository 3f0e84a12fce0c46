"""report.md's words: the setup it names, the store's path, no spread, and what one run cannot tell."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.report import NO_SPREAD, build_report, describe_setup, findings
from analysis.stats import final_summary, paired_comparison
from tracking.uri import display_store

SETUP = {"dataset": "fashion-mnist", "train_size": 1000, "test_size": 500, "epochs": 2, "batch_size": 100,
         "lr": 0.01, "optimizer": "sgd", "hidden_size_list": "[100, 100, 100, 100, 100]", "activation": "relu",
         "dtype": "float64", "code_version": "abc1234"}


def tidy(finals: dict[tuple[float, bool], dict[int, float]]) -> pd.DataFrame:
    """A tidy frame as analysis.load_runs gives it: epochs 0..2, the final accuracies as given per
    (weight scale, BN) and seed, epoch 0 at chance."""
    rows = []
    for (w, bn), by_seed in finals.items():
        for seed, acc in by_seed.items():
            for epoch, value in ((0, 0.1), (1, (0.1 + acc) / 2), (2, acc)):
                rows.append({"run_id": f"{w}-{bn}-{seed}", "weight_scale": w, "use_batchnorm": bn, "seed": seed,
                             "epoch": epoch, "train_acc": value, "test_acc": value, **SETUP})
    df = pd.DataFrame(rows)
    df.attrs["experiment_id"] = "1"
    return df


def report_of(df: pd.DataFrame, uri: str = "sqlite:///mlflow.db") -> str:
    comparison, final = paired_comparison(df), final_summary(df)
    return build_report(experiment="e", tracking_uri=uri, df=df, comparison=comparison, final=final, figures={},
                        curves_scale=0.01, metric="train_acc", width=0.02, alpha=0.05)


def test_the_report_names_every_fixed_hyperparameter_the_seeds_and_the_code_version():
    df = tidy({(0.01, True): {0: 0.8, 1: 0.82, 2: 0.79, 4: 0.81}, (0.01, False): {0: 0.5, 1: 0.6, 2: 0.55, 4: 0.52}})
    lines = describe_setup(df)
    assert lines == ["data set: fashion-mnist", "training samples: 1000", "test samples: 500", "epochs: 2",
                     "batch size: 100", "learning rate: 0.01", "optimizer: sgd",
                     "hidden layers: [100, 100, 100, 100, 100]", "activation: relu", "dtype: float64",
                     "seeds: 0-2, 4", "code version (git commit): abc1234"]
    report = report_of(df)
    for line in lines:
        assert f"- {line}\n" in report


def test_the_report_names_a_sqlite_store_by_its_absolute_path():
    here = Path("mlflow.db").resolve()
    assert display_store("sqlite:///mlflow.db") == f"sqlite:///{here}"
    assert display_store("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    df = tidy({(0.01, True): {0: 0.8, 1: 0.82}, (0.01, False): {0: 0.5, 1: 0.6}})
    assert f"from `sqlite:///{here}`" in report_of(df)


def test_the_same_difference_from_every_seed_is_no_spread_not_a_zero_width_interval():
    bn = {s: 0.977 for s in range(5)}
    plain = {s: 0.095 for s in range(5)}
    df = tidy({(0.01, True): bn, (0.01, False): plain})
    row = paired_comparison(df).query("metric == 'test_acc'").iloc[0]
    assert row["mean_diff"] == np.float64(0.977) - np.float64(0.095) and row["sd_diff"] == 0
    assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"]) and math.isnan(row["p_ttest"])
    assert not row["significant"] and NO_SPREAD in row["note"]
    assert 0 < row["p_wilcoxon"] <= 1  # the signed-rank test still holds: 5 positive differences
    report = report_of(df)
    assert f"+0.882 ({NO_SPREAD})" in report  # the findings' largest difference
    assert f"| 0.882 ({NO_SPREAD}) |" in report  # the table's cell
    assert "+0.882 to +0.882" not in report and "0.0e+00" not in report


def test_one_finished_run_is_not_enough_to_say_an_arm_failed_to_learn():
    """At W=1 one plain run finished (at chance) and four diverged: the report does not call it a failure."""
    df = tidy({(1.0, True): {s: 0.5 + s / 100 for s in range(5)}, (1.0, False): {0: 0.1},
               (0.01, True): {s: 0.8 + s / 100 for s in range(5)}, (0.01, False): {s: 0.1 for s in range(5)}})
    text = findings(paired_comparison(df), final_summary(df), alpha=0.05, width=0.02)
    assert "Without BN the network failed to learn (mean final train accuracy below 0.20; chance is 0.10) at " \
           "W=0.01." in text
    assert "Without BN too few runs finished at W=1.00 (fewer than 2) to say whether it learned there." in text


def test_the_report_gives_the_confidence_sequence_and_says_when_to_read_it():
    """40 seeds with BN 0.3 ahead: both kinds of interval exclude 0; the table shows the CS and its seeds, the
    findings count the scales it decides, and the method says which interval to read when seeds were added."""
    df = tidy({(0.01, True): {s: 0.8 + s / 1000 for s in range(40)}, (0.01, False): {s: 0.5 for s in range(40)},
               (1.0, True): {s: 0.5 + (s % 2) / 10 for s in range(40)}, (1.0, False): {s: 0.55 for s in range(40)}})
    comparison = paired_comparison(df)
    row = comparison.query("metric == 'test_acc' and weight_scale == 0.01").iloc[0]
    assert row["cs_low"] > 0 and row["cs_n"] == 40
    report = report_of(df)
    assert f"| [{row['cs_low']:.3f}, {row['cs_high']:.3f}] (40) |" in report
    assert ("simultaneous over the 2 scales, which stay valid when seeds were added after looking): in test "
            "accuracy BatchNorm is higher at 1 of 2 scales (W=0.01); in train accuracy") in report
    assert "If seeds were added after looking" in report and "only the anytime-valid confidence sequence" in report
