"""Tests of forcegp.calibration: hand-computed values on tiny arrays and large Gaussian samples.

Expected numbers are written as explicit arithmetic here, never by calling the function under
test. The large samples (200k values, fixed seed) have sampling errors of about 0.001 in coverage
and 0.003 in ZMS, well inside the tolerances. The whole module runs in about a second.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from forcegp import calibration as cal
from forcegp.errors import InputError

PHI = NormalDist().cdf
Z68 = NormalDist().inv_cdf(0.84)  # 0.99446
Z95 = NormalDist().inv_cdf(0.975)  # 1.95996

# Four predictions whose z-scores are 0.5, -1, 2, 0.
ERR = np.array([0.5, -1.0, 2.0, 0.0])
STD = np.array([1.0, 1.0, 1.0, 2.0])


@pytest.fixture(scope="module")
def gaussian_sample():
    """200k errors drawn from N(0, std^2) with std uniform in [0.1, 2]: calibrated by construction."""
    rng = np.random.default_rng(20240611)
    std = rng.uniform(0.1, 2.0, 200_000)
    return std * rng.standard_normal(std.size), std


def test_module_imports_no_jax():
    # The report must be computable from saved predictions without JAX.
    tree = ast.parse(Path(cal.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "math", "statistics", "typing", "numpy", ".errors"}


def test_z_values_are_exact():
    assert cal.z_value(0.68) == pytest.approx(0.994457883, abs=1e-9)
    assert cal.z_value(0.95) == pytest.approx(1.959963985, abs=1e-9)
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(InputError):
            cal.z_value(bad)


def test_coverage_by_hand():
    # |z| = 0.5, 1, 2, 0. Inside 0.99446: 0.5 and 0. Inside 1.95996: 0.5, 1 and 0 (2 > 1.96).
    assert cal.coverage(ERR, STD, 0.68) == 2 / 4
    assert cal.coverage(ERR, STD, 0.95) == 3 / 4
    # The bound is inclusive and uses the exact z, not 1.96: |e| = 1.9598 is in, 1.9601 is out.
    assert cal.coverage([1.9598, -1.9601], [1.0, 1.0], 0.95) == 0.5
    # Shape does not matter: values are flattened.
    assert cal.coverage(ERR.reshape(2, 2), STD.reshape(2, 2), 0.68) == 0.5


def test_zms_by_hand():
    assert cal.zms(ERR, STD) == pytest.approx((0.5**2 + 1.0**2 + 2.0**2 + 0.0**2) / 4, rel=1e-15)
    assert cal.zms(ERR, STD) == pytest.approx(1.3125, rel=1e-15)


def test_gaussian_nll_by_hand():
    per_value = [
        0.5 * math.log(2 * math.pi * 1.0) + 0.5**2 / 2,
        0.5 * math.log(2 * math.pi * 1.0) + 1.0**2 / 2,
        0.5 * math.log(2 * math.pi * 1.0) + 2.0**2 / 2,
        0.5 * math.log(2 * math.pi * 4.0) + 0.0,
    ]
    assert cal.gaussian_nll(ERR, STD) == pytest.approx(sum(per_value) / 4, rel=1e-14)
    # Unit dependence stated in the docstring: errors and stds in meV instead of eV.
    assert cal.gaussian_nll(1000 * ERR, 1000 * STD) == pytest.approx(
        sum(per_value) / 4 + math.log(1000), rel=1e-14
    )


def test_reliability_and_miscalibration_area_by_hand():
    levels = [0.5, 0.9]
    # z_0.5 = 0.6745: inside are |z| = 0.5, 0 -> 2/4. z_0.9 = 1.6449: 0.5, 1, 0 -> 3/4.
    expected, observed = cal.reliability_curve(ERR, STD, levels)
    np.testing.assert_array_equal(expected, [0.5, 0.9])
    np.testing.assert_array_equal(observed, [0.5, 0.75])
    assert cal.miscalibration_area(ERR, STD, levels) == pytest.approx((0.0 + 0.15) / 2, abs=1e-15)


def test_calibrated_gaussian_sample(gaussian_sample):
    e, s = gaussian_sample
    assert cal.coverage(e, s, 0.68) == pytest.approx(0.68, abs=0.005)
    assert cal.coverage(e, s, 0.95) == pytest.approx(0.95, abs=0.003)
    assert cal.zms(e, s) == pytest.approx(1.0, abs=0.02)
    assert cal.miscalibration_area(e, s) < 0.01
    assert cal.binned_worst_ratio(e, s) < 1.1
    # AUSE has no absolute zero for calibrated Gaussian errors (std sets the spread, not the
    # error); it must still be far below that of the same stds shuffled (no information).
    ause = cal.sparsification_error_area(e, s).ause
    shuffled = cal.sparsification_error_area(e, np.random.default_rng(1).permutation(s)).ause
    assert 0 < ause < 0.5 * shuffled
    # NLL of a calibrated Gaussian: E[0.5 log(2 pi s^2)] + 1/2.
    assert cal.gaussian_nll(e, s) == pytest.approx(
        np.mean(0.5 * np.log(2 * np.pi * s**2)) + 0.5, abs=0.01
    )


def test_over_confident_sample(gaussian_sample):
    e, s = gaussian_sample
    half = s / 2  # the reported std is half the true one: z = 2 N(0, 1)
    assert cal.zms(e, half) == pytest.approx(4.0, abs=0.08)
    # |2 Z| <= z_0.68 <=> |Z| <= z_0.68 / 2: probability 2 Phi(0.4972) - 1 = 0.3810.
    assert cal.coverage(e, half, 0.68) == pytest.approx(2 * PHI(Z68 / 2) - 1, abs=0.005)
    assert cal.coverage(e, half, 0.95) == pytest.approx(2 * PHI(Z95 / 2) - 1, abs=0.005)
    grid = np.linspace(0.01, 0.99, 99)
    exact_area = np.mean([abs(2 * PHI(NormalDist().inv_cdf((1 + p) / 2) / 2) - 1 - p) for p in grid])
    area = cal.miscalibration_area(e, half)
    assert area > 0.2
    assert area == pytest.approx(exact_area, abs=0.005)
    assert cal.binned_worst_ratio(e, half) == pytest.approx(2.0, abs=0.05)


def test_sparsification_perfect_ranking_equals_oracle():
    rng = np.random.default_rng(3)
    e = rng.standard_normal(1000)
    f, model, oracle = cal.sparsification_curve(e, 0.3 * np.abs(e) + 0.0, cal.DEFAULT_FRACTIONS)
    np.testing.assert_allclose(model, oracle, rtol=1e-12)
    assert model[0] == pytest.approx(1.0, rel=1e-12)
    assert np.all(np.diff(model) <= 1e-12)  # removing the largest errors first only lowers RMSE
    areas = cal.sparsification_error_area(e, 0.3 * np.abs(e))
    assert areas.ause == pytest.approx(0.0, abs=1e-12)
    assert areas.model_area < 0.98


def test_sparsification_uninformative_std_stays_near_one():
    rng = np.random.default_rng(4)
    e = rng.standard_normal(100_000)
    s = rng.uniform(0.5, 1.5, e.size)  # independent of the errors
    f, model, oracle = cal.sparsification_curve(e, s)
    np.testing.assert_allclose(model, 1.0, atol=0.05)  # the last point keeps 2000 values
    assert np.all(oracle <= model + 1e-12)
    assert cal.sparsification_error_area(e, s).model_area == pytest.approx(0.98, abs=0.01)


def test_sparsification_by_hand():
    e = np.array([3.0, 1.0, 2.0, 0.0])
    s = np.array([1.0, 4.0, 2.0, 3.0])  # model removes e=1 first, then 0, then 2
    f, model, oracle = cal.sparsification_curve(e, s, [0.0, 0.25, 0.5, 0.75])
    total = math.sqrt((9 + 1 + 4 + 0) / 4)
    np.testing.assert_allclose(
        model,
        [1.0, math.sqrt((9 + 4 + 0) / 3) / total, math.sqrt((9 + 4) / 2) / total, 3.0 / total],
        rtol=1e-14,
    )
    np.testing.assert_allclose(
        oracle,
        [1.0, math.sqrt((1 + 4 + 0) / 3) / total, math.sqrt((1 + 0) / 2) / total, 0.0],
        atol=1e-14,
    )
    areas = cal.sparsification_error_area(e, s, [0.0, 0.25, 0.5, 0.75])
    diff = model - oracle
    assert areas.ause == pytest.approx(0.25 * (diff[0] / 2 + diff[1] + diff[2] + diff[3] / 2), rel=1e-14)
    assert areas.model_area == pytest.approx(
        0.25 * (model[0] / 2 + model[1] + model[2] + model[3] / 2), rel=1e-14
    )


def test_binned_by_hand():
    # Given out of order: sorted by std the bins are {std 1, 1} and {std 2, 2}.
    e = np.array([4.0, 1.0, 0.0, -1.0])
    s = np.array([2.0, 1.0, 2.0, 1.0])
    bins = cal.binned_calibration(e, s, n_bins=2, min_count=2)
    assert [b["count"] for b in bins] == [2, 2]
    assert bins[0]["rms_std"] == pytest.approx(1.0) and bins[0]["rmse"] == pytest.approx(1.0)
    assert bins[0]["ratio"] == pytest.approx(1.0)
    assert bins[1]["rms_std"] == pytest.approx(2.0)
    assert bins[1]["rmse"] == pytest.approx(math.sqrt((16 + 0) / 2))
    assert bins[1]["ratio"] == pytest.approx(math.sqrt(8) / 2)
    assert cal.binned_worst_ratio(e, s, n_bins=2, min_count=2) == pytest.approx(math.sqrt(2))
    # Under-confident bin counts as 1/ratio: errors 0.5 with std 2 -> ratio 0.25 -> 4.
    assert cal.binned_worst_ratio([0.5, -0.5], [2.0, 2.0], n_bins=1, min_count=1) == pytest.approx(4.0)


def test_binned_uses_fewer_bins_to_keep_min_count():
    # 5 values, 3 bins asked, at least 2 per bin: only 2 bins fit, of 3 and 2 values.
    s = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    e = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    bins = cal.binned_calibration(e, s, n_bins=3, min_count=2)
    assert [b["count"] for b in bins] == [3, 2]
    assert bins[0]["rms_std"] == pytest.approx(math.sqrt((1 + 4 + 9) / 3))
    assert bins[0]["rmse"] == pytest.approx(1.0)
    assert bins[1]["rms_std"] == pytest.approx(math.sqrt((16 + 25) / 2))
    assert bins[1]["rmse"] == 0.0
    assert cal.binned_worst_ratio(e, s, n_bins=3, min_count=2) == math.inf
    # Fewer values than min_count: no bin at all.
    assert cal.binned_calibration(e, s, n_bins=3, min_count=6) == []
    assert math.isnan(cal.binned_worst_ratio(e, s, n_bins=3, min_count=6))


def test_rank_averages_ties():
    np.testing.assert_array_equal(cal.rank([10, 20, 20, 5]), [2.0, 3.5, 3.5, 1.0])
    np.testing.assert_array_equal(cal.rank([[3, 3], [3, 1]]), [3.0, 3.0, 3.0, 1.0])


def test_spearman_with_ties_by_hand():
    # scipy.stats.spearmanr docs example: 0.8207826816681233. Ranks of b: 1, 2, 3.5, 5, 3.5.
    a, b = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7]
    ra = np.array([1, 2, 3, 4, 5]) - 3.0
    rb = np.array([1, 2, 3.5, 5, 3.5]) - 3.0
    by_hand = (ra @ rb) / math.sqrt((ra @ ra) * (rb @ rb))  # = 8 / sqrt(10 * 9.5)
    assert by_hand == pytest.approx(8 / math.sqrt(95), rel=1e-15)
    assert cal.spearman(a, b) == pytest.approx(by_hand, rel=1e-14)
    assert cal.spearman(a, b) == pytest.approx(0.8207826816681233, rel=1e-12)
    assert cal.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    a = rng.integers(0, 6, 40).astype(float)  # many ties
    b = a + rng.integers(0, 4, 40)
    assert cal.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-12)


def test_spearman_degenerate_is_nan():
    assert math.isnan(cal.spearman([1.0], [2.0]))
    assert math.isnan(cal.spearman([], []))
    assert math.isnan(cal.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(InputError):
        cal.spearman([1.0, 2.0], [1.0])


def test_bad_inputs_raise():
    with pytest.raises(InputError):
        cal.zms([1.0, 2.0], [1.0])
    with pytest.raises(InputError):
        cal.zms([1.0], [0.0])
    with pytest.raises(InputError):
        cal.coverage([np.nan], [1.0], 0.68)
    with pytest.raises(InputError):
        cal.gaussian_nll([], [])


REPORT_KEYS = {
    "energy_coverage_68",
    "energy_coverage_95",
    "forces_coverage_68",
    "forces_coverage_95",
    "energy_zms",
    "forces_zms",
    "energy_nll",
    "forces_nll",
    "energy_miscalibration_area",
    "forces_miscalibration_area",
    "energy_sparsification_ause",
    "forces_sparsification_ause",
    "forces_binned",
    "forces_binned_worst_ratio",
    "energy_binned",
    "energy_binned_worst_ratio",
    "forces_std_error_spearman",
    "energy_std_error_spearman",
}


def test_calibration_report_small():
    rng = np.random.default_rng(6)
    n, n_atoms = 7, 4
    es = rng.uniform(0.01, 0.1, n)
    ee = es * rng.standard_normal(n)
    fs = rng.uniform(0.05, 0.2, (n, n_atoms, 3))
    fe = fs * rng.standard_normal((n, n_atoms, 3))
    report = cal.calibration_report(ee, es, fe, fs)
    assert set(report) == REPORT_KEYS
    json.loads(json.dumps(report, allow_nan=True))
    for key, value in report.items():
        if key.endswith("_binned"):
            assert isinstance(value, list)
        else:
            assert type(value) is float, key
    assert report["energy_zms"] == pytest.approx(np.mean((ee / es) ** 2))
    assert report["forces_coverage_95"] == pytest.approx(np.mean(np.abs(fe) <= Z95 * fs))
    # 84 force components: one bin of 84 (>= 50); 7 energies: no bin.
    assert [b["count"] for b in report["forces_binned"]] == [84]
    assert report["energy_binned"] == [] and math.isnan(report["energy_binned_worst_ratio"])
    frame_rms_std = np.sqrt(np.mean(fs**2, axis=(1, 2)))
    frame_rmse = np.sqrt(np.mean(fe**2, axis=(1, 2)))
    assert report["forces_std_error_spearman"] == pytest.approx(cal.spearman(frame_rms_std, frame_rmse))
    assert report["energy_std_error_spearman"] == pytest.approx(cal.spearman(es, np.abs(ee)))

    one = cal.calibration_report(ee[:1], es[:1], fe[:1], fs[:1])
    assert set(one) == REPORT_KEYS
    assert math.isnan(one["forces_std_error_spearman"]) and math.isnan(one["energy_std_error_spearman"])
    json.dumps(one, allow_nan=True)

    with pytest.raises(InputError):
        cal.calibration_report(ee, es, fe[:, :, :2], fs[:, :, :2])
    with pytest.raises(InputError):
        cal.calibration_report(ee[:3], es[:3], fe, fs)


def test_curves_for_plotting():
    rng = np.random.default_rng(7)
    es = rng.uniform(0.01, 0.1, 5)
    fs = rng.uniform(0.05, 0.2, (5, 3, 3))
    out = cal.curves(es * 0.5, es, -fs, fs)
    json.dumps(out, allow_nan=True)
    for name in ("energy", "forces"):
        assert len(out[name]["reliability"]["expected"]) == 99
        assert len(out[name]["reliability"]["observed"]) == 99
        assert len(out[name]["sparsification"]["fraction"]) == 50
        assert out[name]["sparsification"]["model"][0] == pytest.approx(1.0)
    # |z| = 0.5 for every energy: inside for levels whose z exceeds 0.5 (p > 0.383).
    observed = np.array(out["energy"]["reliability"]["observed"])
    expected = np.array(out["energy"]["reliability"]["expected"])
    np.testing.assert_array_equal(observed, (expected > 2 * PHI(0.5) - 1).astype(float))
