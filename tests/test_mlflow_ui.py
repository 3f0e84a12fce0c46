"""The MLflow UI opens a sweep's experiment on its runs, in a real headless Chromium against a real ``mlflow server``.

What MLflow 3.17 does, found by loading its pages: the experiment page follows the UI's "GenAI | Model training"
switch, which it reads from the address's ``workflowType`` query parameter, else from the browser's stored choice
(default: GenAI, an overview of traces). The experiment tag ``mlflow.experimentKind = custom_model_development``,
which the sweep sets, does not choose the view. So:

- the address the sweep prints (``tracking.uri.runs_view_url``) opens the runs table, and a trial run opened the
  same way says "Runs" in its breadcrumb, not "Evaluations";
- the bare experiment address opens the GenAI overview: the control that shows the checks can fail. Should a later
  MLflow honour the tag, that test fails, and the bare address is then enough.

Each page is loaded by a fresh Chromium profile (no stored choice), ``--dump-dom`` after ``--virtual-time-budget``
for the assertions, and ``--screenshot`` for a person to look at (``BNSWEEP_UI_SHOTS`` keeps them in a folder of
your choice; the folder is printed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracker import EXPERIMENT_TAGS
from tests.mlflow_fixtures import log_trial_run, trial_config
from tests.topology import MlflowServer, mlflow_server
from tracking.uri import mlflow_ui_command, runs_view_url

pytestmark = pytest.mark.slow

#: Debian's chromium, headless, talking to nothing but the page's server.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")
#: Virtual milliseconds the page may run (its requests to the server, React's rendering) before the DOM is read.
BUDGET_MS = 20000
#: The GenAI overview's tab bar (Usage / Quality / Tool calls): on the overview only.
OVERVIEW_MARK = 'data-component-id="mlflow.experiment.overview.tabs"'
#: The run page's breadcrumb link back to its experiment's runs ("Runs", or "Evaluations" in the GenAI frame).
BREADCRUMB = re.compile(r'data-testid="experiment-observatory-link-runs"[^>]*>([^<]*)<')


@dataclass
class UiStore:
    """A running server over a SQLite store with one sweep-like experiment of two finished trials."""

    server: MlflowServer
    experiment_id: str
    runs: list[tuple[str, str]]  # (run id, run name)
    shots: Path


def _history(epochs: int) -> dict[str, list[float]]:
    return {"train_acc": [0.1 + 0.3 * e for e in range(epochs + 1)],
            "test_acc": [0.1 + 0.25 * e for e in range(epochs + 1)],
            "train_loss": [2.3 - 0.5 * e for e in range(epochs + 1)]}


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory) -> Iterator[UiStore]:
    if shutil.which("chromium") is None:
        pytest.fail("Chromium is missing: apt-get install chromium")
    uri = f"sqlite:///{tmp_path_factory.mktemp('ui-store') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("ui-sweep", tags=EXPERIMENT_TAGS)
    runs = []
    for bn, seed in ((True, 0), (False, 1)):
        cfg = trial_config(0.01, bn, seed, epochs=2)
        run_id = log_trial_run(client, exp_id, cfg, _history(2))
        runs.append((run_id, client.get_run(run_id).info.run_name))
    shots = Path(os.environ.get("BNSWEEP_UI_SHOTS") or tmp_path_factory.mktemp("ui-shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with mlflow_server(uri) as server:
        yield UiStore(server, exp_id, runs, shots)
    print(f"\nMLflow UI screenshots: {shots}", file=sys.stderr)


def _chromium(url: str, profile: Path, *output: str) -> subprocess.CompletedProcess:
    cmd = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={BUDGET_MS}",
           "--window-size=1400,900", *output, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def load_page(url: str, tmp_path: Path, shot: Path) -> str:
    """The page's DOM after it settled, as a fresh browser shows it; a screenshot of it lands in ``shot``."""
    dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
    picture = _chromium(url, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert picture.returncode == 0 and shot.stat().st_size > 0, picture.stderr[-2000:]
    return dom.stdout


def _title(dom: str) -> str:
    found = re.search(r"<title>([^<]*)</title>", dom)
    return found.group(1) if found else ""


def _text(dom: str) -> str:
    """The page's visible text, roughly: no styles, scripts or tags, white space collapsed."""
    body = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_the_printed_commands_name_the_runs_view():
    assert runs_view_url("http://h:5000/", "7") == "http://h:5000/#/experiments/7?workflowType=machine_learning"
    assert runs_view_url("http://h:5000", None) == "http://h:5000"
    assert mlflow_ui_command("http://h:5000", "7") == "open http://h:5000/#/experiments/7?workflowType=machine_learning"
    # a relative SQLite store is named by its absolute path: the command works from any folder
    assert mlflow_ui_command("sqlite:///mlflow.db", "3") == (
        f"mlflow ui --backend-store-uri sqlite:///{Path('mlflow.db').resolve()} --host 127.0.0.1 --port 5000, "
        "then open http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning")


def test_the_runs_address_opens_the_experiment_on_its_runs(ui_store: UiStore, tmp_path: Path):
    url = runs_view_url(ui_store.server.url, ui_store.experiment_id)
    dom = load_page(url, tmp_path, ui_store.shots / "experiment-runs.png")
    assert _title(dom) == f"Runs - Experiment {ui_store.experiment_id} - MLflow"
    for _, name in ui_store.runs:
        assert name in dom, name
    assert re.search(r"\b2 matching runs\b", _text(dom)), "the table lists the experiment's two runs"
    assert OVERVIEW_MARK not in dom and "Evaluation runs" not in dom, "the GenAI frame must not show"


def test_a_trial_run_opens_under_runs_not_evaluations(ui_store: UiStore, tmp_path: Path):
    run_id, run_name = ui_store.runs[0]
    url = runs_view_url(ui_store.server.url, ui_store.experiment_id).replace(
        f"/experiments/{ui_store.experiment_id}?", f"/experiments/{ui_store.experiment_id}/runs/{run_id}?")
    dom = load_page(url, tmp_path, ui_store.shots / "trial-run.png")
    assert _title(dom) == f"Run {run_id} - MLflow"
    assert run_name in dom
    assert BREADCRUMB.findall(dom) == ["Runs"]


def test_the_bare_experiment_address_opens_the_genai_overview(ui_store: UiStore, tmp_path: Path):
    """Why the printed address carries ``workflowType``: without it, the experiment's tag notwithstanding, the UI
    shows traces and no runs."""
    exp_id = ui_store.experiment_id
    dom = load_page(f"{ui_store.server.url}/#/experiments/{exp_id}", tmp_path, ui_store.shots / "bare-url.png")
    assert _title(dom) == f"Overview - Experiment {exp_id} - MLflow"
    assert OVERVIEW_MARK in dom
    assert not any(name in dom for _, name in ui_store.runs), "the runs table must not show"
