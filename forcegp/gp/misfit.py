"""Input-dependent noise: the misfit of a finite basis, larger where the training data constrain
the model less (docs/method.md §15).

A model of K basis functions fits its training data only up to a misfit, which the noise levels
absorb. A constant noise level gives the same misfit to a structure like the training ones and
to one far from them, so off the training distribution the std grows far less than the error.
Here an output (the energy or one force component) with basis row phi gets the noise variance

    lam + gamma u(x),   u(x) = ||phi B||^2,   B = C0 G / sqrt(s),

lam the constant noise variance (basis.noise_vector), C0 C0^T the posterior covariance of theta
under lam alone (the fit before this one) and G a fixed (K, s) standard normal draw. u(x) is an
unbiased estimate of the output's posterior variance in that fit: small where the training data
pin the model down, large where they do not. It is a fixed function of x, so the model stays one
exact GP, with heteroscedastic noise: the posterior is refitted with these noise variances, and
every prediction adds gamma u(x) to the variance of each output. Posterior.misfit holds
sqrt(gamma) B.

gamma is chosen from GRID (or 0, the constant noise) by the Gaussian likelihood of held-out data
(training.pipeline); one pass over the training data accumulates the capacitance matrices of
every candidate (systems).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .basis import noise_vector, soft_cholesky
from .params import ForceGP, Posterior
from .predict import random_projection
from .statistics import chunk_rows, device_mesh, gram, stream, without_posterior

#: The candidate values of gamma (besides 0), one capacitance matrix each in the pass.
GRID = (10.0, 30.0, 100.0, 300.0)
#: Columns s of the projection B.
COLUMNS = 128


def projection(model: ForceGP, columns: int = COLUMNS, seed: int = 0) -> jax.Array:
    """B = C0 G / sqrt(s) (K, s) of the model's (constant-noise) posterior, C0 = inv_chol^T."""
    return random_projection(model.posterior.inv_chol.T, columns, seed)


@jax.jit
def _add_chunk(lam, proj, gammas, acc, rows, t, mask):
    """Add one chunk's rows (C, R, K) to acc = (p (n_dev, G, K, K), b (n_dev, G, K)): sum of
    phi^T phi / nu and phi^T t / nu over the rows, nu = lam + gamma u(x) for each candidate."""
    p, b = acc
    n_dev = p.shape[0]
    c, r, k = rows.shape
    u = jnp.sum((rows @ proj) ** 2, axis=2)  # (C, R)
    rows = rows.reshape(n_dev, c // n_dev, r, k)
    t = (t * mask[:, None]).reshape(n_dev, c // n_dev, r)
    mask = mask.reshape(n_dev, c // n_dev, 1)
    u = u.reshape(n_dev, c // n_dev, r)
    new_p, new_b = [], []
    for i in range(gammas.shape[0]):
        w = mask / (lam + gammas[i] * u)  # (n_dev, c, R)
        scaled = rows * jnp.sqrt(w)[..., None]
        new_p.append(jax.vmap(gram)(scaled))
        new_b.append(jnp.einsum("dcrk,dcr->dk", rows, w * t))
    return p + jnp.stack(new_p, axis=1), b + jnp.stack(new_b, axis=1)


def systems(
    model: ForceGP,
    proj: jax.Array,
    gammas,
    x: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    *,
    chunk: int = 64,
    mesh: Mesh | None = None,
    progress=None,
) -> tuple[jax.Array, jax.Array]:
    """The capacitance matrices P = I + Phi^T Nu^-1 Phi (G, K, K) and b = Phi^T Nu^-1 t (G, K)
    of every candidate gamma, Nu = diag(lam + gamma u(x)), in one streamed pass over the
    standardised training data x (n, D), y (n,), g (n, D)."""
    k = model.config.n_basis
    gammas = jnp.asarray(gammas, dtype=jnp.float64)
    n_g = gammas.shape[0]

    def zeros(n_dev):
        return jnp.zeros((n_dev, n_g, k, k)), jnp.zeros((n_dev, n_g, k))

    # The rows as the fit computes them (statistics.chunk_rows: the same compiled function);
    # the candidates' inputs replicated over the mesh.
    mesh = mesh or device_mesh(jax.devices()[:1])
    base = without_posterior(model)
    chol_zz = soft_cholesky(model.config, model.hyper)
    lam = noise_vector(model.config, model.hyper)
    lam, proj, gammas = jax.device_put((lam, proj, gammas), NamedSharding(mesh, PartitionSpec()))

    def step(acc, xc, tc, mc):
        return _add_chunk(lam, proj, gammas, acc, chunk_rows(base, chol_zz, xc), tc, mc)

    p, b = stream(zeros, step, x, y, g, chunk=chunk, mesh=mesh, progress=progress)
    p = 0.5 * (p + jnp.swapaxes(p, 1, 2)) + jnp.eye(k, dtype=p.dtype)
    return p, b


def with_misfit(model: ForceGP, post: Posterior, proj: jax.Array, gamma: float) -> ForceGP:
    """The model with ``post`` (the posterior fitted with this noise) and misfit sqrt(gamma) B."""
    post = Posterior(post.mean, post.inv_chol, float(np.sqrt(gamma)) * proj)
    return eqx.tree_at(lambda m: m.posterior, model, post, is_leaf=lambda v: v is None)
