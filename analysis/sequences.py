"""Anytime-valid confidence sequences (CS) for the mean of bounded observations, e.g. paired accuracy differences.

What a confidence sequence is
-----------------------------
A 95% confidence interval computed from n seeds covers the true mean with probability 95% *if n was fixed before
looking*. Add seeds until the interval "looks convincing", reading it after every seed, and that guarantee is gone:
each look is another 5% chance to be fooled, and stopping at the first look that excludes 0 picks exactly the
misleading one (with 50 looks a t interval misses the true mean at some point far more often than 5% of the time;
``tests/test_sequences.py`` measures it).

A 95% confidence *sequence* is one interval per n = 1, 2, 3, ... with a stronger promise: with probability >= 95%
*all* of them cover the true mean at once. So you may look after every seed, add seeds because of what you saw,
stop whenever you like (when the interval is narrow enough, excludes 0, or you run out of time): the interval you
stop at is still a valid 95% interval. The price is width: a CS is wider than the t interval at the same n (by a
factor that grows slowly, like sqrt(log n)), and it never claims more than the data support.

How this one is built (testing by betting)
-------------------------------------------
Rescale the observations to [0, 1]. For every candidate mean m a gambler starts with capital 1 and, before each
observation y_t, bets a fraction lambda_t (chosen from the *earlier* observations only) that y_t - m will be
positive; another gambler bets it will be negative. If m is the true mean, neither can expect to win: their
capital is a fair game (a nonnegative martingale), and by Ville's inequality the chance that it *ever* reaches
1/alpha is at most alpha. So every m at which the (hedged) capital has reached 1/alpha is ruled out, for good; the
m never ruled out form the CS. Ruled-out values stay out (running intersection), so the CS only shrinks.

Reference: I. Waudby-Smith and A. Ramdas (2023), "Estimating means of bounded random variables by betting",
J. R. Stat. Soc. B 86(1), 1-27 (arXiv:2010.09686): the hedged capital process with predictable plug-in bets
(their Section 4 / eq. 26-27, truncation c = 3/4, theta = 1/2) and the predictable-mixture empirical-Bernstein CS
(their Theorem 2), used here as a closed-form cross-check.

Conventions
-----------
- ``x`` is read in order (the order the observations were made); values must lie in [low, high].
- The betting CS is evaluated on a grid of ``grid + 1`` equally spaced candidate means from ``low`` to ``high``
  (an even ``grid`` puts the midpoint, 0 for [-1, 1], on the grid). Its reported ends are the outermost grid
  points *ruled out* next to the kept ones, so the reported interval contains the exact CS (it is conservative by at
  most one grid step, (high - low) / grid).
- The hedged capital at m is max(theta K+(m), (1 - theta) K-(m)) (theta = 1/2), so m is ruled out when either
  one-sided capital reaches 2/alpha (a union bound over the two sides; each side is a nonnegative martingale).
- Anytime p-value at ``null``: p_n = min(1, 1 / max_{s<=n} K_s(null)) with the same bets. For every u in (0, 1) the
  chance that p_n <= u for some n is <= u, so it may be read after every seed. Duality with the CS of the same
  alpha: ``null`` outside [cs_low, cs_high] implies p_n <= alpha; p_n <= alpha implies ``null`` is not strictly
  inside (cs_low, cs_high) when ``null`` is a grid point, and otherwise not more than one grid step inside.
- If the running intersection ever becomes empty (an event of probability <= alpha: the CS has then missed), the
  reported CS stays at its last non-empty value.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

TRUNCATION = 0.75  # c (1/2 or 3/4 in the paper): 3/4 decides sooner; a bet never loses more than c of the capital
THETA = 0.5  # the hedge: the weight of the "mean is above m" gambler
KEYS = ("n", "mean", "low", "high")


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float, np.floating)) and 0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha!r}")
    return float(alpha)


def _check_data(x: ArrayLike, low: float, high: float) -> np.ndarray:
    """``x`` as a 1-D float array, every value finite and in [low, high]; ValueError naming the first bad one."""
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite bounds low < high, got low={low!r}, high={high!r}")
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"observations must be a 1-D sequence, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < low) | (arr > high))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"observation {arr[i]!r} (index {i}) is not in [{low}, {high}]; "
                         "clip or rescale the data, or pass the right low/high")
    return arr


def _rescale(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((arr - low) / (high - low), 0.0, 1.0)


def _plugin_bets(y: np.ndarray, alpha: float) -> np.ndarray:
    """Predictable plug-in bets lambda_t = sqrt(2 log(2/alpha) / (sigma2_{t-1} t log(1+t))), untruncated.

    sigma2_t is the regularised variance (1/4 + sum_{i<=t} (y_i - mu_i)^2) / (t + 1) around the regularised means
    mu_i = (1/2 + sum_{j<=i} y_j) / (i + 1); lambda_t uses only y_1..y_{t-1}."""
    t = np.arange(1, y.size + 1, dtype=float)
    mu = (0.5 + np.cumsum(y)) / (t + 1.0)
    sigma2 = (0.25 + np.cumsum((y - mu) ** 2)) / (t + 1.0)
    sigma2_prev = np.concatenate(([0.25], sigma2[:-1]))
    return np.sqrt(2.0 * math.log(2.0 / alpha) / (sigma2_prev * t * np.log1p(t)))


def _log_hedged_capital(y: np.ndarray, m: np.ndarray, bets: np.ndarray) -> np.ndarray:
    """log K_t(m) for t = 1..n (rows) and every candidate m (columns); K = max(theta K+, (1 - theta) K-)."""
    lam = bets[:, None]
    with np.errstate(divide="ignore"):
        cap_up = np.where(m > 0, TRUNCATION / m, np.inf)[None, :]
        cap_down = np.where(m < 1, TRUNCATION / (1.0 - m), np.inf)[None, :]
    dev = y[:, None] - m[None, :]
    log_up = np.cumsum(np.log1p(np.minimum(lam, cap_up) * dev), axis=0)
    log_down = np.cumsum(np.log1p(-np.minimum(lam, cap_down) * dev), axis=0)
    return np.maximum(math.log(THETA) + log_up, math.log(1.0 - THETA) + log_down)


def _empty() -> dict[str, np.ndarray]:
    return {"n": np.zeros(0, dtype=int), "mean": np.zeros(0), "low": np.zeros(0), "high": np.zeros(0)}


def _last_nonempty(nonempty: np.ndarray) -> np.ndarray:
    """For each t, the index of the last t' <= t whose running intersection is non-empty (0 if none)."""
    idx = np.where(nonempty, np.arange(nonempty.size), -1)
    return np.maximum(np.maximum.accumulate(idx), 0)


def _grid_bounds(kept: np.ndarray, grid_pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ends of the running intersection of the kept grid points (rows = t), widened to the ruled-out neighbours."""
    running = np.logical_and.accumulate(kept, axis=0)
    rows = _last_nonempty(running.any(axis=1))
    running = running[rows]
    size = grid_pts.size
    first = np.argmax(running, axis=1)
    last = size - 1 - np.argmax(running[:, ::-1], axis=1)
    all_out = ~running.any(axis=1)  # only if even the first row is empty (impossible for alpha < 1)
    lo = np.where(all_out, 0, np.maximum(first - 1, 0))
    hi = np.where(all_out, size - 1, np.minimum(last + 1, size - 1))
    return grid_pts[lo], grid_pts[hi]


def _result(arr: np.ndarray, lo01: np.ndarray, hi01: np.ndarray, low: float, high: float) -> dict[str, np.ndarray]:
    n = np.arange(1, arr.size + 1)
    return {"n": n, "mean": np.cumsum(arr) / n, "low": low + (high - low) * lo01, "high": low + (high - low) * hi01}


def betting_cs(x: ArrayLike, *, alpha: float = 0.05, low: float = -1.0, high: float = 1.0,
               grid: int = 1000) -> dict[str, np.ndarray]:
    """Hedged-capital betting CS for the mean of ``x`` (values in [low, high], in observation order).

    Returns arrays over n = 1..len(x): ``n``, ``mean`` (the sample mean of the first n), ``low``, ``high`` (the CS
    at level 1 - alpha after n observations, running intersection, in the units of ``x``). ``grid``: the number of
    grid steps between low and high (see the module docstring)."""
    alpha = _check_alpha(alpha)
    if not (isinstance(grid, (int, np.integer)) and grid >= 2):
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    arr = _check_data(x, low, high)
    if arr.size == 0:
        return _empty()
    y = _rescale(arr, low, high)
    grid_pts = np.linspace(0.0, 1.0, int(grid) + 1)
    kept = _log_hedged_capital(y, grid_pts, _plugin_bets(y, alpha)) < math.log(1.0 / alpha)
    lo01, hi01 = _grid_bounds(kept, grid_pts)
    return _result(arr, lo01, hi01, low, high)


def empirical_bernstein_cs(x: ArrayLike, *, alpha: float = 0.05, low: float = -1.0,
                           high: float = 1.0) -> dict[str, np.ndarray]:
    """Predictable-mixture empirical-Bernstein CS (Waudby-Smith & Ramdas 2023, Theorem 2), running intersection.

    Closed form: sum(lambda_i y_i) / sum(lambda_i) +- (log(2/alpha) + sum v_i psi_E(lambda_i)) / sum(lambda_i),
    v_i = 4 (y_i - mu_{i-1})^2, psi_E(l) = (-log(1 - l) - l) / 4, lambda_i the plug-in bets truncated at c = 3/4.
    Same keys and units as :func:`betting_cs`; usually a little wider."""
    alpha = _check_alpha(alpha)
    arr = _check_data(x, low, high)
    if arr.size == 0:
        return _empty()
    y = _rescale(arr, low, high)
    lam = np.minimum(_plugin_bets(y, alpha), TRUNCATION)
    t = np.arange(1, y.size + 1, dtype=float)
    mu_prev = np.concatenate(([0.5], ((0.5 + np.cumsum(y)) / (t + 1.0))[:-1]))
    psi = (-np.log1p(-lam) - lam) / 4.0
    lam_sum = np.cumsum(lam)
    centre = np.cumsum(lam * y) / lam_sum
    margin = (math.log(2.0 / alpha) + np.cumsum(4.0 * (y - mu_prev) ** 2 * psi)) / lam_sum
    lo01 = np.maximum.accumulate(np.clip(centre - margin, 0.0, 1.0))
    hi01 = np.minimum.accumulate(np.clip(centre + margin, 0.0, 1.0))
    rows = _last_nonempty(lo01 <= hi01)
    return _result(arr, lo01[rows], hi01[rows], low, high)


def anytime_p_value(x: ArrayLike, *, null: float = 0.0, low: float = -1.0, high: float = 1.0,
                    alpha: float = 0.05) -> np.ndarray:
    """Anytime-valid p-value of "the mean is ``null``" after each n: min(1, 1 / max_{s<=n} K_s(null)).

    K is the hedged capital of :func:`betting_cs` with the bets it uses at level ``alpha`` (the bets only tune power;
    the p-value is valid at every level, and exactly dual to the CS at ``alpha``). Non-increasing in n."""
    alpha = _check_alpha(alpha)
    arr = _check_data(x, low, high)
    if not (math.isfinite(null) and low <= null <= high):
        raise ValueError(f"null {null!r} is outside [{low}, {high}]")
    if arr.size == 0:
        return np.zeros(0)
    y = _rescale(arr, low, high)
    m = np.array([(null - low) / (high - low)])
    log_k = _log_hedged_capital(y, m, _plugin_bets(y, alpha))[:, 0]
    return np.minimum(1.0, np.exp(-np.maximum.accumulate(log_k)))


def difference_cs(d: ArrayLike, alpha: float) -> dict[str, np.ndarray]:
    """CS of the mean paired difference ``d`` (accuracy differences, in [-1, 1], in seed order) at level 1 - alpha.

    Keys (arrays over n = 1..len(d)): ``n``, ``mean_diff``, ``cs_low``, ``cs_high`` (:func:`betting_cs` over
    [-1, 1], grid step 0.002, 0 on the grid) and ``p_anytime`` (:func:`anytime_p_value` at 0, same bets)."""
    cs = betting_cs(d, alpha=alpha, low=-1.0, high=1.0)
    p = anytime_p_value(d, null=0.0, low=-1.0, high=1.0, alpha=alpha)
    return {"n": cs["n"], "mean_diff": cs["mean"], "cs_low": cs["low"], "cs_high": cs["high"], "p_anytime": p}
