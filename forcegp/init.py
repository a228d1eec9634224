"""Build an untrained ForceGP from training data: statistics, PCA, k-means interpolation points."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from . import descriptors
from .errors import InputError
from .model import (
    NOISE_FLOOR,
    SCALE_FLOOR,
    T_FLOOR,
    Config,
    ForceGP,
    Hyper,
    Stats,
    features,
    softplus_inv,
)


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

    energy_mean = float(np.mean(energies))
    energy_scale = float(np.std(energies))
    force_rms = float(np.sqrt(np.mean(np.asarray(forces) ** 2)))
    if not energy_scale > 1e-6:
        energy_scale = max(force_rms, 1e-3)

    if config.n_permutations > 1:
        perms = descriptors.molecular_permutations(numbers, x[0], limit=config.n_permutations)
    else:
        perms = np.arange(config.n_atoms)[None]
    if config.width < 0:
        config = dataclasses.replace(config, width=budgeted_width(config, len(perms)))
    raw = jax.vmap(lambda xi: descriptors.raw_descriptor(config.descriptor, xi, config.n_atoms))
    sample = jnp.asarray(x[: min(n, 2000)])
    # Statistics over every permuted copy, so symmetric atoms share them.
    descs = np.concatenate(
        [np.asarray(raw(sample[:, descriptors.coordinate_index(jnp.asarray(p))])) for p in perms],
        axis=0,
    )
    desc_mean = descs.mean(0)
    desc_std = np.maximum(descs.std(0), 1e-6 * (np.abs(desc_mean) + 1e-12))
    v = (descs - desc_mean) / desc_std
    q = config.explicit_q
    evals, evecs = np.linalg.eigh(np.cov(v, rowvar=False) + 1e-12 * np.eye(v.shape[1]))
    order = np.argsort(evals)[::-1][:q]
    projection = evecs[:, order] / np.sqrt(np.maximum(evals[order], 1e-10))[None]
    room = max(EXPLICIT_MAX - dataclasses.replace(config, n_local=0).n_explicit, 0)
    pairs = local_pairs(config, descs, room)
    config = dataclasses.replace(config, n_local=len(pairs))
    if config.explicit_cubic < 0:
        config = dataclasses.replace(config, explicit_cubic=budgeted_cubic(config, n))

    stats = Stats(
        jnp.asarray(desc_mean),
        jnp.asarray(desc_std),
        jnp.asarray(projection),
        jnp.asarray(energy_mean),
        jnp.asarray(energy_scale),
        jnp.asarray(perms, dtype=jnp.int32),
        jnp.asarray(pairs, dtype=jnp.int32).reshape(-1, 2),
    )
    mlp = None
    if config.n_features > 0:
        mlp = descriptors.DeepKernel(
            config.descriptor_size, config.n_features, config.width, config.depth, key=k_mlp
        )
    m, p = config.n_inducing, config.feature_size
    placeholder = Hyper(
        mlp, jnp.zeros((m, p)), jnp.zeros((m, p)), jnp.zeros((p,)), *([jnp.asarray(0.0)] * 5)
    )
    u = jax.vmap(lambda xi: features(config, stats, placeholder, xi))(sample)
    z = kmeans(u, m, key=k_means)
    dz = jnp.sqrt(jnp.sum((z[:, None] - z[None]) ** 2, -1))
    median = float(jnp.median(dz[jnp.triu_indices(m, 1)])) if m > 1 else 1.0
    lengthscale = max(0.5 * median, 0.1)

    g_rms = force_rms / energy_scale
    n_quad = max(config.n_explicit - config.n_explicit_pair, 1)
    n_lin = config.n_explicit_pair or q
    hyper = Hyper(
        mlp=mlp,
        z=z,
        raw_temperature=jnp.full((m, p), softplus_inv(1.0 - T_FLOOR)),
        raw_lengthscale=jnp.full((p,), softplus_inv(lengthscale)),
        raw_scale=jnp.asarray(softplus_inv(1.0)),
        raw_scale_linear=jnp.asarray(softplus_inv(max(1.0 / np.sqrt(n_lin), 2 * SCALE_FLOOR))),
        raw_scale_quadratic=jnp.asarray(softplus_inv(max(0.3 / np.sqrt(n_quad), 2 * SCALE_FLOOR))),
        raw_noise_energy=jnp.asarray(softplus_inv(0.05)),
        raw_noise_force=jnp.asarray(softplus_inv(max(0.05 * g_rms, 2 * NOISE_FLOOR))),
    )
    return ForceGP(config, tuple(int(a) for a in numbers), stats, hyper, None)


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


#: Cost budget of the explicit block, observations x F^2 (the F x F accumulation of the prefit and
#: of the posterior fit): rMD17 aspirin's block at 1000 structures (F = 3224), whose fit
#: is a sixth of its training time. Measured in benchmarks/results/rmd17_variants.jsonl: the
#: cubic block's size is the largest accuracy lever on the small molecules.
EXPLICIT_BUDGET = 6.7e11
#: At most this many explicit functions where the data-chosen parts can keep it (the cubic terms,
#: budgeted_cubic, and the local terms, local_pairs): the block's F x F eigendecompositions (F^3)
#: do not shrink with the data; rMD17 ethanol's cubic-26 block (F = 3987) adds about 2.5
#: minutes. The pair powers (pair_powers x N(N-1)/2) and the quadratic PCA terms are the user's
#: settings and are kept: beyond about 50 atoms they alone exceed it.
EXPLICIT_MAX = 4000


def budgeted_cubic(config: Config, n_train: int) -> int:
    """Leading PCA components in the cubic terms ("auto"): the largest c <= explicit_dim whose
    explicit block of F functions keeps n_train * (1 + 3N) * F^2 within EXPLICIT_BUDGET, F within
    EXPLICIT_MAX and at most the number of observations (beyond that the block costs more than
    the data hold)."""
    obs = n_train * (1 + config.dim)
    best = 0
    for c in range(config.explicit_q + 1):
        f = dataclasses.replace(config, explicit_cubic=c).n_explicit
        if obs * f * f > EXPLICIT_BUDGET or f > min(obs, EXPLICIT_MAX):
            break
        best = c
    return best


#: Deep-kernel width ("auto"): WIDE where a training structure costs at most WIDE_COST tangent
#: rows through the MLP (permutation copies x (1 + 3N)), NARROW elsewhere. Each training step
#: pushes every copy's 1 + 3N tangents through the MLP, so its cost grows with width x that
#: product; width 128 took rMD17 malonaldehyde from 31.9 to 27.7 meV/Å and ethanol (with the
#: cubic-26 block) from 21.3 to 18.9 (docs/ablation.md) for about 45% more epoch time, which
#: the molecules with many copies or atoms (benzene, toluene, aspirin, paracetamol,
#: azobenzene: 384-732 rows) cannot spend within ten minutes.
NARROW, WIDE, WIDE_COST = 64, 128, 350


def few_tangent_rows(config: Config, n_permutations: int) -> bool:
    """A training structure costs at most WIDE_COST tangent rows (copies x (1 + 3N)): the one
    cost measure behind the width and epochs rules."""
    return n_permutations * (1 + config.dim) <= WIDE_COST


def budgeted_width(config: Config, n_permutations: int) -> int:
    return WIDE if few_tangent_rows(config, n_permutations) else NARROW


#: Training epochs ("auto"): LONG for the molecules whose structures cost at most WIDE_COST
#: tangent rows per step (the same measure as the width), SHORT elsewhere. The deep kernel is
#: still improving at 40 epochs (rMD17 ethanol 18.9 -> 15.0 meV/Å with 60, malonaldehyde
#: 31.9 -> 27.7; docs/ablation.md); the molecules with many copies or atoms cannot spend 60
#: within ten minutes on two cores.
SHORT, LONG = 40, 60


def budgeted_epochs(model: ForceGP) -> int:
    return LONG if few_tangent_rows(model.config, model.n_copies) else SHORT


def match_prior_scale(model: ForceGP, x: np.ndarray, g: np.ndarray, *, sample: int = 64) -> ForceGP:
    """Set the DSoftKI output scale so the prior variance of gradient components matches the data.

    With T = 1 and k-means points the interpolation weights can be steep, so a unit output scale
    puts far more prior variance on forces than the data show, and the first epochs are spent
    shrinking it. Matching second moments on a sample of structures removes that.
    """
    import dataclasses

    import equinox as eqx

    from .model import basis_rows, soft_cholesky

    cfg = dataclasses.replace(model.config, explicit="none")
    chol = soft_cholesky(cfg, model.hyper)
    xs = jnp.asarray(x[:sample])
    rows = jax.vmap(lambda xi: basis_rows(cfg, model.stats, model.hyper, chol, xi))(xs)
    prior_var = float(jnp.mean(jnp.sum(rows[:, 1:] ** 2, axis=-1)))
    data_var = float(np.mean(np.asarray(g) ** 2))
    if not (np.isfinite(prior_var) and prior_var > 0 and data_var > 0):
        return model
    scale = float(model.hyper.scale) * data_var / prior_var
    return eqx.tree_at(lambda m: m.hyper.raw_scale, model, jnp.asarray(softplus_inv(max(scale, 1e-8))))
