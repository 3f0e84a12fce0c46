"""The matrix products of one trial, counted exactly from its config, and this machine's rate on each of them.

A trial's time is dominated by matrix products (``x @ W`` and friends); everything else (ReLU, batchnorm,
softmax, the SGD update) is a few passes over small arrays. So the fastest a trial can possibly run here is
the time the products alone take at the speed this machine's BLAS runs them, single-threaded, on the very
shapes (and memory layouts) the trial uses. That is the *matrix-product limit*; ``limit / measured trial time``
is the fraction of it a trial reaches.

What our implementation computes (model/layers.py, model/network.py), for a net with layer widths
``s = [784, 100, 100, 100, 100, 100, 10]`` and mini-batch ``B``:

- forward (training):      ``x @ W``           (B, s[i]) @ (s[i], s[i+1])          every layer
- backward dW:             ``x.T @ dout``      (s[i], B) @ (B, s[i+1])             every layer (x.T a view)
- backward dx:             ``dout @ W.T``      (B, s[i+1]) @ (s[i+1], s[i])        every layer but the first
  (the gradient with respect to the network input is never needed, so the first layer skips it)
- evaluation: once before training and after every epoch, one inference pass over the training subset
  (train_loss and train_acc) and one over the test subset (test_acc): ``x @ W`` with all rows at once
  (batchnorm is folded into the weights first, an elementwise op not counted here).

Each product of an (m, k) by a (k, n) matrix counts ``2*m*k*n`` FLOPs.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from threadpoolctl import threadpool_limits

#: The four kinds of product a trial does.
KINDS = ("forward", "backward_dW", "backward_dx", "eval")


@dataclass(frozen=True)
class Product:
    """One matrix-product shape of a trial and how many times the trial computes it.

    ``a_transposed``: the left operand is a transposed view (``x.T``); ``b_transposed``: the right one is
    (``W.T``). Layouts matter to BLAS speed, so the rate is measured with the same views.
    """

    kind: str
    m: int
    k: int
    n: int
    count: int
    a_transposed: bool = False
    b_transposed: bool = False

    @property
    def flops(self) -> int:
        """FLOPs of one product: ``2*m*k*n``."""
        return 2 * self.m * self.k * self.n

    @property
    def total_flops(self) -> int:
        """FLOPs of all ``count`` products."""
        return self.count * self.flops

    @property
    def shape_key(self) -> tuple[int, int, int, bool, bool]:
        """What determines the speed of one product (the kind does not)."""
        return (self.m, self.k, self.n, self.a_transposed, self.b_transposed)


def layer_sizes(config: dict, input_size: int = 784, output_size: int = 10) -> list[int]:
    """``[input, *hidden, output]`` widths of the net a trial config builds."""
    return [input_size, *[int(h) for h in config.get("hidden_size_list", [100] * 5)], output_size]


def trial_products(config: dict, input_size: int = 784, output_size: int = 10,
                   input_dx: bool = False) -> list[Product]:
    """Every matrix product one trial of ``config`` computes, grouped by shape, with counts.

    ``input_dx=True`` adds the first layer's gradient with respect to the input (which our implementation
    does not compute), to show what skipping it saves. A trial stopped early (divergence) does fewer.
    """
    sizes = layer_sizes(config, input_size, output_size)
    epochs, batch = int(config["epochs"]), int(config["batch_size"])
    n_train, n_test = int(config["train_size"]), int(config["test_size"])
    batches: dict[int, int] = {}  # batch rows -> batches per epoch (the last batch may be smaller)
    if n_train // batch:
        batches[batch] = n_train // batch
    if n_train % batch:
        batches[n_train % batch] = batches.get(n_train % batch, 0) + 1
    evals: dict[int, int] = {}  # rows of an evaluation pass -> how many such passes in the trial
    for rows in (n_train, n_test):
        evals[rows] = evals.get(rows, 0) + epochs + 1

    out: list[Product] = []
    for rows, per_epoch in sorted(batches.items(), reverse=True):
        steps = per_epoch * epochs
        for i in range(len(sizes) - 1):
            fan_in, fan_out = sizes[i], sizes[i + 1]
            out.append(Product("forward", rows, fan_in, fan_out, steps))
            out.append(Product("backward_dW", fan_in, rows, fan_out, steps, a_transposed=True))
            if i > 0 or input_dx:
                out.append(Product("backward_dx", rows, fan_out, fan_in, steps, b_transposed=True))
    for rows, passes in sorted(evals.items(), reverse=True):
        for i in range(len(sizes) - 1):
            out.append(Product("eval", rows, sizes[i], sizes[i + 1], passes))
    merged: dict[tuple, Product] = {}  # the same kind and shape in several layers: one row
    for p in out:
        key = (p.kind, p.shape_key)
        merged[key] = Product(p.kind, p.m, p.k, p.n, merged[key].count + p.count if key in merged else p.count,
                              p.a_transposed, p.b_transposed)
    return [p for p in merged.values() if p.count > 0]


def total_flops(products: Iterable[Product]) -> int:
    """Sum of ``count * 2*m*k*n``."""
    return sum(p.total_flops for p in products)


def flops_by_kind(products: Iterable[Product]) -> dict[str, int]:
    """FLOPs per kind of product (forward, backward_dW, backward_dx, eval)."""
    out = dict.fromkeys(KINDS, 0)
    for p in products:
        out[p.kind] += p.total_flops
    return out


def _operands(m: int, k: int, n: int, a_t: bool, b_t: bool, dtype: np.dtype, rng: np.random.Generator):
    """Operands of an (m, k) @ (k, n) product laid out as the trial has them (C-ordered arrays, or the
    transposed view of one)."""
    a = rng.standard_normal((k, m) if a_t else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if b_t else (k, n)).astype(dtype)
    return (a.T if a_t else a), (b.T if b_t else b)


def time_product(m: int, k: int, n: int, a_t: bool, b_t: bool, dtype: str, *, samples: int = 7,
                 min_sample_s: float = 0.02, seed: int = 0) -> dict:
    """Seconds per product of one shape (a fresh result array per product, as ``x @ W`` allocates).

    Runs the product in loops of about ``min_sample_s`` seconds, ``samples`` loops after a warm-up; returns
    ``{"median_s", "best_s", "loop": products per loop}`` (seconds per single product). Uses whatever BLAS
    thread count is in force: call it inside ``threadpool_limits(1)`` for the single-threaded rate.
    """
    a, b = _operands(m, k, n, a_t, b_t, np.dtype(dtype), np.random.default_rng(seed))
    for _ in range(3):
        a @ b
    loop = 1
    while True:  # grow the loop until one takes min_sample_s
        t0 = time.perf_counter()
        for _ in range(loop):
            a @ b
        took = time.perf_counter() - t0
        if took >= min_sample_s or loop >= 1 << 20:
            break
        loop *= 2 if took <= 0 else max(2, min(16, math.ceil(min_sample_s / took)))
    per = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(loop):
            a @ b
        per.append((time.perf_counter() - t0) / loop)
    return {"median_s": statistics.median(per), "best_s": min(per), "loop": loop}


def measure_rates(products: Iterable[Product], dtype: str, *, samples: int = 7,
                  min_sample_s: float = 0.02) -> dict[tuple, dict]:
    """Single-threaded time per product for each distinct shape of ``products``, in ``dtype``."""
    rates: dict[tuple, dict] = {}
    with threadpool_limits(limits=1):
        for p in products:
            if p.shape_key not in rates:
                rates[p.shape_key] = time_product(*p.shape_key, dtype, samples=samples, min_sample_s=min_sample_s)
    return rates


def matmul_limit(products: list[Product], rates: dict[tuple, dict], stat: str = "median_s") -> dict:
    """The matrix-product limit of a trial: ``sum(count * seconds per product)`` with the measured rates.

    Returns the limit in seconds, the total FLOPs, the overall rate they imply, and a per-shape table.
    """
    rows = []
    limit = 0.0
    for p in products:
        sec = rates[p.shape_key][stat]
        limit += p.count * sec
        rows.append({**asdict(p), "flops_each": p.flops, "seconds_each": sec, "gflops_per_s": p.flops / sec / 1e9,
                     "seconds_total": p.count * sec})
    flops = total_flops(products)
    return {"limit_s": limit, "flops": flops, "gflops": flops / 1e9, "gflops_per_s": flops / limit / 1e9,
            "by_kind_gflop": {k: v / 1e9 for k, v in flops_by_kind(products).items()}, "products": rows}
