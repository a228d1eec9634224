"""Prediction from a fitted model: energies, forces and their standard deviations
(docs/method.md §11).

E = sigma phi^T mean + mu, F = -dE/dx (autodiff), Var = sigma^2 (||phi C||^2 + noise), with the
whitening by L = chol(K_zz) folded into the posterior once (Predictor); the noise is the constant
level plus, where the posterior has one, the input-dependent misfit ||phi misfit||^2 (gp.misfit).
With a sketch of s columns (Predictor.sketch) the posterior part of each variance is estimated
from a Gaussian random projection of the covariance factor instead (docs/method.md §11):
unbiased, its ratio to the exact value distributed as chi^2_s / s, at O(s K) per output instead
of O(K^2); with a misfit the projection covers the misfit too, so the sketched estimate and its
bound are those of the posterior variance plus the misfit, and only the constant level is added.
"""

from __future__ import annotations

import math
from statistics import NormalDist

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
    # of energies and forces only, or one with a sketch.
    cov: tuple[jax.Array, ...] | None
    # (K, s): [L C_w; C_e] G / sqrt(s), G a fixed standard normal (K, s) draw; None: exact.
    # With a misfit, the projection of [L C_w; C_e | misfit]: it carries the misfit as well.
    sketch: jax.Array | None = None
    # (K, s'): the posterior's misfit (gp.misfit) folded the same way; None: constant noise, or
    # carried by the sketch.
    misfit: jax.Array | None = None


def predictor(
    model: ForceGP, with_std: bool = True, sketch: int | None = None, seed: int = 0
) -> Predictor:
    """The Predictor of a fitted model (traceable: call it inside or outside jit). ``sketch``
    (static) keeps a random projection of the covariance factor with that many columns, drawn
    with ``seed``, instead of the factor itself (posterior_variances); None or >= K: exact."""
    cfg, h, post = model.config, model.hyper, model.posterior
    chol_zz = soft_cholesky(cfg, h)
    m = cfg.n_inducing

    def unwhiten(a):  # [L a_w; a_e] for a (K,) or (K, K): the whitening moved onto a
        return jnp.concatenate([chol_zz @ a[:m], a[m:]], axis=0)

    cov = projected = None
    misfit = unwhiten(post.misfit) if with_std and post.misfit is not None else None
    if with_std:
        full = unwhiten(post.inv_chol.T)
        if sketch is not None and sketch < cfg.n_basis:
            # ||rows [full, misfit]||^2 is the posterior variance plus the misfit noise: one
            # projection of the joined factor estimates both with one product per call.
            joined = full if misfit is None else jnp.concatenate([full, misfit], axis=1)
            projected, misfit = random_projection(joined, sketch, seed), None
        else:
            cov = tuple(full[:rows, lo:hi] for lo, hi, rows in cov_blocks(cfg.n_basis, m))
    return Predictor(cfg, model.stats, h, unwhiten(post.mean), cov, projected, misfit)


def random_projection(factor: jax.Array, columns: int, seed: int = 0) -> jax.Array:
    """factor G / sqrt(s) for factor (K, K'), G a (K', s) standard normal draw from ``seed``:
    for any row a, ||a factor G||^2 / s is an unbiased estimate of ||a factor||^2."""
    draw = jax.random.normal(jax.random.key(seed), (factor.shape[1], columns), factor.dtype)
    return factor @ draw / np.sqrt(columns)


#: Probability that a sketched variance's upper bound (posterior_variances) lies below the exact
#: posterior variance of one output.
SKETCH_MISS = 1e-3


def chi2_lower_quantile(dof: int, p: float) -> float:
    """The p-quantile of chi^2_dof / dof (Wilson-Hilferty; within 1% of the exact quantile for
    dof >= 30 and p >= 1e-4)."""
    c = 2.0 / (9.0 * dof)
    return max(1.0 - c + NormalDist().inv_cdf(p) * math.sqrt(c), 0.0) ** 3


def posterior_variances(pred: Predictor, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(estimate, upper bound) of the posterior variances rows S rows^T of the outputs of rows
    (R, K), noise excluded (a sketch of a model with a misfit includes the misfit). Exact form:
    both are ||rows cov||^2. With a sketch B = Q G / sqrt(s):
    the estimate ||rows B||^2 is unbiased, and for any one row its ratio to the exact variance
    is distributed as chi^2_s / s over the draw of G, so dividing by that ratio's SKETCH_MISS
    quantile gives a bound that the exact variance exceeds with probability SKETCH_MISS."""
    if pred.sketch is None:
        var = covariance_sq_norms(pred, rows)
        return var, var
    estimate = jnp.sum((rows @ pred.sketch) ** 2, axis=1)
    return estimate, estimate / chi2_lower_quantile(pred.sketch.shape[1], SKETCH_MISS)


def covariance_sq_norms(pred: Predictor, rows: jax.Array) -> jax.Array:
    """||rows cov||^2 per row of rows (R, K): the posterior variances of those rows' outputs.
    A block's row count (static under jit) says which leading columns of rows meet it."""
    return sum(jnp.sum((rows[:, : block.shape[0]] @ block) ** 2, axis=1) for block in pred.cov)


def predict_folded(pred: Predictor, x: jax.Array, with_std: bool = True, upper: bool = False):
    """Energy (eV), forces (N, 3, eV/Å) and, if asked (and pred has cov or a sketch), their
    standard deviations for x (D,). ``upper`` appends the upper bounds of the stds (energy,
    forces; posterior_variances): with a sketch, each exceeds the exact std but with
    probability SKETCH_MISS; exact, they equal the stds."""
    stats, cfg, hyper = pred.stats, pred.config, pred.hyper

    def scaled(e, grad):
        energy = stats.energy_scale * e + stats.energy_mean
        return energy, (-stats.energy_scale * grad).reshape(cfg.n_atoms, 3)

    if not with_std:
        return scaled(*jax.value_and_grad(lambda y: raw_value(cfg, stats, hyper, y) @ pred.mean)(x))
    # The rows are phi's value and gradient: the energy and forces are their product with the
    # mean, the same numbers as the autodiff path up to rounding, without a second pass.
    rows = raw_rows(cfg, stats, hyper, x)
    t = rows @ pred.mean
    energy, forces = scaled(t[0], t[1:])
    estimate, bound = posterior_variances(pred, rows)
    noise = noise_vector(cfg, hyper)
    if pred.misfit is not None:  # the input-dependent part of the noise (gp.misfit)
        noise = noise + jnp.sum((rows @ pred.misfit) ** 2, axis=1)
    out = (energy, forces)
    for var in (estimate, bound) if upper else (estimate,):
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
