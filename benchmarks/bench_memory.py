"""Memory of a trial and of a sweep: worker peak RSS, driver RSS, and the data set put into Ray once.

- **trial**: a fresh Python process gets the data exactly as the sweep hands it to a task (the tuple
  ``(x_train, t_train, x_test, t_test)``, cut and cast) and runs one default trial; it reports its peak RSS
  (``VmHWM``, see ``_maxrss_mb`` for why not ``ru_maxrss``) after its imports and data, and after the trial.
  Twice: with only what the trial needs imported (numpy, model), and with ``ray`` and ``pipeline.tasks``
  imported too (what a Ray worker process carries).
- **sweep**: ``python -m pipeline.sweep`` run through a thin wrapper that counts the ``ray.put`` calls (and
  their sizes) of the driver and, just before Ray shuts down, reads the object store's usage
  (``memory_summary(stats_only=True)``, the numbers of ``ray memory --stats-only``). The RSS of the driver,
  each Ray worker and Ray's daemons is sampled from outside meanwhile (benchmarks.bench_sweep.TreeSampler).

    python -m benchmarks.bench_memory [--grid-seeds 5] [--json PATH]

(The sweep part starts Ray: run it in a loopback-only network namespace.)
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_sweep import REPO, bench_env, grid_args, run_sweep, sweep_data, sweep_grid, tail

RESULT_PREFIX = "MEMORY_RESULT "
_PLASMA_RE = re.compile(r"Plasma memory usage (\d+) MiB, (\d+) objects")


def _maxrss_mb() -> float:
    """Peak RSS of this process image so far, in MB: ``VmHWM`` of /proc/self/status.

    Not ``getrusage().ru_maxrss``: Linux carries that across fork and exec, so a child started by a big
    parent reports the parent's size (a fresh ``python -c pass`` started from this benchmark shows 300+ MB).
    ``VmHWM`` is the same high-water mark, kept per address space, so it starts anew at exec.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


# -------------------------------------------------------------------------------------- child: one trial


def child_trial(data_path: Path, config: dict, import_ray: bool) -> dict:
    """In the child: import, load the data, run the trial as the Ray task does; peak RSS at each stage."""
    start = _maxrss_mb()
    import numpy as np  # noqa: F401
    from threadpoolctl import threadpool_limits

    from model.trial import iter_trial

    if import_ray:
        import pipeline.tasks  # noqa: F401 - imports ray, as a Ray worker has it
    imported = _maxrss_mb()
    with open(data_path, "rb") as f:
        data = pickle.load(f)
    loaded = _maxrss_mb()
    with threadpool_limits(limits=1):
        for _ in iter_trial(config, *data):
            pass
    return {"import_ray": import_ray, "interpreter_mb": start, "after_imports_mb": imported,
            "after_data_mb": loaded, "peak_mb": _maxrss_mb(), "data_mb": sum(a.nbytes for a in data) / 1e6}


def trial_rss(sweep_args: list[str], *, import_ray: bool) -> dict:
    """Peak RSS of a fresh process that runs the grid's first trial on the sweep's data."""
    ns, base, grid = sweep_grid(sweep_args)
    data = sweep_data(ns, base)
    config = dict(grid[0], weight_scale=0.01)  # a trial that trains all its epochs (w=1 diverges)
    with tempfile.TemporaryDirectory(prefix="bns-bench-mem-") as tmp:
        path = Path(tmp) / "data.pkl"
        path.write_bytes(pickle.dumps(data, protocol=5))
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child-data", str(path),
               "--child-config", json.dumps(config)] + (["--child-import-ray"] if import_ray else [])
        res = subprocess.run(cmd, cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=600)
    for line in res.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"trial memory child failed (exit {res.returncode}): {tail(res.stdout + res.stderr)}")


# ----------------------------------------------------------------------------- wrapper: the real sweep


def wrapped_sweep(argv: list[str]) -> int:
    """Run ``pipeline.sweep.main(argv)`` counting ``ray.put`` calls and reading the object store at the end."""
    import ray

    from pipeline import cluster, sweep

    puts: list[int] = []
    store: dict = {}
    real_put, real_disconnect = ray.put, cluster.disconnect

    def counting_put(value, *args, **kwargs):
        puts.append(_nbytes(value))
        return real_put(value, *args, **kwargs)

    def disconnect_after_reading_store() -> None:
        if ray.is_initialized():
            from ray._private.internal_api import memory_summary

            text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
            match = _PLASMA_RE.search(text)
            store.update({"plasma_mib": int(match.group(1)), "plasma_objects": int(match.group(2))} if match
                         else {"summary": text.strip()[:500]})
        real_disconnect()

    ray.put = counting_put
    cluster.disconnect = disconnect_after_reading_store
    try:
        code = sweep.main(argv)
    finally:
        ray.put, cluster.disconnect = real_put, real_disconnect
    print(RESULT_PREFIX + json.dumps({"ray_put_calls": len(puts), "ray_put_mb": [n / 1e6 for n in puts],
                                      "object_store_at_end": store, "driver_maxrss_mb": _maxrss_mb()}),
          flush=True)
    return code


def _nbytes(value) -> int:
    """Bytes of the numpy arrays in ``value`` (a tuple of arrays, as the sweep puts)."""
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def sweep_memory(sweep_args: list[str], workers: int, tmp: Path) -> dict:
    """Run the sweep through :func:`wrapped_sweep`; its ray.put count, object store usage and sampled RSS."""
    prefix = [sys.executable, "-m", "benchmarks.bench_memory", "--wrap-sweep"]
    run = run_sweep(sweep_args, workers, tmp, cmd_prefix=prefix)
    inside = None
    log = (tmp / "sweep.log").read_text(errors="replace")
    for line in log.splitlines():
        if line.startswith(RESULT_PREFIX):
            inside = json.loads(line[len(RESULT_PREFIX):])
    if inside is None:
        raise RuntimeError(f"wrapped sweep printed no result: {tail(log)}")
    return {**inside, "sampled_rss": run["memory"], "trials_run": run["trials_run"], "wall_s": run["wall_s"]}


def bench_memory(sweep_args: list[str], workers: int = 2) -> dict:
    """Both parts: the trial's peak RSS (bare and with ray imported) and the sweep's memory."""
    out = {"trial": trial_rss(sweep_args, import_ray=False),
           "trial_with_ray_imported": trial_rss(sweep_args, import_ray=True)}
    with tempfile.TemporaryDirectory(prefix="bns-bench-mem-") as tmp:
        out["sweep"] = sweep_memory(sweep_args, workers, Path(tmp))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--wrap-sweep"]:
        return wrapped_sweep(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid-seeds", type=int, default=5, help="seeds of the sweep part (default 5: 160 trials)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child-data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    parser.add_argument("--child-import-ray", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_data:
        result = child_trial(args.child_data, json.loads(args.child_config), args.child_import_ray)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    if args.grid_seeds < 1 or args.workers < 1:
        parser.exit(2, "bench_memory: error: --grid-seeds and --workers must be >= 1\n")
    t0 = time.perf_counter()
    result = bench_memory(grid_args(args.grid_seeds), args.workers)
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
