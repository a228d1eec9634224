"""Soft interpolation weights and their closed-form Jacobian (design note section 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forcegp import interpolation


def random_problem(seed, m=7, p=4):
    rng = np.random.default_rng(seed)
    u = jnp.asarray(rng.normal(size=p))
    z = jnp.asarray(rng.normal(size=(m, p)))
    temperature = jnp.asarray(0.3 + 2.0 * rng.uniform(size=(m, p)))
    return u, z, temperature


@pytest.mark.parametrize("seed", range(4))
def test_weights_are_a_partition_of_unity(seed):
    u, z, t = random_problem(seed)
    w = interpolation.weights(u * 5.0, z, t)
    assert w.shape == (z.shape[0],)
    assert bool(jnp.all(w >= 0.0))
    np.testing.assert_allclose(jnp.sum(w), 1.0, rtol=0, atol=1e-14)


def test_jacobian_rows_sum_to_zero():
    # sum_j w_j = 1 for every u, so sum_j dw_j/du = 0.
    u, z, t = random_problem(11)
    _, jac = interpolation.weights_and_jacobian(u, z, t)
    np.testing.assert_allclose(jnp.sum(jac, axis=0), 0.0, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_jacobian_equals_autodiff(seed):
    u, z, t = random_problem(seed)
    w, jac = interpolation.weights_and_jacobian(u, z, t)
    np.testing.assert_allclose(w, interpolation.weights(u, z, t), rtol=1e-14, atol=1e-16)
    auto = jax.jacfwd(interpolation.weights)(u, z, t)
    assert jac.shape == auto.shape == (z.shape[0], u.shape[0])
    np.testing.assert_allclose(jac, auto, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("offset", [0.0, 1e-12, 1e-9, 1e-6, 1e-4])
def test_jacobian_near_an_interpolation_point(offset):
    """u / T_j = z_j (+ offset): the safe norm keeps w and its gradient finite and exact."""
    _, z, t = random_problem(3)
    j = 2
    u = z[j] * t[j] + offset * jnp.arange(1.0, z.shape[1] + 1.0)
    w, jac = interpolation.weights_and_jacobian(u, z, t)
    auto = jax.jacfwd(interpolation.weights)(u, z, t)
    assert bool(jnp.all(jnp.isfinite(w))) and bool(jnp.all(jnp.isfinite(jac)))
    assert bool(jnp.all(jnp.isfinite(auto)))
    np.testing.assert_allclose(jac, auto, rtol=1e-8, atol=1e-12)
    # Reverse mode through the plain weights is finite as well.
    grad = jax.grad(lambda v: interpolation.weights(v, z, t)[j])(u)
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(grad, jac[j], rtol=1e-8, atol=1e-12)


def test_jacobian_with_local_temperatures_differs_from_global():
    """The temperature enters the Jacobian as 1 / T_j: changing one T_j changes row j's chain."""
    u, z, t = random_problem(5)
    t2 = t.at[0].multiply(3.0)
    _, jac1 = interpolation.weights_and_jacobian(u, z, t)
    _, jac2 = interpolation.weights_and_jacobian(u, z, t2)
    np.testing.assert_allclose(
        jac2, jax.jacfwd(interpolation.weights)(u, z, t2), rtol=1e-10, atol=1e-13
    )
    assert not np.allclose(jac1, jac2)
