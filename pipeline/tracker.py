"""Everything the sweep says to MLflow: the experiment, one run per trial, claims, retries and orphans.

The driver is the only writer. Ray tasks only compute and stream their epochs back; the driver creates each
trial's run just before the task starts, logs the streamed epochs with ``log_batch`` and ends the run. One writer
means no lock contention on SQLite, a tracking URI that only the driver needs to reach (also on a multi-node
cluster), and a single place where a flaky tracking server is retried.

Exactly-once across concurrent sweeps: a run is *claimed* by creating it (RUNNING) and then looking at the other
runs of the same trial_key. A FINISHED one, or a live RUNNING one of another sweep that sorts earlier by
(start_time, run_id), wins; the loser deletes its own run. The same check is repeated just before a run is marked
FINISHED, by which time both claims are visible to both sweeps, so exactly one of them finishes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from pipeline.trials import UsageError
from tracking.names import RUN_KIND_TRIAL
from tracking.uri import display_store, sqlite_path

# The MLflow client retries an unreachable server for minutes by default; our own retry loop decides instead.
for _name, _value in (
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "15"),
    # Not a "View run ... at" line per ended run on our progress bar.
    ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
    # The driver talks to its tracking store and to nothing else: no usage telemetry to MLflow's servers (nor
    # its installation id written to ~/.config), as Ray's usage stats are off (pipeline/cluster.py). Read by
    # MLflow when it is imported, just below; "false" turns it back on.
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
):
    os.environ.setdefault(_name, _value)

from mlflow.entities import Metric, Param, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

#: Tags of the experiment a sweep creates: its description in the UI, and MLflow 3's experiment kind "Model
#: training" (the UI still opens an experiment by the ``workflowType`` of its address: see tracking.uri.runs_view_url).
EXPERIMENT_TAGS = {
    "mlflow.note.content": "Batch-normalization weight-scale sweep (bnsweep). One run per trial.",
    "mlflow.experimentKind": "custom_model_development",
}

T = TypeVar("T")


# --- a SQLite store in WAL mode ------------------------------------------------------------------------------


def _write_ahead_log(path: Path) -> None:
    """Put the SQLite store at ``path`` in write-ahead-log mode, if it is not yet.

    The mode stays with the file: every process then opens it so (MLflow, ``mlflow ui``, the analysis). WAL lets
    them read the store while a sweep writes it, without "database is locked", and a commit appends to the log
    instead of rewriting pages through a journal. A store busy right now (another process in a transaction) keeps
    its mode until the next sweep; a file that is not a database raises (the caller says so).
    """
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        if refusal(exc) is not None:
            raise


#: A new SQLite store is made in a file of this suffix beside it, then put in its place complete.
MAKING_SUFFIX = ".making"


@contextlib.contextmanager
def _creating_sqlite_store(uri: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the SQLite file of ``uri`` (created empty if missing) while MLflow opens it,
    and make the store first if the file is empty (:func:`_make_sqlite_store`).

    Two processes making a new store at once (two sweeps started together) would both migrate it, and one of them
    fail ("Online migration expected to match one row"). Under the lock the second one finds the store made. SQLite
    locks with ``fcntl`` byte-range locks, which ``flock`` does not touch: readers and writers of the store (``mlflow
    ui``, a running sweep) never wait for this lock, only another process opening the store through it.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    with open(path, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if path.stat().st_size == 0:  # new (or left empty by an interrupted start): not yet a store
                _make_sqlite_store(path)
            _write_ahead_log(path)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_sqlite_store(path: Path) -> None:
    """Make MLflow's tables in a new file beside ``path``, then rename it into place, complete.

    MLflow creates a store's tables in many committed steps (its schema migrations). Killed or out of space half-way
    in the store itself, they would leave it at an in-between schema that MLflow can never open again ("table ...
    already exists"). Made beside it, an interruption leaves at most that file (``.<name>.making-<id>``), which the
    next sweep removes before it makes the store again; ``path`` is either empty or a whole store. The file beside it
    is made in SQLite's default rollback-journal mode, whose committed transactions are all in the file itself, so
    the renamed file alone holds every table (it is put in WAL mode after, under its own name).
    """
    for stale in path.parent.glob(f".{glob.escape(path.name)}{MAKING_SUFFIX}*"):
        stale.unlink(missing_ok=True)
    making = path.with_name(f".{path.name}{MAKING_SUFFIX}-{uuid.uuid4().hex[:8]}")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{making}")  # makes the tables
    except BaseException:
        for leftover in (making, Path(f"{making}-journal")):  # e.g. out of space: give the space back
            leftover.unlink(missing_ok=True)
        raise
    os.replace(making, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself is durable
    finally:
        os.close(directory)


# --- the identity of this driver, to tell live sweeps from orphans -------------------------------------------


def driver_identity() -> str:
    """``host:pid:start`` of this process; with it a later sweep on the same host can tell if we are alive."""
    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{int(me.create_time())}"


def driver_alive(identity: str) -> bool | None:
    """True/False for a driver on this host; None when it ran elsewhere (then only its heartbeat tells)."""
    try:
        host, pid_text, start_text = identity.rsplit(":", 2)
        pid, start = int(pid_text), int(start_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        return int(psutil.Process(pid).create_time()) == start
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@dataclass(frozen=True)
class RunInfo:
    """What the sweep needs to know about an existing trial run."""

    run_id: str
    trial_key: str
    status: str
    start_time: int
    sweep_id: str
    driver: str
    heartbeat: float
    failure_reason: str = ""

    @property
    def order(self) -> tuple[int, str]:
        """Claims are ordered by creation time, ties broken by run id."""
        return (self.start_time, self.run_id)


def is_orphan(run: RunInfo, orphan_timeout: float, now: float | None = None) -> bool:
    """A RUNNING run whose driver is gone (same host), or that has not sent a heartbeat for ``orphan_timeout``."""
    if run.status != "RUNNING":
        return False
    alive = driver_alive(run.driver)
    if alive is not None:
        return not alive
    return ((now or time.time()) - run.heartbeat) > orphan_timeout


# --- the tracker -------------------------------------------------------------------------------------------------


class TrackingUnavailable(RuntimeError):
    """The tracking store kept failing for longer than the retry budget."""


class StoreRefused(UsageError):
    """The tracking store refused a write that no retry can make succeed: its disk is full, it is read-only, or it
    is not (or no longer) a database. Told at once, as one line with its fix, never retried."""


#: What a store (SQLite, the OS, or a server passing its database's words on) says when retrying cannot help:
#: (words, OS error numbers, what it means, the fix).
REFUSALS = (
    (("database or disk is full", "no space left on device"), (errno.ENOSPC,), "its disk is full",
     "free space where the store is, then rerun the same command"),
    (("disk quota exceeded",), (errno.EDQUOT,), "its disk quota is used up",
     "free space in your quota, then rerun the same command"),
    (("readonly database", "read-only file system"), (errno.EROFS,), "it is read-only",
     "make it writable, or pass another --tracking-uri"),
    (("file is not a database", "database disk image is malformed"), (), "it is not a whole database",
     "restore it from a backup, or pass another --tracking-uri"),
)


def refusal(exc: BaseException) -> tuple[str, str] | None:
    """(what it means, the fix) when ``exc`` says the store can take no more writes whatever the wait; else None."""
    number = exc.errno if isinstance(exc, OSError) else None
    text = str(exc).lower()
    for words, numbers, meaning, fix in REFUSALS:
        if number in numbers or any(w in text for w in words):
            return meaning, fix
    return None


def refused(uri: str, what: str, exc: BaseException) -> StoreRefused | None:
    """The :class:`StoreRefused` for ``exc``, if it is a refusal (see :func:`refusal`)."""
    found = refusal(exc)
    if found is None:
        return None
    meaning, fix = found
    return StoreRefused(f"MLflow at {display_store(uri)} cannot {what}: {meaning} ({_one_line(exc)})", fix)


def _is_transient(exc: BaseException) -> bool:
    """Connection problems, server errors and a busy SQLite file are worth retrying; client errors are not."""
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return not (400 <= status < 500) or "database is locked" in str(exc)
    return isinstance(exc, (OSError, ConnectionError, TimeoutError)) or "locked" in str(exc).lower()


class Tracker:
    """The sweep's MLflow writer: every call is retried with backoff while the store is briefly unavailable."""

    def __init__(self, uri: str, retry_seconds: float = 120.0, on_retry: Callable[[str], None] | None = None):
        self.uri = uri
        try:
            with _creating_sqlite_store(uri):  # the client opens its store (creating its tables in a new one)
                self.client = MlflowClient(tracking_uri=uri)
        except Exception as exc:
            if (refusing := refused(uri, "open or make its store", exc)) is not None:
                raise refusing from exc
            raise
        self.retry_seconds = retry_seconds
        self.on_retry = on_retry
        self.retries = 0
        #: Seconds spent inside MLflow calls (failed attempts included, the waits between retries not).
        self.seconds = 0.0
        #: Set by the sweep while Ctrl-C means "stop": a call waiting to retry then raises KeyboardInterrupt at once.
        self.stop: threading.Event | None = None

    def call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run ``fn``; on a transient failure retry with exponential backoff until ``retry_seconds`` have passed."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified just below
                self.seconds += time.perf_counter() - started
                if (refusing := refused(self.uri, what, exc)) is not None:
                    raise refusing from exc
                if not _is_transient(exc) or time.monotonic() + delay > deadline:
                    if _is_transient(exc):
                        raise TrackingUnavailable(f"{what}: {_one_line(exc)}") from exc
                    raise
                self.retries += 1
                if self.on_retry:
                    self.on_retry(f"MLflow {what} failed ({_one_line(exc)}); retrying in {delay:.1f}s")
                if self.stop is None:
                    time.sleep(delay)
                elif self.stop.wait(delay):
                    raise KeyboardInterrupt(f"interrupted while waiting to retry MLflow {what}") from exc
                delay = min(delay * 2, 5.0)
            else:
                self.seconds += time.perf_counter() - started
                return result

    # experiments -------------------------------------------------------------------------------------------

    def find_experiment_id(self, name: str) -> str | None:
        """The id of an active experiment, None if there is none; a deleted one is a usage error."""
        exp = self.call("get experiment", self.client.get_experiment_by_name, name)
        if exp is None:
            return None
        if exp.lifecycle_stage != "active":
            raise UsageError(
                f"experiment {name!r} is deleted; restore it (mlflow experiments restore) or pick --experiment"
            )
        return exp.experiment_id

    def ensure_experiment(self, name: str) -> str:
        """Get or create the experiment (two sweeps creating it at once both end up with the same one)."""
        exp_id = self.find_experiment_id(name)
        if exp_id is not None:
            return exp_id
        try:
            return self.call(
                "create experiment",
                self.client.create_experiment,
                name,
                tags=EXPERIMENT_TAGS,
            )
        except MlflowException:
            exp_id = self.find_experiment_id(name)
            if exp_id is None:
                raise
            return exp_id

    # reading runs ------------------------------------------------------------------------------------------

    def trial_runs(self, experiment_id: str, trial_key: str | None = None) -> list[RunInfo]:
        """The active trial runs of the experiment (of one trial_key if given), all pages."""
        flt = f"tags.run_kind = '{RUN_KIND_TRIAL}'"
        if trial_key is not None:
            flt += f" and tags.trial_key = '{trial_key}'"
        return self._search(experiment_id, flt)

    def rival_runs(self, experiment_id: str, sweep_id: str, since_ms: int) -> list[RunInfo]:
        """Trial runs of *other* sweeps created since ``since_ms``: the only ones that can contest our claims.

        Everything older was in the snapshot the sweep planned from; usually this query returns nothing.
        """
        flt = (f"tags.run_kind = '{RUN_KIND_TRIAL}' and tags.sweep_id != '{sweep_id}' "
               f"and attributes.start_time >= {int(since_ms)}")
        return self._search(experiment_id, flt)

    def _search(self, experiment_id: str, flt: str) -> list[RunInfo]:
        out: list[RunInfo] = []
        token = None
        while True:
            page = self.call(
                "search runs",
                self.client.search_runs,
                [experiment_id],
                filter_string=flt,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=50000,
                page_token=token,
            )
            for run in page:
                tags = run.data.tags
                out.append(
                    RunInfo(
                        run_id=run.info.run_id,
                        trial_key=tags.get("trial_key", ""),
                        status=run.info.status,
                        start_time=int(run.info.start_time or 0),
                        sweep_id=tags.get("sweep_id", ""),
                        driver=tags.get("driver", ""),
                        heartbeat=float(tags.get("heartbeat", 0) or 0),
                        failure_reason=tags.get("failure_reason", ""),
                    )
                )
            token = page.token
            if not token:
                return out

    # writing runs ------------------------------------------------------------------------------------------

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> tuple[str, int]:
        """Create a RUNNING trial run with its tags; returns its run id and start time (ms).

        Its params go with its first :meth:`log_batch` (one round trip fewer per trial)."""
        start_time = int(time.time() * 1000)
        run = self.call(
            "create run",
            self.client.create_run,
            experiment_id,
            start_time=start_time,
            tags=tags,
            run_name=name,
        )
        return run.info.run_id, start_time

    def log_batch(
        self,
        run_id: str,
        records: Iterable[tuple[int, dict[str, float], int]] = (),
        tags: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        """Log epochs (epoch, metrics, timestamp ms), tags and params in one round trip.

        Timestamps come from the worker, so a retried batch is identical and MLflow drops the duplicates.
        """
        metrics = [
            Metric(name, float(value), timestamp, epoch)
            for epoch, values, timestamp in records
            for name, value in values.items()
        ]
        self.call(
            "log batch",
            self.client.log_batch,
            run_id,
            metrics=metrics,
            params=[Param(k, v) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )

    def end_run(
        self,
        run_id: str,
        status: str,
        reason: str | None = None,
        tags: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        """End a run FINISHED, FAILED or KILLED, with a one-line ``failure_reason`` tag when given (and any
        last tags and params in the same round trip)."""
        tags = dict(tags or {})
        if reason:
            tags["failure_reason"] = _one_line(reason)[:4000]
        if tags or params:
            self.log_batch(run_id, tags=tags, params=params)
        self.call("end run", self.client.set_terminated, run_id, status=status)

    def delete_run(self, run_id: str) -> None:
        """Remove a claim that lost to another sweep (it never becomes a result)."""
        self.call("delete run", self.client.delete_run, run_id)


def winner(mine: RunInfo, others: Iterable[RunInfo], orphan_timeout: float) -> RunInfo | None:
    """The run that beats ``mine`` for the same trial, or None if ``mine`` may go on.

    A FINISHED run always wins; a live RUNNING run of another sweep wins if it was claimed earlier.
    """
    best: RunInfo | None = None
    for other in others:
        if other.run_id == mine.run_id:
            continue
        if other.status == "FINISHED":
            return other
        if other.sweep_id == mine.sweep_id:
            continue  # a claim of our own (a retried create): never a rival
        if other.status == "RUNNING" and not is_orphan(other, orphan_timeout) and other.order < mine.order:
            best = other if best is None or other.order < best.order else best
    return best


def _one_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if isinstance(exc, str) else f"{type(exc).__name__}: {first}"
