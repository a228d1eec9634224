"""Stagewise hyperparameter selection: the explicit block first, then DSoftKI on the residual.

The explicit block (linear and product terms of the descriptor) has only two scales. Its exact
posterior over the whole training set takes one pass and one F x F solve, so we fit it first,
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

from . import posterior
from .model import ForceGP, explicit_rows


@eqx.filter_jit
def _explicit_chunk(model: ForceGP, x):
    return jax.vmap(lambda xi: explicit_rows(model.config, model.stats, model.hyper, xi))(x)


def _rows_in_chunks(model: ForceGP, x: np.ndarray, chunk: int = 64):
    n = len(x)
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk) % n
        keep = min(chunk, n - start)
        yield start, keep, _explicit_chunk(model, jnp.asarray(x[idx]))[:keep]


def explicit_prefit(model: ForceGP, x: np.ndarray, y: np.ndarray, g: np.ndarray):
    """Fit the explicit block alone; return (model with its scale/noise set, residual y, residual g)."""
    if model.config.explicit == "none":
        return model, y, g
    f = model.config.n_explicit
    zero = jnp.zeros(())
    suff = posterior.Sufficient(
        jnp.zeros((f, f)), jnp.zeros((f, f)), jnp.zeros(f), jnp.zeros(f), zero, zero, zero, zero
    )
    for start, keep, rows in _rows_in_chunks(model, x):
        ve, vf = rows[:, 0], rows[:, 1:]
        ye, gf = jnp.asarray(y[start : start + keep]), jnp.asarray(g[start : start + keep])
        suff = posterior.Sufficient(
            suff.a_e + ve.T @ ve,
            suff.a_f + jnp.einsum("cik,cil->kl", vf, vf),
            suff.b_e + ve.T @ ye,
            suff.b_f + jnp.einsum("cik,ci->k", vf, gf),
            suff.tt_e + ye @ ye,
            suff.tt_f + jnp.sum(gf * gf),
            suff.n_e + keep,
            suff.n_f + keep * vf.shape[1],
        )
    scale, noise_e, noise_f = posterior.refine_noise(suff, model)
    # Only the explicit block's scales take the multiplier; DSoftKI keeps its own output scale.
    h = model.hyper
    inv = posterior.softplus_inv
    model = eqx.tree_at(
        lambda m: (m.hyper.raw_scale_linear, m.hyper.raw_scale_quadratic),
        model,
        (
            jnp.asarray(inv(float(h.scale_linear) * scale)),
            jnp.asarray(inv(float(h.scale_quadratic) * scale)),
        ),
    )
    post = posterior.solve(suff, noise_e, noise_f, scale=1.0)
    res_y, res_g = np.array(y, dtype=np.float64), np.array(g, dtype=np.float64)
    for start, keep, rows in _rows_in_chunks(model, x):
        pred = np.asarray(rows @ post.mean)
        res_y[start : start + keep] -= pred[:, 0]
        res_g[start : start + keep] -= pred[:, 1:]
    return model, res_y, res_g


def soft_only(model: ForceGP) -> ForceGP:
    """The same model without the explicit block (for training DSoftKI on the residual)."""
    config = dataclasses.replace(model.config, explicit="none")
    return ForceGP(config, model.numbers, model.stats, model.hyper, None)
