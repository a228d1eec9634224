"""Batch marginal likelihood through the capacitance matrix (design note section 5)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forcegp.gp import likelihood
from forcegp.gp.basis import noise_vector

# Compiled once per shape and shared by the tests (eager execution of the model is slow).
loss_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(likelihood.batch_loss))
loss_jit = eqx.filter_jit(likelihood.batch_loss)
rows_jit = eqx.filter_jit(likelihood.batch_rows)
capacitance_nll = jax.jit(likelihood.capacitance_nll)
dense_nll = jax.jit(likelihood.dense_nll)


def random_problem(seed, n=30, k=7):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)), 0.01 + rng.uniform(size=n), rng.normal(size=n)


@pytest.mark.parametrize("seed", range(3))
def test_capacitance_nll_equals_dense(seed):
    phi, lam, t = random_problem(seed)
    cap = capacitance_nll(phi, lam, t)
    dense = dense_nll(phi, lam, t)
    np.testing.assert_allclose(cap, dense, rtol=1e-12)
    # And both equal the textbook Gaussian log density.
    cov = phi @ phi.T + np.diag(lam)
    _, logdet = np.linalg.slogdet(cov)
    quad = t @ np.linalg.solve(cov, t)
    np.testing.assert_allclose(cap, 0.5 * (quad + logdet + 30 * np.log(2 * np.pi)) / 30, rtol=1e-12)


def test_capacitance_nll_gradient_equals_dense():
    phi, lam, t = random_problem(9)
    g_cap = jax.jit(jax.grad(likelihood.capacitance_nll, argnums=(0, 1)))(phi, lam, t)
    g_dense = jax.jit(jax.grad(likelihood.dense_nll, argnums=(0, 1)))(phi, lam, t)
    for a, b in zip(g_cap, g_dense, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_batch_loss_equals_dense_on_explicit_rows(small_problem):
    pb = small_problem
    model, x = pb.model, jnp.asarray(pb.x[:4])
    y, g = jnp.asarray(pb.y[:4]), jnp.asarray(pb.g[:4])
    rows = rows_jit(model, model.hyper, x)
    b, r, k = rows.shape
    assert (b, r, k) == (4, 1 + model.config.dim, model.config.n_basis)
    lam = jnp.tile(noise_vector(model.config, model.hyper), b)
    t = likelihood.targets(y, g).reshape(-1)
    loss = loss_jit(model.hyper, model, x, y, g)
    np.testing.assert_allclose(loss, dense_nll(rows.reshape(-1, k), lam, t), rtol=1e-10)


def test_batch_loss_and_gradient_finite(small_problem):
    pb = small_problem
    loss, grads = loss_and_grad(
        pb.model.hyper,
        pb.model,
        jnp.asarray(pb.x[:4]),
        jnp.asarray(pb.y[:4]),
        jnp.asarray(pb.g[:4]),
    )
    assert np.isfinite(float(loss))
    leaves = [v for v in jax.tree_util.tree_leaves(grads) if eqx.is_inexact_array(v)]
    assert leaves
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in leaves)
    # Every group of trainable parameters gets a gradient signal.
    for name in (
        "z",
        "raw_temperature",
        "raw_lengthscale",
        "raw_scale",
        "raw_noise_energy",
        "raw_noise_force",
        "raw_scale_linear",
        "raw_scale_quadratic",
    ):
        assert float(jnp.max(jnp.abs(getattr(grads, name)))) > 0.0, name
    mlp_leaves = [v for v in jax.tree_util.tree_leaves(grads.mlp) if eqx.is_inexact_array(v)]
    assert any(float(jnp.max(jnp.abs(v))) > 0 for v in mlp_leaves)


def test_float32_rows_match_float64_near_singular_kzz(small_problem):
    """precision=float32 computes the feature map in float32 but K_zz's Cholesky factor and the
    whitening in float64: with inducing points bunched within 1e-3 length scales of each other
    (K_zz at the jitter's condition limit), the loss and every hyperparameter's gradient still
    agree with the all-float64 rows, and the rows stay float64 for the likelihood."""
    pb = small_problem
    model = pb.model
    h = model.hyper
    rng = np.random.default_rng(3)
    z = h.z[0] + 1e-3 * h.lengthscale * rng.normal(size=h.z.shape)
    h = eqx.tree_at(lambda t: t.z, h, jnp.asarray(z))
    x = jnp.asarray(pb.test_positions.reshape(len(pb.test_positions), -1))
    y, g = jnp.asarray(rng.normal(size=len(x))), jnp.asarray(rng.normal(size=x.shape))
    rows32 = rows_jit(model, h, x, jnp.float32)
    assert rows32.dtype == jnp.float64
    rows64 = rows_jit(model, h, x)
    np.testing.assert_allclose(rows32, rows64, atol=1e-5 * float(jnp.max(jnp.abs(rows64))))
    loss64, grad64 = loss_and_grad(h, model, x, y, g)
    loss32, grad32 = loss_and_grad(h, model, x, y, g, jnp.float32)
    np.testing.assert_allclose(loss32, loss64, rtol=1e-6)
    for name in ("z", "raw_temperature", "raw_lengthscale", "raw_scale", "raw_noise_force"):
        a, b = getattr(grad64, name), getattr(grad32, name)
        # float32 rounding of an O(1) loss: 1e-6 absolute for gradients that are nearly zero.
        tol = 2e-3 * float(jnp.max(jnp.abs(a))) + 1e-6
        np.testing.assert_allclose(b, a, atol=tol, err_msg=name)


PARAMETERS = {
    "raw_noise_energy": lambda h: h.raw_noise_energy,
    "raw_noise_force": lambda h: h.raw_noise_force,
    "raw_scale": lambda h: h.raw_scale,
    "raw_scale_quadratic": lambda h: h.raw_scale_quadratic,
    "raw_lengthscale[1]": lambda h: h.raw_lengthscale,
    "raw_temperature[2,0]": lambda h: h.raw_temperature,
    "z[3,2]": lambda h: h.z,
}
INDEX = {"raw_lengthscale[1]": (1,), "raw_temperature[2,0]": (2, 0), "z[3,2]": (3, 2)}


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_batch_loss_gradient_matches_finite_differences(small_problem, name):
    pb = small_problem
    model = pb.model
    x, y, g = (jnp.asarray(a[:4]) for a in (pb.x, pb.y, pb.g))
    where = PARAMETERS[name]
    index = INDEX.get(name, ())

    def shifted(delta):
        return eqx.tree_at(where, model.hyper, where(model.hyper).at[index].add(delta))

    _, grads = loss_and_grad(model.hyper, model, x, y, g)
    analytic = float(where(grads)[index])
    h = 1e-5
    numeric = (
        float(loss_jit(shifted(h), model, x, y, g)) - float(loss_jit(shifted(-h), model, x, y, g))
    ) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)
