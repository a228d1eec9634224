"""Prediction from a fitted model: energies, forces and their standard deviations
(docs/method.md §11).

E = sigma phi^T mean + mu, F = -dE/dx (autodiff), Var = sigma^2 (||phi C||^2 + noise), with the
whitening by L = chol(K_zz) folded into the posterior once (Predictor). With a rank r
(Predictor.spectrum) the variance is bracketed instead of computed in full: the r leading
eigenpairs of the posterior covariance exactly, the rest bounded by the next eigenvalue
(docs/method.md §11), at O(r K) per output instead of O(K^2).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import NumericalError
from .basis import noise_vector, raw_rows, raw_value, soft_cholesky
from .config import Config
from .params import ForceGP, Hyper, Stats

#: Columns per block of the folded covariance (Predictor.cov).
COV_BLOCK = 256


def cov_blocks(k: int, m: int, block: int | None = None) -> tuple[tuple[int, int, int], ...]:
    """(first column, end column, rows) of each column block of the folded covariance
    [L C_w; C_e] (K x K): its first m rows are dense, the rest upper triangular (C = L_P^-T),
    so the block of columns [lo, hi) is zero below row max(m, hi)."""
    block = block or COV_BLOCK
    edges = [*range(0, k, block), k]
    return tuple((lo, hi, max(m, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True))


class Predictor(eqx.Module):
    """A fitted model folded for prediction: the whitening by L = chol(K_zz) is applied to the
    posterior once, so a structure costs only its own feature map (no M x M Cholesky per call).

    With phi = [w L, e] (DSoftKI weights w, explicit terms e: model.raw_value) and theta's
    posterior N(m, C C^T), C = inv_chol^T:
        E = phi . m = w . (L m_w) + e . m_e,
        Var = ||phi C||^2 = ||[w, e] [L C_w; C_e]||^2 = ||raw rows cov||^2,
    the same numbers as the whitened form, in the same float64 algebra. cov is kept as its
    nonzero column blocks (cov_blocks): C is triangular, so the rows' product with it takes
    about half the arithmetic and memory of the dense K x K one, with the same result.
    """

    config: Config = eqx.field(static=True)
    stats: Stats
    hyper: Hyper
    mean: jax.Array  # (K,) [L m_w; m_e]
    # The nonzero blocks cov[:rows, lo:hi] of [L C_w; C_e] (cov_blocks); None for a predictor
    # of energies and forces only, or one with a spectrum.
    cov: tuple[jax.Array, ...] | None
    # (vectors (K, r), values (r,), tail ()) : the r largest eigenpairs of S = cov cov^T and the
    # (r+1)-th eigenvalue, which bounds the rest (variance_bounds); None for the exact form.
    spectrum: tuple[jax.Array, jax.Array, jax.Array] | None = None


def predictor(model: ForceGP, with_std: bool = True, rank: int | None = None) -> Predictor:
    """The Predictor of a fitted model (traceable: call it inside or outside jit). ``rank``
    (static) keeps the posterior covariance as its ``rank`` leading eigenpairs and a bound on
    the rest (variance_bounds) instead of the full factor; None or rank >= K: exact."""
    cfg, h, post = model.config, model.hyper, model.posterior
    chol_zz = soft_cholesky(cfg, h)
    m = cfg.n_inducing

    def unwhiten(a):  # [L a_w; a_e] for a (K,) or (K, K): the whitening moved onto a
        return jnp.concatenate([chol_zz @ a[:m], a[m:]], axis=0)

    cov = spectrum = None
    if with_std:
        full = unwhiten(post.inv_chol.T)
        if rank is not None and rank < cfg.n_basis:
            spectrum = leading_spectrum(full, rank)
        else:
            cov = tuple(full[:rows, lo:hi] for lo, hi, rows in cov_blocks(cfg.n_basis, m))
    return Predictor(cfg, model.stats, h, unwhiten(post.mean), cov, spectrum)


def leading_spectrum(factor: jax.Array, rank: int):
    """(vectors (K, rank), values (rank,), tail ()): the ``rank`` largest eigenpairs of
    S = factor factor^T and its (rank+1)-th eigenvalue, from one symmetric eigendecomposition
    (O(K^3), once per predictor)."""
    values, vectors = jnp.linalg.eigh(factor @ factor.T)  # ascending
    values = jnp.maximum(values, 0.0)
    k = values.shape[0]
    return vectors[:, k - rank :], values[k - rank :], values[k - rank - 1]


def variance_bounds(pred: Predictor, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Lower and upper bounds on the posterior variances rows S rows^T of the outputs of rows
    (R, K), noise excluded. Exact form: both are ||rows cov||^2. With a spectrum (U, lam, t):
    with p = rows U, the leading part sum lam p^2 is a lower bound, and the rest, a sum over
    the other eigenvectors of eigenvalues at most t times squared projections that add up to
    ||rows||^2 - ||p||^2, is at most t (||rows||^2 - ||p||^2)."""
    if pred.spectrum is None:
        var = covariance_sq_norms(pred, rows)
        return var, var
    vectors, values, tail = pred.spectrum
    p = rows @ vectors
    lower = (p**2) @ values
    rest = jnp.maximum(jnp.sum(rows**2, axis=1) - jnp.sum(p**2, axis=1), 0.0)
    return lower, lower + tail * rest


def covariance_sq_norms(pred: Predictor, rows: jax.Array) -> jax.Array:
    """||rows cov||^2 per row of rows (R, K): the posterior variances of those rows' outputs.
    A block's row count (static under jit) says which leading columns of rows meet it."""
    return sum(jnp.sum((rows[:, : block.shape[0]] @ block) ** 2, axis=1) for block in pred.cov)


def predict_folded(pred: Predictor, x: jax.Array, with_std: bool = True, lower: bool = False):
    """Energy (eV), forces (N, 3, eV/Å) and, if asked (and pred has cov or a spectrum), their
    standard deviations for x (D,). With a spectrum the stds are upper bounds (never below the
    exact ones); ``lower`` appends the lower bounds (energy std, forces std) too."""
    stats, cfg, hyper = pred.stats, pred.config, pred.hyper
    e, grad = jax.value_and_grad(lambda y: raw_value(cfg, stats, hyper, y) @ pred.mean)(x)
    energy = stats.energy_scale * e + stats.energy_mean
    forces = (-stats.energy_scale * grad).reshape(cfg.n_atoms, 3)
    if not with_std:
        return energy, forces
    low, high = variance_bounds(pred, raw_rows(cfg, stats, hyper, x))
    noise = noise_vector(cfg, hyper)
    out = (energy, forces)
    for var in (high, low) if lower else (high,):
        std = stats.energy_scale * jnp.sqrt(var + noise)
        out = (*out, std[0], std[1:].reshape(cfg.n_atoms, 3))
    return out


def predict_one(model: ForceGP, x: jax.Array, with_std: bool = True):
    """Energy (eV), forces (N, 3, eV/Å) and, if asked, their standard deviations for x (D,).
    Folds the model on every call: for repeated calls build a predictor once."""
    return predict_folded(predictor(model, with_std), x, with_std)


#: predictor, compiled: predictions fold the model once for all their chunks (the K x K
#: covariance fold is O(K^3); per chunk it would cost more than the chunk's rows).
fold = eqx.filter_jit(predictor)


@eqx.filter_jit
def predict_batch(pred: Predictor, x, with_std: bool):
    return jax.vmap(lambda xi: predict_folded(pred, xi, with_std))(x)


def predict_in_chunks(model: ForceGP, positions: np.ndarray, *, with_std: bool, chunk: int) -> dict:
    """Predict for positions (n, N, 3) Å, ``chunk`` structures per compiled call (the caller
    sizes it: training.resources.chunk_for). Returns a dict of numpy arrays (eV, eV/Å)."""
    if model.posterior is None:
        raise NumericalError("the model has no fitted posterior; train it first")
    x = np.asarray(positions, dtype=np.float64).reshape(len(positions), -1)
    n = len(x)
    pred = fold(model, with_std)
    out: dict[str, list] = {"energy": [], "forces": [], "energy_std": [], "forces_std": []}
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk) % n  # pad the last chunk: one compiled shape
        res = predict_batch(pred, jnp.asarray(x[idx]), with_std)
        keep = min(chunk, n - start)
        for key, val in zip(out, res, strict=False):
            out[key].append(np.asarray(val)[:keep])
    return {k: np.concatenate(v) for k, v in out.items() if v}
