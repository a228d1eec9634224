"""Uncertainty-calibration report of a force field's predictions, as pure NumPy functions.

Every metric takes ``errors`` (predicted - reference) and ``stds`` (the predicted Gaussian
standard deviations, observation noise included) of the same size, in the same units (eV for
energies, eV/Å for force components), of any shape: both are flattened and each value is one
prediction (one energy, or one Cartesian force component). Computations are float64. Errors must
be finite and stds finite and > 0, else :class:`~forcegp.errors.InputError`.

This module imports no JAX, so reports can be computed from saved predictions without it.

Metrics (target for a calibrated Gaussian model in brackets):

- :func:`coverage`: fraction inside the central interval of probability ``level`` [``level``].
- :func:`zms`: mean squared z-score [1].
- :func:`gaussian_nll`: mean Gaussian negative log likelihood [lower is better; unit dependent].
- :func:`miscalibration_area`, :func:`reliability_curve`: coverage at every level [area 0].
- :func:`sparsification_curve`, :func:`sparsification_error_area`: do the stds rank the errors
  [AUSE 0 only if the stds order the |errors| exactly; a calibrated model with random Gaussian
  errors has AUSE > 0, so compare models with it, there is no absolute target].
- :func:`binned_calibration`, :func:`binned_worst_ratio`: RMSE / RMS std in equal-count bins of
  predicted std [1 in every bin; the project's target is a worst ratio <= 1.5].
- :func:`spearman`, :func:`rank`: rank correlation with ties averaged.

:func:`calibration_report` gathers them for energies and forces into a JSON-friendly dict;
:func:`curves` gives the reliability and sparsification curves for plotting.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from .errors import InputError

#: Expected coverage levels of the reliability curve and the miscalibration area: 0.01 ... 0.99.
DEFAULT_LEVELS = np.linspace(0.01, 0.99, 99)
#: Fractions of predictions removed in the sparsification curves: 0, 0.02, ..., 0.98.
DEFAULT_FRACTIONS = np.arange(50) * 0.02
#: Default number of equal-count std bins and the fewest values a bin may hold.
DEFAULT_N_BINS = 10
DEFAULT_MIN_COUNT = 50


def _pair(errors, stds) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 copies of ``errors`` and ``stds``, checked (same size, >= 1 value)."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    s = np.asarray(stds, dtype=np.float64).ravel()
    if e.size != s.size:
        raise InputError(f"errors and stds differ in size ({e.size} and {s.size} values)")
    if e.size == 0:
        raise InputError("no values to assess the calibration on")
    if not np.all(np.isfinite(e)):
        raise InputError("errors contain NaN or infinite values")
    # A zero std would make every z-score infinite; the predictive std includes the noise, so > 0.
    if not np.all(np.isfinite(s) & (s > 0)):
        raise InputError("stds must be finite and > 0")
    return e, s


def z_value(level: float) -> float:
    """Half-width, in stds, of the central Gaussian interval of probability ``level`` (0 < level < 1).

    Exact inverse normal CDF: 0.68 -> 0.99446, 0.95 -> 1.95996 (not the rounded 1.96).
    """
    level = float(level)
    if not 0.0 < level < 1.0:
        raise InputError(f"coverage level must lie strictly between 0 and 1, got {level}")
    return NormalDist().inv_cdf((1.0 + level) / 2.0)


def coverage(errors, stds, level: float) -> float:
    """Fraction of predictions with ``|error| <= z * std``, z of the central interval of ``level``.

    ``errors``, ``stds``: arrays of one size and the same units (any shape, flattened). z is the
    exact Gaussian quantile from :func:`z_value` (``statistics.NormalDist().inv_cdf((1+level)/2)``):
    for 95% it is 1.959964... Calibrated Gaussian predictions give ``level``; less means
    over-confident stds. Dimensionless, in [0, 1].
    """
    e, s = _pair(errors, stds)
    return float(np.mean(np.abs(e) <= z_value(level) * s))


def zms(errors, stds) -> float:
    """Mean squared z-score, ``mean((error / std)**2)``; dimensionless, target 1.

    Above 1: stds too small (over-confident) on average; below 1: too large. Pernot (2022) found it
    the most reliable average-calibration statistic for heavy-tailed error distributions.
    """
    e, s = _pair(errors, stds)
    return float(np.mean((e / s) ** 2))


def gaussian_nll(errors, stds) -> float:
    """Mean Gaussian negative log likelihood per value: ``0.5 log(2 pi std^2) + error^2 / (2 std^2)``.

    In nats per value, of a density in 1/(unit of the errors): the number depends on the units
    (converting eV to meV subtracts log(1000) = 6.91 from it), so compare values in one unit only.
    :func:`calibration_report` uses eV for energies and eV/Å for force components. Lower is better;
    it rewards both small errors and stds that match them.
    """
    e, s = _pair(errors, stds)
    return float(np.mean(0.5 * np.log(2.0 * np.pi * s * s) + e * e / (2.0 * s * s)))


def reliability_curve(errors, stds, levels=DEFAULT_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """Expected and observed coverage of the central intervals at each level in ``levels``.

    Returns ``(expected, observed)``, both float64 arrays of shape ``(len(levels),)``:
    ``expected`` is ``levels`` and ``observed[i]`` is :func:`coverage` at ``levels[i]``.
    A calibrated model lies on the diagonal; below it the stds are too small.
    """
    e, s = _pair(errors, stds)
    expected = np.asarray(levels, dtype=np.float64).ravel()
    z_levels = np.array([z_value(p) for p in expected])
    # One sort of the |z| serves all levels: observed(p) = #{|z| <= z_p} / n.
    abs_z = np.sort(np.abs(e) / s)
    observed = np.searchsorted(abs_z, z_levels, side="right") / abs_z.size
    return expected, observed.astype(np.float64)


def miscalibration_area(errors, stds, levels=DEFAULT_LEVELS) -> float:
    """Mean over ``levels`` of ``|observed coverage - expected coverage|``; dimensionless, target 0.

    The area between the reliability curve (central intervals) and the diagonal as in Tran et al.
    (2020) and uncertainty-toolbox, computed on the level grid (default 99 levels 0.01 ... 0.99),
    so it approximates the integral over [0, 1]. At most 0.5; stds halved give about 0.21.
    """
    expected, observed = reliability_curve(errors, stds, levels)
    return float(np.mean(np.abs(observed - expected)))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # Written out because numpy renamed trapz to trapezoid in 2.0 and the project allows both.
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def sparsification_curve(
    errors, stds, fractions=DEFAULT_FRACTIONS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RMSE of the predictions kept after removing the most uncertain ones, relative to all.

    For each fraction f in ``fractions`` (in [0, 1)), the ``floor(f n)`` predictions with the
    largest std are removed (at least one is always kept) and the RMSE of the rest is divided by
    the RMSE of all n. The oracle curve removes the largest |errors| first instead, the best any
    ranking can do. RMSE (not MAE) is used so the curves match the RMSE the project reports.
    Each value (one energy, or one force component) is one prediction.

    Returns ``(fractions, model, oracle)``, float64 arrays of shape ``(len(fractions),)``; both
    curves start at 1 for f = 0, and are NaN if all errors are zero.
    """
    e, s = _pair(errors, stds)
    f = np.asarray(fractions, dtype=np.float64).ravel()
    if f.size and not np.all((f >= 0.0) & (f < 1.0)):
        raise InputError("sparsification fractions must lie in [0, 1)")
    n = e.size
    # The small tolerance keeps e.g. 0.3 * 100 = 30.000000000000004 from becoming 29 kept values.
    removed = np.floor(f * n + 1e-9).astype(np.int64)
    kept = np.clip(n - removed, 1, n)
    sq = e * e
    total = math.sqrt(float(np.mean(sq)))

    def curve(order: np.ndarray) -> np.ndarray:
        # order: ascending, so the first k are the k kept; cumulative sums give every k at once.
        csum = np.cumsum(sq[order])
        rmse = np.sqrt(csum[kept - 1] / kept)
        return rmse / total if total > 0 else np.full(f.size, np.nan)

    model = curve(np.argsort(s, kind="stable"))
    oracle = curve(np.argsort(np.abs(e), kind="stable"))
    return f, model, oracle


class SparsificationArea(NamedTuple):
    """Areas of :func:`sparsification_error_area` (dimensionless, fraction x relative RMSE)."""

    ause: float
    """Area between the model's and the oracle's curves (AUSE); 0 when std ranks |error| exactly."""
    model_area: float
    """Area under the model's curve itself (near ``fractions[-1] - fractions[0]`` if uninformative)."""


def sparsification_error_area(errors, stds, fractions=DEFAULT_FRACTIONS) -> SparsificationArea:
    """Area under sparsification error (AUSE) and area under the model curve, trapezoidal rule.

    Both curves come from :func:`sparsification_curve` on the same ``fractions`` grid (sorted;
    default 0, 0.02, ..., 0.98, so the areas span 0.98 in fraction, not 1). AUSE is the integral
    of model minus oracle; the oracle is pointwise the lowest, so it is >= 0 up to rounding. Lower
    is better, but even perfectly calibrated Gaussian predictions have AUSE > 0 (the std sets only
    the spread of each error, not its size), so it ranks models rather than testing one.
    """
    f, model, oracle = sparsification_curve(errors, stds, np.sort(np.asarray(fractions, np.float64)))
    if f.size < 2:
        raise InputError("the sparsification areas need at least 2 fractions")
    return SparsificationArea(_trapezoid(model - oracle, f), _trapezoid(model, f))


def binned_calibration(
    errors, stds, n_bins: int = DEFAULT_N_BINS, min_count: int = DEFAULT_MIN_COUNT
) -> list[dict]:
    """Calibration in equal-count bins of predicted std.

    The predictions are sorted by std and split into ``min(n_bins, n // min_count)`` bins of
    nearly equal count (sizes differ by at most 1), so every bin holds >= ``min_count`` values;
    fewer than ``min_count`` values give no bin (an empty list). Bins run from small to large std.

    Returns one dict per bin: ``count`` (int), ``rms_std`` (root mean square predicted std),
    ``rmse`` (root mean square error), both in the units of the inputs, and ``ratio`` =
    rmse / rms_std (dimensionless; target 1, above 1 means over-confident in that bin).
    """
    e, s = _pair(errors, stds)
    if n_bins < 1 or min_count < 1:
        raise InputError("n_bins and min_count must be >= 1")
    nb = min(int(n_bins), e.size // int(min_count))
    bins = []
    for idx in np.array_split(np.argsort(s, kind="stable"), nb) if nb > 0 else []:
        rms_std = math.sqrt(float(np.mean(s[idx] ** 2)))
        rmse = math.sqrt(float(np.mean(e[idx] ** 2)))
        bins.append({"count": int(idx.size), "rms_std": rms_std, "rmse": rmse, "ratio": rmse / rms_std})
    return bins


def _worst_ratio(bins: list[dict]) -> float:
    if not bins:
        return float("nan")
    # A bin whose errors are all zero has ratio 0: infinitely under-confident.
    return float(max(max(b["ratio"], 1 / b["ratio"]) if b["ratio"] > 0 else math.inf for b in bins))


def binned_worst_ratio(
    errors, stds, n_bins: int = DEFAULT_N_BINS, min_count: int = DEFAULT_MIN_COUNT
) -> float:
    """Largest ``max(ratio, 1/ratio)`` over the bins of :func:`binned_calibration`.

    Dimensionless, >= 1; 1 is perfect and the project's target is <= 1.5. NaN if there is no bin
    (fewer than ``min_count`` values), infinite if a bin's errors are all zero.
    """
    return _worst_ratio(binned_calibration(errors, stds, n_bins, min_count))


def rank(values) -> np.ndarray:
    """Ranks 1..n of ``values`` (flattened), ties given the mean of their ranks; float64 (n,)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.arange(1, v.size + 1, dtype=np.float64)
    # Average within each group of equal values: sum of the group's ranks / its size.
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()  # numpy 2.0.x returned it in the input's shape
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation of ``a`` and ``b`` (same size, flattened), ties averaged.

    The Pearson correlation of :func:`rank` of each. NaN if fewer than 2 values or if either side
    is constant (no ranking to compare). Values must be finite.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise InputError(f"spearman: the two samples differ in size ({a.size} and {b.size})")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("spearman: values must be finite")
    if a.size < 2:
        return float("nan")
    ra = rank(a) - (a.size + 1) / 2.0
    rb = rank(b) - (b.size + 1) / 2.0
    denom = math.sqrt(float(np.sum(ra * ra)) * float(np.sum(rb * rb)))
    return float(np.sum(ra * rb)) / denom if denom > 0 else float("nan")


def _structures(energy_error, energy_std, forces_error, forces_std):
    """Float64 arrays checked for shapes (n,), (n,), (n, N, 3), (n, N, 3) with n, N >= 1."""
    ee = np.asarray(energy_error, dtype=np.float64)
    es = np.asarray(energy_std, dtype=np.float64)
    fe = np.asarray(forces_error, dtype=np.float64)
    fs = np.asarray(forces_std, dtype=np.float64)
    if ee.ndim != 1 or es.shape != ee.shape:
        raise InputError(f"energy errors and stds must both have shape (n,), got {ee.shape}, {es.shape}")
    n = ee.shape[0]
    if fe.ndim != 3 or fe.shape[0] != n or fe.shape[2] != 3 or fs.shape != fe.shape:
        raise InputError(
            f"forces errors and stds must both have shape ({n}, N, 3), got {fe.shape}, {fs.shape}"
        )
    if n == 0 or fe.shape[1] == 0:
        raise InputError("no structures (or no atoms) to assess the calibration on")
    return ee, es, fe, fs


def calibration_report(energy_error, energy_std, forces_error, forces_std) -> dict:
    """Calibration of energy and force predictions of n structures of N atoms, as a JSON-ready dict.

    ``energy_error``, ``energy_std``: (n,) eV; ``forces_error``, ``forces_std``: (n, N, 3) eV/Å;
    errors are predicted - reference. Each energy and each force component is one prediction.
    Keys (``energy_`` and ``forces_`` versions of each; floats unless said):

    - ``*_coverage_68``, ``*_coverage_95``: :func:`coverage` at 0.68 and 0.95 (exact z).
    - ``*_zms``: :func:`zms`. ``*_nll``: :func:`gaussian_nll`, in eV and eV/Å units.
    - ``*_miscalibration_area``: :func:`miscalibration_area` on 0.01 ... 0.99.
    - ``*_sparsification_ause``: AUSE of :func:`sparsification_error_area` on 0, 0.02, ..., 0.98.
    - ``*_binned``: :func:`binned_calibration` (list of dicts count, rms_std, rmse, ratio; 10 bins
      of >= 50 values, so empty for fewer than 50 structures for energies), and
      ``*_binned_worst_ratio``: :func:`binned_worst_ratio` (NaN when there is no bin).
    - ``forces_std_error_spearman``: :func:`spearman` across structures of the RMS predicted force
      std against the force RMSE, each over the structure's 3N components;
      ``energy_std_error_spearman``: of the energy std against |energy error|. NaN for fewer than
      2 structures or constant values.

    NaN values are kept as float NaN (the caller writes them as JSON null).
    """
    ee, es, fe, fs = _structures(energy_error, energy_std, forces_error, forces_std)
    report: dict = {}
    for name, e, s in (("energy", ee, es), ("forces", fe, fs)):
        report[f"{name}_coverage_68"] = coverage(e, s, 0.68)
        report[f"{name}_coverage_95"] = coverage(e, s, 0.95)
    for name, e, s in (("energy", ee, es), ("forces", fe, fs)):
        report[f"{name}_zms"] = zms(e, s)
    for name, e, s in (("energy", ee, es), ("forces", fe, fs)):
        report[f"{name}_nll"] = gaussian_nll(e, s)
    for name, e, s in (("energy", ee, es), ("forces", fe, fs)):
        report[f"{name}_miscalibration_area"] = miscalibration_area(e, s)
    for name, e, s in (("energy", ee, es), ("forces", fe, fs)):
        report[f"{name}_sparsification_ause"] = sparsification_error_area(e, s).ause
    for name, e, s in (("forces", fe, fs), ("energy", ee, es)):
        bins = binned_calibration(e, s)
        report[f"{name}_binned"] = bins
        report[f"{name}_binned_worst_ratio"] = _worst_ratio(bins)
    frame_rms_std = np.sqrt(np.mean(fs * fs, axis=(1, 2)))
    frame_rmse = np.sqrt(np.mean(fe * fe, axis=(1, 2)))
    report["forces_std_error_spearman"] = spearman(frame_rms_std, frame_rmse)
    report["energy_std_error_spearman"] = spearman(es, np.abs(ee))
    return report


def curves(
    energy_error,
    energy_std,
    forces_error,
    forces_std,
    levels=DEFAULT_LEVELS,
    fractions=DEFAULT_FRACTIONS,
) -> dict:
    """Reliability and sparsification curves for plotting, as lists of floats.

    Inputs as in :func:`calibration_report`. Returns ``{"energy": c, "forces": c}`` with each ``c``
    = ``{"reliability": {"expected": [...], "observed": [...]},
    "sparsification": {"fraction": [...], "model": [...], "oracle": [...]}}`` from
    :func:`reliability_curve` and :func:`sparsification_curve` (dimensionless).
    """
    ee, es, fe, fs = _structures(energy_error, energy_std, forces_error, forces_std)
    out = {}
    for name, e, s in (("energy", ee, es), ("forces", fe, fs)):
        expected, observed = reliability_curve(e, s, levels)
        f, model, oracle = sparsification_curve(e, s, fractions)
        out[name] = {
            "reliability": {"expected": expected.tolist(), "observed": observed.tolist()},
            "sparsification": {
                "fraction": f.tolist(),
                "model": model.tolist(),
                "oracle": oracle.tolist(),
            },
        }
    return out
