"""Interleaved A/B timing of one default trial: the model code at a git revision (A) against the working tree's (B).

A model change worth a few percent is smaller than this machine's drift between two runs of ``bench_trial``, so
both versions are timed in the same minutes: two long-lived worker processes, one per version of ``model/`` (the
revision's is extracted with ``git archive`` into a temporary folder; both load the data with this tree's code),
take turns on each of the four variants of ``bench_trial``, alternating which goes first, both pinned to the same
CPU so that load on the other cores favours neither. Each trial is timed in CPU seconds of its worker (one BLAS
thread). Prints, per variant, each version's median and the median of the per-round ratios B / A: below 1 means
the working tree is faster.

    python -m benchmarks.ab_trial [--base REV] [--reps 9] [--cpu N] [--dtype float64] [--json PATH] [--data-dir DIR]

``--base`` defaults to ``HEAD`` (the working tree's uncommitted change against its commit).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_trial import VARIANTS, write_json

REPO = Path(__file__).resolve().parents[1]

#: Runs in each worker process: loads the data once, then times one trial per line read from stdin.
_WORKER = r"""
import json, sys
from threadpoolctl import threadpool_limits
import model
from benchmarks.bench_trial import BASE_CONFIG, load_data, time_trial
data, source = load_data(sys.argv[1] or None)
print(json.dumps({"model": model.__file__, "data": source}), flush=True)
with threadpool_limits(limits=1):
    for line in sys.stdin:
        print(time_trial({**BASE_CONFIG, **json.loads(line)}, data)[1], flush=True)  # CPU seconds
"""


class _Worker:
    """A worker process timing trials with the model package found first on ``model_root``."""

    def __init__(self, model_root: Path, cpu: int, data_dir: str | None) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(model_root), str(REPO)])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, data_dir or ""], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env, cwd=model_root,
        )
        try:
            os.sched_setaffinity(self.proc.pid, {cpu})
            hello = self.proc.stdout.readline()
            if not hello:
                raise RuntimeError(f"the worker for {model_root} exited (code {self.proc.wait()})")
            self.info = json.loads(hello)
            expected = (model_root / "model" / "__init__.py").resolve()
            if Path(self.info["model"]).resolve() != expected:
                raise RuntimeError(f"the worker imported {self.info['model']}, not {expected}")
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def time(self, request: dict) -> float:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the worker for {self.info['model']} exited (code {self.proc.wait()}) on {request}")
        return float(answer)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _commit(rev: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise ValueError("git is not installed: it extracts the revision's model/") from None
    if done.returncode != 0:
        raise ValueError(f"--base {rev!r} is not a commit of {REPO}")
    return done.stdout.strip()


def _extract_model(commit: str, dest: Path) -> None:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "model"], capture_output=True)
    if archive.returncode != 0:
        raise ValueError(f"commit {commit[:7]} has no model/ to compare")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def compare(base: str, reps: int, cpu: int, data_dir: str | None = None, epochs: int | None = None,
            dtypes: tuple[str, ...] = ("float64", "float32")) -> dict:
    """Time the variants of ``dtypes`` ``reps`` times with the model at ``base`` (A) and in the working tree (B)."""
    variants = [(dtype, bn) for dtype, bn in VARIANTS if dtype in dtypes]
    commit = _commit(base)
    extra = {} if epochs is None else {"epochs": epochs}
    with tempfile.TemporaryDirectory(prefix="bns-ab-") as tmp:
        _extract_model(commit, Path(tmp))
        workers: dict[str, _Worker] = {}
        try:
            workers["A"] = _Worker(Path(tmp), cpu, data_dir)
            workers["B"] = _Worker(REPO, cpu, data_dir)
            times: dict[tuple[str, bool], dict[str, list[float]]] = {v: {"A": [], "B": []} for v in variants}
            for round_ in range(reps + 1):  # round 0 warms both up and is not kept
                order = ("A", "B") if round_ % 2 else ("B", "A")
                for dtype, bn in variants:
                    for side in order:
                        seconds = workers[side].time({"dtype": dtype, "use_batchnorm": bn, **extra})
                        if round_:
                            times[dtype, bn][side].append(seconds)
        finally:
            for worker in workers.values():
                worker.close()
    results = []
    for (dtype, bn), sides in times.items():
        ratios = [b / a for a, b in zip(sides["A"], sides["B"], strict=True)]
        results.append({
            "dtype": dtype, "use_batchnorm": bn, "cpu_s": sides,
            "median_a_s": statistics.median(sides["A"]), "median_b_s": statistics.median(sides["B"]),
            "ratio_b_over_a": statistics.median(ratios),
        })
    return {"benchmark": "ab_trial", "base": base, "base_commit": commit, "reps": reps, "cpu": cpu,
            "data": workers["B"].info["data"], "config_overrides": extra,
            "model_a": workers["A"].info["model"], "model_b": workers["B"].info["model"], "variants": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision whose model/ is A (default HEAD)")
    parser.add_argument("--reps", type=int, default=9, help="timed rounds, each one trial per variant and side "
                        "(default 9)")
    parser.add_argument("--cpu", type=int, help="the CPU both workers run on (default: the last one allowed)")
    parser.add_argument("--dtype", choices=("float64", "float32"), action="append",
                        help="time only this dtype's two variants (repeatable; default both dtypes)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX files (default: the usual places)")
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)  # smoke tests only: shorter trials
    args = parser.parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if args.cpu is None else args.cpu
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    if cpu not in allowed:
        parser.error(f"--cpu {cpu}: this process may run on CPUs {allowed}")
    try:
        report = compare(args.base, args.reps, cpu, args.data_dir, args.epochs,
                         tuple(args.dtype or ("float64", "float32")))
    except ValueError as exc:
        parser.exit(2, f"ab_trial: error: {exc}\n")
    except RuntimeError as exc:  # a worker died (its traceback is above)
        parser.exit(1, f"ab_trial: error: {exc}\n")

    print(f"A = model/ at {report['base']} ({report['base_commit'][:7]}), B = the working tree; "
          f"{args.reps} rounds on CPU {cpu}, {report['data']} data, CPU seconds per trial")
    print(f"{'dtype':8} {'arm':10} {'A median':>9} {'B median':>9} {'B / A':>7}")
    for v in report["variants"]:
        arm = "batchnorm" if v["use_batchnorm"] else "plain"
        print(f"{v['dtype']:8} {arm:10} {v['median_a_s']:9.3f} {v['median_b_s']:9.3f} {v['ratio_b_over_a']:7.3f}")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
