"""Build an untrained ForceGP from training data: statistics, PCA, k-means interpolation points
(docs/method.md §1-§5, §7)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..gp import body_order, descriptors, environment, posterior
from ..gp.basis import basis_rows, soft_cholesky
from ..gp.config import NOISE_FLOOR, SCALE_FLOOR, T_FLOOR, Config, ConfigError, check_body_channels
from ..gp.deep_kernel import DeepKernel
from ..gp.features import atomic_raw, features
from ..gp.params import ForceGP, Hyper, Stats, atomic_stats, softplus_inv
from ..symmetry import molecular_permutations
from . import budget


def standardise_targets(energies, forces, energy_mean, energy_scale):
    """y = (E - mu) / sigma, g = -F / sigma (flattened per structure)."""
    n = len(energies)
    y = (np.asarray(energies) - energy_mean) / energy_scale
    g = -np.asarray(forces).reshape(n, -1) / energy_scale
    return y, g


def kmeans(points: jax.Array, m: int, *, key: jax.Array, iterations: int = 15) -> jax.Array:
    """Lloyd's k-means from a random subset; empty clusters keep their previous centre."""
    n = points.shape[0]
    if m > n:
        # Fewer structures than interpolation points: jittered copies of the data.
        reps = points[jax.random.randint(key, (m,), 0, n)]
        noise = 1e-2 * jax.random.normal(jax.random.fold_in(key, 1), reps.shape)
        return reps + noise * jnp.std(points, axis=0)
    centres = points[jax.random.choice(key, n, (m,), replace=False)]

    def step(c, _):
        d2 = jnp.sum(points**2, 1)[:, None] - 2 * points @ c.T + jnp.sum(c**2, 1)[None]
        assign = jax.nn.one_hot(jnp.argmin(d2, axis=1), m, dtype=points.dtype)
        counts = assign.sum(0)
        new = (assign.T @ points) / jnp.maximum(counts, 1.0)[:, None]
        return jnp.where(counts[:, None] > 0, new, c), None

    centres, _ = jax.lax.scan(step, centres, None, length=iterations)
    return centres


def atomic_statistics(config: Config, numbers: np.ndarray, x: np.ndarray) -> tuple[Config, dict]:
    """An atomic model's config (its elements counted, no permutations) and Stats fields: the
    per-element environment projections and, with pair powers, the inverse distances' mean
    and spread (params.atomic_stats)."""
    n_atoms = config.n_atoms
    needed = environment.max_neighbours(x[:ENV_SAMPLE].reshape(-1, n_atoms, 3), config.env_cutoff)
    try:
        k = environment.neighbour_slots(config.env_neighbours, n_atoms, needed)
    except ValueError as err:
        raise InputError(str(err)) from None
    config = dataclasses.replace(
        config, n_species=len(np.unique(numbers)), n_permutations=1, env_neighbours=k
    )
    try:
        check_body_channels(config)
    except ConfigError as err:
        raise InputError(str(err)) from None
    projection = environment_projections(config, numbers, x[:ENV_SAMPLE])
    pairs = None
    if config.n_explicit_pair:
        inv = np.asarray(jax.vmap(lambda xi: descriptors.raw_descriptor(
            "inverse-distance", xi, config.n_atoms))(jnp.asarray(x[:2000])))  # fmt: skip
        pairs = (inv.mean(0), np.maximum(inv.std(0), 1e-6 * inv.mean(0)))
    body = body_statistics(config, numbers, x[:ENV_SAMPLE]) if config.env_body4 else None
    return config, atomic_stats(config, numbers, projection, pairs, body)


def body_statistics(config: Config, numbers, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The body-ordered invariants' channel mixing (the leading config.body_mixed principal directions
    of the channels of the atoms' densities in structures x, per l) and the scale of each
    column of their block (gp.body_order): by default (config.body_scaling "group") one over
    the RMS in x of its group (element, body order), so the groups start on the same footing
    and within a group the columns keep their relative sizes (the prior weighs the stronger
    mixed channels' invariants more); with "column", one over the column's own RMS, so every
    invariant starts on the same footing. The evidence then fits one multiplier per group."""
    element = environment.element_index(numbers)
    env = environment.EnvSettings(config)
    xs = jnp.asarray(x)
    dens = np.asarray(jax.lax.map(lambda xi: body_order.densities(xi, element, env), xs, batch_size=16))
    mixing = body_order.channel_mixing(
        dens.reshape(-1, *dens.shape[2:]), config.body_mixed, config.env_body4_lmax
    )
    w, orders = jnp.asarray(mixing), body_order.orders(config)

    def terms(xi):
        return body_order.structure_terms(xi, element, w, env, orders, jacobian=False)[0]

    values = np.asarray(jax.lax.map(terms, xs, batch_size=16)) / config.n_atoms
    ms = np.mean(values**2, axis=0)
    if config.body_scaling == "group":  # one RMS per (element, body order) group
        group = posterior.body_groups(config)
        ms = (np.bincount(group, ms) / np.bincount(group))[group]
    rms = np.sqrt(ms)
    return mixing, 1.0 / np.maximum(rms, 1e-12 * max(float(np.max(rms)), 1e-300))


def initialize(
    config: Config,
    numbers: np.ndarray,
    positions: np.ndarray,
    energies: np.ndarray,
    forces: np.ndarray,
    *,
    key: jax.Array,
) -> ForceGP:
    """An untrained model whose statistics come from this training data (n, N, 3) Å, eV, eV/Å."""
    n = len(positions)
    if n < 2:
        raise InputError(f"training needs at least 2 structures with energies and forces, got {n}")
    x = np.asarray(positions, dtype=np.float64).reshape(n, -1)
    k_mlp, k_means = jax.random.split(key)
    energy_mean, energy_scale, force_rms = energy_statistics(energies, forces)
    atomic = {}
    if config.descriptor == "atomic":  # invariant by construction: no permutations
        config, atomic = atomic_statistics(config, numbers, x)
    if config.n_permutations > 1:
        perms = molecular_permutations(numbers, x[0], limit=config.n_permutations)
    else:
        perms = np.arange(config.n_atoms)[None]
    if config.width < 0:
        config = dataclasses.replace(config, width=budget.budgeted_width(config, len(perms)))
    sample = jnp.asarray(x[: min(n, 2000)])
    if atomic:
        stats0 = Stats(*([None] * 7), **atomic)
        config = dataclasses.replace(config, explicit_cubic=0)  # no cubic terms (explicit.py)
        descs = np.asarray(
            jax.lax.map(
                lambda xi: atomic_raw(config, stats0, xi, jacobian=False)[0], sample, batch_size=64
            )
        ).reshape(-1, config.descriptor_size)
    else:
        descs = permuted_descriptors(config, sample, perms)
    desc_mean = descs.mean(0)
    desc_std = np.maximum(descs.std(0), 1e-6 * (np.abs(desc_mean) + 1e-12))
    projection = pca_projection((descs - desc_mean) / desc_std, config.explicit_q)
    room = max(budget.EXPLICIT_MAX - dataclasses.replace(config, n_local=0).n_explicit, 0)
    pairs = local_pairs(config, descs, room)
    config = dataclasses.replace(config, n_local=len(pairs))
    if config.explicit_cubic < 0:
        config = dataclasses.replace(config, explicit_cubic=budget.budgeted_cubic(config, n))
    stats = Stats(
        *(jnp.asarray(a) for a in (desc_mean, desc_std, projection, energy_mean, energy_scale)),
        jnp.asarray(perms, dtype=jnp.int32),
        jnp.asarray(pairs, dtype=jnp.int32).reshape(-1, 2),
        **atomic,
    )
    mlp = None
    if config.n_features > 0:
        mlp = DeepKernel(
            config.descriptor_size, config.n_features, config.width, config.depth, key=k_mlp
        )
    z, lengthscale = interpolation_points(config, stats, mlp, sample, key=k_means)
    hyper = starting_hyper(config, mlp, z, lengthscale, force_rms / energy_scale)
    return ForceGP(config, tuple(int(a) for a in numbers), stats, hyper, None)


def energy_statistics(energies, forces) -> tuple[float, float, float]:
    """Mean and scale of the training energies (eV) and the RMS force component (eV/Å); the
    scale falls back to the force RMS where the energies barely vary."""
    energy_mean = float(np.mean(energies))
    energy_scale = float(np.std(energies))
    force_rms = float(np.sqrt(np.mean(np.asarray(forces) ** 2)))
    if not energy_scale > 1e-6:
        energy_scale = max(force_rms, 1e-3)
    return energy_mean, energy_scale, force_rms


def permuted_descriptors(config: Config, sample: jax.Array, perms: np.ndarray) -> np.ndarray:
    """Raw descriptors (n_perm * n, P) of every permuted copy of the sample (n, D): statistics
    over all copies, so symmetric atoms share them."""
    raw = jax.vmap(lambda xi: descriptors.raw_descriptor(config.descriptor, xi, config.n_atoms))
    copies = [raw(sample[:, descriptors.coordinate_index(jnp.asarray(p))]) for p in perms]
    return np.concatenate([np.asarray(c) for c in copies], axis=0)


#: Structures whose atoms' power spectra give each element's projection ("atomic").
ENV_SAMPLE = 200


def environment_projections(config: Config, numbers, x: np.ndarray) -> np.ndarray:
    """Each element's leading env_dim principal directions (S, spectrum, env_dim), orthonormal,
    of the normalised power spectra of its atoms in the structures x (n, D)."""
    element = environment.element_index(numbers)
    env = environment.EnvSettings(config)
    spectra = jax.lax.map(
        lambda xi: environment.spectra(xi, element, env), jnp.asarray(x), batch_size=16
    )
    spectra = np.asarray(spectra)  # (n, N, P)
    out = np.zeros((config.n_species, config.spectrum_size, config.env_dim))
    for e in range(config.n_species):
        s = spectra[:, element == e].reshape(-1, config.spectrum_size)
        evals, evecs = np.linalg.eigh(np.cov(s, rowvar=False) + 1e-12 * np.eye(s.shape[1]))
        out[e] = evecs[:, np.argsort(evals)[::-1][: config.env_dim]]
    return out


def pca_projection(v: np.ndarray, q: int) -> np.ndarray:
    """The leading q principal directions (P, q) of standardised descriptors v (n, P), scaled so
    the projected components have unit variance. With more entries than samples (P > n: the
    inverse distances of a large molecule) from the n x n Gram matrix, never the P x P
    covariance (68,000 entries at 370 atoms would be a 37 GB matrix)."""
    n, p = v.shape
    centred = v - v.mean(axis=0)
    if p <= n:
        evals, evecs = np.linalg.eigh(np.cov(v, rowvar=False) + 1e-12 * np.eye(p))
    else:
        evals, u = np.linalg.eigh(centred @ centred.T / max(n - 1, 1))
        evecs = centred.T @ u / np.sqrt(np.maximum(evals, 1e-300) * max(n - 1, 1))[None]
    order = np.argsort(evals)[::-1][:q]
    return evecs[:, order] / np.sqrt(np.maximum(evals[order], 1e-10))[None]


#: Most atoms' features the k-means of an "atomic" model sees.
KMEANS_POINTS = 20_000


def interpolation_points(config: Config, stats: Stats, mlp, sample, *, key: jax.Array):
    """k-means centres (M, p) of the sample's deep-kernel features, and a lengthscale of half
    their median distance (at least 0.1)."""
    m, p = config.n_inducing, config.feature_size
    placeholder = Hyper(
        mlp, jnp.zeros((m, p)), jnp.zeros((m, p)), jnp.zeros((p,)), *([jnp.asarray(0.0)] * 5)
    )
    if config.descriptor == "atomic":  # every atom's features, at most KMEANS_POINTS of them
        xs = sample[: -(-KMEANS_POINTS // config.n_atoms)]
        u = jax.lax.map(lambda xi: features(config, stats, placeholder, xi), xs, batch_size=32)
        u = u.reshape(-1, p)
    else:
        u = jax.vmap(lambda xi: features(config, stats, placeholder, xi))(sample)
    z = kmeans(u, m, key=key)
    dz = jnp.sqrt(jnp.sum((z[:, None] - z[None]) ** 2, -1))
    median = float(jnp.median(dz[jnp.triu_indices(m, 1)])) if m > 1 else 1.0
    return z, max(0.5 * median, 0.1)


def starting_hyper(config: Config, mlp, z, lengthscale: float, g_rms: float) -> Hyper:
    """Starting hyperparameters: temperatures 1, unit DSoftKI scale, explicit scales that
    spread unit variance over the terms of each group, noise 5% of the data's spread."""
    m, p = config.n_inducing, config.feature_size
    n_pair = config.n_explicit_pair if config.pair_scaled else 0
    n_quad = max(config.n_explicit - config.n_explicit_linear - n_pair, 1)
    n_lin = max(config.n_explicit_linear, 1)
    return Hyper(
        mlp=mlp,
        z=z,
        raw_temperature=jnp.full((m, p), softplus_inv(1.0 - T_FLOOR)),
        raw_lengthscale=jnp.full((p,), softplus_inv(lengthscale)),
        raw_scale=jnp.asarray(softplus_inv(1.0)),
        raw_scale_linear=jnp.asarray(softplus_inv(max(1.0 / np.sqrt(n_lin), 2 * SCALE_FLOOR))),
        raw_scale_quadratic=jnp.asarray(softplus_inv(max(0.3 / np.sqrt(n_quad), 2 * SCALE_FLOOR))),
        raw_noise_energy=jnp.asarray(softplus_inv(0.05)),
        raw_noise_force=jnp.asarray(softplus_inv(max(0.05 * g_rms, 2 * NOISE_FLOOR))),
        raw_scale_pair=(
            jnp.asarray(softplus_inv(max(1.0 / np.sqrt(n_pair), 2 * SCALE_FLOOR))) if n_pair else None
        ),
    )


def local_pairs(config: Config, descs: np.ndarray, room: int | None = None) -> np.ndarray:
    """Descriptor entries (a, b), a < b, whose product is a local term of the explicit block.

    The two atom pairs share an atom and both are on average shorter than config.local_cutoff
    over the training sample (descs: raw inverse distances, (n, P)): bond-angle-like terms.
    At most ``room`` of them (None: all), those whose longer pair is shortest on average, so
    bonded angles come before wider ones: initialize keeps the explicit block within
    EXPLICIT_MAX functions. Only larger molecules reach that: the rMD17 molecules have 250-1200
    local terms and 700-2400 explicit functions at most, Ac-Ala3-NHMe (42 atoms) about 6100
    local terms beside 2934 pair and quadratic ones.
    """
    if config.explicit != "polynomial" or config.descriptor != "inverse-distance":
        return np.zeros((0, 2), dtype=np.int64)
    i, j = descriptors.pair_indices(config.n_atoms)
    distance = 1.0 / np.mean(descs, axis=0)
    close = np.flatnonzero(distance < config.local_cutoff)
    out = [(a, b) for s, a in enumerate(close) for b in close[s + 1 :] if {i[a], j[a]} & {i[b], j[b]}]
    out = np.array(out, dtype=np.int64).reshape(-1, 2)
    if room is not None and len(out) > room:
        longer = np.maximum(distance[out[:, 0]], distance[out[:, 1]])
        out = out[np.sort(np.argsort(longer, kind="stable")[:room])]
    return out


@eqx.filter_jit
def _prior_force_variance(config: Config, stats: Stats, hyper: Hyper, xs: jax.Array) -> jax.Array:
    """Mean prior variance of a gradient component of DSoftKI alone over structures xs (compiled:
    op by op, an atomic model's rows of 64 structures took a minute)."""
    chol = soft_cholesky(config, hyper)
    rows = jax.vmap(lambda xi: basis_rows(config, stats, hyper, chol, xi))(xs)
    return jnp.mean(jnp.sum(rows[:, 1:] ** 2, axis=-1))


def match_prior_scale(model: ForceGP, x: np.ndarray, g: np.ndarray, *, sample: int = 64) -> ForceGP:
    """Set the DSoftKI output scale so the prior variance of gradient components matches the data.

    With T = 1 and k-means points the interpolation weights can be steep, so a unit output scale
    puts far more prior variance on forces than the data show, and the first epochs are spent
    shrinking it. Matching second moments on a sample of structures removes that.
    """
    cfg = dataclasses.replace(model.config, explicit="none")
    prior_var = float(_prior_force_variance(cfg, model.stats, model.hyper, jnp.asarray(x[:sample])))
    data_var = float(np.mean(np.asarray(g) ** 2))
    if not (np.isfinite(prior_var) and prior_var > 0 and data_var > 0):
        return model
    scale = float(model.hyper.scale) * data_var / prior_var
    return eqx.tree_at(lambda m: m.hyper.raw_scale, model, jnp.asarray(softplus_inv(max(scale, 1e-8))))
