"""Atom-centred environments: each atom's neighbours within a smooth cutoff, the expansion of the
neighbour density in radial functions and real spherical harmonics, and its rotation-invariant
power spectrum projected per element (docs/method.md §14).

Everything acts on ONE structure, flattened coordinates x = vec(R) (3N,). An atom's environment
is its own position and those of k neighbour slots; slots beyond the cutoff contribute exactly
zero (the radial functions carry a smooth cutoff envelope), so for molecules of up to a few tens
of atoms every other atom is a slot (k = N - 1) and nothing is searched. Larger molecules take
the k nearest atoms of each atom.

The Jacobian is closed-form in the neighbours: the density is a sum of one term per neighbour,
so dq/d(neighbour position) is the derivative of the projected power spectrum with respect to
the density (d x C x L, reverse mode) contracted with that neighbour's own (n_radial x L x 3)
term derivatives. Nothing of the size of the power spectrum times the 3(k+1) coordinates is
ever formed.

Spherical harmonics come from e3nn-jax, a maintained library of E(3)-equivariant operations in
JAX, rather than hand-written recursions.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import LARGE_MOLECULE_ATOMS

#: The radial transform starts here (Å): 1/r is mapped linearly from [1/cutoff, 1/R_INNER] onto
#: [-1, 1], so the Chebyshev functions resolve short distances (bonds) most finely.
R_INNER = 0.7


def element_index(numbers) -> np.ndarray:
    """(N,) index of each atom's element among the molecule's sorted distinct elements."""
    numbers = np.asarray(numbers)
    return np.searchsorted(np.unique(numbers), numbers).astype(np.int32)


#: Up to this many atoms every other atom is a neighbour slot (env_neighbours = 0); beyond it
#: each atom takes the k nearest, k chosen from the training data (neighbour_slots).
ALL_SLOTS_ATOMS = LARGE_MOLECULE_ATOMS


def max_neighbours(positions: np.ndarray, cutoff: float) -> int:
    """The most other atoms within ``cutoff`` of one atom over structures (n, N, 3)."""
    most = 0
    for r in np.asarray(positions, dtype=np.float64):
        d2 = np.sum((r[:, None] - r[None]) ** 2, axis=-1)
        most = max(most, int(np.max(np.sum(d2 < cutoff * cutoff, axis=1))) - 1)
    return most


def neighbour_slots(requested: int, n_atoms: int, needed: int) -> int:
    """The env_neighbours setting of a model: every other atom (0) when requested is 0 and the
    molecule has at most ALL_SLOTS_ATOMS atoms; else the requested k, or, for 0, the most
    neighbours within the cutoff seen in the training data plus a quarter (at least 4) for
    compressed structures. A requested k below ``needed`` would drop atoms inside the cutoff,
    making the energy jump when neighbours swap places: ValueError naming both."""
    if requested == 0 and n_atoms <= ALL_SLOTS_ATOMS:
        return 0
    if requested == 0:
        k = needed + max(4, needed // 4)
        return 0 if k >= n_atoms - 1 else k
    if requested < min(needed, n_atoms - 1):
        raise ValueError(
            f"env_neighbours={requested} is fewer than the {needed} atoms found within the "
            "environment cutoff of one atom in the training data; use at least that many, "
            "0 (automatic) or a smaller env_cutoff"
        )
    return requested


def power_spectrum_size(n_channels: int, l_max: int) -> int:
    return (l_max + 1) * n_channels * (n_channels + 1) // 2


def all_others(element: np.ndarray) -> np.ndarray:
    """(N, N-1) index of every other atom, ordered by element (then by index): the neighbour
    slots of a small molecule. Atoms of one element then see the same number of slots of each
    element, in the same places (species_ranges)."""
    n = len(element)
    return np.array(
        [sorted((j for j in range(n) if j != a), key=lambda j: (element[j], j)) for a in range(n)],
        dtype=np.int32,
    ).reshape(n, n - 1)


def species_ranges(element: np.ndarray, e: int, n_species: int) -> tuple[tuple[int, int], ...]:
    """(first, end) slot of each element among the all_others slots of an atom of element e."""
    counts = [int(np.sum(element == s)) - (s == e) for s in range(n_species)]
    ends = np.cumsum(counts)
    return tuple((int(hi - c), int(hi)) for c, hi in zip(counts, ends, strict=True))


def slots(x: jax.Array, element: np.ndarray, k: int) -> jax.Array:
    """(N, k+1): each atom itself, then its k neighbour slots (all others by element when
    k = N - 1; else its k nearest atoms)."""
    n = len(element)
    if k >= n - 1:
        others = jnp.asarray(all_others(element))
    else:
        r = x.reshape(n, 3)
        d2 = jnp.sum((r[:, None] - r[None]) ** 2, axis=-1) + jnp.diag(jnp.full(n, jnp.inf))
        others = jax.lax.top_k(-d2, k)[1]
    return jnp.concatenate([jnp.arange(n)[:, None], others], axis=1)


def local_environments(x: jax.Array, element: np.ndarray, k: int):
    """(idx (N, k+1) of slots, local positions (N, k+1, 3): each atom then its slots, the
    slots' elements (N, k))."""
    n = len(element)
    idx = slots(x, element, k)
    return idx, x.reshape(n, 3)[idx], jnp.asarray(element)[idx[:, 1:]]


def radial_basis(r: jax.Array, n_radial: int, cutoff: float) -> jax.Array:
    """(..., n_radial): Chebyshev polynomials T_n of the inverse distance mapped onto [-1, 1],
    times the envelope (1 - (r/rc)^2)^2, which takes value and slope to zero at the cutoff."""
    t = (1.0 / jnp.maximum(r, 1e-3) - 1.0 / cutoff) / (1.0 / R_INNER - 1.0 / cutoff)
    xi = 2.0 * jnp.clip(t, 0.0, 1.5) - 1.0
    envelope = jnp.where(r < cutoff, (1.0 - (r / cutoff) ** 2) ** 2, 0.0)
    polys = [jnp.ones_like(xi), xi]
    for _ in range(n_radial - 2):
        polys.append(2.0 * xi * polys[-1] - polys[-2])
    return jnp.stack(polys[:n_radial], axis=-1) * envelope[..., None]


def _irreps(l_max: int) -> str:
    return "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(l_max + 1))


def neighbour_term(disp: jax.Array, n_radial: int, l_max: int, cutoff: float) -> jax.Array:
    """R_n(r) Y_lm(r-hat) (n_radial, (l_max+1)^2) of one neighbour at displacement disp (3,);
    e3nn's real, component-normalised harmonics."""
    r = jnp.sqrt(jnp.sum(disp * disp) + 1e-12)
    y = e3nn.spherical_harmonics(_irreps(l_max), disp, normalize=True, normalization="component")
    return radial_basis(r, n_radial, cutoff)[:, None] * y.array[None]


def power_spectrum(a: jax.Array, l_max: int) -> jax.Array:
    """Rotation-invariant p[l, c <= c'] = sum_m a[c, lm] a[c', lm] / sqrt(2l + 1) of a density
    a (C, (l_max+1)^2), normalised to unit length (the SOAP normalisation: environments are
    compared by shape, not by their number of neighbours)."""
    iu = np.triu_indices(a.shape[0])
    parts = []
    for l in range(l_max + 1):
        al = a[:, l * l : (l + 1) * (l + 1)]
        parts.append((al @ al.T)[iu] / np.sqrt(2 * l + 1))
    p = jnp.concatenate(parts)
    return p * jax.lax.rsqrt(jnp.sum(p * p) + 1e-24)


class EnvSettings:
    """The static shape of the environment descriptor (from the Config)."""

    def __init__(self, config):
        self.n_species = config.n_species
        self.n_radial = config.env_radial
        self.l_max = config.env_lmax
        self.cutoff = config.env_cutoff
        n = config.n_atoms
        self.k = n - 1 if config.env_neighbours <= 0 else min(config.env_neighbours, n - 1)


def _density(local, species, env: EnvSettings, ranges, *, jacobian: bool):
    """One atom's density a (C, L) and, with ``jacobian``, the neighbour terms' derivatives
    (k, n_radial, L, 3). local (k+1, 3): the atom first, then its slots; species (k,) their
    elements, or ``ranges`` (species_ranges) where the slots are grouped by element."""
    disp = local[1:] - local[0]

    def term(d):
        return neighbour_term(d, env.n_radial, env.l_max, env.cutoff)

    g = jax.vmap(term)(disp)  # (k, n_radial, L)
    if ranges is not None:
        a = jnp.stack([jnp.sum(g[lo:hi], axis=0) for lo, hi in ranges])
    else:
        onehot = jax.nn.one_hot(species, env.n_species, dtype=local.dtype)
        a = jnp.einsum("ks,knl->snl", onehot, g)
    a = a.reshape(env.n_species * env.n_radial, -1)
    return a, (jax.vmap(jax.jacfwd(term))(disp) if jacobian else None)


def atom_spectrum(local, species, env: EnvSettings, ranges=None) -> jax.Array:
    """The normalised power spectrum (P,) of one atom's environment."""
    return power_spectrum(_density(local, species, env, ranges, jacobian=False)[0], env.l_max)


def symmetric_projection(projection: jax.Array, n_channels: int, l_max: int) -> list[jax.Array]:
    """Per l, the projection (P, d) as symmetric (C, C, d) blocks W_l with W_l[c, c'] the
    column of entry (l, min, max) and the diagonal doubled: then for any density change dA,
    projection^T dp = sum_l sum_{c, c', m} W_l[c, c'] dA[c, lm] A[c', lm] / sqrt(2l + 1)."""
    iu, ju = np.triu_indices(n_channels)
    t = len(iu)
    out = []
    for l in range(l_max + 1):
        w = projection[l * t : (l + 1) * t]
        full = (
            jnp.zeros((n_channels, n_channels, w.shape[1]), w.dtype).at[iu, ju].set(w).at[ju, iu].set(w)
        )
        out.append(full * jnp.where(np.eye(n_channels, dtype=bool), 2.0, 1.0)[..., None])
    return out


def _spectrum_jacobian(a, q, w_sym, l_max: int):
    """dq/dA (d, C, L) of q = projection^T p / |p| at density a (C, L), in closed form: per l,
    W_l contracted with A (the derivative of the products) and the same for p itself (the
    derivative of the normalisation)."""
    parts_w, parts_p, norm2 = [], [], 0.0
    for l in range(l_max + 1):
        al = a[:, l * l : (l + 1) * (l + 1)]
        c = 1.0 / np.sqrt(2 * l + 1)
        g = c * (al @ al.T)  # p_l as a full symmetric matrix
        norm2 = norm2 + jnp.sum(jnp.triu(g) ** 2)
        parts_w.append(c * jnp.einsum("cej,em->jcm", w_sym[l], al))
        parts_p.append(c * ((g + jnp.diag(jnp.diag(g))) @ al))
    inv = jax.lax.rsqrt(norm2 + 1e-24)
    b_w, b_p = jnp.concatenate(parts_w, axis=2), jnp.concatenate(parts_p, axis=1)
    return inv * (b_w - (inv * q)[:, None, None] * b_p[None])


def _atom(local, species, projection, w_sym, env: EnvSettings, ranges, jacobian: bool):
    """q (d,) of one atom and, with ``jacobian``, dq/d(local) (k+1, 3, d)."""
    a, dg = _density(local, species, env, ranges, jacobian=jacobian)
    q = power_spectrum(a, env.l_max) @ projection
    if not jacobian:
        return q, None
    dq_da = _spectrum_jacobian(a, q, w_sym, env.l_max).reshape(
        -1, env.n_species, env.n_radial, a.shape[1]
    )
    if ranges is not None:  # each element's slots against that element's channels only
        d_slots = jnp.concatenate(
            [jnp.einsum("dnl,knlx->kxd", dq_da[:, s], dg[lo:hi]) for s, (lo, hi) in enumerate(ranges)]
        )
    else:  # every slot against every element's channels, then each slot's own element
        by_element = jnp.einsum("dsnl,knlx->skxd", dq_da, dg)  # (S, k, 3, d)
        d_slots = by_element[species, jnp.arange(species.shape[0])]  # (k, 3, d)
    return q, jnp.concatenate([-jnp.sum(d_slots, axis=0)[None], d_slots], axis=0)


def spectra(x, element: np.ndarray, env: EnvSettings) -> jax.Array:
    """Normalised power spectra (N, P) of every atom (unprojected: for the projections' PCA)."""
    _, local, species = local_environments(x, element, env.k)
    return jax.vmap(lambda loc, s: atom_spectrum(loc, s, env))(local, species)


def descriptors(x, element: np.ndarray, projections, env: EnvSettings, *, jacobian: bool):
    """Every atom's projected descriptor q (N, d) and, with ``jacobian``, its derivatives kept
    local: blocks (N, k+1, 3, d), block [a, s] = dq_a/d(position of atom idx[a, s]), and idx
    (N, k+1), each atom itself and then its neighbour slots (None, None without).

    element (N,) numpy ints (static): each atom's element index; projections (S, P, d): each
    element's directions. Atoms are grouped by element so each group uses its projection
    without gathering it per atom. Nothing of size N x 3N is formed: the blocks cost
    N (k+1) 3 d, linear in the atoms at a fixed number of slots."""
    n = len(element)
    idx, local, species = local_environments(x, element, env.k)
    dtype = jnp.result_type(x, projections)
    q = jnp.zeros((n, projections.shape[-1]), dtype)
    blocks = jnp.zeros((n, env.k + 1, 3, projections.shape[-1]), dtype) if jacobian else None
    for e in range(env.n_species):
        atoms = np.flatnonzero(element == e)
        if len(atoms) == 0:
            continue
        ranges = species_ranges(element, e, env.n_species) if env.k == n - 1 else None
        w_sym = (
            symmetric_projection(projections[e], env.n_species * env.n_radial, env.l_max)
            if jacobian
            else None
        )

        def one(loc, s, e=e, ranges=ranges, w_sym=w_sym):
            return _atom(loc, s, projections[e], w_sym, env, ranges, jacobian)

        qe, de = jax.vmap(one)(local[atoms], species[atoms])
        q = q.at[atoms].set(qe.astype(dtype))
        if jacobian:
            blocks = blocks.at[atoms].set(de.astype(dtype))
    return q, ((blocks, idx) if jacobian else (None, None))


def reverse_slots(idx: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For each atom m and each slot s of m's own list, the atom a = idx[m, s] and the place of
    m in a's list: then block [a, place] is dq_a/dr_m. Where the lists are symmetric (every
    other atom, or k nearest with every atom's neighbours within the cutoff fitting its k
    slots) these are all the atoms whose descriptor moves with m. Returns (atom, place, found)
    each (N, k+1); found is False where m is not in a's list (that block is then zero)."""
    atom = idx
    match = idx[atom] == jnp.arange(idx.shape[0])[:, None, None]  # (N, k+1, k+1)
    return atom, jnp.argmax(match, axis=-1), jnp.any(match, axis=-1)


def dense_jacobian(blocks: jax.Array, idx: jax.Array) -> jax.Array:
    """The dense dq/dx (N, d, 3N) of local blocks (for tests and small molecules)."""
    n = idx.shape[0]
    dense = jnp.zeros((n, n, 3, blocks.shape[-1]), blocks.dtype)
    dense = dense.at[jnp.arange(n)[:, None], idx].add(blocks)  # (atom, moved atom, xyz, d)
    return jnp.transpose(dense.reshape(n, 3 * n, -1), (0, 2, 1))
