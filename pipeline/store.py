"""Where the sweep's MLflow store is, and whether it can be used: no MLflow import here.

Importing MLflow takes about a second; the sweep checks its options and, for a store that does not exist yet,
starts Ray before it needs MLflow, so that second overlaps Ray's start-up.
"""

from __future__ import annotations

import os
import shlex
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.trials import UsageError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI: the option, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with a one-line :class:`UsageError` if the tracking store cannot be used. Writes nothing."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
                reply.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UsageError(f"tracking server {uri} is unreachable: {reason}",
                             "start it, or check --tracking-uri / MLFLOW_TRACKING_URI") from None
    elif (path := sqlite_path(uri)) is not None:
        folder = path.resolve().parent
        if not folder.is_dir():
            raise UsageError(f"tracking URI {uri}: folder {folder} does not exist", "create it, or name another file")
    elif "://" in uri and not uri.startswith(("file://", "postgresql", "mysql", "mssql", "databricks")):
        raise UsageError(f"tracking URI {uri} has an unsupported scheme",
                         "give sqlite:///path.db, http(s)://server:port or postgresql://...")


def store_exists(uri: str) -> bool:
    """False when the tracking URI is a local SQLite file that does not exist yet (nothing to read)."""
    path = sqlite_path(uri)
    return True if path is None else path.exists()


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI (``~`` expanded), None for any other store."""
    return Path(uri[len("sqlite:///"):]).expanduser() if uri.startswith("sqlite:///") else None


def runs_view_url(server: str, experiment_id: str | None) -> str:
    """The address of an experiment's runs in MLflow's UI (the server's root when there is no experiment yet).

    ``?workflowType=machine_learning`` opens MLflow 3's "Model training" view (the runs table and their charts);
    without it MLflow 3.17 opens an experiment on its GenAI overview of traces, whatever the experiment's tags.
    """
    url = server.rstrip("/")
    return f"{url}/#/experiments/{experiment_id}?workflowType=machine_learning" if experiment_id else url


def mlflow_ui_command(uri: str, experiment_id: str | None) -> str:
    """What opens these runs: a server's runs address, else ``mlflow ui`` over the store and that address on it.

    A SQLite store is named by its absolute path, so the command works from any folder.
    """
    if uri.startswith(("http://", "https://")):
        return f"open {runs_view_url(uri, experiment_id)}"
    path = sqlite_path(uri)
    store = f"sqlite:///{path.resolve()}" if path is not None else uri
    command = f"mlflow ui --backend-store-uri {shlex.quote(store)} --host 127.0.0.1 --port 5000"
    return f"{command}, then open {runs_view_url('http://127.0.0.1:5000', experiment_id)}"
