"""Body-ordered atomic invariants: the explicit block's per-element basis of an "atomic" model
with ``env_body4`` > 0 (docs/method.md §16), the construction of linear ACE.

Each atom's neighbour density A[c, lm] (environment._density: channels c = neighbour element x
radial function) gives invariants of body order
  2: A[c, 00], every channel                                       (one neighbour at a time);
  3: sum_m B_l[i, m] B_l[j, m] / sqrt(2l + 1), i <= j < n3, l <= env_body4_lmax   (two);
  4: sum_{m1 m2 m3} C(l1 l2 l3; m1 m2 m3) B_l1[i, m1] B_l2[j, m2] B_l3[k, m3],
     i, j, k < n4, l1 <= l2 <= l3 with the triangle rule and an even sum          (three);
on the mixed channels B_l = W_l A_l, W_l (max(n3, n4), C) the leading principal directions of
the channels at that l over the training atoms (n4 = env_body4, n3 = env_body3 or else n4;
with n3 = C order three spans every pair of channels). A mixing of channels commutes with rotations,
so every contraction stays invariant; an even l1 + l2 + l3 makes it invariant under
reflections too. Clebsch-Gordan coefficients come from e3nn-jax, as the harmonics do.

Derivatives are local like the environment's: an atom's invariants move only with itself and
its k neighbour slots, so each atom carries blocks (k+1, 3, F), computed in forward mode along
the 3k neighbour-coordinate tangents of its density (each the term of one neighbour, in its own
element's channels); the centre atom's block is minus their sum.
"""

from __future__ import annotations

import functools

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from . import environment
from .config import body_l_triples


@functools.cache
def channel_triples(n: int, ls: tuple[int, int, int]) -> np.ndarray:
    """Channel index triples (i, j, k) < n giving distinct invariants for the l's: where two
    l's are equal the contraction is symmetric in their channels (the sum is even)."""
    l1, l2, l3 = ls
    out = [
        c
        for c in np.ndindex(n, n, n)
        if not (l1 == l2 and c[0] > c[1]) and not (l2 == l3 and c[1] > c[2])
    ]
    return np.asarray(out, dtype=np.int32).reshape(-1, 3)


@functools.cache
def _clebsch_gordan(ls: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(e3nn.clebsch_gordan(*ls), dtype=np.float64)


def atom_invariants(a: jax.Array, mixing: jax.Array, l_max: int, n3: int, n4: int) -> jax.Array:
    """Invariants (F,) of one atom's density a (C, L): body order 2, then 3 on the first n3
    mixed channels, then 4 on the first n4 (module docstring). mixing (l_max + 1, max(n3, n4), C)."""
    mixed = [mixing[l] @ a[:, l * l : (l + 1) * (l + 1)] for l in range(l_max + 1)]
    iu = np.triu_indices(n3)
    parts = [a[:, 0]]
    parts += [(b[:n3] @ b[:n3].T)[iu] / np.sqrt(2 * l + 1) for l, b in enumerate(mixed)]
    blocks = [b[:n4] for b in mixed]
    for ls in body_l_triples(l_max):
        cg = jnp.asarray(_clebsch_gordan(ls), dtype=a.dtype)
        t = jnp.einsum("ai,bj,ck,ijk->abc", blocks[ls[0]], blocks[ls[1]], blocks[ls[2]], cg)
        c = channel_triples(n4, ls)
        parts.append(t[c[:, 0], c[:, 1], c[:, 2]])
    return jnp.concatenate(parts)


def _atom(local, species, mixing, env, orders, jacobian: bool):
    """Invariants (F,) of one atom and, with ``jacobian``, their derivatives (k+1, 3, F) with
    respect to its own position and its slots'. orders: (l_max, n3, n4) of atom_invariants."""
    a, dg = environment._density(local, species, env, None, jacobian=jacobian)
    f = atom_invariants(a, mixing, *orders)
    if not jacobian:
        return f, None
    k = dg.shape[0]
    onehot = jax.nn.one_hot(species, env.n_species, dtype=a.dtype)
    # Tangent of the density along each neighbour coordinate: that neighbour's term, in its
    # element's channels only (k, 3, C, L).
    tangents = jnp.einsum("ks,knlx->kxsnl", onehot, dg).reshape(k * 3, *a.shape)
    df = jax.vmap(lambda t: jax.jvp(lambda b: atom_invariants(b, mixing, *orders), (a,), (t,))[1])(
        tangents
    ).reshape(k, 3, -1)
    return f, jnp.concatenate([-jnp.sum(df, axis=0)[None], df], axis=0)


def invariants(x, element: np.ndarray, mixing, env, orders, *, jacobian: bool):
    """Every atom's invariants (N, F) and, with ``jacobian``, their local blocks (N, k+1, 3, F)
    and the slots idx (N, k+1) (environment.descriptors' layout); (None, None) without.
    orders: (l_max, n3, n4), the config's (env_body4_lmax, body3_channels, env_body4).

    One vmap over all atoms, whatever their element (the channel mixing is shared; each slot's
    element is data, not a static slice): XLA compiles one copy of the contractions, not one
    per element (benchmarks/body_compile.py)."""
    idx, local, species = environment.local_environments(x, element, env.k)
    f, blocks = jax.vmap(lambda loc, s: _atom(loc, s, mixing, env, orders, jacobian))(local, species)
    if not jacobian:
        return f, (None, None)
    return f, (blocks, idx)


def densities(x, element: np.ndarray, env) -> jax.Array:
    """Every atom's neighbour density (N, C, L) (for the channel mixing's principal directions)."""
    _, local, species = environment.local_environments(x, element, env.k)
    return jax.vmap(lambda loc, s: environment._density(loc, s, env, None, jacobian=False)[0])(
        local, species
    )


def structure_terms(x, element: np.ndarray, mixing, env, orders, *, jacobian: bool):
    """Per element, the sum over its atoms of the invariants, (S * F,) element-major, and with
    ``jacobian`` its gradient (S * F, 3N) (else None). orders: as for invariants."""
    n, s = len(element), env.n_species
    f, (blocks, idx) = invariants(x, element, mixing, env, orders, jacobian=jacobian)
    onehot = jnp.asarray(np.eye(s)[element], dtype=f.dtype)  # (N, S)
    value = (onehot.T @ f).reshape(-1)
    if not jacobian:
        return value, None
    rows = jnp.broadcast_to(jnp.asarray(element)[:, None], idx.shape)
    grad = jnp.zeros((s, n, 3, f.shape[1]), f.dtype).at[rows, idx].add(blocks)
    return value, jnp.transpose(grad, (0, 3, 1, 2)).reshape(s * f.shape[1], 3 * n)


def channel_mixing(densities: np.ndarray, n: int, l_max: int) -> np.ndarray:
    """Per l <= l_max, the leading n principal directions (n, C) of the channels of the
    densities (atoms, C, L) at that l, all m together: the mixing W (l_max + 1, n, C)."""
    c = densities.shape[1]
    out = np.zeros((l_max + 1, n, c))
    for l in range(l_max + 1):
        al = densities[..., l * l : (l + 1) * (l + 1)].transpose(0, 2, 1).reshape(-1, c)
        _, _, vt = np.linalg.svd(al, full_matrices=False)
        out[l, : min(n, len(vt))] = vt[:n]
    return out


def orders(config) -> tuple[int, int, int]:
    """(l_max, n3, n4) of atom_invariants from a Config with env_body4 > 0."""
    return config.env_body4_lmax, config.body3_channels, config.env_body4
