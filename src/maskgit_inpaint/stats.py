"""How sure a grid number is: bootstrap intervals over images, paired comparisons, Holm, the held-out split.

Per-image metrics (PSNR, SSIM, LPIPS) are means over images: their intervals are
BCa bootstraps (scipy.stats.bootstrap), their paired comparisons Wilcoxon
signed-rank tests of the per-image differences with a bootstrap interval of the
mean difference. Set-level metrics (SWD) are one number per image set: they are
recomputed on resamples of the images (`swd.PatchSets.resample`), every cell under
the same resamples (`resample_counts` is a pure function of its seed), so two cells'
replicates pair up image for image; their intervals are the replicates' percentiles
about the estimate, and their tests normal approximations from the bootstrap
standard error, which, unlike a bootstrap p-value from a few hundred resamples,
can get small enough to survive a Holm correction.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Split:
    """The val images, split once: the best cell is chosen on `selection` and reported on `report`."""

    selection: np.ndarray  # sorted image indices
    report: np.ndarray  # sorted image indices, disjoint from selection


def split(n: int, fraction: float, seed: int) -> Split:
    """A seeded split of n images; `fraction` of them (at least 1, at most n - 1) select."""
    if n < 2:
        raise ValueError(f"a held-out pick needs at least 2 images, got {n}")
    order = np.random.default_rng([seed, 1]).permutation(n)
    chosen = min(max(round(n * fraction), 1), n - 1)
    return Split(np.sort(order[:chosen]), np.sort(order[chosen:]))


def resample_counts(n: int, members: np.ndarray | None, *, resamples: int, seed: int) -> torch.Tensor:
    """(resamples, n): how often each image is drawn when `members` (default all) are resampled with replacement."""
    members = np.arange(n) if members is None else np.asarray(members)
    draws = np.random.default_rng([seed, 2, len(members)]).integers(0, len(members), (resamples, len(members)))
    counts = np.zeros((resamples, n), dtype=np.float32)
    np.add.at(counts, (np.arange(resamples)[:, None], members[draws]), 1.0)
    return torch.from_numpy(counts)


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Comparison:
    difference: float  # cell minus reference
    lo: float
    hi: float
    p: float  # two-sided, before any multiple-comparison correction


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan)
NAN_COMPARISON = Comparison(math.nan, math.nan, math.nan, math.nan)


def _bootstrap_mean(values: np.ndarray, level: float, resamples: int, seed: int) -> tuple[float, float]:
    if len(values) < 2 or np.ptp(values) == 0:
        return float(values.mean()), float(values.mean())  # no spread to resample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=scipy_stats.DegenerateDataWarning)
        ci = scipy_stats.bootstrap((values,), np.mean, confidence_level=level, n_resamples=resamples,
                                   method="BCa", rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def mean_interval(values: np.ndarray, *, level: float, resamples: int, seed: int) -> Interval:
    """Mean of per-image values (NaNs dropped) with its BCa bootstrap interval over images."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return NAN_INTERVAL
    return Interval(float(values.mean()), *_bootstrap_mean(values, level, resamples, seed))


def replicate_interval(value: float, replicates: np.ndarray, *, level: float) -> Interval:
    """A set-level value with the percentile interval of its bootstrap replicates."""
    replicates = np.asarray(replicates, dtype=np.float64)
    if not np.isfinite(value) or replicates.size == 0 or not np.isfinite(replicates).all():
        return Interval(value, math.nan, math.nan)
    lo, hi = value + _centred_quantiles(replicates, level)
    return Interval(value, float(lo), float(hi))


def _centred_quantiles(replicates: np.ndarray, level: float) -> np.ndarray:
    """The replicates' central `level` range about their mean.

    A resample repeats images, which thins a set's distinct patches and lifts its SWD a
    little (a few units at 6 images, ~0.2 at 200): the spread is the replicates', the
    centre the estimate's.
    """
    return np.quantile(replicates - replicates.mean(), [(1 - level) / 2, (1 + level) / 2])


def paired_means(a: np.ndarray, b: np.ndarray, *, level: float, resamples: int, seed: int) -> Comparison:
    """Per-image a - b on the same images: mean difference, its BCa interval, Wilcoxon signed-rank p."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return NAN_COMPARISON
    lo, hi = _bootstrap_mean(d, level, resamples, seed)
    p = 1.0 if not d.any() else float(scipy_stats.wilcoxon(d).pvalue)
    return Comparison(float(d.mean()), lo, hi, p)


def paired_replicates(a: float, b: float, a_replicates: np.ndarray, b_replicates: np.ndarray, *, level: float) -> Comparison:
    """Set-level a - b from replicates drawn on the same resamples: percentile interval, normal-approximation p."""
    d = np.asarray(a_replicates, dtype=np.float64) - np.asarray(b_replicates, dtype=np.float64)
    diff = a - b
    if not np.isfinite(diff) or d.size == 0 or not np.isfinite(d).all():
        return NAN_COMPARISON
    lo, hi = diff + _centred_quantiles(d, level)
    se = float(d.std(ddof=1))
    p = (1.0 if diff == 0 else 0.0) if se == 0 else float(2 * scipy_stats.norm.sf(abs(diff) / se))
    return Comparison(float(diff), float(lo), float(hi), p)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error); NaNs stay NaN and do not count as tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def verdict(difference: float, p_adjusted: float, *, alpha: float, lower_is_better: bool) -> str | None:
    """better / worse / tied for cell - reference; None where there was nothing to compare."""
    if not (np.isfinite(difference) and np.isfinite(p_adjusted)):
        return None
    if p_adjusted >= alpha or difference == 0:
        return "tied"
    return "better" if (difference < 0) == lower_is_better else "worse"
