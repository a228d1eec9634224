"""The basis phi(x) of the one GP, f(x) = phi(x)^T theta, theta ~ N(0, I) (docs/method.md §2-§5).

phi(x) (K,) concatenates whitened blocks of basis functions:
  * the DSoftKI block, L^T w(u(x)) with L = chol(K_zz) (§3);
  * optionally the explicit block (explicit.py, §4).
Optionally the whole map is averaged over the atom permutations of the molecular graph
(§5): f_sym(x) = mean_pi f(pi x), again a GP of the same form.

Observation rows for one structure are the value row phi(x)^T and the D gradient rows
d phi / d x, computed with the closed-form interpolation Jacobian. Energies are standardised,
y = (E - mu) / sigma, gradients g = -F / sigma (same sigma, §1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import soft_ki
from .config import Config
from .explicit import explicit_block_rows, explicit_terms
from .features import copies, copies_and_jacobian
from .params import Hyper, Stats


def soft_cholesky(config: Config, hyper: Hyper) -> jax.Array:
    k = soft_ki.gram(hyper.z, hyper.lengthscale, hyper.scale)
    return soft_ki.jittered_cholesky(k, config.jitter)


def _soft_rows(hyper: Hyper, v: jax.Array, jac) -> jax.Array:
    """Unwhitened DSoftKI rows (1+D, M): interpolation weights and their gradients, averaged over
    the copies v (n, P). The deep kernel's first product W v starts from the Jacobian's tangent
    rows (n, D', width) (without an MLP those of v itself), D' = D or, for an atom, its slots'
    coordinates; jac.contract sums the copies' gradients into the structure's D rows."""
    w0 = hyper.mlp.first_weight().T if hyper.mlp is not None else None
    tangents = jac.local_tangents(w0)

    def one(vc, tc):
        if hyper.mlp is not None:
            u, du = hyper.mlp.after_first_product(vc, tc)  # (du/dx)^T (D', p), forward mode
        else:
            u, du = vc, tc
        w, dw_du = soft_ki.weights_and_jacobian(u, hyper.z, hyper.temperature)
        return w, du, dw_du

    # Tangents as rows (n, D', .): the MLP's layer products then need no transposes.
    w, du, dw_du = jax.vmap(one)(v, tangents)  # (n, M), (n, D', p), (n, M, p)
    grad = jac.contract(du, dw_du) / v.shape[0]
    return jnp.concatenate([jnp.mean(w, axis=0)[None], grad], axis=0)


def raw_rows(config: Config, stats: Stats, hyper: Hyper, x: jax.Array) -> jax.Array:
    """basis_rows before whitening: the interpolation weights themselves in the first M columns.

    On inverse distances dv/dx (P x 3N per copy, six nonzero entries a row) is not formed: the
    deep kernel's tangents start from the sparse pair Jacobian (O(N^2) per copy and feature)
    and the explicit block's terms are scatters of pair gradients (PairJacobian); on atomic
    environments from each atom's local blocks (AtomJacobian). Without an MLP, the DSoftKI
    block of the global descriptors needs dv/dx itself."""
    v, jac = copies_and_jacobian(config, stats, x, dense=hyper.mlp is None)
    rows = _soft_rows(hyper, v, jac)
    if config.explicit != "none":
        rows = jnp.concatenate([rows, explicit_block_rows(config, stats, hyper, v, jac, x)], axis=1)
    return rows


def whiten(config: Config, chol_zz, rows: jax.Array) -> jax.Array:
    """Whiten the DSoftKI columns (the first M) of rows (..., K) by L = chol(K_zz)."""
    m = config.n_inducing
    soft = rows[..., :m] @ chol_zz
    return soft if config.explicit == "none" else jnp.concatenate([soft, rows[..., m:]], axis=-1)


def basis_rows(config: Config, stats: Stats, hyper: Hyper, chol_zz, x: jax.Array) -> jax.Array:
    """Value and gradient rows (1+D, K) of phi at one structure x (D,), symmetrised if configured.

    The symmetrised rows are the mean over permutations of the unwhitened rows, whitened once
    (whitening is linear, and it is the largest per-permutation cost otherwise).
    """
    return whiten(config, chol_zz, raw_rows(config, stats, hyper, x))


def raw_value(config: Config, stats: Stats, hyper: Hyper, x: jax.Array) -> jax.Array:
    """basis_value before whitening (K,): the interpolation weights in the first M entries."""
    v, _ = copies(config, stats, x, jacobian=False)

    def soft_one(vc):
        u = hyper.mlp(vc) if hyper.mlp is not None else vc
        return soft_ki.weights(u, hyper.z, hyper.temperature)

    value = jnp.mean(jax.vmap(soft_one)(v), axis=0)
    if config.explicit != "none":
        value = jnp.concatenate([value, explicit_terms(config, stats, hyper, v, x=x)[0]])
    return value


def basis_value(config: Config, stats: Stats, hyper: Hyper, chol_zz, x: jax.Array) -> jax.Array:
    """phi(x) (K,) alone: the energy path, differentiated by autodiff for forces."""
    return whiten(config, chol_zz, raw_value(config, stats, hyper, x))


def noise_vector(config: Config, hyper: Hyper) -> jax.Array:
    """Noise variances (1+D,) for one structure's value and gradient rows."""
    d = config.dim
    return jnp.concatenate([hyper.noise_energy[None] ** 2, jnp.full((d,), hyper.noise_force**2)])


def explicit_value(config: Config, stats: Stats, hyper: Hyper, x: jax.Array) -> jax.Array:
    """The explicit block's values (F,) alone at one structure x (D,): raw_value's explicit
    part, whose gradient by autodiff gives explicit_rows' gradient rows."""
    v, _ = copies(config, stats, x, jacobian=False)
    return explicit_terms(config, stats, hyper, v, x=x)[0]


def explicit_rows(config: Config, stats: Stats, hyper: Hyper, x: jax.Array) -> jax.Array:
    """Rows (1+D, F) of the explicit block alone at one structure (symmetrised if configured)."""
    v, jac = copies_and_jacobian(config, stats, x, dense=False)
    return explicit_block_rows(config, stats, hyper, v, jac, x)
