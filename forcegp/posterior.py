"""Posterior fit streamed over the training set in O(K^2) memory, and prediction (sections 6-7).

    A = sum_chunks Phi_c^T Lam_c^-1 Phi_c,  b = sum_chunks Phi_c^T Lam_c^-1 t_c
    P = I + A,  mean = P^-1 b,  Cov(theta | data) = P^-1

Each device accumulates its own share of every chunk in its own K x K block; the blocks are summed
once at the end (one reduction). Energies, forces and their standard deviations follow from
phi(x): E = sigma phi^T mean + mu, F = -dE/dx (autodiff), Var = sigma^2 (||L_P^-1 row||^2 + noise).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import evidence
from .errors import NumericalError, ResourceError
from .model import (
    NOISE_FLOOR,
    SCALE_FLOOR,
    Config,
    ForceGP,
    Hyper,
    Posterior,
    Stats,
    basis_rows,
    noise_vector,
    raw_rows,
    raw_value,
    soft_cholesky,
    softplus_inv,
)

BYTES = 8  # float64


#: Share of the machine's available memory a chunk may plan for when no --max-memory is given.
AVAILABLE_SHARE = 0.7


def structure_bytes(config, n_copies: int = 1) -> int:
    """Bytes one structure's observation rows take while they are computed: the rows themselves
    (1 + D, K) with two temporaries of their size, and the feature map's intermediates per
    permuted copy. On inverse distances with a deep kernel (model._PairJacobian) those are the
    tangent rows (D, width) through the MLP's layers, the pair gradients and N x N pair
    matrices, and for the explicit block the PCA tangents (D, q) and the scattered pair terms;
    otherwise the dense descriptor Jacobian (P, D), the pair powers' product-rule terms of that
    shape and (n_local, D) for the local products. Each counted as if materialised (XLA fuses
    some): an upper estimate."""
    d, k, p, n = config.dim, config.n_basis, config.descriptor_size, config.n_atoms
    pairs = config.descriptor == "inverse-distance"
    n_local = config.n_local if config.explicit == "polynomial" else 0
    if pairs and config.n_features > 0:
        per_copy = d * 4 * max(config.width, 128) + 9 * n * n
    else:
        per_copy = d * 4 * p
    if config.explicit != "none":
        per_copy += d * 2 * config.explicit_q
        per_copy += 8 * (p + 2 * n_local) if pairs else d * 2 * n_local
    return BYTES * (3 * (1 + d) * k + n_copies * per_copy)


def fit_memory_bytes(config, chunk: int, n_devices: int = 1, n_copies: int = 1) -> int:
    """Peak bytes of the streamed fit: a chunk's rows with their intermediates, and the K x K
    blocks (one per device, the sum and two for the solve)."""
    k = config.n_basis
    return chunk * structure_bytes(config, n_copies) + BYTES * (n_devices + 3) * k * k


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def device_memory_bytes(devices) -> int | None:
    """Free memory of the least free of ``devices`` by JAX's allocator statistics (bytes_limit -
    bytes_in_use: XLA's GPU allocator reserves most of the GPU at start-up, so the GPU's own
    figures would say little); None for CPU devices, which share the host's memory, or where a
    device gives no statistics."""
    free = []
    for device in devices:
        if device.platform == "cpu":
            return None
        try:
            stats = device.memory_stats()
        except Exception:  # a backend or plugin without allocator statistics
            return None
        if not stats or "bytes_limit" not in stats:
            return None
        free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    return min(free) if free else None


def memory_limit(max_memory: float | None, n_devices: int = 1) -> tuple[float | None, str]:
    """Bytes a planned computation on the first ``n_devices`` devices may use, and how to name
    that limit in an error: max_memory (--max-memory) if given; else on accelerators
    AVAILABLE_SHARE of their free memory (the least free one's times n_devices: each holds its
    share of the chunk or batch), on CPU of the memory the machine has available now; (None,
    ...) where neither is known (no check)."""
    if max_memory is not None:
        return float(max_memory), "--max-memory"
    devices = jax.devices()[:n_devices]
    free = device_memory_bytes(devices)
    if free is not None:
        what = f"the free memory of {len(devices)} {devices[0].platform.upper()} device(s)"
        return AVAILABLE_SHARE * len(devices) * free, what
    available = available_memory_bytes()
    if available is None:
        return None, "the memory this machine has available"
    return AVAILABLE_SHARE * available, "the memory this machine has available"


def choose_chunk(
    config, max_memory: float | None, n_devices: int = 1, default: int = 64, *, n_copies: int = 1
) -> int:
    """Largest chunk of structures (a multiple of n_devices, at most ``default``) whose rows and
    K x K blocks fit in max_memory, or without it in AVAILABLE_SHARE of the memory available
    now (memory_limit: the devices' own on accelerators, the machine's on CPU). Raises
    ResourceError, before anything is allocated, where even the smallest chunk does not fit."""
    chunk = max(n_devices, default - default % n_devices)
    limit, what = memory_limit(max_memory, n_devices)
    if limit is None:
        return chunk
    while chunk > n_devices and fit_memory_bytes(config, chunk, n_devices, n_copies) > limit:
        chunk = max(n_devices, (chunk // 2) - (chunk // 2) % n_devices)
    need = fit_memory_bytes(config, chunk, n_devices, n_copies)
    if need > limit:
        raise ResourceError(
            f"the posterior fit needs about {need / 2**30:.2f} GiB even in chunks of {chunk} "
            f"structures (K={config.n_basis} basis functions, {n_copies} permuted copies of "
            f"{config.descriptor_size} descriptor entries), more than {what} "
            f"({limit / 2**30:.2f} GiB); lower --inducing, --explicit-dim or the permutations "
            "(--no-symmetrize), or raise --max-memory"
        )
    return chunk


def chunk_for(
    model: ForceGP, max_memory: float | None = None, n_devices: int = 1, default: int = 64
) -> int:
    """choose_chunk for a built model: its basis and the number of permuted copies it has."""
    return choose_chunk(model.config, max_memory, n_devices, default, n_copies=model.n_copies)


def make_mesh(n_devices: int | None = None) -> Mesh:
    devices = jax.devices()
    if n_devices is not None:
        if n_devices > len(devices):
            raise ResourceError(
                f"--devices {n_devices} asked for, but JAX sees only {len(devices)} "
                f"({devices[0].platform}); lower --devices"
            )
        devices = devices[:n_devices]
    return Mesh(np.array(devices), ("batch",))


class Sufficient(eqx.Module):
    """Noise-free sufficient statistics of the training data for the finite-rank GP.

    With value rows (energy) and gradient rows (forces) kept apart, the posterior for any noise
    levels and output scale follows without another pass over the data:
    A = c^2 (a_e / beta_e^2 + a_f / beta_f^2), b = c (b_e / beta_e^2 + b_f / beta_f^2).
    """

    a_e: jax.Array  # (K, K) sum of value-row outer products
    a_f: jax.Array  # (K, K) sum of gradient-row outer products
    b_e: jax.Array  # (K,)
    b_f: jax.Array  # (K,)
    tt_e: jax.Array  # () sum of squared standardised energies
    tt_f: jax.Array  # () sum of squared standardised gradient components
    n_e: jax.Array  # () number of value rows
    n_f: jax.Array  # () number of gradient rows


@eqx.filter_jit
def _accumulate(model: ForceGP, chol_zz, acc: Sufficient, x, t, mask) -> Sufficient:
    """Add one chunk. x (C, D), t (C, 1+D), mask (C,); acc leaves carry a leading device axis."""
    n_dev = acc.a_e.shape[0]
    rows = jax.vmap(lambda xi: basis_rows(model.config, model.stats, model.hyper, chol_zz, xi))(x)
    c, r, k = rows.shape
    rows = rows.reshape(n_dev, c // n_dev, r, k) * mask.reshape(n_dev, c // n_dev, 1, 1)
    t = t.reshape(n_dev, c // n_dev, r) * mask.reshape(n_dev, c // n_dev, 1)
    ve, vf = rows[:, :, 0], rows[:, :, 1:]
    return Sufficient(
        a_e=acc.a_e + jnp.einsum("dck,dcl->dkl", ve, ve),
        a_f=acc.a_f + jnp.einsum("dcik,dcil->dkl", vf, vf),
        b_e=acc.b_e + jnp.einsum("dck,dc->dk", ve, t[:, :, 0]),
        b_f=acc.b_f + jnp.einsum("dcik,dci->dk", vf, t[:, :, 1:]),
        tt_e=acc.tt_e + jnp.sum(t[:, :, 0] ** 2, axis=1),
        tt_f=acc.tt_f + jnp.sum(t[:, :, 1:] ** 2, axis=(1, 2)),
        n_e=acc.n_e + jnp.sum(mask.reshape(n_dev, -1), axis=1),
        n_f=acc.n_f + (r - 1) * jnp.sum(mask.reshape(n_dev, -1), axis=1),
    )


def accumulate(
    model: ForceGP,
    x: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    *,
    chunk: int = 64,
    mesh: Mesh | None = None,
    progress: Callable[[int], None] | None = None,
) -> Sufficient:
    """Stream the sufficient statistics over structures x (n, D), y (n,), g (n, D) (standardised)."""
    mesh = mesh or make_mesh(1)
    n_dev = mesh.devices.size
    chunk = max(n_dev, chunk - chunk % n_dev)
    k = model.config.n_basis
    dev_sharding = NamedSharding(mesh, P("batch"))
    zeros = Sufficient(
        jnp.zeros((n_dev, k, k)),
        jnp.zeros((n_dev, k, k)),
        jnp.zeros((n_dev, k)),
        jnp.zeros((n_dev, k)),
        *(jnp.zeros((n_dev,)) for _ in range(4)),
    )
    acc = jax.device_put(zeros, dev_sharding)
    chol_zz = soft_cholesky(model.config, model.hyper)
    t_all = np.concatenate([y[:, None], g], axis=1)
    n = len(x)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        idx = np.arange(start, start + chunk) % n  # pad the last chunk with masked repeats
        mask = (np.arange(start, start + chunk) < stop).astype(np.float64)
        xc, tc, mc = (jax.device_put(a, dev_sharding) for a in (x[idx], t_all[idx], mask))
        acc = _accumulate(model, chol_zz, acc, xc, tc, mc)
        if progress is not None:
            progress(stop - start)
    # The one reduction over devices.
    return jax.tree_util.tree_map(lambda v: jnp.sum(v, axis=0), acc)


def _system(suff: Sufficient, scale, noise_e, noise_f):
    """P = I + c^2 (A_e/be^2 + A_f/bf^2) and b = c (b_e/be^2 + b_f/bf^2)."""
    a = scale**2 * (suff.a_e / noise_e**2 + suff.a_f / noise_f**2)
    b = scale * (suff.b_e / noise_e**2 + suff.b_f / noise_f**2)
    return jnp.eye(a.shape[0], dtype=a.dtype) + 0.5 * (a + a.T), b


def exact_nll(suff: Sufficient, scale, noise_e, noise_f) -> jax.Array:
    """Exact negative log marginal likelihood of ALL accumulated data, per observation."""
    p, b = _system(suff, scale, noise_e, noise_f)
    chol = jnp.linalg.cholesky(p)
    proj = jax.scipy.linalg.solve_triangular(chol, b, lower=True)
    quad = suff.tt_e / noise_e**2 + suff.tt_f / noise_f**2 - proj @ proj
    logdet = (
        2 * jnp.sum(jnp.log(jnp.diag(chol)))
        + suff.n_e * jnp.log(noise_e**2)
        + suff.n_f * jnp.log(noise_f**2)
    )
    n = suff.n_e + suff.n_f
    return 0.5 * (quad + logdet + n * jnp.log(2 * jnp.pi)) / n


def solve(
    suff: Sufficient, noise_e, noise_f, *, scale=1.0, jitter_steps=(0.0, 1e-10, 1e-8, 1e-6)
) -> Posterior:
    """Posterior of theta (prior N(0, I), basis scaled by ``scale``); raises jitter on failure."""
    p, b = _system(suff, scale, noise_e, noise_f)
    eye = jnp.eye(p.shape[0], dtype=p.dtype)
    for i, jitter in enumerate(jitter_steps):
        chol = jnp.linalg.cholesky(p + jitter * jnp.mean(jnp.diag(p)) * eye)
        if bool(jnp.all(jnp.isfinite(chol))):
            if i > 0:
                warnings.warn(
                    f"posterior Cholesky needed jitter {jitter:g}; results are slightly regularised",
                    stacklevel=2,
                )
            inv_chol = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
            mean = inv_chol.T @ (inv_chol @ b)
            if not (bool(jnp.all(jnp.isfinite(mean))) and bool(jnp.all(jnp.isfinite(inv_chol)))):
                break
            return Posterior(mean=mean, inv_chol=inv_chol)
    raise NumericalError(
        "the posterior fit failed: the capacitance matrix is not positive definite even with "
        "jitter (check the data for duplicated or inconsistent frames, or lower --inducing)"
    )


def refine_noise(suff: Sufficient, model: ForceGP):
    """Exact full-data maximum likelihood for the output scale c and both noise levels.

    The batch objective sees only small batches, which biases the noise levels; with the
    accumulated statistics the exact marginal likelihood of the whole training set costs one
    K x K Cholesky factorisation and inverse per evaluation (forcegp.evidence, L-BFGS-B with
    the closed-form gradient). Returns (scale, noise_e, noise_f).
    """
    h = model.hyper
    groups = np.zeros(suff.a_e.shape[0], dtype=np.int64)
    mult, noise_e, noise_f = evidence.maximise(suff, groups, float(h.noise_energy), float(h.noise_force))
    return float(mult[0]), noise_e, noise_f


def basis_groups(config) -> np.ndarray:
    """Group of every basis column: 0 DSoftKI, 1 explicit pair/linear terms, 2 explicit products."""
    n_lin = config.n_explicit_pair if config.explicit == "polynomial" else config.explicit_q
    groups = np.full(config.n_basis, 2, dtype=np.int64)
    groups[: config.n_inducing] = 0
    if config.explicit != "none":
        groups[config.n_inducing : config.n_inducing + n_lin] = 1
    return groups


def scaled_statistics(suff: Sufficient, mult) -> Sufficient:
    """Statistics of the basis whose column j is multiplied by mult[j]."""
    mult = jnp.asarray(mult)
    outer = mult[:, None] * mult[None]
    return eqx.tree_at(
        lambda s: (s.a_e, s.a_f, s.b_e, s.b_f),
        suff,
        (suff.a_e * outer, suff.a_f * outer, suff.b_e * mult, suff.b_f * mult),
    )


def refine_blocks(suff: Sufficient, model: ForceGP):
    """Exact full-data maximum likelihood for one scale per block of basis functions (DSoftKI,
    explicit pair terms, explicit products) and both noise levels. Returns (multipliers (G,),
    noise_e, noise_f); multiply the columns of group g by multipliers[g]."""
    h = model.hyper
    groups = basis_groups(model.config)
    return evidence.maximise(suff, groups, float(h.noise_energy), float(h.noise_force))


def refined(suff: Sufficient, model: ForceGP) -> tuple[ForceGP, Sufficient]:
    """The model with the block scales and noise levels of refine_blocks folded in, and the
    statistics of its (rescaled) basis, ready for solve with the new model's noise levels."""
    mult, noise_e, noise_f = refine_blocks(suff, model)
    model = with_multipliers(model, mult, noise_e, noise_f)
    return model, scaled_statistics(suff, np.asarray(mult)[basis_groups(model.config)])


def with_multipliers(model: ForceGP, mult, noise_e: float, noise_f: float) -> ForceGP:
    """Fold per-block basis multipliers (DSoftKI, explicit pair, explicit product) and new noise
    levels into the raw hyperparameters.

    Each new leaf keeps the dtype, shape and weak-typedness of the leaf it replaces, so what was
    compiled for the trained model (or a model loaded from file) is reused for the result.
    """
    mult = [float(v) for v in mult] + [1.0] * (3 - len(mult))
    h = model.hyper
    inv = softplus_inv
    names = (
        "raw_scale",
        "raw_scale_linear",
        "raw_scale_quadratic",
        "raw_noise_energy",
        "raw_noise_force",
    )
    values = (
        inv(max(float(h.scale) * mult[0] ** 2 - SCALE_FLOOR, 1e-12)),
        inv(max(float(h.scale_linear) * mult[1] - SCALE_FLOOR, 1e-12)),
        inv(max(float(h.scale_quadratic) * mult[2] - SCALE_FLOOR, 1e-12)),
        inv(max(noise_e - NOISE_FLOOR, 1e-12)),
        inv(max(noise_f - NOISE_FLOOR, 1e-12)),
    )
    h = eqx.tree_at(
        lambda t: tuple(getattr(t, name) for name in names),
        h,
        tuple(jnp.full_like(getattr(h, name), v) for name, v in zip(names, values, strict=True)),
    )
    return eqx.tree_at(lambda m: m.hyper, model, h)


def with_amplitude(model: ForceGP, kappa: float) -> ForceGP:
    """The fitted GP with every prior scale and both noise levels multiplied by kappa.

    The posterior mean is unchanged and every predictive variance is multiplied by kappa^2
    (P = I + Phi^T Lam^-1 Phi is invariant; the mean of theta scales by 1/kappa). Exact: the
    result is the posterior of the GP with those hyperparameters, with no refit.
    """
    kappa = float(kappa)
    h = model.hyper
    out = with_multipliers(
        model, (kappa,) * 3, kappa * float(h.noise_energy), kappa * float(h.noise_force)
    )
    post = Posterior(model.posterior.mean / kappa, model.posterior.inv_chol)
    return eqx.tree_at(lambda m: m.posterior, out, post)


def with_scale_and_noise(model: ForceGP, scale: float, noise_e: float, noise_f: float) -> ForceGP:
    """One output-scale multiplier for every block (see with_multipliers)."""
    return with_multipliers(model, (scale, scale, scale), noise_e, noise_f)


def fit(model: ForceGP, x, y, g, *, refine: bool = True, **kwargs) -> ForceGP:
    """Return the model with its posterior fitted on standardised data x (n, D), y (n,), g (n, D).

    With ``refine`` the scale of each block of basis functions and the noise levels are first
    set by the exact marginal likelihood of the whole training set (see refine_blocks); the
    basis functions are otherwise unchanged, so the statistics need one pass only. The result
    is the exact posterior of the final model.
    """
    suff = accumulate(model, x, y, g, **kwargs)
    if refine:
        model, suff = refined(suff, model)
    post = solve(suff, model.hyper.noise_energy, model.hyper.noise_force)
    return eqx.tree_at(lambda m: m.posterior, model, post, is_leaf=lambda v: v is None)


# --------------------------------------------------------------------------- prediction


#: Columns per block of the folded covariance (Predictor.cov).
COV_BLOCK = 256


def cov_blocks(k: int, m: int, block: int | None = None) -> tuple[tuple[int, int, int], ...]:
    """(first column, end column, rows) of each column block of the folded covariance
    [L C_w; C_e] (K x K): its first m rows are dense, the rest upper triangular (C = L_P^-T),
    so the block of columns [lo, hi) is zero below row max(m, hi)."""
    block = block or COV_BLOCK
    edges = [*range(0, k, block), k]
    return tuple((lo, hi, max(m, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True))


class Predictor(eqx.Module):
    """A fitted model folded for prediction: the whitening by L = chol(K_zz) is applied to the
    posterior once, so a structure costs only its own feature map (no M x M Cholesky per call).

    With phi = [w L, e] (DSoftKI weights w, explicit terms e: model.raw_value) and theta's
    posterior N(m, C C^T), C = inv_chol^T:
        E = phi . m = w . (L m_w) + e . m_e,
        Var = ||phi C||^2 = ||[w, e] [L C_w; C_e]||^2 = ||raw rows cov||^2,
    the same numbers as the whitened form, in the same float64 algebra. cov is kept as its
    nonzero column blocks (cov_blocks): C is triangular, so the rows' product with it takes
    about half the arithmetic and memory of the dense K x K one, with the same result.
    """

    config: Config = eqx.field(static=True)
    stats: Stats
    hyper: Hyper
    mean: jax.Array  # (K,) [L m_w; m_e]
    # The nonzero blocks cov[:rows, lo:hi] of [L C_w; C_e] (cov_blocks); None for a predictor
    # of energies and forces only.
    cov: tuple[jax.Array, ...] | None


def predictor(model: ForceGP, with_std: bool = True) -> Predictor:
    """The Predictor of a fitted model (traceable: call it inside or outside jit)."""
    cfg, h, post = model.config, model.hyper, model.posterior
    chol_zz = soft_cholesky(cfg, h)
    m = cfg.n_inducing

    def unwhiten(a):  # [L a_w; a_e] for a (K,) or (K, K): the whitening moved onto a
        return jnp.concatenate([chol_zz @ a[:m], a[m:]], axis=0)

    cov = None
    if with_std:
        full = unwhiten(post.inv_chol.T)
        cov = tuple(full[:rows, lo:hi] for lo, hi, rows in cov_blocks(cfg.n_basis, m))
    return Predictor(cfg, model.stats, h, unwhiten(post.mean), cov)


def covariance_sq_norms(pred: Predictor, rows: jax.Array) -> jax.Array:
    """||rows cov||^2 per row of rows (R, K): the posterior variances of those rows' outputs.
    A block's row count (static under jit) says which leading columns of rows meet it."""
    return sum(jnp.sum((rows[:, : block.shape[0]] @ block) ** 2, axis=1) for block in pred.cov)


def predict_folded(pred: Predictor, x: jax.Array, with_std: bool = True):
    """Energy (eV), forces (N, 3, eV/Å) and, if asked (and pred has cov), their standard
    deviations for x (D,)."""
    stats, cfg, hyper = pred.stats, pred.config, pred.hyper
    e, grad = jax.value_and_grad(lambda y: raw_value(cfg, stats, hyper, y) @ pred.mean)(x)
    energy = stats.energy_scale * e + stats.energy_mean
    forces = (-stats.energy_scale * grad).reshape(cfg.n_atoms, 3)
    if not with_std:
        return energy, forces
    var = covariance_sq_norms(pred, raw_rows(cfg, stats, hyper, x)) + noise_vector(cfg, hyper)
    std = stats.energy_scale * jnp.sqrt(var)
    return energy, forces, std[0], std[1:].reshape(cfg.n_atoms, 3)


def predict_one(model: ForceGP, x: jax.Array, with_std: bool = True):
    """Energy (eV), forces (N, 3, eV/Å) and, if asked, their standard deviations for x (D,).
    Folds the model on every call: for repeated calls build a predictor once."""
    return predict_folded(predictor(model, with_std), x, with_std)


#: predictor, compiled: predict folds the model once for all its chunks (the K x K covariance
#: fold costs about 0.25 s at K ~ 4000, which per chunk of 64 was ~4 ms a structure).
_fold = eqx.filter_jit(predictor)


@eqx.filter_jit
def _predict_batch(pred: Predictor, x, with_std: bool):
    return jax.vmap(lambda xi: predict_folded(pred, xi, with_std))(x)


def predict(model: ForceGP, positions: np.ndarray, *, with_std: bool = True, chunk: int = 64):
    """Predict for positions (n, N, 3) Å. Returns dict of numpy arrays (eV, eV/Å).

    With stds, each chunk computes its structures' observation rows: the chunk is at most
    ``chunk`` and small enough for the memory available (choose_chunk; ResourceError if even
    one structure does not fit)."""
    if model.posterior is None:
        raise NumericalError("the model has no fitted posterior; train it first")
    if with_std:
        chunk = chunk_for(model, default=chunk)
    x = np.asarray(positions, dtype=np.float64).reshape(len(positions), -1)
    n = len(x)
    pred = _fold(model, with_std)
    out: dict[str, list] = {"energy": [], "forces": [], "energy_std": [], "forces_std": []}
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk) % n
        res = _predict_batch(pred, jnp.asarray(x[idx]), with_std)
        keep = min(chunk, n - start)
        for key, val in zip(out, res, strict=False):
            out[key].append(np.asarray(val)[:keep])
    return {k: np.concatenate(v) for k, v in out.items() if v}
