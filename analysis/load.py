"""MLflow trial runs -> one tidy pandas frame (one row per run and epoch).

Reads only what docs/design.md puts in MLflow: FINISHED runs tagged ``run_kind=trial``, their params
(strings, typed here), their ``trial_key`` tag and the metric histories (step = epoch).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from analysis.errors import AnalysisError
from analysis.histories import HistoryFetcher, is_server
from analysis.store import check_tracking_uri, resolve_tracking_uri

logger = logging.getLogger(__name__)

METRICS = ("train_acc", "test_acc", "train_loss")
TRIAL_FILTER = "tags.run_kind = 'trial' AND attributes.status = 'FINISHED'"
#: Trials whose loss became non-finite: the sweep ends them FAILED with this reason (a result, not a crash).
DIVERGED_FILTER = "tags.run_kind = 'trial' AND attributes.status = 'FAILED' AND tags.failure_reason LIKE 'diverged%'"
SEARCH_PAGE = 5000  # runs per search request to a database store
SERVER_PAGE = 250  # runs per search request to a server (histories of a page download meanwhile)

#: dtypes of the design's params; params not listed are typed by what all their values parse as.
PARAM_TYPES = {
    "weight_scale": "float", "use_batchnorm": "bool", "seed": "int",
    "epochs": "int", "batch_size": "int", "lr": "float", "train_size": "int", "test_size": "int",
    "optimizer": "str", "dataset": "str", "hidden_size_list": "str", "activation": "str", "dtype": "str",
}
REQUIRED_PARAMS = ("weight_scale", "use_batchnorm", "seed")
LEADING_COLUMNS = ("run_id", "trial_key", "weight_scale", "use_batchnorm", "seed", "epoch")
RUN_COLUMNS = ("run_name", "start_time", "sweep_id", "code_version")


def load_runs(
    experiment: str,
    tracking_uri: str | None = None,
    *,
    metrics: Sequence[str] = METRICS,
    check_uri: bool = True,
) -> pd.DataFrame:
    """Load the FINISHED trial runs of ``experiment`` as a tidy frame.

    One row per (run, epoch); columns ``run_id, trial_key, weight_scale, use_batchnorm, seed, epoch``,
    the ``metrics`` (float, NaN where not logged or logged as NaN), the other params (int/float/bool/str
    columns) and ``run_name, start_time (UTC), sweep_id, code_version``. Rows are sorted by weight_scale,
    use_batchnorm, seed, epoch. A metric logged twice at one step keeps the later value.

    Only runs with tag ``run_kind=trial`` and status FINISHED count (deleted runs never). Of several
    FINISHED runs with one ``trial_key`` the earliest (start_time, then run_id) is kept; the others are
    listed in ``df.attrs["duplicates"]`` (and logged as a warning). Runs that cannot be used (no
    trial_key tag, an unparsable weight_scale/use_batchnorm/seed, no metric values) are listed in
    ``df.attrs["skipped"]``. Other attrs: ``experiment``, ``experiment_id``, ``tracking_uri``,
    ``n_finished_runs``, ``history_strategy``, ``param_columns``, ``timings_s``.

    ``tracking_uri`` defaults to env MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``. With
    ``check_uri`` the store is checked first (never created). Raises :class:`AnalysisError` for a
    missing store, an unreachable server, or an unknown or deleted experiment. An experiment with no
    finished trials gives an empty frame (with the columns).
    """
    uri = resolve_tracking_uri(tracking_uri)
    if check_uri:
        check_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AnalysisError(f"experiment {experiment!r} not found at {uri} (check --experiment: it is the "
                            "sweep's --experiment, batchnorm-weight-scale by default)")
    if exp.lifecycle_stage != "active":
        raise AnalysisError(f"experiment {experiment!r} at {uri} is deleted (restore it with `mlflow experiments "
                            "restore`, or pick another --experiment)")

    t0 = time.perf_counter()
    server = is_server(client)
    page_size = SERVER_PAGE if server else SEARCH_PAGE
    with HistoryFetcher(client, metrics) as fetcher:
        runs: list[Run] = []
        for page in _search_finished_trials(client, exp.experiment_id, page_size):
            runs.extend(page)
            if server:  # start downloading histories while the server produces the next page
                if fetcher.expected_steps is None:
                    fetcher.expected_steps = _expected_steps(page)
                fetcher.submit([r.info.run_id for r in page if r.data.tags.get("trial_key")])
        t1 = time.perf_counter()
        runs_df, skipped = _runs_frame(runs)
        kept, duplicates = pick_one_per_trial(runs_df)
        if duplicates:
            n_dropped = sum(len(d["dropped_run_ids"]) for d in duplicates)
            logger.warning("%d trial key(s) have several FINISHED runs; kept the earliest of each, "
                           "ignored %d run(s)", len(duplicates), n_dropped)
        t2 = time.perf_counter()
        if not server:
            fetcher.expected_steps = _expected_steps(runs)
            fetcher.submit(kept["run_id"].tolist())
        hist, strategy = fetcher.result()
    hist = hist[hist["run_id"].isin(set(kept["run_id"]))]
    t3 = time.perf_counter()
    df = _tidy(kept, hist, list(metrics), skipped)
    diverged = _diverged_trials(client, exp.experiment_id, set(kept["trial_key"]) if len(kept) else set())
    t4 = time.perf_counter()
    df.attrs.update({
        "experiment": experiment,
        "experiment_id": exp.experiment_id,
        "tracking_uri": uri,
        "n_finished_runs": len(runs),
        "duplicates": duplicates,
        "skipped": skipped,
        "diverged": diverged,
        "history_strategy": strategy,
        "timings_s": {"search_runs": t1 - t0, "runs_frame": t2 - t1, "histories": t3 - t2, "tidy": t4 - t3},
        "param_columns": [c for c in df.columns if c not in (*LEADING_COLUMNS, *metrics, *RUN_COLUMNS)],
    })
    return df


def _search_finished_trials(client: MlflowClient, experiment_id: str, page_size: int) -> Iterator[list[Run]]:
    """Pages of the experiment's FINISHED runs tagged run_kind=trial (active runs only)."""
    token = None
    while True:
        page = client.search_runs([experiment_id], TRIAL_FILTER, max_results=page_size, page_token=token)
        yield list(page)
        token = page.token
        if not token:
            return


def _diverged_trials(client: MlflowClient, experiment_id: str, finished_keys: set[str]) -> list[dict]:
    """One entry per trial that diverged and has no FINISHED run: weight_scale, use_batchnorm, seed, reason.

    They are not in the statistics (they have no final accuracy) but the figures and the report count them.
    """
    found: dict[str, dict] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], DIVERGED_FILTER, max_results=SEARCH_PAGE, page_token=token)
        for run in page:
            key, params = run.data.tags.get("trial_key"), run.data.params
            if not key or key in finished_keys or key in found:
                continue
            try:
                found[key] = {"trial_key": key, "weight_scale": float(params["weight_scale"]),
                              "use_batchnorm": parse_bool(params["use_batchnorm"]),
                              "seed": _parse_int(params["seed"]), "reason": run.data.tags["failure_reason"]}
            except (KeyError, ValueError):
                continue
        token = page.token
        if not token:
            return sorted(found.values(), key=lambda d: (-d["weight_scale"], not d["use_batchnorm"], d["seed"]))


def diverged_counts(df: pd.DataFrame) -> dict[tuple[float, bool], int]:
    """How many trials diverged per (weight_scale, use_batchnorm), from ``df.attrs["diverged"]``."""
    counts: dict[tuple[float, bool], int] = {}
    for d in df.attrs.get("diverged", []):
        counts[(d["weight_scale"], d["use_batchnorm"])] = counts.get((d["weight_scale"], d["use_batchnorm"]), 0) + 1
    return counts


def _expected_steps(runs: list[Run]) -> int | None:
    """Values per run and metric, from the ``epochs`` param (epochs + 1), if the runs have it."""
    epochs = []
    for r in runs:
        try:
            epochs.append(_parse_int(r.data.params["epochs"]))
        except (KeyError, ValueError):
            pass
    return max(epochs) + 1 if epochs else None


def parse_bool(text: str) -> bool:
    """``True``/``False`` (any case; also 1/0) -> bool; anything else raises ValueError."""
    t = str(text).strip().lower()
    if t in ("true", "1"):
        return True
    if t in ("false", "0"):
        return False
    raise ValueError(f"not a bool: {text!r}")


def _parse_int(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"not an integer: {text!r}")
    return int(value)


_PARSERS = {"float": float, "int": _parse_int, "bool": parse_bool, "str": str}


def _runs_frame(runs: list[Run]) -> tuple[pd.DataFrame, list[dict]]:
    """One row per usable run: run columns, trial_key and typed params; plus the skipped runs."""
    records = []
    skipped = []
    for run in runs:
        info, data = run.info, run.data
        key = data.tags.get("trial_key")
        if not key:
            skipped.append({"run_id": info.run_id, "reason": "no trial_key tag"})
            continue
        try:
            required = {name: _PARSERS[PARAM_TYPES[name]](data.params[name]) for name in REQUIRED_PARAMS}
        except (KeyError, ValueError) as exc:
            skipped.append({"run_id": info.run_id, "reason": f"bad or missing param: {exc}"})
            continue
        if not (math.isfinite(required["weight_scale"]) and required["weight_scale"] > 0):
            skipped.append({"run_id": info.run_id, "reason": "weight_scale is not a positive number"})
            continue
        record = {"run_id": info.run_id, "trial_key": key, "run_name": info.run_name,
                  "start_time": info.start_time, "sweep_id": data.tags.get("sweep_id"),
                  "code_version": data.tags.get("code_version")}
        record.update({k: v for k, v in data.params.items() if k not in REQUIRED_PARAMS})
        record.update(required)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        frame = pd.DataFrame({c: [] for c in ("run_id", "trial_key", *REQUIRED_PARAMS, *RUN_COLUMNS)})
    frame["run_id"] = frame["run_id"].astype(str)
    frame["trial_key"] = frame["trial_key"].astype(str)
    frame["weight_scale"] = frame["weight_scale"].astype("float64")
    frame["use_batchnorm"] = frame["use_batchnorm"].astype(bool)
    frame["seed"] = frame["seed"].astype("int64")
    frame["start_time"] = pd.to_datetime(frame["start_time"].astype("float64"), unit="ms", utc=True)
    for col in frame.columns:
        if col in REQUIRED_PARAMS or col in ("run_id", "trial_key", *RUN_COLUMNS):
            continue
        frame[col] = _typed(frame[col], PARAM_TYPES.get(col))
    return frame, skipped


def _typed(col: pd.Series, kind: str | None) -> pd.Series:
    """A param column as its declared type, else the first of int/float/bool that all values parse as."""
    present = col.dropna()
    kinds = [kind] if kind else ["int", "float", "bool"]
    for k in kinds:
        if k == "str":
            return col
        try:
            parsed = present.map(_PARSERS[k])
        except (ValueError, TypeError):
            continue
        full = pd.Series(pd.NA, index=col.index, dtype="object")
        full.loc[parsed.index] = parsed
        if k == "float":
            return full.astype("float64")
        if k == "int":
            return full.astype("int64") if len(present) == len(col) else full.astype("Int64")
        return full.astype(bool) if len(present) == len(col) else full.astype("boolean")
    return col


def pick_one_per_trial(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Keep one run per trial_key: the earliest start_time, then the smallest run_id.

    Returns (kept runs, duplicates) where each duplicate entry is ``{"trial_key", "weight_scale",
    "use_batchnorm", "seed", "kept_run_id", "dropped_run_ids"}``.
    """
    ordered = runs.sort_values(["trial_key", "start_time", "run_id"], kind="mergesort")
    first = ~ordered["trial_key"].duplicated(keep="first")
    duplicates = []
    for key, group in ordered[ordered["trial_key"].duplicated(keep=False)].groupby("trial_key", sort=True):
        head = group.iloc[0]
        duplicates.append({
            "trial_key": str(key),
            "weight_scale": float(head["weight_scale"]),
            "use_batchnorm": bool(head["use_batchnorm"]),
            "seed": int(head["seed"]),
            "kept_run_id": str(head["run_id"]),
            "dropped_run_ids": [str(r) for r in group["run_id"].iloc[1:]],
        })
    return ordered[first].reset_index(drop=True), duplicates


def _tidy(runs: pd.DataFrame, hist: pd.DataFrame, metrics: list[str], skipped: list[dict]) -> pd.DataFrame:
    """Join run rows with their per-epoch metric values (later value wins on a repeated step)."""
    hist = hist[hist["key"].isin(metrics)]
    hist = hist.sort_values(["run_id", "key", "step", "timestamp"], kind="mergesort")
    hist = hist.drop_duplicates(["run_id", "key", "step"], keep="last")
    wide = hist.pivot(index=["run_id", "step"], columns="key", values="value")
    wide = wide.reindex(columns=metrics).reset_index().rename(columns={"step": "epoch"})
    wide.columns.name = None
    for m in metrics:
        wide[m] = wide[m].astype("float64")
    wide["run_id"] = wide["run_id"].astype(str)
    wide["epoch"] = wide["epoch"].astype("int64")

    no_values = sorted(set(runs["run_id"]) - set(wide["run_id"]))
    skipped.extend({"run_id": r, "reason": "no metric values"} for r in no_values)
    df = runs.merge(wide, on="run_id", how="inner", validate="one_to_many")
    params = sorted(c for c in runs.columns if c not in LEADING_COLUMNS and c not in RUN_COLUMNS)
    order = [*LEADING_COLUMNS, *metrics, *params, *RUN_COLUMNS]
    df = df[order].sort_values(["weight_scale", "use_batchnorm", "seed", "epoch"], kind="mergesort")
    return df.reset_index(drop=True)


def varying_config(df: pd.DataFrame) -> dict[str, list]:
    """Params other than weight_scale/use_batchnorm/seed that take more than one value.

    A sweep's arms should differ only in those three; anything else varying means the runs pooled
    per (weight_scale, use_batchnorm) are not replicates of one config.
    """
    fixed = {*LEADING_COLUMNS, *RUN_COLUMNS, *METRICS}
    columns = df.attrs.get("param_columns") or [c for c in df.columns if c not in fixed]
    out = {}
    for col in columns:
        if col in fixed or col not in df:
            continue
        values = df[col].dropna().unique()
        if len(values) > 1:
            out[col] = sorted(values.tolist(), key=str)
    return out

