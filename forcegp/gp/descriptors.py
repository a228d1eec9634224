"""The global invariant descriptor of a structure and its sparse Jacobian (docs/method.md §3).

Everything here acts on ONE structure, flattened coordinates x = vec(R) of shape (3 n_atoms,);
callers vmap. Autodiff through these functions gives d v / d x.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def pair_indices(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Atom index pairs i < j, in the order of numpy's triu_indices(n_atoms, 1)."""
    return np.triu_indices(n_atoms, 1)


def raw_descriptor(kind: str, x: jax.Array, n_atoms: int) -> jax.Array:
    """phi(x) before standardisation. x: (3 n_atoms,) in Å. Returns (P,).

    inverse-distance: 1/r_ij for i < j (invariant to rotation and translation).
    cartesian: x itself (not invariant; kept to reproduce the paper's setting).
    """
    if kind == "cartesian":
        return x
    r = x.reshape(n_atoms, 3)
    i, j = pair_indices(n_atoms)
    return safe_inverse(r[i] - r[j])


def safe_inverse(diff: jax.Array) -> jax.Array:
    """1/|diff| over the last axis with a safe norm: sqrt is never differentiated at 0
    (coincident atoms give a huge but finite value). Every inverse distance and its gradient
    (-safe_inverse^3 diff) goes through it, so the sparse Jacobians equal autodiff's."""
    return jax.lax.rsqrt(jnp.sum(diff * diff, axis=-1) + 1e-12)


def permuted_index(kind: str, permutations: jax.Array, n_atoms: int) -> jax.Array:
    """Index (n_perm, P) with raw_descriptor(x permuted by perm p) == raw_descriptor(x)[index[p]].

    An atom permutation only reorders the descriptor's entries, so a permuted copy's descriptor
    and its Jacobian are gathers of the original's: no descriptor is recomputed per permutation.
    """
    permutations = jnp.asarray(permutations)
    if kind == "cartesian":
        return jax.vmap(coordinate_index)(permutations)
    i, j = pair_indices(n_atoms)
    table = np.zeros((n_atoms, n_atoms), dtype=np.int32)
    table[i, j] = table[j, i] = np.arange(len(i))
    return jnp.asarray(table)[permutations[:, i], permutations[:, j]]


def coordinate_index(perm):
    """Index (3N,) of the flattened coordinates that an atom permutation (N,) takes them to."""
    return (3 * perm[:, None] + jnp.arange(3)[None]).reshape(-1)


def permute_coordinates(x: jax.Array, perm: np.ndarray) -> jax.Array:
    """Apply an atom permutation to flattened coordinates: atom a of the result is atom perm[a]."""
    return x[coordinate_index(jnp.asarray(perm))]


def inverse_distance_tangents(
    x: jax.Array, n_atoms: int, weight: jax.Array, permutations: jax.Array
) -> jax.Array:
    """Tangent rows (C, 3N, width) of weight @ raw(x)[permuted_index(pi)] for each atom
    permutation pi (C, N) of the inverse-distance descriptor; weight: (width, P).

    Each 1/r_ij depends on atoms i and j only, so its Jacobian row has six nonzero entries of
    3N: with the weight's columns laid out as an N x N pair matrix, the product with the
    Jacobian is a sum over neighbours j, O(N^2 width) per copy instead of the dense
    O(N^2/2 * 3N * width). A permuted copy gathers the pair gradients by pi and sends each
    atom's tangent back to pi's image (tests/test_model.py checks it against the dense product).
    """
    r = x.reshape(n_atoms, 3)
    diff = r[:, None, :] - r[None, :, :]  # (N, N, 3)
    # d(1/r_ij)/dr_i; zero on the diagonal (diff is zero there)
    grad = -(safe_inverse(diff) ** 3)[..., None] * diff
    i, j = pair_indices(n_atoms)
    pair_weight = jnp.zeros((n_atoms, n_atoms, weight.shape[0]), weight.dtype)
    pair_weight = pair_weight.at[i, j].set(weight.T).at[j, i].set(weight.T)

    def one(perm):
        per_atom = jnp.einsum("abw,abk->akw", pair_weight, grad[perm][:, perm])  # (N, 3, width)
        return jnp.zeros_like(per_atom).at[perm].set(per_atom).reshape(3 * n_atoms, -1)

    return jax.vmap(one)(permutations)


def inverse_distance_pairs(
    x: jax.Array, n_atoms: int, permutations: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The sparse Jacobian of the inverse-distance descriptor of each permuted copy (C, N):
    entry p of copy c is 1/r between atoms first[c, p] and second[c, p] (C, P), and grad
    (C, P, 3) is its gradient with respect to the first atom's position; the second atom's is
    -grad, every other entry of that Jacobian row is zero."""
    r = x.reshape(n_atoms, 3)
    i, j = pair_indices(n_atoms)
    first, second = permutations[:, i], permutations[:, j]
    diff = r[first] - r[second]
    return first, second, -(safe_inverse(diff) ** 3)[..., None] * diff
