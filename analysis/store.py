"""Which tracking store to read, checked before MLflow touches it (what a URI names: ``tracking.uri``).

MLflow creates what it does not find: an SQLite URI to a missing file becomes a new database, and a
client pointed at a dead server retries for minutes. The analysis reads (and, unless ``--no-log``, logs one run),
so it checks first.
"""

from __future__ import annotations

import os

from analysis.errors import AnalysisError
from tracking.uri import StoreError, check_store
from tracking.uri import resolve_tracking_uri as _resolve

#: Caps on MLflow's HTTP client, set (unless the user set them) before a client is created.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri`` if given, else env ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    try:
        return _resolve(tracking_uri)
    except StoreError as exc:
        raise AnalysisError(str(exc)) from None


def cap_http_retries() -> None:
    """Bound MLflow's HTTP retries and timeout (env vars the user did not set) so errors come fast."""
    for name, value in HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def check_tracking_uri(uri: str, *, write: bool = False, timeout: float = 5.0) -> None:
    """Raise :class:`AnalysisError` unless ``uri`` names an MLflow store that holds runs to read (and that can be
    written, with ``write``): see :func:`tracking.uri.check_store`. Never creates or changes anything."""
    try:
        store = check_store(uri, write=write, timeout=timeout)
    except StoreError as exc:
        raise AnalysisError(str(exc)) from None
    if not store.exists:
        raise AnalysisError(f"no MLflow store at {store.path} (run the sweep first, or pass --tracking-uri)")
