"""The two programs, ``python -m pipeline.sweep`` and ``python -m analysis``, around their work.

- They send MLflow no usage telemetry: they talk to their tracking store and nothing else. MLflow 3 decides when
  it is imported: unless ``MLFLOW_DISABLE_TELEMETRY`` (or ``DO_NOT_TRACK``) is set, or it sees a CI or pytest
  variable, it creates a telemetry client (writing an installation id under ``~/.config/mlflow``) that fetches its
  config from and posts usage events to MLflow's servers. Each check runs in a fresh interpreter whose environment
  has none of those variables, as a user's shell would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Variables that turn MLflow's telemetry off by themselves (mlflow.telemetry.utils): none may reach the child.
_OFF_SWITCHES = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS",
                 "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "TF_BUILD", "BITBUCKET_BUILD_NUMBER",
                 "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION",
                 "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID")

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
from mlflow.telemetry.client import get_telemetry_client
print(json.dumps({"client": type(get_telemetry_client()).__name__}))
"""


def _probe(module: str, home: Path, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _OFF_SWITCHES}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONPATH=str(REPO), **extra)
    out = subprocess.run([sys.executable, "-c", PROBE, module], env=env, cwd=home, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["client"]


@pytest.mark.parametrize("module", ["pipeline.tracker", "analysis"])
def test_no_mlflow_telemetry_by_default(module, tmp_path):
    assert _probe(module, tmp_path) == "NoneType"
    assert not (tmp_path / ".config" / "mlflow").exists()  # no installation id written either


@pytest.mark.parametrize("module", ["pipeline.tracker", "analysis"])
def test_the_users_own_setting_wins(module, tmp_path):
    # the probe is able to see a live client: with telemetry asked for, MLflow creates one
    assert _probe(module, tmp_path, MLFLOW_DISABLE_TELEMETRY="false") == "TelemetryClient"
