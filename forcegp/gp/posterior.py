"""The exact posterior of the basis weights, and the hyperparameter foldings that keep it exact
(docs/method.md §8-§10).

    P = I + A,  A = c^2 (A_e / beta_e^2 + A_f / beta_f^2),  mean = P^-1 b,  Cov(theta | data) = P^-1

from the streamed statistics (statistics.accumulate); the per-block scales and noise levels are
refined by the exact evidence of the whole training set (evidence.maximise) first.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import NumericalError
from . import evidence
from .config import NOISE_FLOOR, SCALE_FLOOR
from .params import ForceGP, Posterior, softplus_inv
from .statistics import Sufficient, accumulate


def solve(
    suff: Sufficient, noise_e, noise_f, *, scale=1.0, jitter_steps=(0.0, 1e-10, 1e-8, 1e-6)
) -> Posterior:
    """Posterior of theta (prior N(0, I), basis scaled by ``scale``); raises jitter on failure."""
    p, b = evidence.system(suff, scale, noise_e, noise_f)
    return solve_system(p, b, jitter_steps=jitter_steps)


def solve_system(p, b, *, jitter_steps=(0.0, 1e-10, 1e-8, 1e-6)) -> Posterior:
    """theta's posterior N(P^-1 b, P^-1) from the capacitance matrix P (K, K) and b (K,)."""
    eye = jnp.eye(p.shape[0], dtype=p.dtype)
    for i, jitter in enumerate(jitter_steps):
        chol = jnp.linalg.cholesky(p + jitter * jnp.mean(jnp.diag(p)) * eye)
        if bool(jnp.all(jnp.isfinite(chol))):
            if i > 0:
                warnings.warn(
                    f"posterior Cholesky needed jitter {jitter:g}; results are slightly regularised",
                    stacklevel=2,
                )
            inv_chol = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
            mean = inv_chol.T @ (inv_chol @ b)
            if not (bool(jnp.all(jnp.isfinite(mean))) and bool(jnp.all(jnp.isfinite(inv_chol)))):
                break
            return Posterior(mean=mean, inv_chol=inv_chol)
    raise NumericalError(
        "the posterior fit failed: the capacitance matrix is not positive definite even with "
        "jitter (check the data for duplicated or inconsistent frames, or lower `n_inducing`)"
    )


def refine_noise(suff: Sufficient, model: ForceGP):
    """Exact full-data maximum likelihood for the output scale c and both noise levels.

    The batch objective sees only small batches, which biases the noise levels; with the
    accumulated statistics the exact marginal likelihood of the whole training set costs one
    K x K Cholesky factorisation and inverse per evaluation (gp.evidence, L-BFGS-B with
    the closed-form gradient). Returns (scale, noise_e, noise_f).
    """
    h = model.hyper
    groups = np.zeros(suff.a_e.shape[0], dtype=np.int64)
    mult, noise_e, noise_f = evidence.maximise(suff, groups, float(h.noise_energy), float(h.noise_force))
    return float(mult[0]), noise_e, noise_f


#: Groups of basis_groups before the body-ordered invariants' own (one per element and order).
BODY_GROUP = 4


def n_groups(config) -> int:
    """Groups of basis_groups, empty ones included."""
    return BODY_GROUP + (3 * config.n_species if config.env_body4 else 0)


def basis_groups(config) -> np.ndarray:
    """Group of every basis column: 0 DSoftKI, 1 explicit pair/linear terms, 2 explicit products,
    3 the global pair powers of an "atomic" model (Config.pair_scaled), which lead its block;
    with env_body4, BODY_GROUP + 3 e + o for element e's invariants of body order o + 2, which
    take the products' place."""
    start = config.n_inducing
    groups = np.full(config.n_basis, 2, dtype=np.int64)
    groups[:start] = 0
    if config.pair_scaled:
        groups[start : start + config.n_explicit_pair] = 3
        start += config.n_explicit_pair
    if config.explicit != "none":
        groups[start : start + config.n_explicit_linear] = 1
        start += config.n_explicit_linear
    if config.body_block:
        body = BODY_GROUP + body_groups(config)
        groups[start : start + len(body)] = body
    return groups


def body_groups(config) -> np.ndarray:
    """Group 3 e + o of each column of the body-ordered block (element e's invariants of body
    order o + 2, in the block's order): BODY_GROUP less than its group in basis_groups."""
    return np.concatenate([
        np.full(size, 3 * e + o, dtype=np.int64)
        for e in range(config.n_species)
        for o, size in enumerate(config.body_orders)
    ])  # fmt: skip


def scaled_statistics(suff: Sufficient, mult) -> Sufficient:
    """Statistics of the basis whose column j is multiplied by mult[j]."""
    mult = jnp.asarray(mult)
    outer = mult[:, None] * mult[None]
    return eqx.tree_at(
        lambda s: (s.a_e, s.a_f, s.b_e, s.b_f),
        suff,
        (suff.a_e * outer, suff.a_f * outer, suff.b_e * mult, suff.b_f * mult),
    )


def refine_blocks(suff: Sufficient, model: ForceGP, **search):
    """Exact full-data maximum likelihood for one scale per block of basis functions (DSoftKI,
    explicit pair terms, explicit products) and both noise levels. search: evidence.maximise's
    search_groups (the groups of basis_groups whose scales are searched; default all, the
    others keep theirs), restart (its second start) and method. Returns
    (multipliers (G,), noise_e, noise_f); multiply the columns of group g by multipliers[g]."""
    h = model.hyper
    groups = basis_groups(model.config)
    return evidence.maximise(suff, groups, float(h.noise_energy), float(h.noise_force), **search)


def refined(suff: Sufficient, model: ForceGP, **search) -> tuple[ForceGP, Sufficient]:
    """The model with the block scales and noise levels of refine_blocks folded in, and the
    statistics of its (rescaled) basis, ready for solve with the new model's noise levels.
    search: refine_blocks's search_groups, restart and method."""
    mult, noise_e, noise_f = refine_blocks(suff, model, **search)
    model = with_multipliers(model, mult, noise_e, noise_f)
    return model, scaled_statistics(suff, np.asarray(mult)[basis_groups(model.config)])


def with_multipliers(model: ForceGP, mult, noise_e: float, noise_f: float) -> ForceGP:
    """Fold per-block basis multipliers (the groups of basis_groups: DSoftKI, explicit linear,
    explicit product, atomic pair powers, then the body-ordered groups) and new noise levels
    into the raw hyperparameters; the body-ordered groups' multipliers into their columns'
    scales (Stats.body_scale), absent ones taken as 1.

    Each new leaf keeps the dtype, shape and weak-typedness of the leaf it replaces, so what was
    compiled for the trained model (or a model loaded from file) is reused for the result.
    """
    mult = [float(v) for v in mult] + [1.0] * (BODY_GROUP - len(mult))
    model = _with_body_multipliers(model, mult[BODY_GROUP:])
    h = model.hyper
    inv = softplus_inv
    names = [
        "raw_scale",
        "raw_scale_linear",
        "raw_scale_quadratic",
        "raw_noise_energy",
        "raw_noise_force",
    ]
    values = [
        inv(max(float(h.scale) * mult[0] ** 2 - SCALE_FLOOR, 1e-12)),
        inv(max(float(h.scale_linear) * mult[1] - SCALE_FLOOR, 1e-12)),
        inv(max(float(h.scale_quadratic) * mult[2] - SCALE_FLOOR, 1e-12)),
        inv(max(noise_e - NOISE_FLOOR, 1e-12)),
        inv(max(noise_f - NOISE_FLOOR, 1e-12)),
    ]
    if h.raw_scale_pair is not None:
        names.append("raw_scale_pair")
        values.append(inv(max(float(h.scale_pair) * mult[3] - SCALE_FLOOR, 1e-12)))
    h = eqx.tree_at(
        lambda t: tuple(getattr(t, name) for name in names),
        h,
        tuple(jnp.full_like(getattr(h, name), v) for name, v in zip(names, values, strict=True)),
    )
    return eqx.tree_at(lambda m: m.hyper, model, h)


def _with_body_multipliers(model: ForceGP, mult) -> ForceGP:
    """The model whose body-ordered columns of group BODY_GROUP + g are multiplied by mult[g]."""
    if not model.config.env_body4 or not len(mult) or all(v == 1.0 for v in mult):
        return model
    cfg = model.config
    groups = body_groups(cfg)
    factor = np.ones(3 * cfg.n_species)
    factor[: len(mult)] = mult[: len(factor)]
    scale = model.stats.body_scale * jnp.asarray(factor[groups], dtype=model.stats.body_scale.dtype)
    return eqx.tree_at(lambda m: m.stats.body_scale, model, scale)


def with_amplitude(model: ForceGP, kappa: float) -> ForceGP:
    """The fitted GP with every prior scale and both noise levels multiplied by kappa.

    The posterior mean is unchanged and every predictive variance is multiplied by kappa^2
    (P = I + Phi^T Lam^-1 Phi is invariant; the mean of theta scales by 1/kappa). Exact: the
    result is the posterior of the GP with those hyperparameters, with no refit.
    """
    kappa = float(kappa)
    h = model.hyper
    out = with_multipliers(
        model,
        (kappa,) * n_groups(model.config),
        kappa * float(h.noise_energy),
        kappa * float(h.noise_force),
    )
    # The misfit variance ||phi misfit||^2 scales with the rows, by kappa^2 like the rest.
    post = Posterior(model.posterior.mean / kappa, model.posterior.inv_chol, model.posterior.misfit)
    return eqx.tree_at(lambda m: m.posterior, out, post)


def with_scale_and_noise(model: ForceGP, scale: float, noise_e: float, noise_f: float) -> ForceGP:
    """One output-scale multiplier for every block (see with_multipliers)."""
    return with_multipliers(model, (scale,) * n_groups(model.config), noise_e, noise_f)


def fit(model: ForceGP, x, y, g, *, refine: bool = True, search: dict | None = None, **kwargs):
    """Return the model with its posterior fitted on standardised data x (n, D), y (n,), g (n, D).

    With ``refine`` the scale of each block of basis functions and the noise levels are first
    set by the exact marginal likelihood of the whole training set (see refine_blocks, which
    takes ``search``: the groups searched, default all, and whether to restart); the basis
    functions are otherwise unchanged, so the statistics need one pass only. The result is the
    exact posterior of the final model.
    """
    suff = accumulate(model, x, y, g, **kwargs)
    if refine:
        model, suff = refined(suff, model, **(search or {}))
    post = solve(suff, model.hyper.noise_energy, model.hyper.noise_force)
    return eqx.tree_at(lambda m: m.posterior, model, post, is_leaf=lambda v: v is None)
