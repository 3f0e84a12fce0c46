"""The Ray task: train one trial and stream its epochs back to the driver.

The task is a Ray generator that yields its epochs' metrics in groups of ``epochs_per_item`` as soon as a group
is measured, so the driver can show progress in the MLflow UI while the trial trains. If its worker dies, Ray runs
it again; training is deterministic and the grouping is an argument of the task, so the retry yields the very same
items and Ray drops the ones the driver already has: the driver sees every epoch exactly once.

Its first item, yielded as it starts, only says where it runs. A retry then always shows: the driver has that item
from the first worker and the rest from another, however few epochs the first one had measured.

Why groups: every streamed item is an object Ray stores, reports and hands to the driver (about 0.4 ms of CPU on
the two sides). A default trial measures an epoch every 30 ms, so one item per epoch would cost more than its
logging is worth; the driver picks the group size so that an item comes about once per ``--flush-seconds``.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import time
from collections.abc import Iterator

import numpy as np
import ray
from threadpoolctl import ThreadpoolController

from model.trial import iter_trial
from pipeline.malloc import keep_freed_memory

#: A task whose worker process dies is run again this many times before its trial is marked FAILED.
MAX_RETRIES = 3

#: A trial's own page faults: RUSAGE_THREAD counts the thread that trains (Linux); elsewhere the whole process.
_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


@functools.cache
def _blas() -> ThreadpoolController:
    """This worker's BLAS (and OpenMP) thread pools, found once per worker process: ``threadpool_limits`` looks
    for them among the loaded libraries on every call (about 1.5 ms; 0.02 ms through the cached controller)."""
    return ThreadpoolController()


def _node() -> dict[str, str]:
    """Where the trial runs (logged as tags): the Ray node, its address, and the numpy that computes."""
    ctx = ray.get_runtime_context()
    return {
        "ray_node": ctx.get_node_id(),
        "ray_node_ip": ray.util.get_node_ip_address(),
        "numpy_version": np.__version__,
        "pid": str(os.getpid()),
    }


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES)
def train_trial(config: dict, data: tuple, epochs_per_item: int = 1) -> Iterator[dict]:
    """Train ``config`` on ``data`` = (x_train, t_train, x_test, t_test) and yield its progress.

    Yields ``{"epochs": [], "node": {...}}`` as it starts, then
    ``{"epochs": [(epoch, metrics, time_ms), ...], "node": {...}}`` each time ``epochs_per_item`` epochs
    (of 0..epochs) are measured, and last ``{"epochs": [the rest], "done": True, "seconds": compute_seconds,
    "cpu_seconds": its thread's CPU time, "minor_faults": its page faults, "diverged_at": epoch or None,
    "node": {...}}``. Which epochs go in which item depends only on the arguments,
    so the items of a retried task line up with the first attempt's (``time_ms`` is when the epoch was measured).
    """
    if isinstance(epochs_per_item, bool) or not isinstance(epochs_per_item, int) or epochs_per_item < 1:
        raise ValueError(f"epochs_per_item must be a positive integer, got {epochs_per_item!r}")
    node = _node()
    yield {"epochs": [], "node": node}  # where it runs, before anything else: a later retry is seen (module doc)
    keep_freed_memory()  # its malloc keeps what a trial frees: 4-7 % of the trials' CPU (pipeline.malloc)
    diverged_at = None
    pending: list[tuple[int, dict, int]] = []
    start, start_cpu, start_faults = time.perf_counter(), time.thread_time(), resource.getrusage(_RUSAGE).ru_minflt
    # One BLAS thread per task: N workers then use N cores instead of fighting over them.
    with _blas().limit(limits=1):
        for epoch, record in iter_trial(config, *data):
            pending.append((epoch, record, int(time.time() * 1000)))
            if not math.isfinite(record["train_loss"]):
                diverged_at = epoch
                break
            if len(pending) == epochs_per_item:
                yield {"epochs": pending, "node": node}
                pending = []
    yield {"epochs": pending, "done": True, "seconds": time.perf_counter() - start,
           "cpu_seconds": time.thread_time() - start_cpu,
           "minor_faults": resource.getrusage(_RUSAGE).ru_minflt - start_faults, "diverged_at": diverged_at,
           "node": node}
