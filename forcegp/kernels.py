"""Base kernel on the interpolation points (design note section 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rbf_ard(z1: jax.Array, z2: jax.Array, lengthscale: jax.Array, scale: jax.Array) -> jax.Array:
    """k(z, z') = scale * exp(-0.5 ||(z - z') / l||^2) for one pair of points (p,), (p,)."""
    r = (z1 - z2) / lengthscale
    return scale * jnp.exp(-0.5 * jnp.sum(r * r))


def gram(z: jax.Array, lengthscale: jax.Array, scale: jax.Array) -> jax.Array:
    """K_zz (M, M) for points z (M, p)."""
    zs = z / lengthscale
    sq = jnp.sum(zs * zs, axis=-1)
    r2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * zs @ zs.T, 0.0)
    return scale * jnp.exp(-0.5 * r2)


def jittered_cholesky(k: jax.Array, jitter: float) -> jax.Array:
    """Lower Cholesky factor of k + jitter * mean(diag k) * I."""
    m = k.shape[0]
    eye = jnp.eye(m, dtype=k.dtype)
    return jnp.linalg.cholesky(k + jitter * jnp.mean(jnp.diag(k)) * eye)
