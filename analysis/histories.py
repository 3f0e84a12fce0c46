"""Fetch the full metric histories of many runs in few round trips.

MLflow 3.17's public client has only ``MlflowClient.get_metric_history(run_id, key)``: one round trip
per run and metric (3000 calls for 1000 runs x 3 metrics; ~65 ms each against an ``mlflow server``
on the 2-core test machine). ``MlflowClient`` has no bulk-history method. The bulk paths used here,
fastest first (numbers: ``benchmarks/bench_analysis_load.py``, 1000 runs x 21 steps, one metric):

- SQL stores (sqlite, postgresql, ...): one column query per 500 runs on the store's own ORM model
  (``SqlMetric``, in the store's session: run_uuid, key, step, value, timestamp, is_nan -- no ORM
  objects), ~0.1 s per metric. If that model ever moves, ``SqlAlchemyStore.get_metric_history_bulk``
  (the same ``IN`` query building one ORM object per value, ~0.6-1 s per metric).
  ``get_metric_history_bulk_interval`` on the same store runs one windowed query per run (~8 s) and
  is not used.
- ``mlflow server``: the UI's ``GET /ajax-api/2.0/mlflow/metrics/get-history-bulk`` (100 runs and
  25000 values per request, served by the same bulk ``IN`` query; ~1.2 s with 4 requests in flight).
  If the server lacks it (404), the public REST ``GET /api/2.0/mlflow/metrics/get-history-bulk-interval``
  (100 runs per request but one windowed query per run server-side; ~9 s), and last
  ``get_metric_history`` per run and metric, in threads.
- anything else: ``get_metric_history`` per run and metric, in threads.

The client's store is reached through ``MlflowClient._tracking_client.store`` (not public API; if
it is missing the per-run path is used).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

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

STRATEGY_SQL_COLUMNS = "sql-metric-columns"
STRATEGY_SQL = "sql-get-metric-history-bulk"
STRATEGY_AJAX = "rest-ajax-get-history-bulk"
STRATEGY_INTERVAL = "rest-get-history-bulk-interval"
STRATEGY_PER_RUN = "per-run-get-metric-history"

# one fetched value: (run_id, key, step, value, timestamp)
Row = tuple[str, str, int, float, int]


class _Unsupported(Exception):
    """The server does not offer an endpoint; try the next strategy."""


def tracking_store(client: MlflowClient):
    """The store behind a client (private attribute; None if MLflow moved it)."""
    return getattr(getattr(client, "_tracking_client", None), "store", None)


def is_server(client: MlflowClient) -> bool:
    """Whether the client talks to a tracking server over REST."""
    return isinstance(tracking_store(client), RestStore)


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
    with HistoryFetcher(client, metrics, expected_steps=expected_steps) as fetcher:
        fetcher.submit(run_ids)
        return fetcher.result()


class HistoryFetcher:
    """Fetch histories while more run ids arrive (``load_runs`` submits each page of search results).

    Against a server, :meth:`submit` starts the requests for its runs at once on a small thread pool,
    so histories download while the server is still producing the next page of runs. For other
    stores the work happens in :meth:`result`. Use as a context manager.
    """

    def __init__(self, client: MlflowClient, metrics: Sequence[str], *, expected_steps: int | None = None):
        self.client = client
        self.metrics = list(metrics)
        self.expected_steps = expected_steps
        self.store = tracking_store(client)
        self.run_ids: list[str] = []
        self._futures: list[Future] = []
        server = isinstance(self.store, RestStore)
        self._pool = ThreadPoolExecutor(max_workers=HTTP_THREADS) if server else None

    def __enter__(self) -> HistoryFetcher:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, run_ids: Sequence[str]) -> None:
        """Add runs; against a server their histories start downloading now."""
        run_ids = list(run_ids)
        self.run_ids += run_ids
        if self._pool is None or not run_ids:
            return
        for key in self.metrics:
            for ids in _chunks(run_ids, self.expected_steps):
                self._futures.append(self._pool.submit(_ajax_job, self.store, self.client, ids, key))

    def result(self) -> tuple[pd.DataFrame, str]:
        """All values of the submitted runs, and the strategy that fetched them."""
        if not self.run_ids or not self.metrics:
            return _frame([]), "none"
        ids, metrics = self.run_ids, self.metrics
        if self._pool is not None:
            try:
                return _frame([row for fut in self._futures for row in fut.result()]), STRATEGY_AJAX
            except _Unsupported as exc:
                logger.info("%s unavailable (%s); trying %s", STRATEGY_AJAX, exc, STRATEGY_INTERVAL)
            try:
                return _frame(_fetch_bulk_interval(self.store, self.client, ids, metrics)), STRATEGY_INTERVAL
            except _Unsupported as exc:
                logger.info("%s unavailable (%s); one request per run and metric", STRATEGY_INTERVAL, exc)
        elif self.store is not None and hasattr(self.store, "ManagedSessionMaker"):
            try:
                return _frame(_fetch_sql_columns(self.store, ids, metrics)), STRATEGY_SQL_COLUMNS
            except (ImportError, AttributeError) as exc:  # MLflow moved its model: use the public store call
                logger.info("%s unavailable (%s); using %s", STRATEGY_SQL_COLUMNS, exc, STRATEGY_SQL)
            return _frame(_fetch_sql_bulk(self.store, ids, metrics)), STRATEGY_SQL
        return _frame(_fetch_per_run(self.client, ids, metrics, HTTP_THREADS)), STRATEGY_PER_RUN


def _frame(rows: list[Row]) -> pd.DataFrame:
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    return pd.DataFrame({
        "run_id": pd.Series(columns[0], dtype=str),
        "key": pd.Series(columns[1], dtype=str),
        "step": pd.Series(columns[2], dtype="int64"),
        "value": pd.Series(columns[3], dtype="float64"),
        "timestamp": pd.Series(columns[4], dtype="int64"),
    })


def _fetch_sql_columns(store, run_ids: list[str], metrics: list[str]) -> list[Row]:
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    cols = (SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.value, SqlMetric.timestamp,
            SqlMetric.is_nan)
    rows: list[Row] = []
    nan = float("nan")
    with store.ManagedSessionMaker() as session:
        for i in range(0, len(run_ids), SQL_CHUNK):
            query = session.query(*cols).filter(SqlMetric.run_uuid.in_(run_ids[i:i + SQL_CHUNK]),
                                                SqlMetric.key.in_(metrics))
            rows += [(r, k, int(s), nan if is_nan else float(v), int(t)) for r, k, s, v, t, is_nan in query]
    return rows


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
    # values arrive as JSON numbers, or as "NaN"/"Infinity" (literal or string); float() takes all
    return [(m["run_id"], m["key"], int(m.get("step", 0)), float(m.get("value", 0.0)),
             int(m.get("timestamp", 0))) for m in metrics_json]


def _chunks(run_ids: list[str], expected_steps: int | None) -> list[list[str]]:
    """Groups of <= 100 runs whose expected values fit one get-history-bulk response."""
    size = max(1, min(MAX_RUNS_PER_REQUEST, AJAX_MAX_RESULTS // max(1, expected_steps or 1)))
    return [run_ids[i:i + size] for i in range(0, len(run_ids), size)]


def _ajax_job(store: RestStore, client: MlflowClient, ids: list[str], key: str) -> list[Row]:
    """One get-history-bulk request; split further if the server cut the response at its limit."""
    params = {"run_id": ids, "metric_key": key, "max_results": AJAX_MAX_RESULTS}
    values = _get_json(store, AJAX_BULK_ENDPOINT, params).get("metrics", [])
    if len(values) < AJAX_MAX_RESULTS:
        return _parse(values)
    if len(ids) > 1:
        half = len(ids) // 2
        return _ajax_job(store, client, ids[:half], key) + _ajax_job(store, client, ids[half:], key)
    return _fetch_per_run(client, ids, [key], 1)


def _run_jobs(jobs: list, fetch: Callable) -> list[Row]:
    if not jobs:
        return []
    first = fetch(jobs[0])  # sequentially: a missing endpoint shows here, before any thread starts
    with ThreadPoolExecutor(max_workers=HTTP_THREADS) as pool:
        rest = list(pool.map(fetch, jobs[1:]))
    return [row for rows in [first, *rest] for row in rows]


def _fetch_bulk_interval(store: RestStore, client: MlflowClient, run_ids: list[str],
                         metrics: list[str]) -> list[Row]:
    def fetch(job: tuple[list[str], str]) -> list[Row]:
        ids, key = job
        params = {"run_ids": ids, "metric_key": key, "max_results": INTERVAL_MAX_RESULTS}
        rows = _parse(_get_json(store, REST_BULK_INTERVAL_ENDPOINT, params).get("metrics", []))
        counts: dict[str, int] = {}
        for row in rows:
            counts[row[0]] = counts.get(row[0], 0) + 1
        sampled = {r for r, n in counts.items() if n >= INTERVAL_MAX_RESULTS}
        if sampled:  # the server downsampled these runs: fetch them whole
            rows = [row for row in rows if row[0] not in sampled]
            rows += _fetch_per_run(client, sorted(sampled), [key], 1)
        return rows

    jobs = [(run_ids[i:i + MAX_RUNS_PER_REQUEST], key)
            for key in metrics for i in range(0, len(run_ids), MAX_RUNS_PER_REQUEST)]
    return _run_jobs(jobs, fetch)


def fetch_ajax_bulk(store: RestStore, client: MlflowClient, run_ids: list[str], metrics: list[str],
                    expected_steps: int | None = None) -> list[Row]:
    """All values via get-history-bulk, 4 requests in flight (for benchmarks and tests)."""
    jobs = [(ids, key) for key in metrics for ids in _chunks(run_ids, expected_steps)]
    return _run_jobs(jobs, lambda job: _ajax_job(store, client, *job))


def fetch_bulk_interval(store: RestStore, client: MlflowClient, run_ids: list[str],
                        metrics: list[str]) -> list[Row]:
    """All values via the public REST get-history-bulk-interval (for benchmarks and tests)."""
    return _fetch_bulk_interval(store, client, run_ids, metrics)


def fetch_sql_columns(store, run_ids: list[str], metrics: list[str]) -> list[Row]:
    """All values via a column query on the store's ``SqlMetric`` model (for benchmarks and tests)."""
    return _fetch_sql_columns(store, run_ids, metrics)


def fetch_sql_bulk(store, run_ids: list[str], metrics: list[str]) -> list[Row]:
    """All values via ``SqlAlchemyStore.get_metric_history_bulk`` (for benchmarks and tests)."""
    return _fetch_sql_bulk(store, run_ids, metrics)


def fetch_per_run(client: MlflowClient, run_ids: list[str], metrics: list[str],
                  threads: int = 1) -> list[Row]:
    """All values via ``get_metric_history`` per run and metric (for benchmarks and tests)."""
    return _fetch_per_run(client, run_ids, metrics, threads)
