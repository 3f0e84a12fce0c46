"""MLflow trial runs -> one tidy pandas frame (one row per run and epoch).

Reads only what docs/design.md puts in MLflow: FINISHED runs tagged ``run_kind=trial``, their params
(strings, typed here), their ``trial_key`` tag and the metric histories (step = epoch).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from analysis.errors import AnalysisError
from analysis.facets import AXIS_PARAMS
from analysis.histories import HistoryFetcher
from analysis.scales import as_scale, is_named, parse_scale, scale_ranks, sort_by_scale
from analysis.store import check_tracking_uri, resolve_tracking_uri
from tracking.names import DIVERGED, METRICS, OPTIONAL_PARAMS, RUN_KIND_TRIAL
from tracking.uri import is_server

logger = logging.getLogger(__name__)

TRIAL_FILTER = f"tags.run_kind = '{RUN_KIND_TRIAL}' AND attributes.status = 'FINISHED'"
#: Trials whose loss became non-finite: the sweep ends them FAILED with this reason (a result, not a crash).
DIVERGED_FILTER = (f"tags.run_kind = '{RUN_KIND_TRIAL}' AND attributes.status = 'FAILED' AND tags.failure_reason "
                   f"LIKE '{DIVERGED}%'")
#: How the statistics count a diverged trial (``--diverged``): ``count`` (the default) as the net that failed to
#: learn, ``exclude`` left out (the behaviour before policies, for a sensitivity check).
DIVERGED_POLICIES = ("count", "exclude")
#: Accuracy of guessing among the 10 classes of every data set the pipeline has (model.trial.NUM_CLASSES).
CHANCE = 0.1
SEARCH_PAGE = 5000  # runs per search request to a database store
SERVER_PAGE = 250  # runs per search request to a server (histories of a page download meanwhile)

#: dtypes of the design's params; params not listed are typed by what all their values parse as.
PARAM_TYPES = {
    "weight_scale": "scale", "use_batchnorm": "bool", "seed": "int",
    "epochs": "int", "batch_size": "int", "lr": "float", "train_size": "int", "test_size": "int",
    "optimizer": "str", "dataset": "str", "hidden_size_list": "str", "activation": "str", "dtype": "str",
    "weight_decay": "float", "dropout": "float",
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
    diverged: str = "count",
    cache_dir: Path | None = None,
) -> pd.DataFrame:
    """Load the FINISHED trial runs of ``experiment`` as a tidy frame, and its diverged trials by ``diverged``.

    One row per (run, epoch); columns ``run_id, trial_key, weight_scale, use_batchnorm, seed, epoch``,
    the ``metrics`` (float, NaN where not logged or logged as NaN), the other params (int/float/bool/str
    columns) and ``run_name, start_time (UTC), sweep_id, code_version``. Rows are sorted by weight_scale,
    use_batchnorm, seed, epoch. A metric logged twice at one step keeps the later value.

    Only runs with tag ``run_kind=trial`` and status FINISHED count (deleted runs never). Of several
    FINISHED runs with one ``trial_key`` the earliest (start_time, then run_id) is kept; the others are
    listed in ``df.attrs["duplicates"]`` (and logged as a warning). Runs that cannot be used (no
    trial_key tag, an unparsable weight_scale/use_batchnorm/seed, no metric values) are listed in
    ``df.attrs["skipped"]``. Other attrs: ``experiment``, ``experiment_id``, ``tracking_uri``,
    ``n_finished_runs``, ``history_counts`` (runs whose histories came from the cache / were fetched),
    ``param_columns``, ``timings_s``, ``diverged`` (every trial that diverged and has no FINISHED run),
    ``diverged_policy``.

    Histories are fetched with ``MlflowClient.get_metric_history``; with ``cache_dir`` (e.g.
    :func:`analysis.histories.default_cache_dir`) those of ended runs are kept there and read back next time
    (:class:`analysis.histories.HistoryCache`).

    Diverged trials (FAILED runs whose ``failure_reason`` starts with "diverged": the loss became non-finite, the
    sweep stopped the trial there) are results of the experiment. With ``diverged="count"`` they are rows of the
    frame (column ``diverged`` True) filled to the last epoch of their ``epochs`` param: from the epoch the loss
    became non-finite on, each accuracy is the one measured there, i.e. the network's actual predictions (a net
    whose scores are NaN predicts class 0, near chance on these balanced classes), or :data:`CHANCE` where none
    was logged; ``train_loss`` is NaN from there on. With ``"exclude"`` they are left out (see
    :func:`without_diverged`).

    ``tracking_uri`` defaults to env MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``. With
    ``check_uri`` the store is checked first (never created). Raises :class:`AnalysisError` for a
    missing store, an unreachable server, or an unknown or deleted experiment. An experiment with no
    finished trials gives an empty frame (with the columns).
    """
    if diverged not in DIVERGED_POLICIES:
        raise ValueError(f"diverged must be one of {DIVERGED_POLICIES}, got {diverged!r}")
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
    server = is_server(uri)
    page_size = SERVER_PAGE if server else SEARCH_PAGE
    with HistoryFetcher(client, uri, metrics, cache_dir=cache_dir) as fetcher:
        runs: list[Run] = []
        for page in _search_finished_trials(client, exp.experiment_id, page_size):
            runs.extend(page)
            if server:  # start downloading histories while the server produces the next page
                fetcher.submit([r for r in page if r.data.tags.get("trial_key")])
        t1 = time.perf_counter()
        runs_df, skipped = _runs_frame(runs)
        kept, duplicates = pick_one_per_trial(runs_df)
        if duplicates:
            n_dropped = sum(len(d["dropped_run_ids"]) for d in duplicates)
            logger.warning("%d trial key(s) have several FINISHED runs; kept the earliest of each, "
                           "ignored %d run(s)", len(duplicates), n_dropped)
        diverged_runs, diverged_found = _diverged_runs(client, exp.experiment_id, set(kept["trial_key"]))
        t2 = time.perf_counter()
        by_id = {r.info.run_id: r for r in (*runs, *diverged_found)}
        if not server:
            fetcher.submit(by_id[run_id] for run_id in kept["run_id"])
        fetcher.submit(by_id[run_id] for run_id in diverged_runs["run_id"])
        hist = fetcher.result()
    t3 = time.perf_counter()
    finished = _tidy(kept, hist[hist["run_id"].isin(set(kept["run_id"]))], list(metrics), skipped)
    finished["diverged"] = False
    failed = _tidy(diverged_runs, hist[hist["run_id"].isin(set(diverged_runs["run_id"]))], list(metrics), [])
    df = _with_diverged(finished, _fill_diverged(failed, list(metrics))) if diverged == "count" else finished
    for col, default in OPTIONAL_PARAMS.items():
        if col in df:
            df[col] = df[col].fillna(default)
    t4 = time.perf_counter()
    df.attrs.update({
        "experiment": experiment,
        "experiment_id": exp.experiment_id,
        "tracking_uri": uri,
        "n_finished_runs": len(runs),
        "duplicates": duplicates,
        "skipped": skipped,
        "diverged": _diverged_list(diverged_runs),
        "diverged_policy": diverged,
        "history_counts": dict(fetcher.counts),
        "timings_s": {"search_runs": t1 - t0, "runs_frame": t2 - t1, "histories": t3 - t2, "tidy": t4 - t3},
        "param_columns": [c for c in df.columns if c not in (*LEADING_COLUMNS, *metrics, *RUN_COLUMNS, "diverged")],
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


def _diverged_runs(client: MlflowClient, experiment_id: str,
                   finished_keys: set[str]) -> tuple[pd.DataFrame, list[Run]]:
    """The runs of trials that diverged and have no FINISHED run (the earliest run of each), as from
    :func:`_runs_frame`, and every such run found. Runs that cannot be read are left out (the FINISHED ones are what
    ``skipped`` lists)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], DIVERGED_FILTER, max_results=SEARCH_PAGE, page_token=token)
        runs += [r for r in page if r.data.tags.get("trial_key") not in finished_keys]
        token = page.token
        if not token:
            break
    frame, _ = _runs_frame(runs)
    kept, _ = pick_one_per_trial(frame)
    reasons = {r.info.run_id: r.data.tags.get("failure_reason", "") for r in runs}
    kept["failure_reason"] = [reasons[r] for r in kept["run_id"]]
    return kept, runs


def _diverged_list(runs: pd.DataFrame) -> list[dict]:
    """``df.attrs["diverged"]``: weight_scale, use_batchnorm, seed, trial_key, reason; largest scale first."""
    found = [{"trial_key": str(r.trial_key), "weight_scale": as_scale(r.weight_scale),
              "use_batchnorm": bool(r.use_batchnorm), "seed": int(r.seed), "reason": str(r.failure_reason)}
             for r in runs.itertuples()]
    rank = scale_ranks((d["weight_scale"] for d in found), descending=True)
    return sorted(found, key=lambda d: (rank[d["weight_scale"]], not d["use_batchnorm"], d["seed"]))


def _fill_diverged(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Diverged runs' rows to their last epoch: accuracy as measured where the loss became non-finite (CHANCE if
    not logged), ``train_loss`` NaN from there (see :func:`load_runs`)."""
    if df.empty:
        return df.assign(diverged=pd.Series(dtype=bool))
    out = []
    for _, run in df.groupby("run_id", sort=False):
        run = run.sort_values("epoch")
        at = _diverged_at(run)
        last = max(int(run["epoch"].max()), _param_epochs(run))
        head = run[run["epoch"] <= at]
        tail = pd.DataFrame([head.iloc[-1]] * (last - at)) if last > at else head.iloc[:0]
        tail = tail.assign(epoch=range(at + 1, last + 1))
        filled = pd.concat([head, tail], ignore_index=True)
        from_div = filled["epoch"] >= at
        at_row = head[head["epoch"] == at]
        for m in metrics:
            if m == "train_loss":
                filled.loc[filled["epoch"] > at, m] = float("nan")
                continue
            value = float(at_row[m].iloc[0]) if len(at_row) else float("nan")
            filled.loc[from_div, m] = value if math.isfinite(value) else CHANCE
        out.append(filled)
    result = pd.concat(out, ignore_index=True)
    result["epoch"] = result["epoch"].astype("int64")
    return result.assign(diverged=True)


def _diverged_at(run: pd.DataFrame) -> int:
    """The epoch the loss became non-finite: from the sweep's failure_reason ("... at epoch N"), else the first
    epoch whose logged loss is not finite (a store may keep inf as the largest float), else the last logged."""
    found = re.search(r"at epoch (\d+)", str(run["failure_reason"].iloc[0]))
    if found:
        return int(found.group(1))
    loss = run["train_loss"].to_numpy(dtype=float) if "train_loss" in run else np.full(len(run), np.nan)
    bad = run["epoch"].to_numpy()[~(np.abs(loss) < np.finfo(float).max)]
    return int(bad.min()) if bad.size else int(run["epoch"].max())


def _param_epochs(run: pd.DataFrame) -> int:
    """The run's ``epochs`` param, or -1 when it has none."""
    if "epochs" not in run or pd.isna(run["epochs"].iloc[0]):
        return -1
    return int(run["epochs"].iloc[0])


def _with_diverged(finished: pd.DataFrame, diverged: pd.DataFrame) -> pd.DataFrame:
    """Both frames in one, the columns and order of ``finished`` (``failure_reason`` dropped)."""
    if diverged.empty:
        return finished
    both = pd.concat([finished, diverged[[c for c in finished.columns if c in diverged]]], ignore_index=True)
    both["diverged"] = both["diverged"].astype(bool)
    for col in ("seed", "epoch"):
        both[col] = both[col].astype("int64")
    both["use_batchnorm"] = both["use_batchnorm"].astype(bool)
    return sort_by_scale(both, ["weight_scale", "use_batchnorm", "seed", "epoch"]).reset_index(drop=True)


def without_diverged(df: pd.DataFrame) -> pd.DataFrame:
    """The frame under the ``exclude`` policy: the rows of diverged trials dropped, attrs kept."""
    if "diverged" not in df:
        return df
    out = df[~df["diverged"]].reset_index(drop=True)
    out.attrs = {**df.attrs, "diverged_policy": "exclude"}
    return out


def diverged_counts(df: pd.DataFrame) -> dict[tuple[float, bool], int]:
    """How many trials diverged per (weight_scale, use_batchnorm), from ``df.attrs["diverged"]``, in its order
    (largest scale first, named scales last; BatchNorm first)."""
    counts: dict[tuple[float, bool], int] = {}
    for d in df.attrs.get("diverged", []):
        counts[(d["weight_scale"], d["use_batchnorm"])] = counts.get((d["weight_scale"], d["use_batchnorm"]), 0) + 1
    return counts


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


_PARSERS = {"scale": parse_scale, "float": float, "int": _parse_int, "bool": parse_bool, "str": str}


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
    if not any(is_named(w) for w in frame["weight_scale"]):  # numbers only: a float column, as before named scales
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
        if k == "float":  # a run without the param (one at its default) reads as NaN here
            return pd.Series(parsed.astype("float64"), index=col.index, dtype="float64")
        full = pd.Series(pd.NA, index=col.index, dtype="object")
        full.loc[parsed.index] = parsed
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
            "weight_scale": as_scale(head["weight_scale"]),
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
    df = sort_by_scale(df[order], ["weight_scale", "use_batchnorm", "seed", "epoch"])
    return df.reset_index(drop=True)


def varying_config(df: pd.DataFrame) -> dict[str, list]:
    """Params other than weight_scale/use_batchnorm/seed and the axes of :mod:`analysis.facets` that take more
    than one value.

    A sweep's cells differ only in those; anything else varying (the data set, test_size, dtype) means the runs
    pooled per cell are not replicates of one config.
    """
    fixed = {*LEADING_COLUMNS, *RUN_COLUMNS, *METRICS, *AXIS_PARAMS, "diverged"}
    columns = df.attrs.get("param_columns") or [c for c in df.columns if c not in fixed]
    out = {}
    for col in columns:
        if col in fixed or col not in df:
            continue
        values = df[col].dropna().unique()
        if len(values) > 1:
            out[col] = sorted(values.tolist(), key=str)
    return out

