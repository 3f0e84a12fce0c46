"""Which tracking store to read, and a fast check that it exists before MLflow touches it.

MLflow creates what it does not find: an SQLite URI to a missing file becomes a new database, and a
client pointed at a dead server retries for minutes. The analysis only reads, so it checks first.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from analysis.errors import AnalysisError

#: The sweep's default store, used when neither --tracking-uri nor MLFLOW_TRACKING_URI is given.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

#: Caps on MLflow's HTTP client, set (unless the user set them) before a client is created.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri`` if given, else env ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    if tracking_uri:
        return tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def cap_http_retries() -> None:
    """Bound MLflow's HTTP retries and timeout (env vars the user did not set) so errors come fast."""
    for name, value in HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def sqlite_path(uri: str) -> str:
    """The file path of a ``sqlite:///`` URI (relative for three slashes, absolute for four)."""
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri[len("sqlite://"):]
    return path.split("?", 1)[0]


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`AnalysisError` unless ``uri`` names an existing store that answers.

    - ``sqlite:`` the file must exist and hold MLflow's tables (opened read-only, never created);
    - ``http(s):`` ``GET /health`` must answer 200 within ``timeout`` seconds;
    - ``file:`` or a plain path: the directory must exist.
    Other schemes (postgresql, mysql, databricks, ...) are not checked here.
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("http", "https"):
        _check_server(uri, timeout)
    elif scheme in ("file", ""):
        path = Path(urllib.parse.urlparse(uri).path if scheme == "file" else uri)
        if not path.is_dir():
            raise AnalysisError(f"no MLflow file store at {path} (tracking URI {uri})")


def _check_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
    if path in ("", ":memory:"):
        raise AnalysisError(f"tracking URI {uri} is an in-memory SQLite store; it holds no runs")
    if not Path(path).is_file():
        raise AnalysisError(f"no MLflow store at {path} (tracking URI {uri}); run the sweep first "
                            "or pass --tracking-uri")
    try:
        con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise AnalysisError(f"cannot read SQLite store {path}: {exc}") from None
    if not {"experiments", "runs", "metrics"} <= tables:
        raise AnalysisError(f"{path} is not an MLflow tracking database (tracking URI {uri})")


def _check_server(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AnalysisError(f"cannot reach MLflow tracking server {uri}: {reason}") from None
    if status != 200:
        raise AnalysisError(f"MLflow tracking server {uri} is not healthy: GET /health returned {status}")
