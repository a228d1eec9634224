"""Batch negative log marginal likelihood through the K x K capacitance matrix (docs/method.md §6).

For a minibatch with rows Phi (n, K) (prior theta ~ N(0, I)) and noise variances lam (n,):

    P = I + Phi^T Lam^-1 Phi,   L_P = chol(P)
    log|K~|       = 2 sum log diag L_P + sum log lam
    y^T K~^-1 y   = y^T Lam^-1 y - || L_P^-1 Phi^T Lam^-1 y ||^2
    loss          = (y^T K~^-1 y + log|K~| + n log 2 pi) / (2 n)

A failed Cholesky gives NaN, which the optimiser's finite-check turns into a skipped step.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .basis import noise_vector, raw_rows, soft_cholesky, whiten
from .params import ForceGP, Hyper


def capacitance_nll(phi: jax.Array, lam: jax.Array, t: jax.Array) -> jax.Array:
    """Mean negative log marginal likelihood of targets t (n,) under N(0, Phi Phi^T + diag lam)."""
    n, k = phi.shape
    scaled = phi / lam[:, None]
    p = jnp.eye(k, dtype=phi.dtype) + phi.T @ scaled
    chol = jnp.linalg.cholesky(p)
    proj = jax.scipy.linalg.solve_triangular(chol, scaled.T @ t, lower=True)
    quad = jnp.sum(t * t / lam) - jnp.sum(proj * proj)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diag(chol))) + jnp.sum(jnp.log(lam))
    return 0.5 * (quad + logdet + n * jnp.log(2.0 * jnp.pi)) / n


def dense_nll(phi: jax.Array, lam: jax.Array, t: jax.Array) -> jax.Array:
    """The same quantity from the dense n x n covariance (for tests on small problems)."""
    n = phi.shape[0]
    cov = phi @ phi.T + jnp.diag(lam)
    chol = jnp.linalg.cholesky(cov)
    a = jax.scipy.linalg.solve_triangular(chol, t, lower=True)
    return 0.5 * (a @ a + 2.0 * jnp.sum(jnp.log(jnp.diag(chol))) + n * jnp.log(2 * jnp.pi)) / n


def batch_rows(model: ForceGP, hyper: Hyper, x: jax.Array, rows_dtype=None) -> jax.Array:
    """Rows (B, 1+D, K) for a batch of structures x (B, D).

    rows_dtype: compute the unwhitened rows (the feature map: descriptor, deep kernel,
    interpolation weights and their gradients, the bulk of a step's work) in this precision,
    e.g. float32, from copies of the parameters. The Cholesky factor of K_zz and the whitening
    by it stay in the parameters' precision: K_zz is the one ill-conditioned piece of GP algebra
    in the rows (docs/ablation.md measures what float32 whitening costs).
    None: everything in the parameters' precision (the casts are then no-ops).
    """
    cfg = model.config
    dtype = x.dtype if rows_dtype is None else rows_dtype
    stats, low = cast(model.stats, dtype), cast(hyper, dtype)
    raw = jax.vmap(lambda xi: raw_rows(cfg, stats, low, xi))(x.astype(dtype))
    return whiten(cfg, soft_cholesky(cfg, hyper), raw.astype(x.dtype))


def targets(y: jax.Array, g: jax.Array) -> jax.Array:
    """Stack standardised energies (B,) and gradients (B, D) as (B, 1+D)."""
    return jnp.concatenate([y[:, None], g], axis=1)


def cast(tree, dtype):
    """``tree`` with its floating-point array leaves converted to dtype (differentiable)."""
    return jax.tree_util.tree_map(lambda v: v.astype(dtype) if eqx.is_inexact_array(v) else v, tree)


def batch_loss(hyper: Hyper, model: ForceGP, x: jax.Array, y: jax.Array, g: jax.Array, rows_dtype=None):
    """The training objective for a batch: x (B, D), y (B,), g (B, D) standardised.

    rows_dtype: the precision of the feature map (batch_rows); the likelihood is float64 and
    gradients flow back through the casts to the float64 parameters.
    """
    rows = batch_rows(model, hyper, x, rows_dtype)
    b, r, k = rows.shape
    lam = jnp.tile(noise_vector(model.config, hyper), b)
    return capacitance_nll(rows.reshape(b * r, k), lam, targets(y, g).reshape(-1))
