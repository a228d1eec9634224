"""Which structures to label next: greedy maximum posterior variance, aware of the batch.

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
    root-mean-square force-component std (eV/Å).
    """

    indices: np.ndarray
    scores: np.ndarray
    initial_scores: np.ndarray
    n_dim: int
    batch_aware: bool

    def rms_force_std(self) -> np.ndarray:
        """(k,) root-mean-square force-component std of each pick (eV/Å)."""
        return np.sqrt(np.maximum(self.scores, 0.0) / self.n_dim)


@eqx.filter_jit
def _whitened_rows(model: ForceGP, x: jax.Array) -> jax.Array:
    """S = phi A^T for structures x (C, D): (C, 1+D, K), in standardised units."""
    return batch_rows(model, model.hyper, x) @ model.posterior.inv_chol.T


@eqx.filter_jit
def _pick_noise(model: ForceGP, x: jax.Array) -> jax.Array:
    """Noise variances (1+D,) of one structure x (D,): the constant levels plus, for a model
    with an input-dependent noise (gp.misfit), its misfit ||phi misfit||^2 per row."""
    noise = noise_vector(model.config, model.hyper)
    if model.posterior.misfit is None:
        return noise
    rows = batch_rows(model, model.hyper, x[None])[0]
    return noise + jnp.sum((rows @ model.posterior.misfit) ** 2, axis=1)


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


def _rows_in_chunks(model: ForceGP, x: np.ndarray, chunk: int) -> list[jax.Array]:
    """S of every candidate x (n, D), in chunks of ``chunk`` (the last padded with repeats, so
    every call has one compiled shape)."""
    n = len(x)
    starts = range(0, n, chunk)
    return [_whitened_rows(model, jnp.asarray(x[np.arange(s, s + chunk) % n])) for s in starts]


def select_structures(
    model: ForceGP,
    positions: np.ndarray,
    k: int,
    *,
    batch_aware: bool = True,
    numbers=None,
    chunk: int = 64,
) -> Selection:
    """Pick ``k`` of the candidate structures ``positions`` (n, N, 3) Å whose labels would
    reduce the model's force uncertainty most (see the module docstring).

    numbers: the candidates' atomic numbers, checked against the model's. chunk: structures per
    compiled call (memory of the rows is training.resources.memory_bytes). Raises InputError for a bad k.
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
    chunks = _rows_in_chunks(model, positions.reshape(n, -1), chunk)

    def gather(parts) -> np.ndarray:
        return np.concatenate([np.asarray(p) for p in parts])[:n]

    scale2 = float(model.stats.energy_scale) ** 2
    scores = gather([_force_variance(s) for s in chunks])
    initial = scores * scale2
    flat = positions.reshape(n, -1)
    available = np.ones(n, dtype=bool)
    picked, picked_scores = [], []
    for t in range(int(k)):
        j = int(np.argmax(np.where(available, scores, -np.inf)))
        picked.append(j)
        picked_scores.append(scores[j] * scale2)
        available[j] = False
        if not batch_aware or t == k - 1:
            continue
        u = chunks[j // chunk][j % chunk]  # a copy: the chunk itself is donated below
        v = _gain(u, _pick_noise(model, jnp.asarray(flat[j])))
        new = []
        for c, s in enumerate(chunks):
            chunks[c], sc = _condition(s, u, v)
            new.append(sc)
        scores = gather(new)
        if not np.all(np.isfinite(scores)):
            raise NumericalError("the variance update became non-finite; lower `n_inducing`")
    return Selection(
        indices=np.asarray(picked, dtype=np.int64),
        scores=np.asarray(picked_scores, dtype=np.float64),
        initial_scores=initial,
        n_dim=model.config.dim,
        batch_aware=bool(batch_aware),
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
