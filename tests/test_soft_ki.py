"""Soft kernel interpolation and its base kernel: weights, closed-form Jacobian, Gram matrix
(docs/method.md §3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forcegp.gp import soft_ki


def random_problem(seed, m=7, p=4):
    rng = np.random.default_rng(seed)
    u = jnp.asarray(rng.normal(size=p))
    z = jnp.asarray(rng.normal(size=(m, p)))
    temperature = jnp.asarray(0.3 + 2.0 * rng.uniform(size=(m, p)))
    return u, z, temperature


@pytest.mark.parametrize("seed", range(4))
def test_weights_are_a_partition_of_unity(seed):
    u, z, t = random_problem(seed)
    w = soft_ki.weights(u * 5.0, z, t)
    assert w.shape == (z.shape[0],)
    assert bool(jnp.all(w >= 0.0))
    np.testing.assert_allclose(jnp.sum(w), 1.0, rtol=0, atol=1e-14)


def test_jacobian_rows_sum_to_zero():
    # sum_j w_j = 1 for every u, so sum_j dw_j/du = 0.
    u, z, t = random_problem(11)
    _, jac = soft_ki.weights_and_jacobian(u, z, t)
    np.testing.assert_allclose(jnp.sum(jac, axis=0), 0.0, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_jacobian_equals_autodiff(seed):
    u, z, t = random_problem(seed)
    w, jac = soft_ki.weights_and_jacobian(u, z, t)
    np.testing.assert_allclose(w, soft_ki.weights(u, z, t), rtol=1e-14, atol=1e-16)
    auto = jax.jacfwd(soft_ki.weights)(u, z, t)
    assert jac.shape == auto.shape == (z.shape[0], u.shape[0])
    np.testing.assert_allclose(jac, auto, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("offset", [0.0, 1e-12, 1e-9, 1e-6, 1e-4])
def test_jacobian_near_an_interpolation_point(offset):
    """u / T_j = z_j (+ offset): the safe norm keeps w and its gradient finite and exact."""
    _, z, t = random_problem(3)
    j = 2
    u = z[j] * t[j] + offset * jnp.arange(1.0, z.shape[1] + 1.0)
    w, jac = soft_ki.weights_and_jacobian(u, z, t)
    auto = jax.jacfwd(soft_ki.weights)(u, z, t)
    assert bool(jnp.all(jnp.isfinite(w))) and bool(jnp.all(jnp.isfinite(jac)))
    assert bool(jnp.all(jnp.isfinite(auto)))
    np.testing.assert_allclose(jac, auto, rtol=1e-8, atol=1e-12)
    # Reverse mode through the plain weights is finite as well.
    grad = jax.grad(lambda v: soft_ki.weights(v, z, t)[j])(u)
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(grad, jac[j], rtol=1e-8, atol=1e-12)


def test_jacobian_with_local_temperatures_differs_from_global():
    """The temperature enters the Jacobian as 1 / T_j: changing one T_j changes row j's chain."""
    u, z, t = random_problem(5)
    t2 = t.at[0].multiply(3.0)
    _, jac1 = soft_ki.weights_and_jacobian(u, z, t)
    _, jac2 = soft_ki.weights_and_jacobian(u, z, t2)
    np.testing.assert_allclose(jac2, jax.jacfwd(soft_ki.weights)(u, z, t2), rtol=1e-10, atol=1e-13)
    assert not np.allclose(jac1, jac2)


def random_points(seed, m=9, p=3):
    rng = np.random.default_rng(seed)
    z = jnp.asarray(rng.normal(size=(m, p)))
    lengthscale = jnp.asarray(0.5 + rng.uniform(size=p))
    return z, lengthscale, jnp.asarray(1.7)


@pytest.mark.parametrize("seed", range(3))
def test_gram_equals_pairwise_rbf_ard(seed):
    z, ell, s = random_points(seed)
    k = soft_ki.gram(z, ell, s)
    pairwise = jax.vmap(lambda a: jax.vmap(lambda b: soft_ki.rbf_ard(a, b, ell, s))(z))(z)
    np.testing.assert_allclose(k, pairwise, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jnp.diag(k), s, rtol=1e-14)


def test_rbf_ard_values():
    a, b = jnp.array([0.0, 1.0]), jnp.array([1.0, -1.0])
    ell, s = jnp.array([2.0, 0.5]), jnp.asarray(3.0)
    expected = 3.0 * np.exp(-0.5 * ((1.0 / 2.0) ** 2 + (2.0 / 0.5) ** 2))
    np.testing.assert_allclose(soft_ki.rbf_ard(a, b, ell, s), expected, rtol=1e-14)
    np.testing.assert_allclose(soft_ki.rbf_ard(a, a, ell, s), 3.0, rtol=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_gram_symmetric_positive_semidefinite(seed):
    z, ell, s = random_points(seed, m=20)
    k = np.asarray(soft_ki.gram(z, ell, s))
    np.testing.assert_array_equal(k, k.T)
    eig = np.linalg.eigvalsh(k)
    assert eig.min() > -1e-12 * eig.max()


@pytest.mark.parametrize("jitter", [1e-6, 1e-3])
def test_jittered_cholesky_reproduces_the_matrix(jitter):
    z, ell, s = random_points(7, m=12)
    k = soft_ki.gram(z, ell, s)
    chol = np.asarray(soft_ki.jittered_cholesky(k, jitter))
    assert np.all(np.isfinite(chol))
    np.testing.assert_array_equal(chol, np.tril(chol))
    assert np.all(np.diag(chol) > 0)
    target = np.asarray(k) + jitter * float(np.mean(np.diag(k))) * np.eye(12)
    np.testing.assert_allclose(chol @ chol.T, target, rtol=1e-12, atol=1e-13)


def test_jittered_cholesky_of_a_singular_gram():
    """Duplicated interpolation points make K_zz singular; the jitter keeps the factor finite."""
    z, ell, s = random_points(8, m=6)
    z = jnp.concatenate([z, z[:2]])
    k = soft_ki.gram(z, ell, s)
    chol = soft_ki.jittered_cholesky(k, 1e-6)
    assert bool(jnp.all(jnp.isfinite(chol)))
    np.testing.assert_allclose(chol @ chol.T, k + 1e-6 * s * jnp.eye(8), rtol=1e-10, atol=1e-12)
