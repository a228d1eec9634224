"""The feature map of the global descriptor: standardised descriptors of a structure and of its
permuted copies, the deep-kernel features u(x), and the Jacobian of the copies in the form the
basis rows use it (docs/method.md §3, §5).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from . import descriptors, environment
from .config import Config
from .params import Hyper, Stats


def features(config: Config, stats: Stats, hyper: Hyper, x: jax.Array) -> jax.Array:
    """u(x) (p,) of one structure x (D,), or (N, p) of its atoms ("atomic"): the deep-kernel
    features the interpolation acts on (unpermuted)."""
    v, _ = copies(dataclasses.replace(config, n_permutations=1), stats, x, jacobian=False)
    if hyper.mlp is not None:
        v = jax.vmap(hyper.mlp)(v)
    return v if config.descriptor == "atomic" else v[0]


def atomic_raw(config: Config, stats: Stats, x: jax.Array, *, jacobian: bool):
    """Raw "atomic" descriptors (N, P) of every atom, its projected environment and its
    element's one-hot code, and with ``jacobian`` their AtomJacobian (else None)."""
    element = np.asarray(stats.elements)
    env = environment.EnvSettings(config)
    q, (blocks, idx) = environment.descriptors(x, element, stats.env_projection, env, jacobian=jacobian)
    onehot = jnp.asarray(np.eye(config.n_species)[element], dtype=q.dtype)
    raw = jnp.concatenate([q, onehot], axis=1)
    if not jacobian:
        return raw, None
    pad = jnp.zeros((*blocks.shape[:3], config.n_species), q.dtype)  # the one-hot does not move
    return raw, AtomJacobian(jnp.concatenate([blocks, pad], axis=-1), idx)


class AtomJacobian:
    """dv_a/dx of an "atomic" model's atoms (the copies), kept local: atom a's descriptor moves
    only with itself and its k neighbour slots, so each atom carries blocks (k+1, 3, P) and the
    structure's rows are scatters (sums over atoms) or gathers (per moved atom) of them; every
    cost is linear in the atoms at a fixed number of slots (docs/method.md §14)."""

    def __init__(self, blocks: jax.Array, idx: jax.Array):
        self.blocks, self.idx = blocks, idx  # (N, k+1, 3, P), (N, k+1)

    def scaled(self, factor: jax.Array) -> AtomJacobian:
        """The Jacobian of v * factor (P,) (standardisation)."""
        return AtomJacobian(self.blocks * factor, self.idx)

    def local_tangents(self, weight: jax.Array | None = None) -> jax.Array:
        """Tangent rows (N, 3(k+1), q) of each atom's v_a @ weight (P, q) (v_a itself without
        weight) with respect to its own slots' coordinates."""
        b = self.blocks if weight is None else self.blocks @ weight
        return b.reshape(b.shape[0], -1, b.shape[-1])

    def scatter(self, local: jax.Array) -> jax.Array:
        """(3N, X): the sum over atoms of local rows (N, 3(k+1), X), each sent to its slots."""
        n, x = local.shape[0], local.shape[-1]
        out = jnp.zeros((n, 3, x), local.dtype).at[self.idx].add(local.reshape(n, -1, 3, x))
        return out.reshape(3 * n, x)

    def gather_sum(self, coef: jax.Array, cols) -> jax.Array:
        """(T, 3N): rows sum_a coef[a, t] * (dv_a/dx)[cols[t]] for coef (N, T), taken per moved
        atom over the atoms whose slots hold it (environment.reverse_slots)."""
        atom, place, found = environment.reverse_slots(self.idx)
        rev = self.blocks[atom, place][..., cols]  # (N moved, k+1, 3, T)
        c = coef[atom] * found[..., None].astype(coef.dtype)  # (N moved, k+1, T)
        out = jnp.einsum("mst,msxt->tmx", c, rev)
        return out.reshape(coef.shape[1], -1)

    def outer_sum(self, coef: jax.Array, cols) -> jax.Array:
        """(C, c, 3N): sum_a coef[a, i] * (dv_a/dx)[cols[j]] for coef (N, C), per moved atom."""
        atom, place, found = environment.reverse_slots(self.idx)
        rev = self.blocks[atom, place][..., cols]  # (N moved, k+1, 3, c)
        c = coef[atom] * found[..., None].astype(coef.dtype)
        out = jnp.einsum("msi,msxj->ijmx", c, rev)
        return out.reshape(coef.shape[1], len(cols), -1)

    def contract(self, du: jax.Array, dw_du: jax.Array) -> jax.Array:
        """(3N, M): sum over atoms of du_a (3(k+1), p) @ dw_du_a (M, p)^T, scattered."""
        return self.scatter(jnp.einsum("cdp,cmp->cdm", du, dw_du))

    @property
    def dv_dx(self) -> jax.Array:
        """The dense (N, P, 3N) (tests only: quadratic in the atoms)."""
        return environment.dense_jacobian(self.blocks, self.idx)


class DenseJacobian:
    """dv/dx (C, P, D) of the copies, materialised (the Cartesian descriptor, or no MLP)."""

    def __init__(self, dv_dx: jax.Array):
        self.dv_dx = dv_dx

    def combine(self, coef: jax.Array, cols: jax.Array | None = None) -> jax.Array:
        """Copy mean of sum_s coef[c, t, s] * (row cols[t, s] of dv_c/dx): (T, D). cols None:
        row t itself (S = 1)."""
        rows = self.dv_dx[:, :, None] if cols is None else self.dv_dx[:, cols]  # (C, T, S, D)
        return jnp.einsum("cts,ctsd->td", coef, rows) / coef.shape[0]

    def project(self, weight: jax.Array) -> jax.Array:
        """Tangent rows (C, D, q) of v_c @ weight for weight (P, q)."""
        return jnp.einsum("cpd,pq->cdq", self.dv_dx, weight)

    def local_tangents(self, weight: jax.Array | None = None) -> jax.Array:
        """Tangent rows (C, D, q) of v_c @ weight (dv_c/dx itself without weight)."""
        return jnp.swapaxes(self.dv_dx, 1, 2) if weight is None else self.project(weight)

    def contract(self, du: jax.Array, dw_du: jax.Array) -> jax.Array:
        """(D, M): sum over copies of du_c (D, p) @ dw_du_c (M, p)^T, one contraction."""
        return jnp.einsum("cdp,cmp->dm", du, dw_du)


class PairJacobian:
    """dv/dx of the inverse-distance copies without forming it: each row has six nonzero
    entries (descriptors.inverse_distance_pairs), so the explicit block's product-rule terms
    are scatters of pair gradients, O(C T) instead of O(C T D), and projections go through the
    N x N pair matrix (descriptors.inverse_distance_tangents), O(N^2) per copy and column."""

    def __init__(self, config: Config, stats: Stats, x: jax.Array):
        self.x, self.n_atoms, self.std = x, config.n_atoms, stats.desc_std
        if config.n_permutations > 1:
            self.perms = stats.permutations
        else:
            self.perms = jnp.arange(config.n_atoms)[None]
        # Pair atoms and gradients of the standardised copies (unused ones are dropped under jit).
        self.first, self.second, grad = descriptors.inverse_distance_pairs(x, self.n_atoms, self.perms)
        self.grad = grad / self.std[None, :, None]

    def combine(self, coef: jax.Array, cols: jax.Array | None = None) -> jax.Array:
        """As DenseJacobian.combine."""
        if cols is None:
            cols = jnp.arange(coef.shape[1])[:, None]
        g = coef[..., None] * self.grad[:, cols]  # (C, T, S, 3)
        term = jnp.broadcast_to(jnp.arange(coef.shape[1])[None, :, None], coef.shape)
        out = jnp.zeros((coef.shape[1], self.n_atoms, 3), g.dtype)
        out = out.at[term, self.first[:, cols]].add(g).at[term, self.second[:, cols]].add(-g)
        return out.reshape(coef.shape[1], 3 * self.n_atoms) / coef.shape[0]

    def project(self, weight: jax.Array) -> jax.Array:
        """As DenseJacobian.project."""
        w = (weight / self.std[:, None]).T
        return descriptors.inverse_distance_tangents(self.x, self.n_atoms, w, self.perms)

    local_tangents = project
    contract = DenseJacobian.contract


def copies_and_jacobian(config: Config, stats: Stats, x: jax.Array, *, dense: bool):
    """The copies v (C, P) and their Jacobian: AtomJacobian for the atomic descriptor,
    PairJacobian for inverse distances unless ``dense`` asks for dv/dx itself (the DSoftKI
    block without an MLP)."""
    if config.descriptor == "atomic":
        raw, jac = atomic_raw(config, stats, x, jacobian=True)
        return (raw - stats.desc_mean) / stats.desc_std, jac.scaled(1.0 / stats.desc_std)
    pairs = config.descriptor == "inverse-distance"
    v, dv_dx = copies(config, stats, x, jacobian=dense or not pairs)
    return v, (DenseJacobian(dv_dx) if dv_dx is not None else PairJacobian(config, stats, x))


def copies(config: Config, stats: Stats, x: jax.Array, *, jacobian: bool):
    """Standardised descriptors v (n_copies, P) of x and of its permuted copies (one copy when the
    model is not symmetrised) and, with ``jacobian``, dv/dx (n_copies, P, D).

    An atom permutation only reorders the raw descriptor (descriptors.permuted_index), so the
    descriptor and its Jacobian are computed once and gathered per copy. The chain rule through
    the gather takes the gradient of f(copy) with respect to x itself: nothing is scattered back.
    """

    if config.descriptor == "atomic":  # the atoms are the copies; no permutations
        if jacobian:
            raise ValueError("an atomic model's Jacobian is local: use copies_and_jacobian")
        raw, _ = atomic_raw(config, stats, x, jacobian=False)
        return (raw - stats.desc_mean) / stats.desc_std, None

    def raw_of(y):
        return descriptors.raw_descriptor(config.descriptor, y, config.n_atoms)

    raw = raw_of(x)
    draw = jax.jacfwd(raw_of)(x) if jacobian else None
    if config.n_permutations > 1:
        idx = descriptors.permuted_index(config.descriptor, stats.permutations, config.n_atoms)
        raw, draw = raw[idx], (draw[idx] if jacobian else None)
    else:
        raw, draw = raw[None], (draw[None] if jacobian else None)
    v = (raw - stats.desc_mean) / stats.desc_std
    return v, (draw / stats.desc_std[:, None] if jacobian else None)
