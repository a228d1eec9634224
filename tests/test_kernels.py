"""Base kernel on the interpolation points (design note section 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forcegp import kernels


def random_points(seed, m=9, p=3):
    rng = np.random.default_rng(seed)
    z = jnp.asarray(rng.normal(size=(m, p)))
    lengthscale = jnp.asarray(0.5 + rng.uniform(size=p))
    return z, lengthscale, jnp.asarray(1.7)


@pytest.mark.parametrize("seed", range(3))
def test_gram_equals_pairwise_rbf_ard(seed):
    z, ell, s = random_points(seed)
    k = kernels.gram(z, ell, s)
    pairwise = jax.vmap(lambda a: jax.vmap(lambda b: kernels.rbf_ard(a, b, ell, s))(z))(z)
    np.testing.assert_allclose(k, pairwise, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jnp.diag(k), s, rtol=1e-14)


def test_rbf_ard_values():
    a, b = jnp.array([0.0, 1.0]), jnp.array([1.0, -1.0])
    ell, s = jnp.array([2.0, 0.5]), jnp.asarray(3.0)
    expected = 3.0 * np.exp(-0.5 * ((1.0 / 2.0) ** 2 + (2.0 / 0.5) ** 2))
    np.testing.assert_allclose(kernels.rbf_ard(a, b, ell, s), expected, rtol=1e-14)
    np.testing.assert_allclose(kernels.rbf_ard(a, a, ell, s), 3.0, rtol=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_gram_symmetric_positive_semidefinite(seed):
    z, ell, s = random_points(seed, m=20)
    k = np.asarray(kernels.gram(z, ell, s))
    np.testing.assert_array_equal(k, k.T)
    eig = np.linalg.eigvalsh(k)
    assert eig.min() > -1e-12 * eig.max()


@pytest.mark.parametrize("jitter", [1e-6, 1e-3])
def test_jittered_cholesky_reproduces_the_matrix(jitter):
    z, ell, s = random_points(7, m=12)
    k = kernels.gram(z, ell, s)
    chol = np.asarray(kernels.jittered_cholesky(k, jitter))
    assert np.all(np.isfinite(chol))
    np.testing.assert_array_equal(chol, np.tril(chol))
    assert np.all(np.diag(chol) > 0)
    target = np.asarray(k) + jitter * float(np.mean(np.diag(k))) * np.eye(12)
    np.testing.assert_allclose(chol @ chol.T, target, rtol=1e-12, atol=1e-13)


def test_jittered_cholesky_of_a_singular_gram():
    """Duplicated interpolation points make K_zz singular; the jitter keeps the factor finite."""
    z, ell, s = random_points(8, m=6)
    z = jnp.concatenate([z, z[:2]])
    k = kernels.gram(z, ell, s)
    chol = kernels.jittered_cholesky(k, 1e-6)
    assert bool(jnp.all(jnp.isfinite(chol)))
    np.testing.assert_allclose(chol @ chol.T, k + 1e-6 * s * jnp.eye(8), rtol=1e-10, atol=1e-12)
