"""The Ray task: train one trial and stream its epochs back to the driver.

The task is a Ray generator. It yields a batch of epoch records at most every ``flush_seconds`` (and always at
the end), so a long trial shows progress in the MLflow UI while a short one costs a single round trip. If its
worker dies, Ray runs it again; training is deterministic and Ray drops the items a retry yields again, so the
driver sees every epoch exactly once.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator

import numpy as np
import ray
from threadpoolctl import threadpool_limits

from model.trial import iter_trial

#: A task whose worker process dies is run again this many times before its trial is marked FAILED.
MAX_RETRIES = 3


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
def train_trial(config: dict, data: tuple, flush_seconds: float = 2.0) -> Iterator[dict]:
    """Train ``config`` on ``data`` = (x_train, t_train, x_test, t_test) and yield its progress.

    Yields ``{"epochs": [(epoch, metrics, timestamp_ms), ...], "node": {...}}`` batches, then a final
    ``{"done": True, "seconds": compute_seconds, "diverged_at": epoch or None, "node": {...}}``.
    """
    node = _node()
    batch: list[tuple[int, dict[str, float], int]] = []
    last_flush = time.monotonic()
    diverged_at = None
    start = time.perf_counter()
    # One BLAS thread per task: N workers then use N cores instead of fighting over them.
    with threadpool_limits(limits=1):
        for epoch, record in iter_trial(config, *data):
            batch.append((epoch, record, int(time.time() * 1000)))
            if not math.isfinite(record["train_loss"]):
                diverged_at = epoch
                break
            if time.monotonic() - last_flush >= flush_seconds:
                yield {"epochs": batch, "node": node}
                batch, last_flush = [], time.monotonic()
    seconds = time.perf_counter() - start
    if batch:
        yield {"epochs": batch, "node": node}
    yield {"done": True, "seconds": seconds, "diverged_at": diverged_at, "node": node}
