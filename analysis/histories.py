"""The metric histories of many runs, through MLflow's public client, and a local cache of ended runs' histories.

MLflow's client reads a whole history one run and metric at a time (``MlflowClient.get_metric_history``); the calls
run on a small thread pool, and against a server they start while the next page of runs is searched. A run that
has ended (FINISHED, or FAILED as a diverged trial is) does not change, so its histories are kept in a SQLite file
per tracking store in the user's cache folder (:class:`HistoryCache`): the next analysis of the store -- the usual
one, after adding seeds -- fetches only the runs it has not seen. A cached history is used only while the run still
reads as it did when it was fetched (status, end time and the metric's latest value, from the search); a cache that
cannot be read or written is left aside with a warning, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import urllib.parse
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tracking.cache import user_cache_dir
from tracking.uri import display_store, is_server

logger = logging.getLogger(__name__)

#: get_metric_history calls in flight: against a server they wait on the network, against a database on its I/O.
SERVER_THREADS = 8
DATABASE_THREADS = 2
#: Run states after which MLflow's client logs nothing more to a run.
ENDED = ("FINISHED", "FAILED", "KILLED")

# one value: (run_id, key, step, value, timestamp)
Row = tuple[str, str, int, float, int]


def default_cache_dir() -> Path:
    """Where the analysis keeps histories by default: ``histories`` in the user's cache folder."""
    return user_cache_dir() / "histories"


def fingerprint(run: Run, key: str) -> str | None:
    """What a cached history of ``key`` for ``run`` is valid for: the run's status, end time and the metric's latest
    value as the search returned them; None for a run that has not ended (its history may still grow)."""
    if run.info.status not in ENDED or run.info.end_time is None:
        return None
    latest = run.data.metrics.get(key)
    return json.dumps([run.info.status, run.info.end_time, None if latest is None else repr(float(latest))])


class HistoryCache:
    """Histories of ended runs of one tracking store, in ``<folder>/<hash of the store>.sqlite``.

    The store is named by :func:`tracking.uri.display_store` (a SQLite store by its absolute path), without a
    user or password. Any failure to open, read or write the file (a read-only or full disk, a file that is not
    SQLite) turns the cache off for this analysis with one warning."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS histories (run_id TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,
                                              PRIMARY KEY (run_id, key));
        CREATE TABLE IF NOT EXISTS metric_values (run_id TEXT NOT NULL, key TEXT NOT NULL, step INTEGER NOT NULL,
                                                  value REAL, timestamp INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS metric_values_of_run ON metric_values (run_id, key);
    """

    def __init__(self, folder: Path, store_uri: str):
        self.path = Path(folder) / f"{store_key(store_uri)}.sqlite"
        self.store_uri = store_uri
        self._db: sqlite3.Connection | None = None
        self.usable = True

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self._db.executescript(self.SCHEMA)
        return self._db

    def _failed(self, exc: Exception) -> None:
        logger.warning("history cache %s left aside (%s); fetching every history from the store", self.path, exc)
        self.usable = False
        self.close()

    def get(self, wanted: dict[tuple[str, str], str]) -> tuple[list[Row], set[tuple[str, str]]]:
        """The cached values of the (run_id, key) pairs of ``wanted`` whose fingerprint matches, and those pairs."""
        if not self.usable or not wanted:
            return [], set()
        try:
            db = self._connect()
            db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (run_id TEXT, key TEXT, fingerprint TEXT)")
            db.execute("DELETE FROM wanted")
            db.executemany("INSERT INTO wanted VALUES (?, ?, ?)", [(r, k, f) for (r, k), f in wanted.items()])
            hits = {(r, k) for r, k in db.execute(
                "SELECT h.run_id, h.key FROM histories h JOIN wanted w "
                "ON h.run_id = w.run_id AND h.key = w.key AND h.fingerprint = w.fingerprint")}
            rows = db.execute(
                "SELECT v.run_id, v.key, v.step, v.value, v.timestamp FROM metric_values v JOIN histories h "
                "ON v.run_id = h.run_id AND v.key = h.key JOIN wanted w "
                "ON h.run_id = w.run_id AND h.key = w.key AND h.fingerprint = w.fingerprint").fetchall()
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return [], set()
        nan = float("nan")  # SQLite keeps NaN as NULL
        return [(r, k, s, nan if v is None else v, t) for r, k, s, v, t in rows], hits

    def put(self, fetched: dict[tuple[str, str], str], rows: Iterable[Row]) -> None:
        """Keep the values ``rows`` of the (run_id, key) pairs of ``fetched`` (with their fingerprints), in one
        transaction: a history is cached whole or not at all."""
        if not self.usable or not fetched:
            return
        try:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM metric_values WHERE run_id = ? AND key = ?", list(fetched))
                db.executemany("INSERT OR REPLACE INTO histories VALUES (?, ?, ?)",
                               [(r, k, f) for (r, k), f in fetched.items()])
                db.executemany("INSERT INTO metric_values VALUES (?, ?, ?, ?, ?)",
                               [row for row in rows if (row[0], row[1]) in fetched])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


def store_key(uri: str) -> str:
    """A short name for a tracking store: its URI as :func:`tracking.uri.display_store` gives it, without credentials,
    hashed."""
    parts = urllib.parse.urlsplit(display_store(uri))
    if parts.username is not None or parts.password is not None:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return hashlib.sha256(urllib.parse.urlunsplit(parts).encode()).hexdigest()[:20]


class HistoryFetcher:
    """Fetch the histories of runs as they arrive (``load_runs`` submits each page of search results).

    :meth:`submit` answers from the cache what it can and starts ``get_metric_history`` calls for the rest on a
    thread pool; :meth:`result` waits for them, keeps the ended runs' histories in the cache and returns every
    value. Use as a context manager.
    """

    def __init__(self, client: MlflowClient, tracking_uri: str, metrics: Sequence[str], *,
                 cache_dir: Path | None = None):
        self.client = client
        self.metrics = list(metrics)
        self.cache = HistoryCache(cache_dir, tracking_uri) if cache_dir is not None else None
        threads = SERVER_THREADS if is_server(tracking_uri) else DATABASE_THREADS
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="history")
        self._cached: list[Row] = []
        self._futures: list[Future] = []
        self._to_keep: dict[tuple[str, str], str] = {}
        self.counts = {"cached": 0, "fetched": 0}

    def __enter__(self) -> HistoryFetcher:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.cache is not None:
            self.cache.close()

    def submit(self, runs: Iterable[Run]) -> None:
        """Add runs: their cached histories are read now, the others start downloading."""
        runs = list(runs)
        prints = {(r.info.run_id, key): fingerprint(r, key) for r in runs for key in self.metrics}
        hits: set[tuple[str, str]] = set()
        if self.cache is not None:
            rows, hits = self.cache.get({pair: f for pair, f in prints.items() if f is not None})
            self._cached += rows
        for run in runs:
            run_id = run.info.run_id
            missing = [key for key in self.metrics if (run_id, key) not in hits]
            if missing:
                self._futures.append(self._pool.submit(self._fetch, run_id, missing))
                self._to_keep.update({(run_id, k): prints[run_id, k] for k in missing if prints[run_id, k]})
                self.counts["fetched"] += 1
            else:
                self.counts["cached"] += 1

    def _fetch(self, run_id: str, keys: list[str]) -> list[Row]:
        return [(run_id, key, int(m.step), float(m.value), int(m.timestamp))
                for key in keys for m in self.client.get_metric_history(run_id, key)]

    def result(self) -> pd.DataFrame:
        """Every value of the submitted runs (run_id, key, step, value, timestamp; repeats included)."""
        fetched = [row for future in self._futures for row in future.result()]
        if self.cache is not None:
            self.cache.put(self._to_keep, fetched)
        return _frame(self._cached + fetched)


def _frame(rows: list[Row]) -> pd.DataFrame:
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    return pd.DataFrame({
        "run_id": pd.Series(columns[0], dtype=str),
        "key": pd.Series(columns[1], dtype=str),
        "step": pd.Series(columns[2], dtype="int64"),
        "value": pd.Series(columns[3], dtype="float64"),
        "timestamp": pd.Series(columns[4], dtype="int64"),
    })
