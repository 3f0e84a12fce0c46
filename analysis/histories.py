"""Fetch the full metric histories of many runs in few round trips.

MLflow 3.17's public client has only ``MlflowClient.get_metric_history(run_id, key)``: one round trip
per run and metric (3000 calls for 1000 runs x 3 metrics; ~55 ms each against an ``mlflow server`` on
this machine, minutes in all). The bulk paths used here, fastest first (numbers from
``benchmarks/bench_analysis_load.py``, 1000 runs x 21 steps, per metric):

- SQL stores (sqlite, postgresql, ...): ``SqlAlchemyStore.get_metric_history_bulk(run_ids, key)``,
  one ``IN`` query per 500 runs (~0.5 s). ``get_metric_history_bulk_interval`` on the same store
  runs one windowed query per run (~5 s) and is not used.
- ``mlflow server``: the UI's ``GET /ajax-api/2.0/mlflow/metrics/get-history-bulk`` (100 runs and
  25000 values per request, served by the same bulk ``IN`` query; ~1 s sequential, 4 requests in
  flight). If the server lacks it (404), the public REST
  ``GET /api/2.0/mlflow/metrics/get-history-bulk-interval`` (100 runs per request, one windowed
  query per run server-side; ~7 s), and last ``get_metric_history`` per run and metric in threads.
- anything else: ``get_metric_history`` per run and metric, in threads.

The client's store is reached through ``MlflowClient._tracking_client.store`` (not public API; if
it is missing the per-run path is used).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking import MlflowClient
from mlflow.utils.rest_utils import http_request

logger = logging.getLogger(__name__)

AJAX_BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
REST_BULK_INTERVAL_ENDPOINT = "/api/2.0/mlflow/metrics/get-history-bulk-interval"
MAX_RUNS_PER_REQUEST = 100  # server limit of both bulk endpoints
AJAX_MAX_RESULTS = 25000  # server limit on values per get-history-bulk response
INTERVAL_MAX_RESULTS = 2500  # server limit on values per run per get-history-bulk-interval
SQL_CHUNK = 500  # run ids per IN query (well under every database's bound-parameter limit)
HTTP_THREADS = 4
HISTORY_COLUMNS = ("run_id", "key", "step", "value", "timestamp")

# one fetched value: (run_id, key, step, value, timestamp)
Row = tuple[str, str, int, float, int]


class _Unsupported(Exception):
    """The server does not offer an endpoint; try the next strategy."""


def fetch_metric_histories(
    client: MlflowClient,
    run_ids: Sequence[str],
    metrics: Sequence[str],
    *,
    expected_steps: int | None = None,
) -> tuple[pd.DataFrame, str]:
    """Every logged value of ``metrics`` for ``run_ids``.

    Returns (frame with columns run_id, key, step, value, timestamp -- one row per logged value,
    repeats included -- and the name of the strategy used). ``expected_steps`` (values per run and
    metric) sizes the requests to a server; it is a hint, truncated responses are detected.
    """
    run_ids = list(run_ids)
    metrics = list(metrics)
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if not run_ids or not metrics:
        return _frame([]), "none"
    if isinstance(store, RestStore):
        for name, fetch in (("rest-ajax-get-history-bulk", _fetch_ajax_bulk),
                            ("rest-get-history-bulk-interval", _fetch_bulk_interval)):
            try:
                return _frame(fetch(store, client, run_ids, metrics, expected_steps)), name
            except _Unsupported as exc:
                logger.info("%s unavailable (%s); trying the next way", name, exc)
        return _frame(_fetch_per_run(client, run_ids, metrics, HTTP_THREADS)), "per-run-threads"
    if store is not None and hasattr(store, "get_metric_history_bulk"):
        return _frame(_fetch_sql_bulk(store, run_ids, metrics)), "sql-get-metric-history-bulk"
    return _frame(_fetch_per_run(client, run_ids, metrics, HTTP_THREADS)), "per-run-threads"


def _frame(rows: list[Row]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({
            "run_id": pd.Series([], dtype=str), "key": pd.Series([], dtype=str),
            "step": pd.Series([], dtype="int64"), "value": pd.Series([], dtype="float64"),
            "timestamp": pd.Series([], dtype="int64"),
        })
    run_id, key, step, value, ts = zip(*rows, strict=True)
    return pd.DataFrame({
        "run_id": pd.Series(run_id, dtype=str), "key": pd.Series(key, dtype=str),
        "step": pd.Series(step, dtype="int64"), "value": pd.Series(value, dtype="float64"),
        "timestamp": pd.Series(ts, dtype="int64"),
    })


def _fetch_sql_bulk(store, run_ids: list[str], metrics: list[str]) -> list[Row]:
    rows: list[Row] = []
    for key in metrics:
        for i in range(0, len(run_ids), SQL_CHUNK):
            for m in store.get_metric_history_bulk(run_ids=run_ids[i:i + SQL_CHUNK], metric_key=key,
                                                   max_results=10**9):
                rows.append((m.run_id, m.key, int(m.step), float(m.value), int(m.timestamp)))
    return rows


def _fetch_per_run(client: MlflowClient, run_ids: list[str], metrics: list[str], threads: int) -> list[Row]:
    def one(job: tuple[str, str]) -> list[Row]:
        run_id, key = job
        return [(run_id, m.key, int(m.step), float(m.value), int(m.timestamp))
                for m in client.get_metric_history(run_id, key)]

    jobs = [(r, k) for r in run_ids for k in metrics]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [row for rows in pool.map(one, jobs) for row in rows]


def _get_json(store: RestStore, endpoint: str, params: dict) -> dict:
    resp = http_request(store.get_host_creds(), endpoint, "GET", params=params)
    if resp.status_code in (404, 405, 501):
        raise _Unsupported(f"GET {endpoint} -> HTTP {resp.status_code}")
    if resp.status_code != 200:
        raise MlflowException(f"GET {endpoint} failed: HTTP {resp.status_code}: {resp.text[:200]}")
    return resp.json()


def _parse(metrics_json: list[dict]) -> list[Row]:
    # values arrive as JSON numbers, or as "NaN"/"Infinity" strings (proto JSON); float() takes both
    return [(m["run_id"], m["key"], int(m.get("step", 0)), float(m.get("value", 0.0)),
             int(m.get("timestamp", 0))) for m in metrics_json]


def _chunks(run_ids: list[str], expected_steps: int | None, max_values: int) -> list[list[str]]:
    per_run = max(1, expected_steps or 1)
    size = max(1, min(MAX_RUNS_PER_REQUEST, max_values // per_run))
    return [run_ids[i:i + size] for i in range(0, len(run_ids), size)]


def _run_jobs(jobs: list, fetch: Callable) -> list[Row]:
    if not jobs:
        return []
    first = fetch(jobs[0])  # sequentially: a missing endpoint shows here, before any thread starts
    with ThreadPoolExecutor(max_workers=HTTP_THREADS) as pool:
        rest = list(pool.map(fetch, jobs[1:]))
    return [row for rows in [first, *rest] for row in rows]


def _fetch_ajax_bulk(store: RestStore, client: MlflowClient, run_ids: list[str], metrics: list[str],
                     expected_steps: int | None) -> list[Row]:
    def fetch(job: tuple[list[str], str]) -> list[Row]:
        ids, key = job
        got = _get_json(store, AJAX_BULK_ENDPOINT,
                        {"run_id": ids, "metric_key": key, "max_results": AJAX_MAX_RESULTS})
        values = got.get("metrics", [])
        if len(values) < AJAX_MAX_RESULTS:
            return _parse(values)
        # the response was cut at the server's limit: split the request, or page one run
        if len(ids) > 1:
            half = len(ids) // 2
            return fetch((ids[:half], key)) + fetch((ids[half:], key))
        return _fetch_per_run(client, ids, [key], 1)

    jobs = [(ids, key) for key in metrics for ids in _chunks(run_ids, expected_steps, AJAX_MAX_RESULTS)]
    return _run_jobs(jobs, fetch)


def _fetch_bulk_interval(store: RestStore, client: MlflowClient, run_ids: list[str], metrics: list[str],
                         expected_steps: int | None) -> list[Row]:
    def fetch(job: tuple[list[str], str]) -> list[Row]:
        ids, key = job
        got = _get_json(store, REST_BULK_INTERVAL_ENDPOINT,
                        {"run_ids": ids, "metric_key": key, "max_results": INTERVAL_MAX_RESULTS})
        rows = _parse(got.get("metrics", []))
        counts: dict[str, int] = {}
        for row in rows:
            counts[row[0]] = counts.get(row[0], 0) + 1
        sampled = {r for r, n in counts.items() if n >= INTERVAL_MAX_RESULTS}
        if sampled:  # the server downsampled these runs: fetch them whole
            rows = [row for row in rows if row[0] not in sampled]
            rows += _fetch_per_run(client, sorted(sampled), [key], 1)
        return rows

    jobs = [(ids, key) for key in metrics for ids in _chunks(run_ids, None, MAX_RUNS_PER_REQUEST)]
    return _run_jobs(jobs, fetch)
