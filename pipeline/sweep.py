"""``python -m pipeline.sweep``: run the batch-norm weight-scale experiment as a Ray sweep tracked in MLflow.

Every (weight_scale, use_batchnorm, seed) is one trial, one Ray task and one MLflow run. Trials already FINISHED
in the experiment are skipped, so the same command resumes an interrupted sweep, ``--seeds 0-9`` after
``--seeds 0-4`` runs only the new seeds, and ``--lr 0.01,0.1`` after ``--lr 0.01`` only the new cells.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.axes import AXES
from pipeline.data import DATASETS, VERIFIED
from pipeline.rounds import DEFAULT_MAX_SEEDS
from pipeline.trials import (
    UsageError,
    axis_label,
    cell_tags,
    params_of,
    run_name,
    scale_text,
    trial_key,
    value_text,
)
from pipeline.validate import check_args, dataset_usage_error
from tracking.names import DIVERGED, RUN_KIND_TRIAL
from tracking.uri import mlflow_ui_command

DEFAULT_EXPERIMENT = "batchnorm-weight-scale"
#: A claim is checked against runs of other sweeps created since this long before we planned (clock skew).
RIVAL_CLOCK_MARGIN_MS = 600_000
#: A claim uses the last search for rival runs while it is at most this old. (Only an early out: what makes a trial
#: FINISHED exactly once is the search before its end. Those come every --flush-seconds while trials end, and
#: serve the claims too.)
RIVAL_REFRESH_S = 5.0
DEFAULT_FLUSH_SECONDS = 2.0
#: After Ctrl-C or a lost store, how long the sweep keeps trying to end its runs before leaving them as orphans.
CLEANUP_RETRY_S = 10.0
#: After Ctrl-C while Ray starts, how long the driver waits for the preparer thread (it stops at its next step).
PREPARER_JOIN_S = 10.0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D102
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, unless it says what the default is itself (an option without a
    fixed default) or the option is a flag."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:  # not `in (None, False)`: 0 == False
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m pipeline.sweep``."""
    p = _Parser(
        prog="python -m pipeline.sweep",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("the grid")
    g.add_argument("--weight-scales", default=None, metavar="W,W,...",
                   help="comma list of initial weight standard deviations (default: the book's 16 values, "
                        "np.logspace(0, -4, 16))")
    g.add_argument("--batchnorm", default="both", choices=["on", "off", "both"], help="which arms to train")
    g.add_argument("--seeds", default="0-4", help="seeds to run: a range 0-4, a list 0,3,7, or both 0-4,9")
    u = p.add_argument_group("seeds until clear (after the grid, in rounds; README: Seeds until clear)")
    u.add_argument("--until-width", type=float, default=None, metavar="W",
                   help="add seeds to every weight scale whose anytime-valid 95%% confidence sequence of the paired "
                        "BN - plain test accuracy is wider than W (full width), in rounds of as many seeds as "
                        "--seeds gives, until none is or --max-seeds is reached")
    u.add_argument("--until-decided", action="store_true",
                   help="as --until-width, until every scale's confidence sequence excludes 0 (or, with "
                        "--until-width, is narrower than W)")
    u.add_argument("--max-seeds", type=int, default=None, metavar="N",
                   help=f"at most N seeds per weight scale in those rounds (default: {DEFAULT_MAX_SEEDS})")
    h = p.add_argument_group("the data and precision (fixed across the grid)")
    h.add_argument("--dataset", default="mnist", choices=DATASETS,
                   help="data set: the official MNIST or Fashion-MNIST files, checked against their known sums, or "
                        "idx: your own four IDX files of 28x28 images in 10 classes in --data-dir (KMNIST, EMNIST "
                        "digits, a copy of MNIST), checked for structure only and tagged dataset_verified=false")
    h.add_argument("--data-dir", default=None, help="folder with the four IDX files (default: search the cache, "
                   "BNSWEEP_DATA_DIR and /usr/share/datasets, then download; --dataset idx: required)")
    h.add_argument("--test-size", type=int, default=1000,
                   help="held-out samples for test_acc (the first N of the test split; up to all 10000)")
    x = p.add_argument_group("hyperparameters: each takes a list, and the grid runs every combination")
    for axis in AXES:
        x.add_argument(axis.option, default=axis.default, metavar="V" + axis.sep + "V...",
                       help=f"{axis.help} ({axis.sep}-separated for several)")
    h.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="float64 is the book's precision; float32 is about twice as fast, and its final test "
                        "accuracy differs from float64's by +0.002 on average over 40 default trials, at most 0.032 "
                        "(README, Performance)")
    r = p.add_argument_group("where it runs and what records it")
    r.add_argument("--workers", type=int, default=None,
                   help="trials running at once (default: the cluster's CPUs)")
    r.add_argument("--address", default=None,
                   help="host:port of an existing Ray cluster to join (default: start a local Ray on 127.0.0.1)")
    r.add_argument("--connect-timeout", type=float, default=30.0,
                   help="seconds to wait for the Ray cluster of --address to answer")
    r.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    r.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    r.add_argument("--flush-seconds", type=float, default=DEFAULT_FLUSH_SECONDS,
                   help="the driver writes a trial's progress to MLflow at most this often: the new epochs of a "
                        "running trial, and FINISHED for the trials that ended meanwhile (one exactly-once check "
                        "serves them all)")
    r.add_argument("--tracking-retry", type=float, default=120.0,
                   help="seconds to keep retrying an unavailable tracking store before giving up")
    r.add_argument("--orphan-timeout", type=float, default=900.0,
                   help="a RUNNING run from another host with no heartbeat for this long is treated as orphaned")
    r.add_argument("--retry-diverged", action="store_true",
                   help="run again trials whose loss diverged before (by default they are skipped: training is "
                        "deterministic, so the same trial diverges again)")
    r.add_argument("--dry-run", action="store_true", help="show what would run, start nothing, write nothing")
    r.add_argument("--verbose", action="store_true",
                   help="also show Ray's and MLflow's own messages (start-up warnings, MLflow creating its tables)")
    return p


def trial_grid(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """``(the fixed hyperparameters, the trial configs)`` the command line asks for, validated."""
    checked = check_args(args)
    return checked.base, checked.grid


@functools.cache
def code_version() -> str:
    """The git commit of this code (with ``-dirty`` for local changes), else the package version. Read once per
    process, as :func:`run` starts: the code a sweep runs is what it loaded then, whatever the checkout becomes while
    its rounds run."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "bnsweep " + version("bnsweep")
        except PackageNotFoundError:
            return "unknown"


@dataclass
class Active:
    """A trial whose task is running."""

    config: dict
    key: str
    run_id: str
    start_time: int
    epochs_logged: set = field(default_factory=set)
    buffer: list = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)
    node: dict = field(default_factory=dict)
    node_tagged: dict = field(default_factory=dict)
    workers_seen: set = field(default_factory=set)
    params_sent: bool = False


@dataclass
class Outcome:
    """Counts for the summary."""

    finished: int = 0
    failed: int = 0
    killed: int = 0
    yielded: int = 0
    created: int = 0  # runs this sweep created in the store
    retried: int = 0
    diverged: int = 0
    failures: list = field(default_factory=list)
    compute_seconds: float = 0.0
    compute_cpu_seconds: float = 0.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    # MLflow's own log lines only with --verbose (MLflow reads this as it is imported): its INFO lines (creating a
    # store's tables), and the traceback its SQL store logs (ERROR) for each failed statement before it raises; the
    # sweep says what failed itself, in one line (a retry, or the error it ends with).
    if args.verbose:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
    else:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "CRITICAL")
    # `kill -USR1 <pid>` prints where every thread of the driver is: for a sweep that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return run(args)
    except UsageError as exc:
        print(f"python -m pipeline.sweep: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # once trials run, the sweep's loop handles Ctrl-C itself (and says how to resume)
        print("python -m pipeline.sweep: interrupted while starting; no trial had started.", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(args: argparse.Namespace) -> int:
    """Validate, plan, start Ray, and run every trial not yet FINISHED."""
    checked = check_args(args)
    base, grid, uri = checked.base, checked.grid, checked.uri
    keys = [trial_key(c) for c in grid]
    code_version()

    if args.dry_run:
        return _dry_run(args, uri, grid, keys, checked.store.exists, checked.until, checked.axes)

    from pipeline import cluster

    started = time.perf_counter()
    joined = None
    if args.address:
        cluster.check_address(args.address)
        # A cluster is joined before anything touches the store: one that does not answer within --connect-timeout
        # ends the sweep (exit 2) with nothing written.
        joined = cluster.connect(args.address, args.workers, args.verbose, timeout=args.connect_timeout)
    # Ray starts at once, and the preparer imports MLflow and plans beside it: asking MLflow first what is left to
    # run would put MLflow's import (about 1.4 s) before Ray's start-up in every sweep that adds seeds to a store. A
    # grid already complete then starts Ray, and a trial per worker, for nothing ("Nothing to run" at 3.5 s, not 2.2).
    new_store = not checked.store.exists

    # From here on Ctrl-C (and SIGTERM) only set `stop`, and the driver acts on it at its next step. Raised at
    # once, KeyboardInterrupt could land inside Python's import machinery while Ray imports a module, and leave
    # the import lock held, so the preparer's import of MLflow would wait forever.
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C while Ray starts: stop waiting for it
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Load the data and plan against MLflow while Ray starts: each takes seconds and neither needs the other.
    prepared: dict = {}
    data_ready = threading.Event()
    preparer = threading.Thread(target=_prepare, args=(args, uri, base, grid, keys, prepared, stop, data_ready),
                                kwargs={"axes": tuple(checked.axes)}, daemon=True)
    preparer.start()
    try:
        # a Ctrl-C meanwhile is acted on once it returns
        cpus = joined if joined is not None else cluster.connect(None, args.workers, args.verbose)
        early = None
        # Until the plan is made (MLflow's import, and the store's schema or a read of its runs: a second or two),
        # the workers train the grid's trials in the order the plan most likely runs them: on a new store all of them
        # run, so from the first; on a store that exists from the last, since seeds are added at the grid's end and
        # an interrupted sweep left its last trials. The next ones start as these end; the plan claims those it runs
        # and leaves the rest to end on their own, unrecorded (see _sweep's `leave`).
        while not data_ready.is_set() and preparer.is_alive() and not stop.is_set():
            data_ready.wait(0.1)
        if data_ready.is_set() and preparer.is_alive() and not stop.is_set():
            order = range(len(grid)) if new_store else range(len(grid) - 1, -1, -1)
            early = _start_first(prepared["data"], grid, keys, list(order), args.workers or cpus)
        first_started = time.perf_counter() if early else None
        while preparer.is_alive() and not stop.is_set():
            if early and early.running:  # keep the workers busy with the grid's next trials until the plan is made
                _start_next(early, grid, keys, timeout=0.05)
            else:
                preparer.join(0.1)
        if stop.is_set():
            raise KeyboardInterrupt
        if "error" in prepared:
            raise prepared["error"]
        ray_seconds = (first_started or time.perf_counter()) - started  # until the first trials could start
        code = _sweep(args, uri, cpus, prepared["plan"], started, ray_seconds, stop, early)
        if code == 0 and checked.until is not None:
            code = _rounds(args, uri, cpus, checked, (prepared["data"], prepared["plan"].checksum), stop)
        return code
    except KeyboardInterrupt:
        # Before the first trial: the preparer writes nothing more to MLflow, and ends before the interpreter
        # does (a thread still importing MLflow while Python shuts down fails with a traceback).
        stop.set()
        preparer.join(PREPARER_JOIN_S)
        raise
    finally:
        cluster.disconnect()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _rounds(args: argparse.Namespace, uri: str, cpus: int, checked, loaded: tuple, stop: threading.Event) -> int:
    """After the grid: rounds of seeds for the cells not yet clear (:mod:`pipeline.rounds`), then the table."""
    from pipeline import rounds

    until = checked.until
    _say(f"Seeds until clear: a weight scale is clear when {until.describe()} (paired BN - plain test accuracy, "
         f"simultaneous over the {len(checked.scales)} scales); rounds of {until.step} seed(s), at most "
         f"{until.max_seeds} per scale.")
    number = 1
    while True:
        state = rounds.assess(uri, args.experiment, checked.base, checked.scales, until)
        if stop.is_set():
            break
        unclear = state.unclear
        if not state.next_grid:
            print(rounds.table_text(state))
            left = int(state.table["status"].str.startswith("not clear").sum())
            what = f"{left} scale(s) not clear at --max-seeds {until.max_seeds}" if left else "every scale is clear"
            _say(f"Seeds until clear: {what} after {number} round(s).")
            return 0
        number += 1
        scales = ", ".join(f"{w:.4g}" for w in unclear["weight_scale"])
        _say(f"Round {number}: {len(unclear)} of {len(checked.scales)} scale(s) not yet clear (W={scales}): their "
             f"seeds up to {max(c['seed'] for c in state.next_grid)}.")
        keys = [trial_key(c) for c in state.next_grid]
        prepared: dict = {}
        _prepare(args, uri, checked.base, state.next_grid, keys, prepared, stop, loaded=loaded)
        if "error" in prepared:
            raise prepared["error"]
        if stop.is_set() or "plan" not in prepared:
            break
        code = _sweep(args, uri, cpus, prepared["plan"], time.perf_counter(), 0.0, stop)
        if code != 0:
            return code
    resume = "python -m pipeline.sweep " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _say(f"\nInterrupted between rounds: every trial run so far is recorded. Resume with the same command: {resume}")
    return EXIT_INTERRUPTED


def _settled(runs, retry_diverged: bool) -> tuple[set[str], set[str]]:
    """(FINISHED keys, keys that diverged and have no FINISHED run); diverged ones count as settled unless retried."""
    finished = {r.trial_key for r in runs if r.status == "FINISHED"}
    diverged = {r.trial_key for r in runs if r.status == "FAILED"
                and r.failure_reason.startswith(DIVERGED)} - finished
    return finished, (set() if retry_diverged else diverged)


def _finished_keys(args: argparse.Namespace, uri: str, exists: bool) -> set[str]:
    """The trial keys already settled (FINISHED, or diverged unless retried). Read-only: creates nothing."""
    if not exists:
        return set()
    from pipeline import tracker as tracking

    tracker = tracking.Tracker(uri, retry_seconds=args.tracking_retry)
    exp_id = tracker.find_experiment_id(args.experiment)
    if exp_id is None:
        return set()
    finished, diverged = _settled(tracker.trial_runs(exp_id), args.retry_diverged)
    return finished | diverged


def _dry_run(args: argparse.Namespace, uri: str, grid: list[dict], keys: list[str], exists: bool,
             until=None, axes: dict | None = None) -> int:
    done = _finished_keys(args, uri, exists)
    todo = [c for c, k in zip(grid, keys, strict=True) if k not in done]
    seeds = list(dict.fromkeys(c["seed"] for c in grid))
    shown = [("weight_scale", [scale_text(w) for w in dict.fromkeys(c["weight_scale"] for c in grid)], ", "),
             ("use_batchnorm", [str(bn) for bn in dict.fromkeys(c["use_batchnorm"] for c in grid)], ", "),
             *((axis_label(k), [value_text(x) for x in v], " ; " if k == "hidden_size_list" else ", ")
               for k, v in (axes or {}).items()),
             ("seed", [str(s) for s in seeds], ", ")]
    print(f"Axes ({' x '.join(str(len(values)) for _, values, _ in shown)} = {len(grid)} trials):")
    for name, values, sep in shown:
        print(f"  {name} ({len(values)}): {sep.join(values[:20])}{' ...' if len(values) > 20 else ''}")
    print(f"Dry run: {len(grid)} trials in the grid, {len(grid) - len(todo)} already FINISHED (or diverged) in "
          f"experiment {args.experiment!r} at {uri}, {len(todo)} would run.")
    for config in todo[:20]:
        print(f"  {run_name(config, tuple(axes or ()))}")
    if len(todo) > 20:
        print(f"  ... and {len(todo) - 20} more")
    if until is not None:
        print(f"Then rounds of {until.step} seed(s) for each weight scale not yet clear (clear: {until.describe()}), "
              f"up to {until.max_seeds} seeds per scale.")
    return 0


def trial_data(args: argparse.Namespace, base: dict, train_size: int | None = None) -> tuple[tuple, str]:
    """``((x_train, t_train, x_test, t_test), dataset sha256)`` as every task gets them: the first
    ``train_size`` (default ``base["train_size"]``; each trial uses its first ``train_size`` of them) and
    ``test_size`` samples, images in the trial dtype, all contiguous."""
    from pipeline.data import load_dataset_with_checksum

    try:
        ((x_train, t_train), (x_test, t_test)), checksum = load_dataset_with_checksum(
            args.dataset, args.data_dir, first=(train_size or base["train_size"], base["test_size"]))
    except ValueError as exc:  # DatasetError: found as the content is read (the sizes were checked before)
        raise dataset_usage_error(exc) from None
    dtype = np.dtype(base["dtype"])
    data = (np.ascontiguousarray(x_train, dtype=dtype), np.ascontiguousarray(t_train),
            np.ascontiguousarray(x_test, dtype=dtype), np.ascontiguousarray(t_test))
    return data, checksum


@dataclass
class Plan:
    """What a sweep will do, decided before its first trial starts."""

    tracker: object
    exp_id: str
    sweep_id: str
    planned_ms: int
    driver: str
    data: tuple
    checksum: str
    todo: deque
    total: int
    skipped: int
    skipped_diverged: int
    orphans: int
    running_elsewhere: int
    axes: tuple[str, ...] = ()  # the hyperparameters with several values, named in run names and cell tags


def _prepare(args, uri: str, base: dict, grid: list[dict], keys: list[str], out: dict,
             cancelled: threading.Event, data_ready: threading.Event | None = None,
             loaded: tuple | None = None, axes: tuple[str, ...] = ()) -> None:
    """Load the data, then plan against MLflow: skip what is FINISHED, end orphans, leave live runs alone.

    Runs in a thread beside Ray's start-up; the data comes first (``out["data"]``, then ``data_ready`` is set), so
    that bad data writes nothing to MLflow and the first trials can start before MLflow is even imported.
    Once ``cancelled`` is set (Ctrl-C while Ray starts) it writes nothing more and ends: its error, if any,
    goes to ``out["error"]``, never to the terminal. ``loaded``: the (data, checksum) of an earlier round.
    """
    try:
        train_size = max(c["train_size"] for c in grid)
        data, checksum = loaded if loaded is not None else trial_data(args, base, train_size)
        out["data"] = data
        if data_ready is not None:
            data_ready.set()
        if cancelled.is_set():
            return

        from tqdm import tqdm

        from pipeline import tracker as tracking

        tracker = tracking.Tracker(uri, retry_seconds=args.tracking_retry,
                                   on_retry=lambda m: tqdm.write(m, file=sys.stderr))
        tracker.stop = cancelled  # a retry wait ends at once on Ctrl-C
        if cancelled.is_set():
            return
        exp_id = tracker.ensure_experiment(args.experiment)
        sweep_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        planned_ms = int(time.time() * 1000)
        existing = tracker.trial_runs(exp_id)
        finished, diverged = _settled(existing, args.retry_diverged)
        orphans = [r for r in existing if tracking.is_orphan(r, args.orphan_timeout)]
        for r in orphans:
            if cancelled.is_set():
                return
            reason = f"orphaned: its sweep's driver ({r.driver}) is gone; rerun by sweep {sweep_id}"
            tracker.end_run(r.run_id, "FAILED", reason)
        orphan_ids = {r.run_id for r in orphans}
        running_elsewhere = {r.trial_key for r in existing
                             if r.status == "RUNNING" and r.run_id not in orphan_ids} - finished
        excluded = finished | diverged | running_elsewhere
        todo = deque((c, k) for c, k in zip(grid, keys, strict=True) if k not in excluded)
        out["plan"] = Plan(
            tracker=tracker, exp_id=exp_id, sweep_id=sweep_id, planned_ms=planned_ms,
            driver=tracking.driver_identity(), data=data,
            checksum=checksum, todo=todo, total=len(grid), skipped=len(set(keys) & finished),
            skipped_diverged=len(set(keys) & diverged),
            orphans=len(orphans), running_elsewhere=len(set(keys) & running_elsewhere), axes=axes,
        )
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
        out["error"] = exc


@dataclass
class Started:
    """The trials started before the plan was made (:func:`_start_first`, :func:`_start_next`), and the data
    reference they got."""

    data_ref: object
    order: list[int]  # the grid's indices in the order they start
    tasks: list = field(default_factory=list)  # (generator, config, key), in that order
    running: list = field(default_factory=list)  # the generators of those not yet complete


def _start_first(data: tuple, grid: list[dict], keys: list[str], order: list[int], workers: int) -> Started:
    """Put the data into Ray's object store and start ``workers`` trials of the grid, its indices taken in ``order``;
    :func:`_sweep` claims them, or leaves those the plan leaves out to end unrecorded."""
    import ray

    early = Started(ray.put(data), order)
    for _ in range(min(workers, len(order))):
        _start_one(early, grid, keys)
    return early


def _start_one(early: Started, grid: list[dict], keys: list[str]) -> None:
    """Start the next trial of ``early.order`` not yet started (streaming one item per epoch, as :func:`_sweep`
    expects of a trial it did not start itself)."""
    from pipeline.tasks import train_trial

    i = early.order[len(early.tasks)]
    gen = train_trial.remote(grid[i], early.data_ref, 1)
    early.tasks.append((gen, grid[i], keys[i]))
    early.running.append(gen)


def _start_next(early: Started, grid: list[dict], keys: list[str], timeout: float) -> None:
    """Wait up to ``timeout`` s for started trials to end, and start the next one of ``early.order`` in the place of
    each.

    The plan waits for MLflow's import and the store's schema or a read of its runs: about 1-2 s after the first
    trials start, longer than many a trial takes (one that diverges ends within 0.1 s). Without this its worker
    would sit idle until then."""
    import ray

    refs = {gen.completed(): gen for gen in early.running}
    ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
    if ready:  # every one that has ended by now, not one per call
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    for ref in ready:
        early.running.remove(refs[ref])
        if len(early.tasks) < len(early.order):
            _start_one(early, grid, keys)


def _sweep(args, uri: str, cpus: int, plan: Plan, started: float, ray_seconds: float,  # noqa: C901
           stop: threading.Event, early: Started | None = None) -> int:
    """Run the planned trials, at most ``--workers`` at once, streaming their epochs into MLflow.

    ``stop`` is set by Ctrl-C or SIGTERM (from before Ray started); the loop checks it between its steps. ``early``
    are trials started before the plan: claimed first if the plan runs them, else left to end unrecorded."""
    import ray
    from tqdm import tqdm

    from pipeline import cluster
    from pipeline import tracker as tracking
    from pipeline.tasks import train_trial

    tracker, exp_id, sweep_id, driver, todo = plan.tracker, plan.exp_id, plan.sweep_id, plan.driver, plan.todo
    skipped = plan.skipped
    workers = args.workers or cpus
    _say(f"Sweep {sweep_id}: {plan.total} trials in the grid, {skipped} already FINISHED, {len(todo)} to run "
         f"on {workers} workers ({cpus} CPUs in the cluster); experiment {args.experiment!r} at {uri}.")
    if plan.skipped_diverged:
        _say(f"Skipped {plan.skipped_diverged} trial(s) whose loss diverged in an earlier sweep (deterministic: "
             "they would diverge again; --retry-diverged runs them).")
    if plan.orphans:
        _say(f"Ended {plan.orphans} orphaned RUNNING run(s) of an earlier sweep as FAILED; their trials run again.")
    if plan.running_elsewhere:
        _say(f"{plan.running_elsewhere} trial(s) are RUNNING in another live sweep; left to it.")
    ui = mlflow_ui_command(uri, exp_id)
    # Tasks whose results the sweep does not want: trials started before the plan that it leaves out (already
    # FINISHED, or another sweep has them), and trials whose claim another sweep won. Each keeps its worker until it
    # ends on its own; what it measured is dropped, so it writes nothing. They are never cancelled: in Ray 2.60,
    # ray.cancel of a generator task whose end is being reported crashes the driver ("Check failed: ... Tried to
    # complete task that was not pending", task_manager.cc), and a trial that ends while the plan is made or a claim
    # is checked is just such a task. What is left running when the sweep ends stops with Ray (a local instance is
    # shut down; on a cluster, the driver's exit ends its job's tasks).
    leftover: dict = {}  # gen.completed() -> gen

    def leave(gen) -> None:
        leftover[gen.completed()] = gen

    # The trials started before the plan: those it runs are claimed first, the rest are left.
    planned_keys = {key for _, key in todo}
    first = [(gen, config, key) for gen, config, key in (early.tasks if early else []) if key in planned_keys]
    for gen, _, key in early.tasks if early else []:
        if key not in planned_keys:
            leave(gen)
    if not todo:
        what = (f"all {plan.total} trials of this grid are already FINISHED (or diverged)" if not plan.running_elsewhere
                else "every trial of this grid is already FINISHED or running in another sweep")
        _say(f"Nothing to run: {what} in experiment {args.experiment!r}. See them: {ui}")
        return 0

    # Once: every task gets this reference, read zero-copy from the object store.
    data_ref = early.data_ref if early else ray.put(plan.data)
    # On a one-node cluster (the sweep's own local Ray) every run is created with the tags of where it will run, so
    # the log_batch of its epochs carries no tags: MLflow writes a batch's params, metrics and tags in a transaction
    # each, and the tags' one is about 1.4 ms of the 18 ms MLflow costs a trial here (benchmarks/bench_logging.py).
    node_tags = cluster.single_node()
    static_tags = {
        "run_kind": RUN_KIND_TRIAL,
        "sweep_id": sweep_id,
        "dataset": args.dataset,
        "dataset_sha256": plan.checksum,
        # official files checked against their known sums, or a copy of the user's own (--dataset idx)
        "dataset_verified": str(args.dataset in VERIFIED).lower(),
        "code_version": code_version(),
        "driver": driver,
        **node_tags,
    }
    outcome = Outcome()
    planned = len(todo)  # trials this sweep is to record: each ends FINISHED, FAILED, or left to another sweep
    active: dict = {}
    bar = tqdm(total=len(todo), unit="trial", desc="trials", file=sys.stderr, mininterval=0.5, dynamic_ncols=True)

    # Runs of other sweeps created since (just before) we planned: the only ones that can contest a claim.
    rivals_since = plan.planned_ms - RIVAL_CLOCK_MARGIN_MS
    rivals = {"at": -math.inf, "runs": []}

    def search_rivals() -> None:
        rivals["runs"] = tracker.rival_runs(exp_id, sweep_id, rivals_since)
        rivals["at"] = time.monotonic()

    def rivals_of(key: str) -> list:
        """Rival runs of one trial, from the last search if it is at most ``RIVAL_REFRESH_S`` old."""
        if time.monotonic() - rivals["at"] > RIVAL_REFRESH_S:
            search_rivals()
        return [r for r in rivals["runs"] if r.trial_key == key]

    def claim(config: dict, key: str, gen) -> Active | None:
        """Create the trial's RUNNING run (its task is already submitted); None if another sweep has it."""
        tags = dict(static_tags, trial_key=key, **cell_tags(config, plan.axes), heartbeat=f"{time.time():.0f}")
        run_id, start_time = tracker.create_run(exp_id, run_name(config, plan.axes), tags)
        outcome.created += 1
        mine = tracking.RunInfo(run_id, key, "RUNNING", start_time, sweep_id, driver, time.time())
        if tracking.winner(mine, rivals_of(key), args.orphan_timeout) is not None:
            leave(gen)
            tracker.delete_run(run_id)
            return None
        return Active(config, key, run_id, start_time, node_tagged=dict(node_tags))

    epoch_seconds: deque = deque(maxlen=32)  # compute seconds per epoch of recently ended trials

    def epochs_per_item() -> int:
        """How many epochs a task sends per streamed item: about one item per ``--flush-seconds``, judged from the
        trials that ended so far (one per epoch until a trial has ended). The driver flushes to MLflow at most that
        often anyway; fewer items mean less Ray work on both sides."""
        if not epoch_seconds:
            return 1
        return max(1, int(args.flush_seconds / max(statistics.median(epoch_seconds), 1e-6)))

    def take(config: dict, key: str, gen) -> None:
        state = claim(config, key, gen)
        if state is None:
            outcome.yielded += 1
            bar.update(1)
        else:
            active[gen] = state

    def submit() -> None:
        """Fill every free slot (a left task holds its slot until it ends): submit the task first (a worker never
        waits for MLflow), then claim."""
        while first and not stop.is_set():
            gen, config, key = first.pop(0)
            todo.remove((config, key))
            take(config, key, gen)
        while todo and len(active) + len(leftover) < workers and not stop.is_set():
            config, key = todo.popleft()
            take(config, key, train_trial.remote(config, data_ref, epochs_per_item()))

    # Trials that ended complete, waiting for the check that makes each FINISHED exactly once (also against a sweep
    # that started with ours): a search made after they ended, then their end right after it. One search serves all
    # that ended within --flush-seconds of the first: a search costs about as much as a trial's other MLflow calls
    # together cost beside it (benchmarks/bench_logging.py), and the driver shares the workers' CPUs.
    unchecked: list[Active] = []
    check_due = {"at": math.inf}

    def hold(state: Active) -> None:
        if not unchecked:
            check_due["at"] = time.monotonic() + args.flush_seconds
        unchecked.append(state)

    def finish_checked() -> None:
        """One search for rival runs, then FINISHED (or, for a trial another sweep won, deleted) for every held one."""
        search_rivals()  # also serves the claims of the next RIVAL_REFRESH_S
        while unchecked:
            state = unchecked.pop(0)
            mine = tracking.RunInfo(state.run_id, state.key, "RUNNING", state.start_time, sweep_id, driver, time.time())
            if tracking.winner(mine, rivals_of(state.key), args.orphan_timeout) is not None:
                tracker.delete_run(state.run_id)
                outcome.yielded += 1
            else:
                finish(state, "FINISHED")
            bar.update(1)
        check_due["at"] = math.inf

    def finish(state: Active, status: str, reason: str | None = None) -> None:
        """End the trial's run (a FINISHED one only after :func:`finish_checked`'s check)."""
        tags = {}
        if len(state.workers_seen) > 1:  # its worker (or node) died and Ray ran the task again
            outcome.retried += 1
            tags["task_attempts"] = str(len(state.workers_seen))
        tracker.end_run(state.run_id, status, reason, tags, None if state.params_sent else params_of(state.config))
        if status == "FINISHED":
            outcome.finished += 1
        else:
            outcome.failed += 1
            outcome.failures.append(f"{run_name(state.config, plan.axes)}: {reason}")
            bar.set_postfix(failed=outcome.failed, refresh=False)

    def flush(state: Active, last: bool = False) -> None:
        """Send the epochs buffered for a run, with the heartbeat and where it runs (unless its run was created with
        that), in one round trip. No heartbeat with a trial's ``last`` epochs: its run is ended right after."""
        tags = {} if last else {"heartbeat": f"{time.time():.0f}"}
        node = {k: v for k, v in state.node.items() if k != "pid"}
        if node != state.node_tagged:
            tags.update(node)
            state.node_tagged = node
        tracker.log_batch(state.run_id, state.buffer, tags, None if state.params_sent else params_of(state.config))
        state.params_sent = True
        state.buffer = []
        state.last_flush = time.monotonic()

    def handle(gen, state: Active) -> tuple[str, str | None] | None:
        """Take one streamed item of ``gen``; the trial's (status, reason) when it is over, else None."""
        try:
            item = ray.get(next(gen))
        except StopIteration:
            return "FAILED", "the task ended without reporting its result"
        except ray.exceptions.RayError as exc:
            return "FAILED", _task_error(exc)
        state.workers_seen.add((item["node"]["ray_node"], item["node"]["pid"]))
        state.node = item["node"]
        for epoch, metrics, time_ms in item["epochs"]:
            if epoch not in state.epochs_logged:
                state.buffer.append((epoch, metrics, time_ms))
                state.epochs_logged.add(epoch)
        if "done" not in item:
            if time.monotonic() - state.last_flush >= args.flush_seconds:
                flush(state)
            return None
        outcome.compute_seconds += item["seconds"]
        outcome.compute_cpu_seconds += item.get("cpu_seconds", 0.0)  # a task of an older version may not say
        if state.epochs_logged:
            epoch_seconds.append(item["seconds"] / len(state.epochs_logged))
        if item["diverged_at"] is not None:
            outcome.diverged += 1
            return "FAILED", f"{DIVERGED}: train_loss is not finite at epoch {item['diverged_at']}"
        if len(state.epochs_logged) != state.config["epochs"] + 1:
            return "FAILED", f"only {len(state.epochs_logged)} of {state.config['epochs'] + 1} epochs arrived"
        return "FINISHED", None

    def interrupt(signum, frame):  # noqa: ARG001
        """Ctrl-C and SIGTERM only set the flag; the loop acts on it between its steps, within about a second.

        Raising KeyboardInterrupt from here would land inside whatever runs at that instant: half-way through an
        MLflow write (a SQLite transaction left open holds the store's lock) or inside Ray's client.
        """
        stop.set()

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    mlflow_seconds_before = tracker.seconds
    tracker.stop = stop  # an MLflow call waiting to retry gives up at once
    try:
        while todo or active or unchecked:
            if stop.is_set():
                raise KeyboardInterrupt
            submit()
            if active or leftover:
                waiting = [*active, *leftover]  # the next item of a trial, or the end of a left task
                timeout = min(1.0, max(0.0, check_due["at"] - time.monotonic()))
                ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
                if stop.is_set():
                    raise KeyboardInterrupt
                if ready:  # take everything that is ready now, not one item per wake-up
                    ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
                ended = []
                for gen in ready:
                    if gen not in active:  # a left task ended: its slot is free
                        del leftover[gen]
                        continue
                    result = handle(gen, active[gen])
                    if result is not None:
                        ended.append((active.pop(gen), *result))
                submit()  # the next trials start before the ended ones are written to MLflow
                for state, status, reason in ended:
                    if state.buffer:
                        flush(state, last=True)
                    if status == "FINISHED":
                        hold(state)
                    else:
                        finish(state, status, reason)
                        bar.update(1)
            if unchecked and (not active or time.monotonic() >= check_due["at"]):
                finish_checked()
    except (KeyboardInterrupt, tracking.TrackingUnavailable, tracking.StoreRefused) as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bar.close()
        # The tasks still running are not cancelled (see `leave`): they stop with Ray when the sweep ends, right
        # after their runs are ended here, and what they measure meanwhile is never read.
        interrupted = isinstance(exc, KeyboardInterrupt)
        # Someone is waiting for the prompt: if the store is down, the runs are left to the next sweep (as orphans).
        tracker.stop = None
        tracker.retry_seconds = min(tracker.retry_seconds, CLEANUP_RETRY_S)
        ours, ended = [], True
        try:
            if interrupted and unchecked:
                finish_checked()  # trials that ended complete are results: recorded, not ended KILLED
            # Ask the store rather than our own books: a claim may have been cut off half-way.
            ours = [r for r in tracker.trial_runs(exp_id) if r.sweep_id == sweep_id and r.status == "RUNNING"]
            for r in ours:
                tracker.end_run(r.run_id, "KILLED" if interrupted else "FAILED",
                                "interrupted; rerun the sweep to finish this trial" if interrupted
                                else f"tracking store unavailable: {exc}")
        except (tracking.TrackingUnavailable, tracking.StoreRefused):
            ended = False
        resume = "python -m pipeline.sweep " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        # counted from what is known to be in the store, not from where the trials were when it failed: one being
        # claimed or ended then is in neither list
        unrecorded = planned - outcome.finished - outcome.failed - outcome.yielded
        if interrupted:
            unfinished = (f"{len(ours)} stopped and ended KILLED" if ended else
                          f"the unfinished ones stopped; MLflow at {uri} is unavailable, so their runs stay "
                          "RUNNING until the next sweep ends them as orphans")
            _say(f"\nInterrupted: {outcome.finished} trial(s) finished, {unfinished}. "
                 f"Resume with the same command: {resume}")
            return EXIT_INTERRUPTED
        if isinstance(exc, tracking.StoreRefused):
            if not outcome.created:
                _say(f"python -m pipeline.sweep: error: {exc.what}; nothing was recorded ({exc.fix})")
                return EXIT_USAGE
            _say(f"\nerror: {exc.what}. {_recorded(outcome)}; {unrecorded} were not (runs left RUNNING are ended as "
                 f"orphans by the next sweep). To finish them: {exc.fix}: {resume}")
            return 1
        _say(f"\nerror: MLflow at {uri} stayed unavailable for {args.tracking_retry:.0f}s ({exc}). "
             f"{_recorded(outcome)}; {unrecorded} were not (runs left RUNNING are ended as orphans by the next "
             f"sweep). Rerun the same command to finish them: {resume}")
        return 1
    finally:
        for sig, handler in previous.items():
            if sig != signal.SIGINT or not stop.is_set():  # once interrupted, a second Ctrl-C stays ignored
                signal.signal(sig, handler)
        bar.close()

    wall = time.perf_counter() - started
    # The trials' own compute time (measured inside the tasks) next to the wall time: how busy the workers were; and
    # their CPU time, which waiting for a CPU does not stretch.
    _say(f"Sweep {sweep_id} done in {wall:.1f} s (Ray and data ready after {ray_seconds:.1f} s; trials computed "
         f"{outcome.compute_seconds:.1f} s on {workers} workers, {outcome.compute_cpu_seconds:.1f} CPU-s): "
         f"{outcome.finished} run, {skipped} skipped as already FINISHED, {outcome.failed} failed"
         + (f" ({outcome.diverged} of them diverged)" if outcome.diverged else "")
         + (f", {outcome.yielded} left to a concurrent sweep" if outcome.yielded else "")
         + (f", {outcome.retried} retried after losing their worker" if outcome.retried else "")
         + (f"; MLflow calls retried {tracker.retries} time(s)" if tracker.retries else "") + ".")
    for line in outcome.failures[:10]:
        _say(f"  FAILED {line}")
    mlflow_seconds = tracker.seconds - mlflow_seconds_before
    ended = outcome.finished + outcome.failed + outcome.yielded
    _say(f"MLflow calls took {mlflow_seconds:.2f} s of the driver ({1000 * mlflow_seconds / max(ended, 1):.1f} ms per "
         "trial).")
    _say(f"Open the runs: {ui}")
    # A diverged trial is a result of the experiment (recorded FAILED with its reason), not a fault of the run.
    return 1 if outcome.failed > outcome.diverged else 0


def _recorded(outcome: Outcome) -> str:
    """``3 trial(s) were recorded`` (FINISHED, or FAILED with their reason), and how many were left to another sweep."""
    text = f"{outcome.finished + outcome.failed} trial(s) were recorded"
    if outcome.failed:
        text += f" ({outcome.finished} FINISHED, {outcome.failed} FAILED)"
    if outcome.yielded:
        text += f", {outcome.yielded} left to a concurrent sweep"
    return text


def _task_error(exc: BaseException) -> str:
    """One line saying why a task failed: the trial's own exception, or the worker/node that was lost."""
    import ray

    from pipeline.tasks import MAX_RETRIES

    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        lines = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {lines[-1] if lines else ''}".strip()
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''} (after {MAX_RETRIES} retries)"


if __name__ == "__main__":
    sys.exit(main())
