"""Soft kernel interpolation with local temperatures (DSoftKI, design note section 3).

    d_j(u) = sqrt(|| u / T_j - z_j ||^2 + eps^2),   w(u) = softmax(-d(u))

and the closed-form Jacobian dw/du = -w_j (G_j - sum_k w_k G_k), G_j = (u/T_j - z_j) / T_j / d_j.
Cost O(M p) per structure; tested against autodiff in tests/test_interpolation.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-6


def distances(u: jax.Array, z: jax.Array, temperature: jax.Array) -> tuple[jax.Array, jax.Array]:
    """u: (p,), z: (M, p), temperature: (M, p). Returns d (M,) and the scaled residual (M, p)."""
    resid = u[None, :] / temperature - z
    d = jnp.sqrt(jnp.sum(resid * resid, axis=-1) + EPS * EPS)
    return d, resid


def weights(u: jax.Array, z: jax.Array, temperature: jax.Array) -> jax.Array:
    """Interpolation weights w(u): (M,), non-negative, summing to one."""
    d, _ = distances(u, z, temperature)
    return jax.nn.softmax(-d)


def weights_and_jacobian(
    u: jax.Array, z: jax.Array, temperature: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """w(u) (M,) and dw/du (M, p) in closed form."""
    d, resid = distances(u, z, temperature)
    w = jax.nn.softmax(-d)
    g = resid / temperature / d[:, None]  # (M, p): d d_j / d u
    gbar = w @ g  # (p,)
    return w, -w[:, None] * (g - gbar[None, :])
