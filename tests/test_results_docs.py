"""The published results (docs/results and the README's table) are those of this code's model.

They are made by the README's Results commands; whenever the model's arithmetic changes they must be made again.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"


def test_the_published_results_were_made_by_the_model_of_this_commit():
    report = (RESULTS / "report.md").read_text(encoding="utf-8")
    found = re.search(r"^- code version \(git commit\): ([0-9a-f]{40})(-dirty)?$", report, re.M)
    assert found, "report.md names no code version: regenerate docs/results (README, Results)"
    assert not found.group(2), "docs/results was made from uncommitted code: regenerate it from a commit"
    diff = subprocess.run(["git", "-C", str(REPO), "diff", "--stat", found.group(1), "--", "model/"],
                          capture_output=True, text=True, timeout=60)
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout == "", (f"model/ changed since {found.group(1)[:7]}, which made docs/results: regenerate it "
                               f"with the README's Results commands\n{diff.stdout}")


def _readme_rows() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8").split("## Results", 1)[1]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith(("| W ", "| ---"))]
    return [r for r in rows if len(r) == 9]


def _cell(x: float) -> str:
    return "—" if pd.isna(x) else f"{x:.3f}"


def test_the_readmes_table_is_comparison_csv():
    comparison = pd.read_csv(RESULTS / "comparison.csv")
    test = comparison[comparison["metric"] == "test_acc"].sort_values("weight_scale", ascending=False)
    rows = _readme_rows()
    assert len(rows) == len(test) == 16
    for row, (_, want) in zip(rows, test.iterrows(), strict=True):
        w, pairs, bn, plain, diff, ci = row[:6]
        assert float(w) == float(f"{want['weight_scale']:.3g}")
        assert int(pairs.split()[0]) == want["n_pairs"]
        assert bn == _cell(want["mean_bn"]) and plain == _cell(want["mean_plain"])
        assert diff == ("—" if pd.isna(want["mean_diff"]) else f"{want['mean_diff']:+.3f}")
        if not pd.isna(want["ci_low"]):
            assert ci == f"[{want['ci_low']:+.3f}, {want['ci_high']:+.3f}]", (w, ci)
        assert row[6] == f"[{want['cs_low']:+.3f}, {want['cs_high']:+.3f}]", (w, row[6])  # the anytime-valid CS


def test_what_the_readmes_commands_leave_in_the_folder_is_ignored_by_git():
    """The main job's store (a SQLite file in WAL mode: -wal and -shm beside it), the analysis' output folder and
    MLflow's artifact folders, the Results and Recipes commands' store, and the virtual environment of the Quick
    start."""
    left = ["mlflow.db", "mlflow.db-wal", "mlflow.db-shm", "analysis-out/report.md", "mlruns/1/meta.yaml",
            "mlartifacts/1/a/artifacts/grid.png", "results.db", "results.db-wal", "recipes.db", "recipes.db-shm",
            "analysis-out/bn-lr/grid_lr-1.png", ".venv/bin/python"]
    checked = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *left],
                             capture_output=True, text=True, timeout=60)
    assert sorted(checked.stdout.split()) == sorted(left), checked.stderr
