"""The explicit block: an exact low-rank GP on fixed polynomial features of the standardised
inverse distances, in the same capacitance matrix as the DSoftKI block (docs/method.md §4).

Every term is a product of at most three descriptor factors, so its gradient is written out by
the product rule as a combination of rows of dv/dx (features.DenseJacobian or PairJacobian).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import body_order, descriptors, environment


def _cubic_index(c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index triples i <= j <= k < c of the cubic terms."""
    idx = np.array([(i, j, k) for i in range(c) for j in range(i, c) for k in range(j, c)])
    idx = idx.reshape(-1, 3).astype(np.int32)
    return idx[:, 0], idx[:, 1], idx[:, 2]


def explicit_terms(config, stats, hyper, v, jac=None, x=None):
    """Values (F,) of the explicit block averaged over the copies v (C, P) of a structure and,
    given the copies' Jacobian jac (features.DenseJacobian or PairJacobian), their gradients (F, D);
    (values, None) without it (the energy path, differentiated by autodiff).

    Every term is a product of at most three factors, so its gradient is written out (product
    rule) as a combination of rows of dv/dx: no autodiff through the feature map. The mean over
    copies is taken inside each product-rule term, so no (F, D) array is made per copy.
    """
    if config.descriptor == "atomic":
        return atomic_terms(config, stats, hyper, v, jac, x)
    n = v.shape[0]
    q = config.explicit_q
    with_grad = jac is not None
    a = v @ stats.projection  # (C, q)
    da = jac.project(stats.projection) if with_grad else None  # (C, D, q)
    values, grads = [], []

    def add(scale, value, grad):
        values.append(scale * jnp.mean(value, axis=0))
        if with_grad:
            grads.append(scale * grad())

    if config.explicit == "quadratic":
        add(hyper.scale_linear, a, lambda: jnp.mean(da, axis=0).T)
    else:
        for k in range(1, config.pair_powers + 1):
            add(hyper.scale_linear, v**k, lambda k=k: jac.combine((k * v ** (k - 1))[..., None]))
        la, lb = stats.local_pairs[:, 0], stats.local_pairs[:, 1]
        add(
            hyper.scale_quadratic,
            v[:, la] * v[:, lb],
            lambda: jac.combine(jnp.stack([v[:, lb], v[:, la]], axis=-1), jnp.stack([la, lb], axis=-1)),
        )
    # Products of PCA components: the copy means of a_i da_j and a_i a_j da_k for all index
    # tuples are matrix products over the copy axis, gathered afterwards.
    iu, ju = np.triu_indices(q)

    def quadratic_grad():
        g2 = jnp.einsum("ci,cdj->ijd", a, da) / n  # (q, q, D)
        return g2[iu, ju] + g2[ju, iu]

    add(hyper.scale_quadratic, a[:, iu] * a[:, ju], quadratic_grad)
    if config.n_explicit_cubic:
        c3 = min(config.explicit_cubic, q)
        i, j, k = _cubic_index(c3)

        def cubic_grad():
            aa = (a[:, :c3, None] * a[:, None, :c3]).reshape(n, c3 * c3)
            g3 = (jnp.einsum("ct,cdk->tkd", aa, da[..., :c3]) / n).reshape(c3, c3, c3, -1)
            return g3[j, k, i] + g3[i, k, j] + g3[i, j, k]

        add(hyper.scale_quadratic, a[:, i] * a[:, j] * a[:, k], cubic_grad)
    value = jnp.concatenate(values)
    return value, (jnp.concatenate(grads, axis=0) if with_grad else None)


def bounded_pair_distance(z, bound: float):
    """Each pair's standardised inverse distance z as the pair powers take it, and its
    derivative: z itself (bound 0), else C tanh(z / C) with C = bound, which follows z near the
    training mean (|z| << C) and stays within (-C, C) where a pair leaves its training range."""
    if not bound:
        return z, jnp.ones_like(z)
    t = jnp.tanh(z / bound)
    return bound * t, 1.0 - t * t


def _pair_powers(config, stats, hyper, x, with_grad: bool):
    """Powers 1..pair_powers of the structure's standardised inverse distances (the global pair
    terms of an "atomic" model; bounded by config.pair_bound: bounded_pair_distance) and, with
    ``with_grad``, their gradients (pair_powers * P, D), scattered from each pair's two atoms."""
    n = config.n_atoms
    first, second, grad = descriptors.inverse_distance_pairs(x, n, jnp.arange(n)[None])
    z = (descriptors.raw_descriptor("inverse-distance", x, n) - stats.pair_mean) / stats.pair_std
    vp, dvp = bounded_pair_distance(z, config.pair_bound)
    ks = range(1, config.pair_powers + 1)
    value = hyper.scale_pair * jnp.concatenate([vp**k for k in ks])
    if not with_grad:
        return value, None
    g = grad[0] / stats.pair_std[:, None]  # (P, 3)
    coef = jnp.concatenate([k * vp ** (k - 1) * dvp for k in ks])  # (T,)
    rows = jnp.arange(coef.shape[0])
    cols = jnp.tile(jnp.arange(vp.shape[0]), config.pair_powers)
    out = jnp.zeros((coef.shape[0], n, 3), x.dtype)
    part = coef[:, None] * g[cols]
    out = out.at[rows, first[0][cols]].add(part).at[rows, second[0][cols]].add(-part)
    return value, hyper.scale_pair * out.reshape(coef.shape[0], 3 * n)


def atomic_terms(config, stats, hyper, v, jac=None, x=None):
    """The explicit block of an "atomic" model (docs/method.md §14): for each element e, the
    atom means of its atoms' environment components b (env_dim of them) and of their pairwise
    products b_i b_j (i <= j, off-diagonal ones times sqrt 2): a Bayesian polynomial of degree
    two in each atom's environment, summed over the atoms, whose product terms are the features
    of the dot-product kernel (b . b')^2.
    b are the projected spectra themselves, not standardised: the kernel then weighs each
    direction by its variance. With env_body4 the products are replaced by the atom means of
    the body-ordered invariants per element (gp.body_order), each column scaled by
    stats.body_scale alone (no hyperparameter: their groups' scales are folded into it).
    v (N, P): the standardised atom descriptors, environment first; jac: their AtomJacobian."""
    n, d, c = v.shape[0], config.env_dim, config.explicit_q
    element = np.asarray(stats.elements)
    std = stats.desc_std[:d]
    b = v[:, :d] * std + stats.desc_mean[:d]
    iu, ju = np.triu_indices(c)
    pair = jnp.asarray(np.where(iu == ju, 1.0, np.sqrt(2.0)), dtype=v.dtype)
    masks = [
        jnp.asarray((element == e).astype(np.float64), dtype=v.dtype) for e in range(config.n_species)
    ]
    # The pair powers first, then each element's components, then all products: three scale
    # groups (posterior.basis_groups).
    pairs = _pair_powers(config, stats, hyper, x, jac is not None) if config.n_explicit_pair else None
    values = [] if pairs is None else [pairs[0]]
    values += [hyper.scale_linear * jnp.sum(b * m[:, None], 0) / n for m in masks]
    body = _body_terms(config, stats, x, jac is not None) if config.env_body4 else None
    if body is not None:
        values.append(body[0])
    else:
        values += [hyper.scale_quadratic * pair * jnp.sum((b * m[:, None])[:, iu] * b[:, ju], 0) / n
                   for m in masks]  # fmt: skip
    if jac is None:
        return jnp.concatenate(values), None
    # Gradients per moved atom, over the atoms whose environments hold it (AtomJacobian):
    # the environment components b move as std * v.
    jac = jac.scaled(jnp.concatenate([std, jnp.ones(v.shape[1] - d, v.dtype)]))
    grads = [] if pairs is None else [pairs[1]]
    grads += [hyper.scale_linear * jac.gather_sum(jnp.broadcast_to(m[:, None], (n, d)), np.arange(d)) / n
              for m in masks]  # fmt: skip
    if body is not None:
        grads.append(body[1])
    else:
        for m in masks:
            g2 = jac.outer_sum(b[:, :c] * m[:, None], np.arange(c)) / n  # (c, c, D)
            grads.append(hyper.scale_quadratic * pair[:, None] * (g2[iu, ju] + g2[ju, iu]))
    return jnp.concatenate(values), jnp.concatenate(grads, axis=0)


def _body_terms(config, stats, x, with_grad: bool):
    """The body-ordered block of an "atomic" model with env_body4 (S * n_body,) and, with
    ``with_grad``, its gradient (S * n_body, D): per element the atom mean of the invariants,
    each column scaled by stats.body_scale (which holds the evidence's multipliers of its
    groups: posterior.with_multipliers)."""
    env = environment.EnvSettings(config)
    element, orders = np.asarray(stats.elements), body_order.orders(config)
    value, grad = body_order.structure_terms(
        x, element, stats.env_mixing, env, orders, jacobian=with_grad
    )
    scale = stats.body_scale / config.n_atoms
    return value * scale, (grad * scale[:, None] if with_grad else None)


def explicit_block_rows(config, stats, hyper, v, jac, x=None) -> jax.Array:
    """Value and gradient rows (1+D, F) of the explicit block, averaged over the copies v (C, P)
    (x, the structure, for the pair powers of an "atomic" model)."""
    value, grad = explicit_terms(config, stats, hyper, v, jac, x)
    return jnp.concatenate([value[None], grad.T], axis=0)
