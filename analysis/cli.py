"""``python -m analysis``: load a sweep from MLflow, write figures, CSVs and report.md, log them to MLflow."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from analysis.errors import AnalysisError
from analysis.facets import (
    AXIS_PARAMS,
    axes_of,
    axis_name,
    by_facet,
    compare_frame,
    comparison_by_facet,
    count_cells,
    facet_label,
    facet_slug,
    facets,
    parse_compare,
)
from analysis.figures import (
    BN_PLAIN,
    Arms,
    compared_arms,
    plot_curves,
    plot_difference,
    plot_final_accuracy,
    plot_grid,
    save_figure,
    seeds_text,
)
from analysis.histories import default_cache_dir
from analysis.load import DIVERGED_POLICIES, diverged_counts, load_runs, varying_config, without_diverged
from analysis.report import build_report, describe_data, facet_findings
from analysis.scales import is_named, nearest_scale, scale_labels, scale_phrase, sort_scales
from analysis.stats import (
    ALPHA,
    DEFAULT_WIDTH,
    arm_summary,
    final_summary,
    interval_history,
    paired_comparison,
)
from analysis.store import cap_http_retries, check_tracking_uri, resolve_tracking_uri
from tracking.names import RUN_KIND_ANALYSIS
from tracking.uri import StoreError, check_experiment_name

DEFAULT_EXPERIMENT = "batchnorm-weight-scale"
DEFAULT_CURVES_SCALE = 0.01


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _alpha(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text!r}")
    return value


PROG = "python -m analysis"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) that point at --help, exit code 2."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Analyse a batch-norm weight-scale sweep stored in MLflow: mean +- std curves, the 4x4 grid "
                    "over weight scales, paired BN - plain statistics across seeds, and seeds needed. Writes "
                    "figures (PNG+SVG), summary.csv, comparison.csv, intervals.csv and report.md, and logs them as "
                    "artifacts of one analysis run (tag run_kind=analysis) in the same experiment, with each "
                    "cell's paired mean and intervals as metrics by number of seeds.",
    )
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help="MLflow experiment name of the sweep (default: %(default)s)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (sqlite:///path.db or http://host:port); default: env "
                        "MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (the sweep's default)")
    p.add_argument("--out", default=None,
                   help="output directory (default: analysis-out/<experiment>)")
    p.add_argument("--scale", type=_positive_float, default=DEFAULT_CURVES_SCALE,
                   help="weight scale for curves.png; the present scale nearest to it in log space is used "
                        "(default: %(default)s)")
    p.add_argument("--metric", choices=("train_acc", "test_acc"), default="train_acc",
                   help="accuracy shown in grid.png (default: %(default)s, as the book)")
    p.add_argument("--width", type=_positive_float, default=DEFAULT_WIDTH,
                   help="target full width of a 95%% interval, for the seeds-needed columns (default: %(default)s)")
    p.add_argument("--alpha", type=_alpha, default=ALPHA,
                   help="significance level for the Holm-corrected paired tests (default: %(default)s)")
    p.add_argument("--diverged", choices=DIVERGED_POLICIES, default="count",
                   help="how a trial whose loss became non-finite counts: 'count' (default) as the net that failed "
                        "to learn, its accuracy from the divergence on being that of its actual predictions there "
                        "(chance, 0.1, where none was measured); 'exclude' leaves it out of the statistics (a "
                        "sensitivity check). The report gives both where they differ")
    p.add_argument("--compare", default=None, metavar="AXIS=a,b",
                   help="pair two values of another axis by seed instead of BN vs plain, all else equal (BN and "
                        "plain then become an axis of their own), e.g. --compare optimizer=sgd,adam or --compare "
                        "lr=0.01,0.1 (default: BN vs plain)")
    p.add_argument("--no-log", action="store_true",
                   help="write the files only; do not log an analysis run to MLflow (default: log it)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", default=None,
                       help="where the metric histories of ended runs are kept between analyses, so that the next "
                            "one fetches only runs it has not seen (default: $XDG_CACHE_HOME/bnsweep/histories, else "
                            "~/.cache/bnsweep/histories)")
    cache.add_argument("--no-cache", action="store_true",
                       help="fetch every history from the store; read and keep no cache")
    return p


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def _histories_line(counts: dict, cache_dir: Path | None) -> str:
    """Where the loaded runs' histories came from, e.g. "histories: 980 from the cache, 20 fetched"."""
    if cache_dir is None:
        return f"histories: {counts.get('fetched', 0)} fetched, no cache"
    return f"histories: {counts.get('cached', 0)} from the cache in {cache_dir}, {counts.get('fetched', 0)} fetched"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _diverged_note(policy: str) -> str:
    if policy == "count":
        return ("counted as results: accuracy from the divergence on is that of the network's predictions there, "
                "chance where none was measured; --diverged exclude leaves them out")
    return "FAILED runs with failure_reason 'diverged...', left out of the statistics by --diverged exclude"


def _data_notes(df: pd.DataFrame) -> list[str]:
    """Duplicates, skipped runs and mixed configs, as report bullet points (also printed)."""
    notes = []
    for d in df.attrs.get("duplicates", []):
        notes.append(f"duplicate trial {d['trial_key']} ({scale_phrase(d['weight_scale'])}, "
                     f"{'bn' if d['use_batchnorm'] else 'plain'}, seed {d['seed']}): used run {d['kept_run_id']} "
                     f"(earliest), ignored {', '.join(d['dropped_run_ids'])}")
    for (w, bn), n in diverged_counts(df).items():
        notes.append(f"{'BatchNorm' if bn else 'plain'} at {scale_phrase(w)}: {n} trial(s) diverged "
                     "(non-finite loss; "
                     f"{_diverged_note(df.attrs.get('diverged_policy', 'exclude'))})")
    for s in df.attrs.get("skipped", []):
        notes.append(f"skipped run {s['run_id']}: {s['reason']}")
    for col, values in varying_config(df).items():
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        notes.append(f"warning: param {col} varies across runs ({shown}); runs of one weight scale and arm "
                     "are pooled regardless")
    return notes


HISTORY_COLUMNS = ("mean_diff", "ci_low", "ci_high", "cs_low", "cs_high")
LOG_BATCH_METRICS = 1000  # MLflow's limit of metrics per log_batch


def history_metrics(history: pd.DataFrame, timestamp_ms: int) -> list:
    """The rows of :func:`analysis.stats.interval_history` as MLflow metrics ``<metric>/W<scale>/<column>``
    (``<metric>/He/<column>`` for a named scale; with axes ``<metric>/<facet>/W<scale>/<column>``) with
    step = number of seeds, so MLflow's charts show each cell's intervals narrowing as seeds were added."""
    from mlflow.entities import Metric

    labels = scale_labels(history["weight_scale"].unique()) if len(history) else {}
    axes = [a for a in AXIS_PARAMS if a in history]
    out = []
    for row in history.itertuples(index=False):
        facet = facet_slug({a: getattr(row, a) for a in axes})
        scale = labels[row.weight_scale] if is_named(row.weight_scale) else f"W{labels[row.weight_scale]}"
        prefix = f"{row.metric}/{facet + '/' if facet else ''}{scale}"
        for col in HISTORY_COLUMNS:
            value = float(getattr(row, col))
            if value == value:  # the t interval has no value at n = 1
                out.append(Metric(f"{prefix}/{col}", value, timestamp_ms, int(row.n)))
    return out


def _as_written(comparison: pd.DataFrame, arms: Arms) -> pd.DataFrame:
    """comparison.csv: BN vs plain as computed; for ``--compare`` the arms' columns named a and b (``mean_a``,
    ``n_b``, ...), with ``arm_a`` and ``arm_b`` saying what they are."""
    if arms == BN_PLAIN:
        return comparison
    out = comparison.rename(columns=lambda c: c.replace("_bn", "_a").replace("_plain", "_b"))
    out.insert(0, "arm_b", arms.b)
    out.insert(0, "arm_a", arms.a)
    return out


def _diverged_per_cell(counted: pd.DataFrame, axes: list[str]) -> dict[tuple, int]:
    """Diverged trials per (*axis values, weight_scale, use_batchnorm), from the frame that counts them."""
    if "diverged" not in counted or not counted["diverged"].any():
        return {}
    rows = counted[counted["diverged"]]
    grouped = rows.groupby([*axes, "weight_scale", "use_batchnorm"], sort=True)["run_id"].nunique()
    return {key if isinstance(key, tuple) else (key,): int(n) for key, n in grouped.items()}


def log_analysis_run(uri: str, experiment_id: str, files: list[Path], params: dict[str, str],
                     description: str, history: pd.DataFrame | None = None) -> str:
    """Create one FINISHED run tagged run_kind=analysis holding ``files`` as artifacts and, from ``history``, each
    cell's paired mean, t interval and confidence sequence per number of seeds (:func:`history_metrics`); returns
    its id."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    run = client.create_run(experiment_id, run_name=f"analysis {stamp}",
                            tags={"run_kind": RUN_KIND_ANALYSIS, "mlflow.note.content": description})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        metrics = history_metrics(history, run.info.start_time) if history is not None else []
        for i in range(0, len(metrics), LOG_BATCH_METRICS):
            client.log_batch(run_id, metrics=metrics[i:i + LOG_BATCH_METRICS])
        for path in files:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def check_out(option: str | None, out: Path) -> None:
    """The output folder: absent (made in a folder that can be written) or a folder that can be written."""
    if option is not None and not option.strip():
        raise AnalysisError("--out is empty (name a folder, or leave the option out for analysis-out/<experiment>)")
    check_folder("--out", out)


def check_cache_dir(option: str | None) -> None:
    """A ``--cache-dir`` given: a folder that can be written, or one that can be made (the default is only tried:
    a cache that cannot be used is left aside with a warning)."""
    if option is None:
        return
    if not option.strip():
        raise AnalysisError("--cache-dir is empty (name a folder, leave the option out for the default, or give "
                            "--no-cache)")
    check_folder("--cache-dir", Path(option).expanduser())


def check_folder(flag: str, folder: Path) -> None:
    """``folder`` exists and can be written, or can be made in a folder that can be written."""
    if folder.exists() and not folder.is_dir():
        raise AnalysisError(f"{flag} {folder} exists and is not a folder (name a folder, or remove the file)")
    existing = next(p for p in (folder.resolve(), *folder.resolve().parents) if p.exists())
    if not existing.is_dir():
        raise AnalysisError(f"{flag} {folder}: {existing} is not a folder (name a folder whose parents are folders)")
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise AnalysisError(f"{flag} {folder}: {existing} is not writable (name a folder you can write, or fix its "
                            "permissions)")


def check_args(args: argparse.Namespace) -> str:
    """Every option and the store, before anything is printed, read from MLflow or written; returns the URI."""
    try:
        check_experiment_name(args.experiment)
    except StoreError as exc:
        raise AnalysisError(str(exc)) from None
    if args.compare is not None:
        parse_compare(args.compare)
    check_out(args.out, _out_folder(args))
    check_cache_dir(args.cache_dir)
    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(uri, write=not args.no_log)
    return uri


def _out_folder(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out is not None else Path("analysis-out") / _safe_dirname(args.experiment)


def run(args: argparse.Namespace) -> int:
    cap_http_retries()  # before any MLflow client exists
    uri = check_args(args)
    cache_dir = None if args.no_cache else Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    counted = load_runs(args.experiment, uri, check_uri=False, diverged="count", cache_dir=cache_dir)
    arms = BN_PLAIN
    if args.compare is not None and not counted.empty:
        axis, a, b = parse_compare(args.compare)
        counted = compare_frame(counted, axis, a, b)
        arms = compared_arms(axis_name(axis), a, b)
    excluded = without_diverged(counted)
    df, other = (counted, excluded) if args.diverged == "count" else (excluded, counted)
    if df.empty:
        raise AnalysisError(f"experiment {args.experiment!r} at {uri} has no FINISHED trial runs (tag "
                            "run_kind=trial) (run the sweep first, or let it finish)")
    n_runs = df["run_id"].nunique()
    scales = sort_scales(df["weight_scale"].unique())
    t = df.attrs.get("timings_s", {})
    _say(f"loaded {n_runs} runs ({len(df)} rows, {len(scales)} weight scales) in {sum(t.values()):.1f} s "
         f"({_histories_line(df.attrs.get('history_counts', {}), cache_dir)})")
    notes = _data_notes(df)
    for note in notes:
        _say(note)

    axes = axes_of(df)
    if axes:
        _say(f"axes beside the weight scale: {', '.join(f'{a} ({df[a].nunique()} values)' for a in axes)}; each "
             "combination is analysed apart, the tests' families span them all")
    summary = by_facet(df, axes, arm_summary)
    comparison = comparison_by_facet(df, axes, paired_comparison, width=args.width, alpha=args.alpha)
    diverged = diverged_counts(df)
    per_cell = _diverged_per_cell(counted, axes)
    for bn, column in ((True, "bn_diverged"), (False, "plain_diverged")):
        comparison[column] = [per_cell.get((*(r[a] for a in axes), r["weight_scale"], bn), 0)
                              for _, r in comparison.iterrows()]
    other_comparison = (comparison_by_facet(other, axes, paired_comparison, width=args.width, alpha=args.alpha)
                        if diverged else None)
    final = by_facet(df, axes, lambda part: final_summary(part, width=args.width))
    curves_scale = nearest_scale(scales, args.scale)
    if is_named(curves_scale) or abs(curves_scale / args.scale - 1) > 1e-9:
        _say(f"--scale {args.scale:g} not present; curves.png uses the nearest present scale "
             f"{scale_phrase(curves_scale)}")

    out = _out_folder(args)
    out.mkdir(parents=True, exist_ok=True)
    cells = count_cells(df, axes)
    written: list[Path] = []
    figures: dict[str, str] = {}
    for facet, part in facets(df, axes):
        context = ", ".join(p for p in (describe_data(part), facet_label(facet)) if p)
        part_summary, part_final = (frame.merge(pd.DataFrame([facet]), on=axes) if axes else frame
                                    for frame in (summary, final))
        part_comparison = comparison.merge(pd.DataFrame([facet]), on=axes) if axes else comparison
        part_diverged = {(w, bn): n for (*values, w, bn), n in per_cell.items()
                         if tuple(values) == tuple(facet.values())}
        figs = {
            "grid": plot_grid(part_summary, args.metric, context=context, diverged=part_diverged,
                              counted=args.diverged == "count", arms=arms),
            "curves": plot_curves(part_summary, curves_scale, context=context, arms=arms),
            "final_accuracy": plot_final_accuracy(part_final, context=context, arms=arms),
            "difference": plot_difference(part_comparison, context=context, alpha=args.alpha, arms=arms,
                                          family=cells),
        }
        for name, fig in figs.items():
            stem = f"{name}_{facet_slug(facet)}" if facet else name
            written += save_figure(fig, out, stem)
            figures[f"{name}|{facet_label(facet)}" if facet else name] = f"{stem}.png"
    history = by_facet(df, axes, lambda part: interval_history(part, alpha=args.alpha, family=cells))
    summary.to_csv(out / "summary.csv", index=False)
    _as_written(comparison, arms).to_csv(out / "comparison.csv", index=False)
    history.to_csv(out / "intervals.csv", index=False)
    written += [out / "summary.csv", out / "comparison.csv", out / "intervals.csv"]
    report = build_report(experiment=args.experiment, tracking_uri=uri, df=df, comparison=comparison, final=final,
                          figures=figures, curves_scale=curves_scale,
                          metric=args.metric, width=args.width, alpha=args.alpha, notes=notes,
                          diverged_policy=args.diverged, other_comparison=other_comparison, axes=axes, arms=arms)
    (out / "report.md").write_text(report, encoding="utf-8")
    written.append(out / "report.md")
    for path in written:
        print(f"wrote {path}")

    text = facet_findings(comparison, final, axes, alpha=args.alpha, width=args.width, arms=arms)
    if diverged:
        where = "; ".join(f"{'BatchNorm' if bn else 'plain'} at {scale_phrase(w)} in {n}"
                          for (w, bn), n in diverged.items())
        how = ("counted as nets that failed to learn (--diverged count)" if args.diverged == "count"
               else "left out of the statistics (--diverged exclude)")
        text += f" Some trials diverged (non-finite loss), {how}: {where} seed(s)."
    print(text)
    if not args.no_log:
        counts = final[final["metric"] == "train_acc"]["n"]
        params = {
            "n_runs": n_runs, "n_weight_scales": len(scales), "n_seeds": df["seed"].nunique(),
            "seeds_per_arm": seeds_text(counts).removeprefix("n = ").removesuffix(" seeds per arm")
            .removesuffix(" seed per arm"),
            "n_duplicates": len(df.attrs.get("duplicates", [])), "grid_metric": args.metric,
            "curves_scale": curves_scale if is_named(curves_scale) else repr(float(curves_scale)),
            "width": repr(args.width), "alpha": repr(args.alpha),
            "diverged_policy": args.diverged, "compare": args.compare or "batchnorm (BN vs plain)",
        }
        run_id = log_analysis_run(uri, df.attrs["experiment_id"], written, params,
                                  f"Analysis of {n_runs} trial runs.\n\n{text}", history=history)
        print(f"logged analysis run {run_id} (run_kind=analysis) with {len(written)} artifacts to {uri}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except AnalysisError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # MLflow/server failures: one line, not a traceback
        from mlflow.exceptions import MlflowException

        if isinstance(exc, MlflowException | OSError):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"{PROG}: error: {first}", file=sys.stderr)
            return 1
        raise
