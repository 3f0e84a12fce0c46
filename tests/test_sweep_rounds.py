"""``--until-decided`` / ``--until-width``: seeds added in rounds only to the scales not yet clear; Ctrl-C resumes.

Real Ray, a real SQLite store, Fashion-MNIST (Debian's package). With 5 epochs on 300 samples BatchNorm beats the
plain net at W=0.01 by about 0.5 in test accuracy, and at W=0.1 the two are close: the first is decided after a few
rounds, the second runs to --max-seeds.
"""

from __future__ import annotations

import collections
import re
import signal
import time

import pytest

from analysis import load_runs
from analysis.stats import interval_history
from pipeline import rounds
from tests.sweep_helpers import FASHION_DIR, SweepProcess, finished_counts, run_sweep, trial_runs

EXPERIMENT = "rounds"
ROUNDS = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
          "--seeds", "0-3", "--epochs", "5", "--train-size", "300", "--test-size", "200", "--workers", "2",
          "--experiment", EXPERIMENT, "--until-decided", "--max-seeds", "24"]
STEP, MAX = 4, 24


def seeds_per_arm(uri: str) -> dict[tuple[float, bool], list[int]]:
    out = collections.defaultdict(list)
    for run in trial_runs(uri, EXPERIMENT, ("FINISHED",)):
        p = run.data.params
        out[(float(p["weight_scale"]), p["use_batchnorm"] == "True")].append(int(p["seed"]))
    return {k: sorted(v) for k, v in out.items()}


def table_rows(output: str) -> dict[float, tuple[int, str]]:
    """The final table: {W: (seeds, status)}."""
    rows = {}
    for line in output.splitlines():
        m = re.match(r"\s+([0-9.e-]+)\s+(\d+)\s+[+-][0-9.]+\s+\[[^]]+\]\s+[0-9.]+\s+(.+)$", line)
        if m:
            rows[float(m.group(1))] = (int(m.group(2)), m.group(3).strip())
    return rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    uri = f"sqlite:///{root}/mlflow.db"
    result = run_sweep(*ROUNDS, "--tracking-uri", uri, cwd=root)
    assert result.returncode == 0, result.stderr
    return uri, result


def test_seeds_are_added_only_to_the_scales_not_yet_decided(uninterrupted):
    uri, result = uninterrupted
    rows = table_rows(result.stdout)
    assert set(rows) == {0.1, 0.01}, result.stdout
    decided_at, status = rows[0.01]
    assert status == "excludes 0" and STEP < decided_at < MAX and decided_at % STEP == 0
    assert rows[0.1] == (MAX, f"not clear at {MAX} seeds")
    assert "Seeds until clear: 1 scale(s) not clear at --max-seeds 24 after" in result.stderr
    # the rounds said what they ran: both scales until W=0.01 was decided, then W=0.1 alone
    rounds = re.findall(r"Round (\d+): (\d) of 2 scale\(s\) not yet clear \(W=([^)]*)\)", result.stderr)
    assert [int(n) for n, _, _ in rounds] == list(range(2, MAX // STEP + 1))
    both, alone = decided_at // STEP - 1, (MAX - decided_at) // STEP
    assert [w for _, _, w in rounds] == ["0.1, 0.01"] * both + ["0.1"] * alone

    # the store: W=0.01 stopped as soon as it was decided, W=0.1 got every seed; each trial FINISHED once
    seeds = seeds_per_arm(uri)
    for bn in (True, False):
        assert seeds[(0.01, bn)] == list(range(decided_at))
        assert seeds[(0.1, bn)] == list(range(MAX))
    assert set(finished_counts(uri, EXPERIMENT).values()) == {1}
    # and the analysis reads the same sequence: it excluded 0 at the last round, not at the one before
    history = interval_history(load_runs(EXPERIMENT, uri), metrics=("test_acc",)).set_index(["weight_scale", "n"])
    assert history.loc[(0.01, decided_at), "cs_low"] > 0
    before = history.loc[(0.01, decided_at - STEP)]
    assert before["cs_low"] <= 0 <= before["cs_high"]


def test_ctrl_c_in_a_round_and_the_same_command_finishes_the_same_rounds(uninterrupted, tmp_path):
    uri_full, full = uninterrupted
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = SweepProcess(*ROUNDS, "--tracking-uri", uri, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while "Round 3:" not in sweep.output and sweep.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Round 3:" in sweep.output, sweep.output
        sweep.proc.send_signal(signal.SIGINT)
        assert sweep.wait(120) == 130, sweep.output
    finally:
        sweep.kill()
    assert "Resume with the same command" in sweep.output
    partial = seeds_per_arm(uri)
    assert max(len(v) for v in partial.values()) < MAX  # it stopped part-way

    resumed = run_sweep(*ROUNDS, "--tracking-uri", uri, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert seeds_per_arm(uri) == seeds_per_arm(uri_full)
    assert table_rows(resumed.stdout) == table_rows(full.stdout)
    assert set(finished_counts(uri, EXPERIMENT).values()) == {1}
    # nothing the interrupted sweep left RUNNING: its runs were ended KILLED and then rerun
    assert not trial_runs(uri, EXPERIMENT, ("RUNNING",))


def test_a_width_rule_clears_the_scales_whose_sequence_is_narrow_enough(uninterrupted):
    """pipeline.rounds.assess on the store above with --until-width: a scale is clear once its CS is narrower than
    W, and the next round holds the next seeds of the others only."""
    uri, _ = uninterrupted
    base = {"dataset": "fashion-mnist", "train_size": 300, "test_size": 200, "epochs": 5, "batch_size": 100,
            "lr": 0.01, "optimizer": "sgd", "hidden_size_list": [100] * 5, "activation": "relu", "dtype": "float64"}
    widths = rounds.assess(uri, EXPERIMENT, base, [0.1, 0.01], rounds.Until(None, True, MAX, 0, STEP)).table
    widths = widths.set_index("weight_scale")["width"]
    cut = (widths[0.1] + widths[0.01]) / 2  # between the two: one scale is narrower, the other not
    state = rounds.assess(uri, EXPERIMENT, base, [0.1, 0.01], rounds.Until(cut, False, MAX + STEP, 0, STEP))
    status = state.table.set_index("weight_scale")["status"]
    narrow = widths.idxmin()
    assert status[narrow] == f"narrower than {cut:g}" and status[widths.idxmax()] == "not clear"
    seeds = seeds_per_arm(uri)
    wide = widths.idxmax()
    assert {(c["weight_scale"], c["seed"]) for c in state.next_grid} == \
        {(wide, s) for s in range(len(seeds[(wide, True)]) + STEP)}
