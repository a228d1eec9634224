"""Which structures to label next: greedy, aware of the batch, by one of two objectives.

- ``variance``: the candidate whose own forces are most uncertain (largest summed posterior
  force variance).
- ``integrated``: the candidate whose energy and forces, once labelled, would lower the summed
  posterior force variance of a set of target structures the most (by default the candidates
  themselves): an integrated-variance, or transductive, design. It prefers structures that are
  uncertain *and* resemble many others, where ``variance`` prefers the most unusual ones.

The model's weights have the posterior theta ~ N(mean, C) with C = P^-1 = A^T A, A = inv_chol
(:class:`forcegp.gp.params.Posterior`). A candidate's value and gradient rows phi (1+D, K) have the
latent covariance phi C phi^T = S S^T with S = phi A^T, so each candidate is summarised by S
(1+D, K), computed once. Its score is the sum of its force-component variances, the trace of
S_f S_f^T over the D gradient rows (scaled to eV^2/Å^2).

Batch awareness: after picking candidate j, C is conditioned on its energy and forces as if they
had been observed with the model's noise Lambda (with an input-dependent noise, gp.misfit, the
noise of that candidate's rows) (the labels themselves are not needed for a
variance), C' = C - C phi_j^T (phi_j C phi_j^T + Lambda)^-1 phi_j C. In square-root form this is
C' = A^T F F^T A with the rank-(1+D) factor (Andrews 1968)

    F = I - U^T W U,   U = S_j,   W = L_G^-T (L_G + L_Lambda)^-1,   G = U U^T + Lambda = L_G L_G^T,

so every candidate's S is updated in place, S <- S - (S U^T) W U, without ever touching a K x K
matrix: O(n_cand (1+D)^2 K) per pick (the cross-covariances S U^T are the unavoidable part) and
O(n_cand (1+D) K) memory. A candidate that duplicates (or resembles) an earlier pick loses its
variance, so the next pick is somewhere else: the batch is diverse. ``batch_aware=False`` gives
plain top-k by the initial scores.

The integrated objective: the targets' force rows T (whitened like S) give Q = T_f^T T_f (K x K),
their summed force variance is tr(Q) and labelling candidate c (rows U_c, noise Lambda_c) lowers
it by gain_c = tr(G_c^-1 U_c Q U_c^T), G_c = U_c U_c^T + Lambda_c. Q is kept as a factor E (r, K)
of its leading eigen-directions (Q ~ E^T E; the dropped ones, each below ``rtol`` times the
largest eigenvalue, change a gain by at most (1+D) rtol lambda_max), and conditioning on a pick
updates it like S: E <- E - (E U^T) W U. Per pick O(n_cand (1+D) K (1+D+r)).

The misfit as error (``misfit="error"``): a model's input-dependent noise ||phi misfit||^2
joins the summary instead of Lambda, S = phi [A^T | misfit], so the scores are the force
variances the prediction reports (less the constant noise) and a pick lowers the misfit of
the candidates it correlates with, as labels there would lower the model's error; the same
updates apply with K' = K + the misfit's columns (docs/method.md §12).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ase.io
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from .data import Dataset, check_numbers, concatenate, read_dataset
from .errors import InputError, NumericalError
from .gp.basis import noise_vector
from .gp.likelihood import batch_rows
from .gp.params import ForceGP


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select_structures`.

    indices (k,): candidate indices in the order picked. scores (k,): each pick's score when it
    was picked, the summed force-component variance (eV^2/Å^2, noise-free) conditional on the
    earlier picks (batch-aware) or unconditional (top-k). initial_scores (n_candidates,): all
    candidates' scores before any pick. n_dim: D = 3 n_atoms, so sqrt(score / D) is the
    root-mean-square force-component std (eV/Å). objective: what the picks maximised; for
    ``integrated``, gains (k,): how much each pick, given the earlier ones, lowers the targets'
    summed force variance (eV^2/Å^2, noise-free).
    """

    indices: np.ndarray
    scores: np.ndarray
    initial_scores: np.ndarray
    n_dim: int
    batch_aware: bool
    objective: str = "variance"
    gains: np.ndarray | None = None

    def rms_force_std(self) -> np.ndarray:
        """(k,) root-mean-square force-component std of each pick (eV/Å)."""
        return np.sqrt(np.maximum(self.scores, 0.0) / self.n_dim)


MISFIT_CHOICES = ("noise", "error")


def _factor(model: ForceGP, misfit: str) -> jax.Array:
    """The factor B (K, K') with S = phi B: A^T, or with ``misfit="error"`` and a model with an
    input-dependent noise [A^T | misfit], so S S^T is the posterior covariance plus the misfit."""
    factor = model.posterior.inv_chol.T
    if misfit == "error" and model.posterior.misfit is not None:
        factor = jnp.concatenate([factor, model.posterior.misfit], axis=1)
    return factor


@eqx.filter_jit
def _whitened_rows(model: ForceGP, factor: jax.Array, x: jax.Array) -> jax.Array:
    """S = phi B for structures x (C, D): (C, 1+D, K'), in standardised units (B: _factor)."""
    return batch_rows(model, model.hyper, x) @ factor


@eqx.filter_jit
def _summaries(
    model: ForceGP, factor: jax.Array, x: jax.Array, misfit_noise: bool
) -> tuple[jax.Array, jax.Array]:
    """S (C, 1+D, K') as _whitened_rows, and the noise variances (C, 1+D) of the same rows: the
    constant levels plus, with ``misfit_noise`` (the misfit counted as noise, not in B), the
    input-dependent noise ||phi misfit||^2 per row (gp.misfit); one evaluation of the rows
    serves both."""
    rows = batch_rows(model, model.hyper, x)
    noise = jnp.broadcast_to(noise_vector(model.config, model.hyper), rows.shape[:2])
    if misfit_noise and model.posterior.misfit is not None:
        noise = noise + jnp.sum((rows @ model.posterior.misfit) ** 2, axis=2)
    return rows @ factor, noise


@jax.jit
def _force_gram(s: jax.Array, weight: jax.Array) -> jax.Array:
    """sum_c weight_c S_c,f^T S_c,f (K, K) over a chunk s (C, 1+D, K), force rows only."""
    f = s[:, 1:] * jnp.sqrt(weight)[:, None, None]
    return jnp.einsum("crk,crl->kl", f, f)


@jax.jit
def _target_gain(s: jax.Array, noise: jax.Array, e: jax.Array) -> jax.Array:
    """(C,) tr(G_c^-1 U_c E^T E U_c^T) for a chunk s (C, 1+D, K) with noise (C, 1+D)."""
    g = jnp.einsum("crk,csk->crs", s, s) + jax.vmap(jnp.diag)(noise)
    z = jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(g), s @ e.T, lower=True)
    return jnp.sum(z**2, axis=(1, 2))


@jax.jit
def _force_variance(s: jax.Array) -> jax.Array:
    """(C,) sum of the gradient rows' latent variances."""
    return jnp.sum(s[:, 1:] ** 2, axis=(1, 2))


@jax.jit
def _gain(u: jax.Array, noise: jax.Array) -> jax.Array:
    """V = W U (1+D, K) of the square-root update for the picked rows U (1+D, K)."""
    g = u @ u.T + jnp.diag(noise)
    chol_g = jnp.linalg.cholesky(g)
    eye = jnp.eye(g.shape[0], dtype=g.dtype)
    x = jax.scipy.linalg.solve_triangular(chol_g + jnp.diag(jnp.sqrt(noise)), eye, lower=True)
    w = jax.scipy.linalg.solve_triangular(chol_g.T, x, lower=False)
    return w @ u


@partial(jax.jit, donate_argnums=0)
def _condition(s: jax.Array, u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Condition a chunk s (C, 1+D, K) on the picked rows: s <- s - (s U^T) W U; new scores."""
    cross = jnp.einsum("crk,sk->crs", s, u)
    s = s - jnp.einsum("crs,sk->crk", cross, v)
    return s, jnp.sum(s[:, 1:] ** 2, axis=(1, 2))


def _padded_chunks(n: int, chunk: int) -> list[np.ndarray]:
    """Indices of ``chunk`` structures per compiled call, the last chunk padded with repeats of
    the first structures (so every call has one compiled shape)."""
    return [np.arange(start, start + chunk) % n for start in range(0, n, chunk)]


def _rows_in_chunks(
    model: ForceGP, factor: jax.Array, x: np.ndarray, chunk: int, misfit_noise: bool
) -> tuple[list[jax.Array], list[jax.Array]]:
    """S and noise variances (_summaries) of every candidate x (n, D), in padded chunks."""
    idx = _padded_chunks(len(x), chunk)
    pairs = [_summaries(model, factor, jnp.asarray(x[i]), misfit_noise) for i in idx]
    return [s for s, _ in pairs], [noise for _, noise in pairs]


def _target_factor(
    model: ForceGP, factor: jax.Array, x: np.ndarray, chunk: int, rtol: float
) -> jax.Array:
    """E (r, K') with E^T E the leading eigen-part of Q = T_f^T T_f of the targets x (m, D)."""
    m = len(x)
    q = 0.0
    for c, idx in enumerate(_padded_chunks(m, chunk)):
        # the padding repeats count zero
        weight = jnp.asarray((c * chunk + np.arange(chunk) < m).astype(np.float64))
        q = q + _force_gram(_whitened_rows(model, factor, jnp.asarray(x[idx])), weight)
    values, vectors = np.linalg.eigh(np.asarray(q))
    keep = values > rtol * max(values[-1], 0.0)
    if not np.any(keep):
        raise NumericalError("the targets' force variance is zero; nothing to reduce")
    return jnp.asarray((vectors[:, keep] * np.sqrt(values[keep])).T)


def select_structures(
    model: ForceGP,
    positions: np.ndarray,
    k: int,
    *,
    batch_aware: bool = True,
    numbers=None,
    chunk: int = 64,
    objective: str = "variance",
    targets=None,
    rtol: float = 1e-10,
    misfit: str = "noise",
) -> Selection:
    """Pick ``k`` of the candidate structures ``positions`` (n, N, 3) Å whose labels would
    reduce the model's force uncertainty most (see the module docstring).

    numbers: the candidates' atomic numbers, checked against the model's. chunk: structures per
    compiled call (memory of the rows is training.resources.memory_bytes). objective:
    ``variance`` or ``integrated``; targets (m, N, 3): the structures whose force variance
    ``integrated`` lowers (None: the candidates); rtol: its eigenvalue cut. misfit: how a model's
    input-dependent noise (gp.misfit) counts: ``noise``, as the likelihood treats it (a label
    cannot lower it, and it makes a label less informative), or ``error``, as model error that
    labels remove where they correlate (the variances are then those of the std the user sees,
    less the constant noise); no effect on a model with a constant noise. Raises InputError for
    a bad k, objective, targets or misfit.
    """
    if model.posterior is None:
        raise InputError("the model has no fitted posterior; train it first")
    check_numbers(model.numbers, numbers, "the model", "the candidates")
    positions = np.asarray(positions, dtype=np.float64)
    n = len(positions)
    if positions.ndim != 3 or positions.shape[1:] != (model.n_atoms, 3):
        raise InputError(f"candidates must have shape (n, {model.n_atoms}, 3), got {positions.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise InputError(f"cannot pick {k!r} of {n} candidates; pick between 1 and {n}")
    if objective not in ("variance", "integrated"):
        raise InputError(f"unknown objective {objective!r}; use 'variance' or 'integrated'")
    if misfit not in MISFIT_CHOICES:
        raise InputError(f"unknown misfit {misfit!r}; use 'noise' or 'error'")
    cov_factor = _factor(model, misfit)
    x = positions.reshape(n, -1)
    chunks, noises = _rows_in_chunks(model, cov_factor, x, chunk, misfit_noise=misfit == "noise")
    factor = None
    if objective == "integrated":
        t = positions if targets is None else np.asarray(targets, dtype=np.float64)
        if t.ndim != 3 or t.shape[1:] != (model.n_atoms, 3) or len(t) == 0:
            raise InputError(f"targets must have shape (m, {model.n_atoms}, 3), got {t.shape}")
        factor = _target_factor(model, cov_factor, t.reshape(len(t), -1), chunk, rtol)

    def gather(parts) -> np.ndarray:
        return np.concatenate([np.asarray(p) for p in parts])[:n]

    scale2 = float(model.stats.energy_scale) ** 2

    def gains() -> np.ndarray:
        return gather([_target_gain(s, e, factor) for s, e in zip(chunks, noises, strict=True)])

    scores = gather([_force_variance(s) for s in chunks])
    initial = scores * scale2
    objective_values = scores if factor is None else gains()
    available = np.ones(n, dtype=bool)
    picked, picked_scores, picked_gains = [], [], []
    for t in range(int(k)):
        j = int(np.argmax(np.where(available, objective_values, -np.inf)))
        picked.append(j)
        picked_scores.append(scores[j] * scale2)
        picked_gains.append(objective_values[j] * scale2)
        available[j] = False
        if not batch_aware or t == k - 1:
            continue
        u = chunks[j // chunk][j % chunk]  # a copy: the chunk itself is donated below
        v = _gain(u, noises[j // chunk][j % chunk])
        new = []
        for c, s in enumerate(chunks):
            chunks[c], sc = _condition(s, u, v)
            new.append(sc)
        scores = gather(new)
        objective_values = scores
        if factor is not None:
            factor = factor - (factor @ u.T) @ v
            objective_values = gains()
        if not np.all(np.isfinite(objective_values)):
            raise NumericalError("the variance update became non-finite; lower `n_inducing`")
    return Selection(
        indices=np.asarray(picked, dtype=np.int64),
        scores=np.asarray(picked_scores, dtype=np.float64),
        initial_scores=initial,
        n_dim=model.config.dim,
        batch_aware=bool(batch_aware),
        objective=objective,
        gains=None if factor is None else np.asarray(picked_gains, dtype=np.float64),
    )


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Candidates:
    """Candidate structures read from files: the data, and where each frame came from.

    sources[i], frames[i]: file and frame index within it of candidate i. predicted[i]: its
    energy and forces are a model's predictions (``forcegp md`` output), not reference labels.
    """

    data: Dataset
    sources: tuple[str, ...]
    frames: np.ndarray
    predicted: np.ndarray


def read_candidates(paths, **reader_kwargs) -> Candidates:
    """Read candidate files (labels optional) with :func:`forcegp.data.read_dataset`."""
    parts, sources, frames, predicted = [], [], [], []
    for path in [Path(p) for p in paths]:
        part = read_dataset(path, require_labels=False, **reader_kwargs)
        parts.append(part)
        sources += [str(path)] * part.n_frames
        frames.append(np.arange(part.n_frames))
        predicted.append(_predicted_flags(path, part.n_frames))
    return Candidates(
        data=concatenate(parts),
        sources=tuple(sources),
        frames=np.concatenate(frames),
        predicted=np.concatenate(predicted),
    )


def _predicted_flags(path: Path, n_frames: int) -> np.ndarray:
    """Which frames of an ASE-format file carry info["forcegp_predicted"] (npz: none)."""
    if path.suffix.lower() == ".npz":
        return np.zeros(n_frames, dtype=bool)
    flags = [bool(atoms.info.get("forcegp_predicted", False)) for atoms in ase.io.iread(path)]
    return np.array(flags + [False] * (n_frames - len(flags)), dtype=bool)[:n_frames]


def picked_atoms(candidates: Candidates, selection: Selection) -> list[Atoms]:
    """The picked frames, in pick order: positions, the candidates' reference labels if they had
    any (model predictions are dropped), and info select_rank (1 = first pick), select_score
    (eV^2/Å^2), select_force_std (eV/Å, RMS), select_source and select_frame."""
    data = candidates.data
    rms = selection.rms_force_std()
    images = []
    for rank, (i, score) in enumerate(zip(selection.indices, selection.scores, strict=True)):
        atoms = Atoms(numbers=data.numbers, positions=data.positions[i])
        labels = {}
        if not candidates.predicted[i]:
            if data.energies is not None:
                labels["energy"] = float(data.energies[i])
            if data.forces is not None:
                labels["forces"] = np.array(data.forces[i])
        if labels:
            atoms.calc = SinglePointCalculator(atoms, **labels)
        atoms.info.update(
            select_rank=rank + 1,
            select_score=float(score),
            select_force_std=float(rms[rank]),
            select_source=candidates.sources[i],
            select_frame=int(candidates.frames[i]),
        )
        if selection.gains is not None:
            atoms.info["select_gain"] = float(selection.gains[rank])
        images.append(atoms)
    return images


def label_note(candidates: Candidates, selection: Selection) -> str:
    """What the written frames carry, for the user: labels kept, none, or predictions dropped."""
    idx = selection.indices
    if np.any(candidates.predicted[idx]):
        return "model-predicted energies/forces dropped: label the frames before training"
    if candidates.data.labelled:
        return "with their energies and forces"
    return "positions only: label them before training"
