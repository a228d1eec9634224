"""Invariant descriptors phi(x) and the deep-kernel MLP h: the feature map u(x) = h(phi(x)).

Everything here acts on ONE structure, flattened coordinates x = vec(R) of shape (3 n_atoms,);
callers vmap. Autodiff through these functions gives d u / d x.
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

DESCRIPTORS = ("inverse-distance", "cartesian")


def pair_indices(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Atom index pairs i < j, in the order of numpy's triu_indices(n_atoms, 1)."""
    return np.triu_indices(n_atoms, 1)


def descriptor_size(kind: str, n_atoms: int) -> int:
    if kind == "inverse-distance":
        return n_atoms * (n_atoms - 1) // 2
    if kind == "cartesian":
        return 3 * n_atoms
    raise ValueError(f"unknown descriptor {kind!r}; use one of {DESCRIPTORS}")


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


def symmetric_pair_orbits(numbers: np.ndarray, permutations: np.ndarray) -> np.ndarray:
    """For each pair (i<j), a representative index of its orbit under the given atom permutations.

    Used to make the descriptor standardisation share statistics across symmetric pairs.
    """
    n = len(numbers)
    i, j = pair_indices(n)
    index = {(a, b): k for k, (a, b) in enumerate(zip(i, j, strict=True))}
    rep = np.arange(len(i))
    for perm in permutations:
        for k, (a, b) in enumerate(zip(i, j, strict=True)):
            pa, pb = perm[a], perm[b]
            other = index[(min(pa, pb), max(pa, pb))]
            rep[k] = min(rep[k], rep[other])
    return rep


def molecular_permutations(numbers: np.ndarray, positions: np.ndarray, limit: int = 24) -> np.ndarray:
    """Atom permutations that map the bonded graph of a reference geometry onto itself.

    Bonds: pairs closer than 1.25 x the sum of covalent radii. Returns (n_perm, n_atoms) int array,
    identity first, at most ``limit`` permutations (breadth-first over the automorphism search).
    This is how sGDML's symmetric kernels find methyl rotations and ring flips; we use the
    permutations to symmetrise the model, f_sym(x) = mean_pi f(pi x), which is again a GP.
    """
    from ase.data import covalent_radii

    numbers = np.asarray(numbers)
    n = len(numbers)
    r = positions.reshape(n, 3)
    dist = np.linalg.norm(r[:, None] - r[None], axis=-1)
    rad = covalent_radii[numbers]
    bonded = (dist < 1.25 * (rad[:, None] + rad[None])) & ~np.eye(n, dtype=bool)
    # Colour refinement (1-WL) to prune candidate images of each atom.
    colour = numbers.astype(np.int64).copy()
    for _ in range(n):
        sig = [(colour[a], tuple(sorted(colour[bonded[a]]))) for a in range(n)]
        table = {s: k for k, s in enumerate(sorted(set(sig)))}
        new = np.array([table[s] for s in sig])
        if len(set(new)) == len(set(colour)):
            colour = new
            break
        colour = new
    found: list[np.ndarray] = []

    def extend(mapping: list[int]) -> None:
        if len(found) >= limit:
            return
        a = len(mapping)
        if a == n:
            found.append(np.array(mapping))
            return
        used = set(mapping)
        for b in range(n):
            if b in used or colour[b] != colour[a]:
                continue
            if all(bonded[a, c] == bonded[b, mapping[c]] for c in range(a)):
                extend([*mapping, b])

    extend([])
    perms = np.array(found) if found else np.arange(n)[None]
    identity = np.arange(n)
    order = sorted(range(len(perms)), key=lambda k: (not np.array_equal(perms[k], identity), k))
    return perms[order]


def coordinate_index(perm):
    """Index (3N,) of the flattened coordinates that an atom permutation (N,) takes them to."""
    return (3 * perm[:, None] + jnp.arange(3)[None]).reshape(-1)


def permute_coordinates(x: jax.Array, perm: np.ndarray) -> jax.Array:
    """Apply an atom permutation to flattened coordinates: atom a of the result is atom perm[a]."""
    return x[coordinate_index(jnp.asarray(perm))]


class DeepKernel(eqx.Module):
    """Small MLP h: R^P -> R^p, applied to the standardised descriptor."""

    mlp: eqx.nn.MLP

    def __init__(self, in_size: int, out_size: int, width: int, depth: int, *, key: jax.Array):
        self.mlp = eqx.nn.MLP(
            in_size, out_size, width, depth, activation=jnp.tanh, dtype=jnp.float64, key=key
        )

    def __call__(self, v: jax.Array) -> jax.Array:
        return self.mlp(v)

    def first_weight(self) -> jax.Array:
        """The first layer's weight (width, P)."""
        return self.mlp.layers[0].weight

    def after_first_product(self, v: jax.Array, dh: jax.Array) -> tuple[jax.Array, jax.Array]:
        """h(v) (p,) and the tangents (D, p) of h, given the tangent rows dh (D, width) of the
        first layer's product weight @ v (inverse_distance_tangents computes them without dv/dx;
        with dense tangent rows dv (D, P) they are dv @ weight.T). The rest is forward mode
        written out layer by layer as matrix products: tangents are rows, so under vmap every
        layer is one (rows x in) @ (in x out) product with no transposes around it, and so is
        its reverse-mode pass. The MLP's own activations are used; they act elementwise."""
        layers = self.mlp.layers
        for k, layer in enumerate(layers):
            act = self.mlp.activation if k < len(layers) - 1 else self.mlp.final_activation
            if k > 0:
                dh = dh @ layer.weight.T
            h = layer.weight @ v + layer.bias
            v, slope = jax.jvp(act, (h,), (jnp.ones_like(h),))
            dh = dh * slope[None, :]
        return v, dh


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


def all_permutations_small(n: int) -> list[tuple[int, ...]]:
    return list(itertools.permutations(range(n)))
