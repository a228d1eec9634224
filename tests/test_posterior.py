"""Streamed posterior fit and prediction against the dense GP formulas (design note 6-7)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forcegp.errors import NumericalError, ResourceError
from forcegp.gp import evidence, likelihood, posterior, statistics
from forcegp.gp.basis import noise_vector
from forcegp.training import evaluation, resources

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

rows_jit = eqx.filter_jit(likelihood.batch_rows)


def leaves(tree):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(v)]


def dense_problem(model, x, y, g):
    """Phi (n_obs, K), noise variances lam (n_obs,) and targets t (n_obs,) for all structures."""
    rows = np.asarray(rows_jit(model, model.hyper, jnp.asarray(x)))
    b, r, k = rows.shape
    lam = np.tile(np.asarray(noise_vector(model.config, model.hyper)), b)
    t = np.concatenate([np.asarray(y)[:, None], np.asarray(g)], axis=1).reshape(-1)
    return rows.reshape(b * r, k), lam, t


def dense_posterior(phi, lam, t):
    """theta | data for theta ~ N(0, I), t = Phi theta + N(0, diag lam), via the n x n K_xx."""
    kxx = phi @ phi.T + np.diag(lam)
    mean = phi.T @ np.linalg.solve(kxx, t)
    cov = np.eye(phi.shape[1]) - phi.T @ np.linalg.solve(kxx, phi)
    return mean, cov


def check_posterior(post, mean, cov):
    np.testing.assert_allclose(post.mean, mean, rtol=1e-7, atol=1e-9 * np.max(np.abs(mean)))
    inv_chol = np.asarray(post.inv_chol)
    np.testing.assert_array_equal(inv_chol, np.tril(inv_chol))
    np.testing.assert_allclose(inv_chol.T @ inv_chol, cov, rtol=1e-7, atol=1e-9)


@pytest.fixture(scope="module")
def dense_initial(small_problem):
    """The dense problem of the untrained model (what accumulate streams)."""
    pb = small_problem
    return dense_problem(pb.model, pb.x, pb.y, pb.g)


@pytest.fixture(scope="module")
def dense_fitted(small_problem, fitted_small):
    """The dense problem of the fitted model: fit refines output scale and noise first."""
    pb = small_problem
    return dense_problem(fitted_small, pb.x, pb.y, pb.g)


@pytest.mark.parametrize("k", [5, 16, 23])
def test_gram_of_the_block_triangle_is_the_full_product(monkeypatch, k):
    """gram's upper block triangle and its transposes give a^T a (rows summed over every
    leading axis), symmetric to the last bit, for one block, equal and unequal blocks."""
    monkeypatch.setattr(statistics, "GRAM_BLOCK", 8)
    a = np.random.default_rng(k).normal(size=(2, 3, 5, k))  # 15 rows per device, 30 in all
    flat = a.reshape(-1, k)
    g = np.asarray(statistics.gram(jnp.asarray(a)))
    np.testing.assert_allclose(g, flat.T @ flat, rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(g, g.T)
    per_device = np.asarray(jax.vmap(statistics.gram)(jnp.asarray(a)))
    for d in range(2):
        np.testing.assert_allclose(
            per_device[d], a[d].reshape(-1, k).T @ a[d].reshape(-1, k), rtol=1e-13, atol=1e-12
        )


def test_posterior_equals_dense_gp(fitted_small, dense_fitted):
    """theta | data from the streamed fit is the exact dense GP posterior of the final model."""
    check_posterior(fitted_small.posterior, *dense_posterior(*dense_fitted))


def test_unrefined_fit_equals_dense_gp(small_problem, dense_initial):
    pb = small_problem
    fitted = posterior.fit(pb.model, pb.x, pb.y, pb.g, refine=False)
    for a, b in zip(leaves(fitted.hyper), leaves(pb.model.hyper), strict=True):
        np.testing.assert_array_equal(a, b)
    check_posterior(fitted.posterior, *dense_posterior(*dense_initial))


def test_refinement_changes_only_scales_and_noise(small_problem, fitted_small):
    """fit's refinement keeps the basis shape and lowers the exact full-data NLL."""
    pb = small_problem
    h0, h1 = pb.model.hyper, fitted_small.hyper
    for name in ("z", "raw_temperature", "raw_lengthscale"):
        np.testing.assert_array_equal(getattr(h1, name), getattr(h0, name))
    for a, b in zip(leaves(h1.mlp), leaves(h0.mlp), strict=True):
        np.testing.assert_array_equal(a, b)
    suff = statistics.accumulate(pb.model, pb.x, pb.y, pb.g)
    before = float(evidence.exact_nll(suff, 1.0, h0.noise_energy, h0.noise_force))
    # Each block's rows are a multiple of the initial ones: recover the multipliers.
    mult = np.array(
        [
            np.sqrt(float(h1.scale / h0.scale)),
            float(h1.scale_linear / h0.scale_linear),
            float(h1.scale_quadratic / h0.scale_quadratic),
        ]
    )
    columns = mult[posterior.basis_groups(pb.model.config)]
    scaled = posterior.scaled_statistics(suff, columns)
    after = float(evidence.exact_nll(scaled, 1.0, h1.noise_energy, h1.noise_force))
    assert after < before
    # The fitted posterior is the exact one of the refined hyperparameters.
    post = posterior.solve(scaled, h1.noise_energy, h1.noise_force)
    np.testing.assert_allclose(fitted_small.posterior.mean, post.mean, rtol=1e-8, atol=1e-10)


def test_evidence_search_stops_within_its_tolerance(small_problem, monkeypatch):
    """The refinement stops once an iteration gains less than evidence.TOL_NATS of total log
    evidence: it ends within a few times that of the tight search (scipy's default rule) and
    needs no more evaluations; a tolerance of 1000 nats stops it far from the optimum."""
    pb = small_problem
    suff = statistics.accumulate(pb.model, pb.x, pb.y, pb.g)
    groups = posterior.basis_groups(pb.model.config)
    st = evidence.Statistics(suff)
    n_obs, h, real = st.n_e + st.n_f, pb.model.hyper, evidence.nll_and_grad

    def search(tol):
        calls = []
        monkeypatch.setattr(evidence, "TOL_NATS", tol)
        monkeypatch.setattr(evidence, "nll_and_grad", lambda *a: calls.append(1) or real(*a))
        mult, ne, nf = evidence.maximise(suff, groups, float(h.noise_energy), float(h.noise_force))
        params = np.concatenate([np.log(mult), np.log([ne, nf])])
        return real(params, st, groups)[0] * n_obs, len(calls)

    start = real(np.concatenate([np.zeros(3), np.log([float(h.noise_energy), float(h.noise_force)])]),
                 st, groups)[0] * n_obs  # fmt: skip
    tight, n_tight = search(0.0)
    default, n_default = search(0.01)
    loose, _ = search(1000.0)
    assert tight - 1e-6 * n_obs <= default <= tight + 0.1 and n_default <= n_tight
    assert start - tight > 1.0  # the search has somewhere to go on this problem
    assert loose > tight + 0.1


def test_evidence_search_leaves_the_noise_plateau(monkeypatch):
    """A block whose columns start small against a large noise has a vanishing gradient: a
    search from there keeps the block off and explains the data as noise. The second start
    (noise levels NOISE_RESTART times smaller) finds the optimum: the block on, the noise
    near the 0.01 the data were made with."""
    from forcegp.gp.statistics import Sufficient

    rng = np.random.default_rng(0)
    k, n_e, n_f = 30, 200, 2000
    theta = np.concatenate([0.1 * rng.normal(size=k), rng.normal(size=k)])
    scale = np.concatenate([np.ones(k), np.full(k, 1e-3)])  # the second block starts off
    stats = []
    for n in (n_e, n_f):
        phi = rng.normal(size=(n, 2 * k))
        y = phi @ theta + 0.01 * rng.normal(size=n)
        stats.append((phi * scale, y))
    (pe, ye), (pf, yf) = stats
    suff = Sufficient(*(jnp.asarray(v, dtype=jnp.float64) for v in (
        pe.T @ pe, pf.T @ pf, pe.T @ ye, pf.T @ yf, ye @ ye, yf @ yf, n_e, n_f)))  # fmt: skip
    groups = np.repeat([0, 1], k)
    st = evidence.Statistics(suff)

    def nll(result):
        mult, ne, nf = result
        return evidence.nll_and_grad(np.log([*mult, ne, nf]), st, groups)[0]

    found = evidence.maximise(suff, groups, 1.0, 1.0)
    assert found[0][1] > 100 and found[2] < 0.02, found
    monkeypatch.setattr(evidence, "NOISE_RESTART", 1.0)  # the search from the given start only
    searches = []
    real = evidence._search
    monkeypatch.setattr(evidence, "_search", lambda *a: searches.append(1) or real(*a))
    stuck = evidence.maximise(suff, groups, 1.0, 1.0)
    assert stuck[2] > 1.0, stuck
    assert nll(found) < nll(stuck) - 1.0
    assert len(searches) == 1  # the same start is not searched twice
    # Newton's method (saddle-free steps where the Hessian is not positive definite) leaves
    # the plateau from the first start.
    newton = evidence.maximise(suff, groups, 1.0, 1.0, method="newton", restart=False)
    assert newton[0][1] > 100 and newton[2] < 0.02, newton
    assert nll(newton) <= nll(found) + 1e-6


def test_evidence_search_of_some_groups_holds_the_others(small_problem, monkeypatch):
    """With search_groups the other groups keep multiplier 1 and the searched ones and the noise
    levels end at a stationary point of the evidence in those coordinates, from one L-BFGS
    search without restart; a search of every group ends no higher."""
    pb = small_problem
    suff = statistics.accumulate(pb.model, pb.x, pb.y, pb.g)
    groups = posterior.basis_groups(pb.model.config)
    st, h = evidence.Statistics(suff), pb.model.hyper
    noise = float(h.noise_energy), float(h.noise_force)

    def nll_grad(result):
        mult, ne, nf = result
        return evidence.nll_and_grad(np.log([*mult, ne, nf]), st, groups)

    searches, real = [], evidence._search
    monkeypatch.setattr(evidence, "_search", lambda *a: searches.append(1) or real(*a))
    part = evidence.maximise(suff, groups, *noise, search_groups=[0], restart=False)
    assert len(searches) == 1
    whole = evidence.maximise(suff, groups, *noise)
    assert np.all(part[0][1:] == 1.0) and part[0][0] != 1.0
    value, grad = nll_grad(part)
    n_obs = st.n_e + st.n_f
    assert np.all(np.abs(grad[[0, -2, -1]]) * n_obs < 0.5), grad * n_obs
    assert np.abs(grad[1:-2]).max() * n_obs > 1.0  # the held groups are not at their optimum
    assert nll_grad(whole)[0] <= value + 1e-9


def avals(tree):
    return [(v.dtype, v.shape, v.weak_type) for v in jax.tree_util.tree_leaves(tree) if eqx.is_array(v)]


def test_refined_model_reuses_what_was_compiled_for_the_trained_one(small_problem):
    """with_scale_and_noise keeps each leaf's dtype, shape and weak type: no new compilation."""
    from forcegp.gp.params import strong_types

    pb = small_problem
    traces = []

    @eqx.filter_jit
    def noise(model):
        traces.append(1)
        return model.hyper.scale * model.hyper.noise_force

    # As initialised (partly weakly typed) and as training returns them (strongly typed).
    for hyper in (pb.model.hyper, strong_types(pb.model.hyper)):
        model = eqx.tree_at(lambda m: m.hyper, pb.model, hyper)
        refined = posterior.with_scale_and_noise(model, 1.3, 0.2, 0.05)
        assert avals(refined.hyper) == avals(model.hyper)
        traces.clear()
        noise(model), noise(refined)
        assert len(traces) == 1
        np.testing.assert_allclose(float(refined.hyper.noise_force), 0.05, rtol=1e-12)


def test_refine_noise_finds_the_exact_likelihood_optimum(small_problem):
    """The LAPACK search (forcegp.gp.evidence) stops at a minimum of the JAX exact_nll."""
    pb = small_problem
    suff = statistics.accumulate(pb.model, pb.x, pb.y, pb.g)
    scale, noise_e, noise_f = posterior.refine_noise(suff, pb.model)
    best = float(evidence.exact_nll(suff, scale, noise_e, noise_f))
    start = float(evidence.exact_nll(suff, 1.0, pb.model.hyper.noise_energy, pb.model.hyper.noise_force))
    assert best <= start
    for factors in ((1.05, 1, 1), (0.95, 1, 1), (1, 1.05, 1), (1, 0.95, 1), (1, 1, 1.05), (1, 1, 0.95)):
        moved = [v * f for v, f in zip((scale, noise_e, noise_f), factors, strict=True)]
        assert float(evidence.exact_nll(suff, *moved)) >= best - 1e-9


def test_evidence_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    k = 12
    xf, xe = rng.normal(size=(60, k)), rng.normal(size=(8, k))
    tf, te = rng.normal(size=60), rng.normal(size=8)
    suff = statistics.Sufficient(xe.T @ xe, xf.T @ xf, xe.T @ te, xf.T @ tf, te @ te, tf @ tf, 8.0, 60.0)
    st = evidence.Statistics(suff)
    groups = (np.arange(k) >= 5).astype(np.int64)
    params = np.array([0.3, -0.2, 0.1, -0.4])
    value, grad = evidence.nll_and_grad(params, st, groups)
    eye = np.eye(4)
    numeric = [
        (evidence.nll_and_grad(params + 1e-6 * eye[i], st, groups)[0]
         - evidence.nll_and_grad(params - 1e-6 * eye[i], st, groups)[0]) / 2e-6
        for i in range(4)
    ]  # fmt: skip
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    # The value is the dense GP's NLL per observation.
    m = np.exp(params[:2])[groups]
    phi = np.vstack([xe, xf]) * m
    lam = np.r_[np.full(8, np.exp(2 * params[2])), np.full(60, np.exp(2 * params[3]))]
    cov = phi @ phi.T + np.diag(lam)
    chol = np.linalg.cholesky(cov)
    a = np.linalg.solve(chol, np.r_[te, tf])
    dense = 0.5 * (a @ a + 2 * np.log(np.diag(chol)).sum() + 68 * np.log(2 * np.pi)) / 68
    np.testing.assert_allclose(value, dense, rtol=1e-10)


def test_exact_nll_equals_dense(small_problem, dense_initial):
    pb = small_problem
    phi, lam, t = dense_initial
    suff = statistics.accumulate(pb.model, pb.x, pb.y, pb.g)
    h = pb.model.hyper
    for c, be, bf in [(1.0, h.noise_energy, h.noise_force), (1.7, 0.3, 0.02)]:
        lam_c = lam if c == 1.0 else np.tile([be**2] + [bf**2] * 15, 12)
        expected = likelihood.dense_nll(jnp.asarray(c * phi), jnp.asarray(lam_c), jnp.asarray(t))
        np.testing.assert_allclose(evidence.exact_nll(suff, c, be, bf), expected, rtol=1e-9)


def test_predictions_equal_dense_gp(small_problem, fitted_small, dense_fitted):
    pb, model = small_problem, fitted_small
    phi, lam, t = dense_fitted
    kxx = phi @ phi.T + np.diag(lam)
    star, _, _ = dense_problem(model, pb.test_positions.reshape(3, -1), np.zeros(3), np.zeros((3, 15)))
    # Function-space formulas: K_*x K_xx^-1 y and diag(K_** - K_*x K_xx^-1 K_x*).
    k_sx = star @ phi.T
    mean = k_sx @ np.linalg.solve(kxx, t)
    var = np.sum(star * star, axis=1) - np.sum(k_sx * np.linalg.solve(kxx, k_sx.T).T, axis=1)
    assert np.all(var > -1e-10)  # the exact model variance is non-negative
    mean, var = mean.reshape(3, 16), var.reshape(3, 16)
    sigma, mu = float(model.stats.energy_scale), float(model.stats.energy_mean)
    noise = np.asarray(noise_vector(model.config, model.hyper))

    out = evaluation.predict(model, pb.test_positions)
    np.testing.assert_allclose(out["energy"], sigma * mean[:, 0] + mu, rtol=1e-10)
    np.testing.assert_allclose(out["forces"].reshape(3, -1), -sigma * mean[:, 1:], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out["energy_std"], sigma * np.sqrt(var[:, 0] + noise[0]), rtol=1e-6)
    np.testing.assert_allclose(
        out["forces_std"].reshape(3, -1), sigma * np.sqrt(var[:, 1:] + noise[1:]), rtol=1e-6
    )
    # Standard deviations include the observation noise: never below sigma * noise std.
    assert np.all(out["energy_std"] >= sigma * np.sqrt(noise[0]) * (1 - 1e-12))
    assert np.all(out["forces_std"] >= sigma * np.sqrt(noise[1]) * (1 - 1e-12))
    # The model variance is non-negative as returned.
    assert np.all(out["energy_std"] ** 2 / sigma**2 - noise[0] > -1e-10)
    assert np.all(out["forces_std"] ** 2 / sigma**2 - noise[1] > -1e-10)


def close(actual, desired, rtol):
    """Relative to each array's scale: entries that cancel are only as exact as the largest term."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.max(np.abs(desired)))


@pytest.mark.parametrize("chunk", [1, 3, 5, 64])
def test_streamed_accumulation_is_chunk_independent(small_problem, dense_initial, chunk):
    """Chunks of 1, 3 (divides 12), 5 (padded last chunk) and 64 (one padded chunk)."""
    pb = small_problem
    phi, lam, t = dense_initial
    suff = statistics.accumulate(pb.model, pb.x, pb.y, pb.g, chunk=chunk)
    rows = phi.reshape(12, 16, -1)
    ve, vf = rows[:, 0], rows[:, 1:].reshape(12 * 15, -1)
    close(suff.a_e, ve.T @ ve, 1e-10)
    close(suff.a_f, vf.T @ vf, 1e-10)
    close(suff.b_e, ve.T @ pb.y, 1e-10)
    close(suff.b_f, vf.T @ pb.g.reshape(-1), 1e-10)
    np.testing.assert_allclose(suff.tt_e, pb.y @ pb.y, rtol=1e-12)
    np.testing.assert_allclose(suff.tt_f, np.sum(pb.g**2), rtol=1e-12)
    assert float(suff.n_e) == 12 and float(suff.n_f) == 12 * 15
    # A = Phi^T Lam^-1 Phi and b = Phi^T Lam^-1 t of the design note, from the statistics.
    h = pb.model.hyper
    a = suff.a_e / h.noise_energy**2 + suff.a_f / h.noise_force**2
    b = suff.b_e / h.noise_energy**2 + suff.b_f / h.noise_force**2
    close(a, phi.T @ (phi / lam[:, None]), 1e-10)
    close(b, phi.T @ (t / lam), 1e-10)


def test_choose_chunk():
    from synthetic import tiny_config

    config = tiny_config(5)
    with pytest.raises(ResourceError, match="max_memory"):
        resources.choose_chunk(config, 1000.0)
    # The refusal names the settings that size K, largest part first: many pair powers of a
    # 60-atom molecule outweigh the interpolation points.
    big = dataclasses.replace(tiny_config(60), pair_powers=8, explicit="polynomial")
    (first, k), *_ = big.basis_parts()
    assert first == "pair_powers" and k == 8 * 60 * 59 // 2
    with pytest.raises(ResourceError, match=r"K = 14160 \(`pair_powers`\) \+ .*lower `pair_powers`"):
        resources.choose_chunk(big, 1000.0)
    assert resources.choose_chunk(config, None) == 64
    budget = resources.fit_memory_bytes(config, 8)
    chunk = resources.choose_chunk(config, budget)
    assert 8 <= chunk <= 64 and resources.fit_memory_bytes(config, chunk) <= budget
    chunk = resources.choose_chunk(config, 10 * budget, n_devices=4)
    assert chunk % 4 == 0 and resources.fit_memory_bytes(config, chunk, 4) <= 10 * budget


def test_chunk_follows_the_permuted_copies_and_the_available_memory(monkeypatch):
    """A symmetrised 56-atom molecule (K ~ 8400): its K x K blocks take 2.3 GB and each of 24
    permuted copies adds intermediates per structure; the chunk must shrink to fit the machine,
    and a machine too small must get a ResourceError up front instead of an out-of-memory kill."""
    from forcegp.gp.config import Config

    config = Config(n_atoms=56, n_local=3000, explicit_cubic=10)
    one, many = resources.structure_bytes(config, 1), resources.structure_bytes(config, 24)
    assert many > one + 23 * 2**20  # each copy at least 1 MiB (its tangent rows alone)
    dense = resources.structure_bytes(dataclasses.replace(config, descriptor="cartesian"), 24)
    assert dense > many  # the dense Jacobian path (P x 3N per copy) costs more
    gib = 2**30
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 4 * gib)
    chunk = resources.choose_chunk(config, None, n_copies=24)
    assert 1 <= chunk < resources.choose_chunk(config, None, n_copies=1) < 64
    assert resources.fit_memory_bytes(config, chunk, 1, 24) <= resources.AVAILABLE_SHARE * 4 * gib
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 2 * gib)  # < the K x K blocks
    with pytest.raises(ResourceError, match="available"):
        resources.choose_chunk(config, None, n_copies=24)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: None)  # unknown: no cap
    assert resources.choose_chunk(config, None, n_copies=24) == 64


class FakeDevice:
    def __init__(self, platform, stats):
        self.platform, self.stats = platform, stats

    def memory_stats(self):
        if isinstance(self.stats, Exception):
            raise self.stats
        return self.stats


def test_device_memory_is_the_least_free_accelerator(monkeypatch):
    gib = 2**30
    gpu = [
        FakeDevice("gpu", {"bytes_limit": 60 * gib, "bytes_in_use": 10 * gib}),
        FakeDevice("gpu", {"bytes_limit": 60 * gib, "bytes_in_use": 30 * gib}),
    ]
    assert resources.device_memory_bytes(gpu) == 30 * gib
    assert resources.device_memory_bytes([FakeDevice("cpu", None)]) is None  # the host's memory
    assert resources.device_memory_bytes([FakeDevice("gpu", None)]) is None
    assert resources.device_memory_bytes([FakeDevice("gpu", NotImplementedError())]) is None
    assert resources.device_memory_bytes([FakeDevice("gpu", {"bytes_in_use": 0})]) is None
    # On accelerators the fit's chunks are planned against their free memory, not the host's.
    from forcegp.gp.config import Config

    config = Config(n_atoms=56, n_local=3000, explicit_cubic=10)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 1000 * gib)
    monkeypatch.setattr(resources, "device_memory_bytes", lambda devices: gib)
    limit, what = resources.memory_limit(None, 1)
    assert limit == resources.AVAILABLE_SHARE * gib and "free memory of 1" in what
    with pytest.raises(ResourceError, match="free memory of 1 .* device"):
        resources.choose_chunk(config, None, n_copies=24)
    monkeypatch.setattr(resources, "device_memory_bytes", lambda devices: 4 * gib)
    chunk = resources.choose_chunk(config, None, n_copies=24)
    assert resources.fit_memory_bytes(config, chunk, 1, 24) <= resources.AVAILABLE_SHARE * 4 * gib
    assert resources.memory_limit(2 * gib, 1) == (2 * gib, "`max_memory`")  # the cap wins


def test_predict_without_posterior_fails(small_problem):
    with pytest.raises(NumericalError, match="posterior"):
        evaluation.predict(small_problem.model, small_problem.test_positions)


MULTI_DEVICE = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import pytest
    from forcegp.gp import evidence
    from forcegp.gp import posterior
    from forcegp.gp import statistics
    from forcegp.training import evaluation
    from forcegp.training import resources
    from forcegp.training import loop
    from forcegp.training import resources
    from forcegp.training import settings as settings_mod
    from forcegp.errors import ResourceError
    from synthetic import SMALL_NUMBERS, SMALL_REFERENCE, Problem

    assert len(jax.devices()) == 4, jax.devices()
    # The cheapest model (no MLP, no explicit block): sharding does not depend on the basis.
    pb = Problem(SMALL_NUMBERS, SMALL_REFERENCE, 12, seed=0, n_features=0, explicit="none")

    def close(a, b, rtol):
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            if hasattr(u, "dtype"):
                np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol,
                                           atol=rtol * float(np.max(np.abs(np.asarray(v)))))

    mesh1, mesh4 = resources.make_mesh(1), resources.make_mesh(4)
    data = (pb.model, pb.x, pb.y, pb.g)
    # chunk 8: 12 structures = one full chunk and one padded chunk, split over the devices.
    # Each device compiles its own share of the chunk, and rounding differs. Measured on an AMD
    # EPYC host: the energy statistics differ by 5e-16 of their largest entry, the force
    # statistics by 1.4e-10 (derivative rows with cancellation, e.g. the softmax weights'
    # w_k (s_k - sum_j w_j s_j); other chunk sizes on one device: 4e-16), the model by 2e-10.
    close(statistics.accumulate(*data, chunk=8, mesh=mesh4),
          statistics.accumulate(*data, chunk=8, mesh=mesh1), 1e-8)
    one = posterior.fit(*data, chunk=8, mesh=mesh1)
    four = posterior.fit(*data, chunk=8, mesh=mesh4)
    close(four.hyper, one.hyper, 1e-6)
    close(four.posterior, one.posterior, 1e-6)
    # With the explicit block's own products known (the fit after the prefit), the rest is
    # accumulated sharded the same way.
    pbx = Problem(SMALL_NUMBERS, SMALL_REFERENCE, 12, seed=0, n_features=0)
    datax = (pbx.model, pbx.x, pbx.y, pbx.g)
    full = statistics.accumulate(*datax, chunk=8, mesh=mesh1)
    m = pbx.model.config.n_inducing
    known = statistics.Sufficient(full.a_e[m:, m:], full.a_f[m:, m:], full.b_e[m:], full.b_f[m:],
                                  full.tt_e, full.tt_f, full.n_e, full.n_f)
    close(statistics.accumulate(*datax, chunk=8, mesh=mesh4, known=known), full, 1e-8)
    # The pass of the input-dependent noise (gp.misfit) is sharded the same way.
    from forcegp.gp import misfit
    proj = misfit.projection(one, columns=4)
    close(misfit.systems(one, proj, (1.0, 10.0), pb.x, pb.y, pb.g, chunk=8, mesh=mesh4),
          misfit.systems(one, proj, (1.0, 10.0), pb.x, pb.y, pb.g, chunk=8, mesh=mesh1), 1e-8)

    # float64 rows: the sharded step is the single-device step. float32 rows (the default)
    # differ by float32 rounding, as each device compiles its own share of the batch.
    key = jax.random.key(3)
    for precision, rtol, loss_rtol in (("float64", 1e-6, 1e-8), ("float32", 1e-4, 1e-5)):
        settings = settings_mod.TrainSettings(epochs=1, batch_size=4, lr=1e-2, precision=precision)
        # Planned from each compiled step; with 4 devices, summed over them (each holds the
        # replicated parameters and its share of the batch).
        plan1 = resources.step_memory_bytes(pb.model, pb.x, pb.y, pb.g, settings)
        plan4 = resources.step_memory_bytes(pb.model, pb.x, pb.y, pb.g, settings, mesh=mesh4)
        assert plan4 >= plan1 > 0, (plan1, plan4)
        s1 = loop.run(pb.model, pb.x, pb.y, pb.g, settings, key=key)
        s4 = loop.run(pb.model, pb.x, pb.y, pb.g, settings, key=key, mesh=resources.make_mesh(4))
        close(s4.hyper, s1.hyper, rtol)
        loss1, loss4 = s1.history[0]["loss"], s4.history[0]["loss"]
        assert abs(loss4 - loss1) < loss_rtol * abs(loss1), (precision, loss1, loss4)

    with pytest.raises(ResourceError, match="devices"):
        resources.make_mesh(8)
    print("MULTI-DEVICE OK")
    """
)


@pytest.mark.slow
def test_multi_device_fit_and_training_equal_single_device():
    """4 forced host devices in a subprocess (the device count is fixed when JAX starts)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    # Share the session's persistent compilation cache (tests/conftest.py), if it has one.
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    proc = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "MULTI-DEVICE OK" in proc.stdout


def test_amplitude_scales_variances_and_keeps_the_exact_posterior(small_problem, fitted_small):
    """with_amplitude(kappa) equals refitting the GP whose scales and noises are kappa times larger."""
    pb, kappa = small_problem, 1.7
    scaled = posterior.with_amplitude(fitted_small, kappa)
    h = fitted_small.hyper
    refit = posterior.fit(
        posterior.with_multipliers(
            fitted_small, (kappa,) * 3, kappa * float(h.noise_energy), kappa * float(h.noise_force)
        ),
        pb.x,
        pb.y,
        pb.g,
        refine=False,
    )
    a = evaluation.predict(fitted_small, pb.test_positions)
    b = evaluation.predict(scaled, pb.test_positions)
    c = evaluation.predict(refit, pb.test_positions)
    np.testing.assert_allclose(b["energy"], a["energy"], rtol=1e-10)
    np.testing.assert_allclose(b["forces"], a["forces"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b["forces_std"], kappa * a["forces_std"], rtol=1e-8)
    np.testing.assert_allclose(b["energy_std"], kappa * a["energy_std"], rtol=1e-8)
    for key in ("energy", "forces", "energy_std", "forces_std"):
        np.testing.assert_allclose(b[key], c[key], rtol=1e-6, atol=1e-9)


def test_evidence_curvature_is_the_dense_fisher_and_the_hessian():
    """nll_and_curvature's Fisher information, from K x K statistics, is 1/2 tr(C^-1 dC C^-1 dC)
    of the dense covariance C over all observations (fewer energies than columns, so the
    energy factor is of lower rank); its Hessian is the finite difference of nll_and_grad's
    gradient, and its value and gradient are nll_and_grad's."""
    rng = np.random.default_rng(1)
    k, n_e, n_f = 12, 7, 30
    pe, pf = rng.normal(size=(n_e, k)), rng.normal(size=(n_f, k))
    ye, yf = rng.normal(size=n_e), rng.normal(size=n_f)
    suff = statistics.Sufficient(pe.T @ pe, pf.T @ pf, pe.T @ ye, pf.T @ yf, ye @ ye, yf @ yf,
                                 float(n_e), float(n_f))  # fmt: skip
    st = evidence.Statistics(suff)
    groups = np.repeat([0, 1, 2], [4, 5, 3])
    params = np.array([0.3, -0.5, 0.8, np.log(0.7), np.log(0.4)])
    value, grad, info, hess = evidence.nll_and_curvature(params, st, groups)
    v2, g2 = evidence.nll_and_grad(params, st, groups)
    assert value == v2
    np.testing.assert_allclose(grad, g2, rtol=1e-12)
    m = np.exp(params[:3])[groups]
    s_e, s_f = np.exp(params[3:])
    phi = np.vstack([pe, pf]) * m
    inv = np.linalg.inv(np.diag(np.r_[np.full(n_e, s_e**2), np.full(n_f, s_f**2)]) + phi @ phi.T)
    derivs = [2 * (phi * (groups == j)) @ phi.T for j in range(3)]  # d C / d log m_j
    derivs += [np.diag(np.r_[np.full(n_e, 2 * s_e**2), np.zeros(n_f)]),
               np.diag(np.r_[np.zeros(n_e), np.full(n_f, 2 * s_f**2)])]  # fmt: skip
    dense = [[0.5 * np.trace(inv @ a @ inv @ b) for b in derivs] for a in derivs]
    np.testing.assert_allclose(info, np.array(dense) / (n_e + n_f), rtol=1e-9, atol=1e-13)
    eye, eps = np.eye(5), 1e-5
    numeric = [(evidence.nll_and_grad(params + eps * eye[i], st, groups)[1]
                - evidence.nll_and_grad(params - eps * eye[i], st, groups)[1]) / (2 * eps)
               for i in range(5)]  # fmt: skip
    np.testing.assert_allclose(hess, numeric, rtol=1e-6, atol=1e-8)
    assert np.abs(hess - info).max() > 1e-3  # the two differ away from the optimum


def test_newton_steps_follow_negative_curvature_downhill():
    """Where the Hessian is not positive definite and the Fisher information is large (a
    multiplier on its way to switching a redundant group off), evidence._newton still takes
    long steps: f = x0^2 - 10 exp(-(x1 - 4)^2 / 8) from x1 = 0, past the well's inflection
    point, with diag(F) = 100. A Fisher-scoring step there moves x1 by about 0.01."""
    from types import SimpleNamespace

    calls = []

    def evaluate(x):
        calls.append(x)
        u = x[1] - 4.0
        bump = 10.0 * np.exp(-(u**2) / 8)
        value = x[0] ** 2 - bump
        grad = np.array([2 * x[0], bump * u / 4])
        hess = np.diag([2.0, bump * (0.25 - u**2 / 16)])
        return value, grad, np.diag([100.0, 100.0]), hess

    bounds = [(-20.0, 20.0)] * 2
    x, value = evidence._newton(evaluate, SimpleNamespace(n_e=1.0, n_f=0.0), np.array([1.0, 0.0]),
                                bounds, 40)  # fmt: skip
    assert evaluate(np.array([1.0, 0.0]))[3][1, 1] < 0  # the start's curvature along x1
    np.testing.assert_allclose(x, [0.0, 4.0], atol=0.05)
    assert value < -9.99 and len(calls) <= 12, (value, len(calls))


def test_newton_search_reaches_the_lbfgs_optimum_in_fewer_evaluations(small_problem, monkeypatch):
    """evidence.maximise(method="newton") ends at an evidence no lower than L-BFGS's (less
    than 0.05 nats of total log evidence behind), at a minimum of the NLL with less than 0.05
    nats left to gain by Newton's own prediction, in fewer evaluations."""
    pb = small_problem
    suff = statistics.accumulate(pb.model, pb.x, pb.y, pb.g)
    groups = posterior.basis_groups(pb.model.config)
    st, h = evidence.Statistics(suff), pb.model.hyper
    n_obs = st.n_e + st.n_f
    calls = []
    for name in ("nll_and_grad", "nll_and_curvature"):
        real = getattr(evidence, name)
        monkeypatch.setattr(evidence, name, lambda *a, _real=real: calls.append(1) or _real(*a))
    ends = {}
    for method in ("lbfgs", "newton"):
        calls.clear()
        mult, ne, nf = evidence.maximise(suff, groups, float(h.noise_energy), float(h.noise_force),
                                         method=method)  # fmt: skip
        value, grad, _, hess = evidence._evaluate(np.log([*mult, ne, nf]), st, groups, True)
        np.linalg.cholesky(hess)  # raises unless positive definite: a minimum, not a saddle
        rest = 0.5 * grad @ np.linalg.solve(hess, grad)  # what Newton's method predicts is left
        ends[method] = (value * n_obs, rest * n_obs, len(calls))
    assert ends["newton"][0] <= ends["lbfgs"][0] + 0.05, ends
    assert ends["newton"][1] < 0.05, ends
    assert ends["newton"][2] < ends["lbfgs"][2], ends
