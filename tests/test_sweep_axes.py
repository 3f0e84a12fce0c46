"""Every hyperparameter an axis: comma lists make a grid of every combination; extending an axis runs only its new
cells; a default trial keeps the trial key it always had. Real Ray, a real SQLite store, Fashion-MNIST."""

from __future__ import annotations

import collections

import pytest

from pipeline.sweep import build_parser, trial_grid
from pipeline.trials import make_grid, trial_key
from tests.sweep_helpers import FASHION_DIR, finished_counts, run_sweep, trial_runs

EXPERIMENT = "axes"
TINY = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.01", "--seeds", "0",
        "--epochs", "1", "--train-size", "100", "--test-size", "100", "--workers", "2", "--experiment", EXPERIMENT]


def grid_of(*args: str, uri: str = "sqlite:///never-made.db") -> tuple[dict, list[dict]]:
    return trial_grid(build_parser().parse_args([*args, "--tracking-uri", uri]))


def test_a_default_trial_keeps_the_key_it_had_before_the_axes():
    """Pinned: the keys of main before any hyperparameter could vary (so no FINISHED run of an old store reruns)."""
    _, grid = grid_of("--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.01",
                      "--seeds", "0")
    assert [trial_key(c) for c in grid] == ["b84cf96961d7c4fd", "0e4956a6ba12a59d"]
    assert "weight_decay" not in grid[0] and "dropout" not in grid[0]  # at their defaults they are not in a config
    base = {"dataset": "mnist", "train_size": 1000, "test_size": 1000, "epochs": 20, "batch_size": 100, "lr": 0.01,
            "optimizer": "sgd", "hidden_size_list": [100] * 5, "activation": "relu", "dtype": "float64"}
    assert trial_key(make_grid(base, [1.0], [True], [3])[0]) == "f0786ee8de932a52"


def test_the_grid_is_the_product_of_every_axis():
    base, grid = grid_of(*TINY, "--lr", "0.01,0.1", "--optimizer", "sgd,adam", "--hidden-sizes", "20,20;10",
                         "--weight-decay", "0,0.01", "--dropout", "0.2", "--weight-scales", "0.01,he")
    assert len(grid) == 2 * 2 * 2 * 2 * 2 * 2  # lr, optimizer, hidden sizes, weight decay, scales, arms (1 seed)
    combos = {(c["lr"], c["optimizer"], tuple(c["hidden_size_list"]), c.get("weight_decay", 0.0), c["weight_scale"],
               c["use_batchnorm"]) for c in grid}
    assert len(combos) == len(grid)
    assert {c["dropout"] for c in grid} == {0.2} and base["dropout"] == 0.2  # one value: fixed, in every config
    assert {c["weight_scale"] for c in grid} == {0.01, "he"}
    assert len({trial_key(c) for c in grid}) == len(grid)


def test_two_extra_axes_end_to_end_and_extending_one_runs_only_its_new_cells(fashion_mnist_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = run_sweep(*TINY, "--lr", "0.01,0.1", "--optimizer", "sgd,adam", "--tracking-uri", uri, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "8 to run" in first.stderr
    runs = trial_runs(uri, EXPERIMENT, ("FINISHED",))
    seen = collections.Counter()
    for run in runs:
        p, tags = run.data.params, run.data.tags
        seen[(p["lr"], p["optimizer"], p["use_batchnorm"])] += 1
        cell = f"w=0.01 lr={float(p['lr']):g} optimizer={p['optimizer']}"
        assert tags["cell"] == cell and tags["arm"] == ("bn" if p["use_batchnorm"] == "True" else "plain")
        assert run.info.run_name == f"w=0.01 {tags['arm']} seed=0 lr={float(p['lr']):g} optimizer={p['optimizer']}"
    assert set(seen.values()) == {1} and len(seen) == 8

    more = run_sweep(*TINY, "--lr", "0.01,0.1,0.5", "--optimizer", "sgd,adam", "--tracking-uri", uri, cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "12 trials in the grid, 8 already FINISHED, 4 to run" in more.stderr
    counts = finished_counts(uri, EXPERIMENT)
    assert len(counts) == 12 and set(counts.values()) == {1}
    new = {float(r.data.params["lr"]) for r in trial_runs(uri, EXPERIMENT, ("FINISHED",))
           if r.data.tags["sweep_id"] != runs[0].data.tags["sweep_id"]}
    assert new == {0.5}


@pytest.mark.parametrize("rule", [["--until-decided"], ["--until-width", "0.5"]])
def test_rounds_refuse_extra_axes_and_named_scales(rule, tmp_path):
    out = run_sweep(*TINY, "--lr", "0.01,0.1", *rule, "--tracking-uri", f"sqlite:///{tmp_path}/m.db", cwd=tmp_path)
    assert out.returncode == 2 and "adds seeds per weight scale, and --lr give several values" in out.stderr
    out = run_sweep(*TINY, "--weight-scales", "he,0.01", *rule, "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                    cwd=tmp_path)
    assert out.returncode == 2 and "compares numeric weight scales, and --weight-scales names he" in out.stderr
    assert not (tmp_path / "m.db").exists()
