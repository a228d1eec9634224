"""Tiny synthetic molecules for the model tests: exact energies and forces from a Morse potential.

Positions are a reference geometry plus small random displacements; energies and forces come from
an analytic pair potential differentiated by jax.grad, so values and gradients are exactly
consistent. Used by tests/conftest.py's fixtures and imported directly by a few tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# CH2-OH fragment: numbers [6, 1, 1, 8, 1] (Å).
SMALL_NUMBERS = np.array([6, 1, 1, 8, 1])
SMALL_REFERENCE = np.array(
    [
        [0.000, 0.000, 0.000],
        [-0.540, 0.935, 0.000],
        [-0.540, -0.935, 0.000],
        [1.400, 0.000, 0.000],
        [1.720, 0.905, 0.000],
    ]
)

# Methanol CH3-OH with an exactly C3-symmetric methyl group: numbers [6, 1, 1, 1, 8, 1] (Å).
_TET = np.deg2rad(109.47)
_CH = 1.09
METHANOL_NUMBERS = np.array([6, 1, 1, 1, 8, 1])
METHANOL_REFERENCE = np.array(
    [
        [0.0, 0.0, 0.0],
        *[
            [
                _CH * np.cos(_TET),
                _CH * np.sin(_TET) * np.cos(phi),
                _CH * np.sin(_TET) * np.sin(phi),
            ]
            for phi in np.deg2rad([0.0, 120.0, 240.0])
        ],
        [1.43, 0.0, 0.0],
        [1.75, 0.905, 0.0],
    ]
)

_RADIUS = {1: 0.31, 6: 0.76, 8: 0.66}  # Morse equilibrium distance = r_i + r_j


def morse_energy(x, numbers):
    """Sum of Morse pair terms, x (3N,) Å -> eV. Symmetric under swapping equal elements."""
    n = len(numbers)
    r = x.reshape(n, 3)
    i, j = np.triu_indices(n, 1)
    r0 = np.array(
        [_RADIUS[int(numbers[a])] + _RADIUS[int(numbers[b])] for a, b in zip(i, j, strict=True)]
    )
    d = jnp.sqrt(jnp.sum((r[i] - r[j]) ** 2, axis=-1))
    return jnp.sum(4.0 * (1.0 - jnp.exp(-1.8 * (d - r0))) ** 2) - 20.0


def make_data(numbers, reference, n, seed, scale=0.05):
    """n structures: reference + N(0, scale²) displacements; energies (n,) eV, forces (n, N, 3)."""
    rng = np.random.default_rng(seed)
    positions = reference[None] + scale * rng.normal(size=(n, *reference.shape))
    x = jnp.asarray(positions.reshape(n, -1))
    e, grad = jax.jit(jax.vmap(jax.value_and_grad(lambda xi: morse_energy(xi, numbers))))(x)
    forces = -np.asarray(grad).reshape(positions.shape)
    return positions, np.asarray(e), forces


def random_rotation(rng):
    """A uniformly random proper rotation matrix (3, 3)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def tiny_config(n_atoms, **kw):
    from forcegp.gp.config import Config

    # Not symmetrised unless asked (the default is): the symmetry tests ask for it.
    settings = dict(n_inducing=8, n_features=3, width=8, depth=1, explicit_dim=4, n_permutations=1)
    settings.update(kw)
    return Config(n_atoms=n_atoms, **settings)


def build_model(numbers, positions, energies, forces, **kw):
    """An untrained tiny model (M=8, p=3, MLP width 8, depth 1, q=4 unless overridden)."""
    from forcegp.training.initialise import initialize

    config = tiny_config(len(numbers), **kw)
    return initialize(config, numbers, positions, energies, forces, key=jax.random.key(0))


def standardised(model, energies, forces):
    from forcegp.training.initialise import standardise_targets

    return standardise_targets(
        energies, forces, float(model.stats.energy_mean), float(model.stats.energy_scale)
    )


class Problem:
    """A tiny training problem: data, an untrained model, standardised targets, test structures."""

    def __init__(self, numbers, reference, n, seed, **config):
        self.numbers = numbers
        self.positions, self.energies, self.forces = make_data(numbers, reference, n, seed)
        self.model = build_model(numbers, self.positions, self.energies, self.forces, **config)
        self.x = self.positions.reshape(n, -1)
        self.y, self.g = standardised(self.model, self.energies, self.forces)
        self.test_positions, self.test_energies, self.test_forces = make_data(
            numbers, reference, 3, seed + 100
        )
