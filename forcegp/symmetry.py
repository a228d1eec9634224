"""The molecular graph's automorphisms: atom permutations that map the bonded graph of a reference
geometry onto itself (methyl rotations, ring flips). The model is averaged over them
(docs/method.md §5)."""

from __future__ import annotations

import numpy as np


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
