"""Stagewise hyperparameter selection: the explicit block first, then DSoftKI on the residual
(docs/method.md §7).

The explicit block (pair and product terms of the descriptor) has only two scales. Its exact
posterior over the whole training set takes one pass and F x F solves, so we fit it first (its
two scales and the noise levels by the exact full-data marginal likelihood),
then train the DSoftKI block's hyperparameters by the batch marginal likelihood of the residual
(K = M instead of M + F per row: an order of magnitude cheaper per epoch). The final model is the
exact joint posterior of both blocks (posterior.fit), so only the way hyperparameters are chosen
differs from joint training, not the model.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..gp import evidence, posterior
from ..gp.basis import explicit_rows, explicit_value
from ..gp.params import ForceGP
from ..gp.statistics import Sufficient, accumulate_rows


@eqx.filter_jit
def _explicit_chunk(model: ForceGP, x):
    return jax.vmap(lambda xi: explicit_rows(model.config, model.stats, model.hyper, xi))(x)


@eqx.filter_jit
def _explicit_fitted(model: ForceGP, mean: jax.Array, x):
    """The explicit block's posterior mean energy and its gradient (C,), (C, D) at a chunk of
    structures x (C, D): one reverse-mode pass of phi(x) . mean, not the 1 + D rows."""

    def energy(xi):
        return explicit_value(model.config, model.stats, model.hyper, xi) @ mean

    return jax.vmap(jax.value_and_grad(energy))(x)


def _scale_leaves(model: ForceGP) -> tuple:
    """The leaves that explicit_prefit sets: the explicit block's scales."""
    h = model.hyper
    return h.raw_scale_linear, h.raw_scale_quadratic, h.raw_scale_pair, model.stats.body_scale


@dataclasses.dataclass(frozen=True)
class ExplicitStatistics:
    """The explicit block's sufficient statistics on the training data at the scales of the
    model explicit_prefit returned (``leaves``), for the final fit: its statistics' explicit
    x explicit block is this, so it accumulates only the DSoftKI columns' products."""

    suff: Sufficient
    leaves: tuple

    def for_model(self, model: ForceGP) -> Sufficient | None:
        """suff where ``model``'s explicit scales are still the prefit's (DSoftKI's training
        leaves them alone), else None."""
        now = _scale_leaves(model)
        same = all(
            (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
            for a, b in zip(self.leaves, now, strict=True)
        )
        return self.suff if same else None


def explicit_prefit(model: ForceGP, x: np.ndarray, y: np.ndarray, g: np.ndarray, *, chunk: int = 64):
    """Fit the explicit block alone; return (model with its scale/noise set, residual y, residual
    g, ExplicitStatistics or None without an explicit block). chunk: structures per compiled
    call (resources.choose_chunk's, as for the fit)."""
    if model.config.explicit == "none":
        return model, y, g, None
    rows = lambda xc: _explicit_chunk(model, xc)  # noqa: E731
    suff = accumulate_rows(rows, model.config.n_explicit, x, y, g, chunk=chunk)
    # The explicit columns' groups (linear terms, products, atomic pair powers, body-ordered
    # invariants per element and order) as the final refinement sees them; their scales and
    # both noise levels by the exact evidence of all data.
    groups = posterior.basis_groups(model.config)[model.config.n_inducing :] - 1
    h = model.hyper
    mult, noise_e, noise_f = evidence.maximise(
        suff, groups, float(h.noise_energy), float(h.noise_force), **prefit_search(model.config)
    )
    # Only the explicit block's scales change; DSoftKI keeps its own output scale.
    new = posterior.with_multipliers(model, [1.0, *mult], float(h.noise_energy), float(h.noise_force))
    model = eqx.tree_at(_scale_leaves, model, _scale_leaves(new), is_leaf=lambda v: v is None)
    scaled = posterior.scaled_statistics(suff, mult[groups])  # those of the new scales' rows
    del suff
    post = posterior.solve(scaled, noise_e, noise_f, scale=1.0)
    res_y, res_g = np.array(y, dtype=np.float64), np.array(g, dtype=np.float64)
    n = len(x)
    for start in range(0, n, chunk):
        keep = min(chunk, n - start)
        xc = jnp.asarray(x[np.arange(start, start + chunk) % n])
        value, grad = _explicit_fitted(model, post.mean, xc)
        res_y[start : start + keep] -= np.asarray(value)[:keep]
        res_g[start : start + keep] -= np.asarray(grad)[:keep]
    return model, res_y, res_g, ExplicitStatistics(scaled, _scale_leaves(model))


def prefit_search(config) -> dict:
    """How explicit_prefit searches the evidence (evidence.maximise's keywords): L-BFGS from
    two starts, or, with the body-ordered block (three scales per element, K in the
    thousands), Newton's method from one: on rMD17 ethanol it reached a higher evidence in
    several times less time (benchmarks/evidence_starts.py, docs/method.md §9)."""
    if config.env_body4:
        return {"method": "newton", "restart": False}
    return {}


def fit_search(config) -> dict:
    """How the final fit searches the evidence after explicit_prefit (posterior.fit's
    ``search``): every group's scale from two starts by L-BFGS, or, with the body-ordered block
    (three scales per element, K in the thousands, so about K^3 flops per evaluation),
    DSoftKI's scale and the noise levels only, from one start, by Newton's method: the
    explicit block keeps its prefit's scales, and DSoftKI's scale and the noise levels start
    where training on the residual left them, near the optimum. On rMD17 ethanol that search
    took 3 evaluations (30 s) where L-BFGS took 15 (109 s) and every group from two starts
    45 + 53, for the same test errors (benchmarks/fit_search.py, docs/method.md §9)."""
    if config.body_block:
        return {"search_groups": (0,), "restart": False, "method": "newton"}
    return {}


def soft_only(model: ForceGP) -> ForceGP:
    """The same model without the explicit block (for training DSoftKI on the residual)."""
    config = dataclasses.replace(model.config, explicit="none")
    return ForceGP(config, model.numbers, model.stats, model.hyper, None)
