"""High-level steps the CLI and the examples call: train a model, evaluate it, predict with it.

Each function takes Datasets and settings, validates them once, and returns plain results
(models, dicts of floats, ase.Atoms); printing and file formats are the caller's business.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from . import posterior
from .data import Dataset
from .errors import ForceGPError, InputError, NumericalError, ResourceError
from .init import budgeted_epochs, initialize, match_prior_scale, standardise_targets
from .io import (
    CHECKPOINT_FORMAT,
    check_numbers,
    formula,
    is_int,
    json_safe,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from .model import AUTO, AUTO_FIELDS, EXPLICIT_BLOCKS, Config, ForceGP
from .stagewise import explicit_prefit, soft_only
from .train import (
    PRECISIONS,
    TrainSettings,
    TrainState,
    all_finite,
    batch_size,
    copies_per_step,
    optimizer,
    run,
    step_memory_bytes,
    strong_types,
    with_hyper,
)

#: Largest number of atom permutations the symmetrised model averages over (--symmetrize).
MAX_SYMMETRY_PERMUTATIONS = Config.n_permutations

#: progress(event, info): events "message" {text}, "epoch" {epoch, epochs, loss, seconds},
#: "fit" {done, total}, "evaluate" {}.
Progress = Callable[[str, dict], None]


class TrainingInterrupted(ForceGPError):
    """Training was stopped (Ctrl-C); the last completed epoch is in the checkpoint, if any."""

    exit_code = 130


# ----------------------------------------------------------------------------- validation


def _check_labelled(data: Dataset, what: str, at_least: int = 1) -> None:
    where = ", ".join(data.sources) or "in memory"
    if not data.labelled:
        raise InputError(
            f"{what} data ({where}) has no energies and forces; training and evaluation need both"
        )
    if data.n_frames < at_least:
        raise InputError(
            f"{what} data ({where}) has {data.n_frames} frame(s); at least {at_least} are needed"
        )


def make_config(n_atoms: int, config_kwargs: dict | None) -> Config:
    """A Config for ``n_atoms`` from user options, checked once here (InputError if unusable)."""
    kwargs = dict(config_kwargs or {})
    names = {f.name for f in dataclasses.fields(Config)} - {"n_atoms"}
    unknown = set(kwargs) - names
    if unknown:
        raise InputError(f"unknown model option(s) {sorted(unknown)}; known: {sorted(names)}")
    config = Config(n_atoms=n_atoms, **kwargs)
    minimum = {"n_inducing": 1, "n_features": 0, "width": 1, "depth": 1, "explicit_dim": 1}

    def is_auto(name, value) -> bool:  # chosen by init.initialize from the training data
        return name in AUTO_FIELDS and value == AUTO

    for name, low in minimum.items():
        value = getattr(config, name)
        if not is_int(value) or (value < low and not is_auto(name, value)):
            raise InputError(f"model option {name} must be an integer >= {low}, got {value!r}")
    if not is_int(config.n_permutations) or config.n_permutations < 1:
        raise InputError(f"n_permutations must be an integer >= 1, got {config.n_permutations!r}")
    if config.descriptor not in ("inverse-distance", "cartesian"):
        raise InputError(f"unknown descriptor {config.descriptor!r}; use inverse-distance or cartesian")
    if config.explicit not in EXPLICIT_BLOCKS:
        raise InputError(
            f"unknown explicit block {config.explicit!r}; use one of {', '.join(EXPLICIT_BLOCKS)}"
        )
    for name in ("explicit_cubic", "pair_powers"):
        value = getattr(config, name)
        if not is_int(value) or not (0 <= value <= 8 * 36 or is_auto(name, value)):
            auto = f" or {AUTO} (auto)" if name in AUTO_FIELDS else ""
            raise InputError(f"model option {name} must be a non-negative integer{auto}, got {value!r}")
    if not isinstance(config.local_cutoff, (int, float)) or not config.local_cutoff >= 0:
        raise InputError(f"model option local_cutoff must be >= 0 Å, got {config.local_cutoff!r}")
    if n_atoms < 2:
        raise InputError(f"a molecule needs at least 2 atoms, the data has {n_atoms}")
    return config


def check_settings(settings: TrainSettings) -> None:
    epochs = settings.epochs
    if not is_int(epochs) or (epochs < 1 and epochs != AUTO):
        raise InputError(f"epochs must be an integer >= 1 or {AUTO} (auto), got {epochs!r}")
    if not is_int(settings.batch_size) or settings.batch_size < 1:
        raise InputError(f"batch size must be an integer >= 1, got {settings.batch_size!r}")
    k = settings.train_permutations
    if not is_int(k) or k < 0:
        raise InputError(f"train_permutations must be an integer >= 0 (0: all), got {k!r}")
    if settings.precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {settings.precision!r}")
    for name in ("lr", "lr_mlp", "clip"):
        value = getattr(settings, name)
        if not np.isfinite(value) or value <= 0:
            raise InputError(f"{name} must be a positive number, got {value!r}")


# ----------------------------------------------------------------------------- training


def _standardised(model: ForceGP, data: Dataset):
    y, g = standardise_targets(
        data.energies,
        data.forces,
        float(model.stats.energy_mean),
        float(model.stats.energy_scale),
    )
    x = np.asarray(data.positions, dtype=np.float64).reshape(data.n_frames, -1)
    return x, y, g


def train_model(
    train: Dataset,
    *,
    config_kwargs: dict | None = None,
    settings: TrainSettings | None = None,
    seed: int,
    valid: Dataset | None = None,
    valid_fraction: float = 0.05,
    checkpoint=None,
    resume: bool = False,
    devices: int | None = None,
    max_memory: float | None = None,
    progress: Progress | None = None,
) -> tuple[ForceGP, dict]:
    """Train a ForceGP on ``train`` and fit its posterior. Returns (model, metadata).

    valid: validation data; by default ``valid_fraction`` of ``train`` (at least one frame),
    picked with ``seed``. seed: the one source of randomness (data split, initialisation,
    batch order). checkpoint: path written atomically after every epoch; with ``resume`` an
    existing checkpoint of the same data and settings is continued, which gives the same model
    as an uninterrupted run. devices / max_memory (bytes): for the posterior fit (and batches).
    Ctrl-C raises TrainingInterrupted (exit code 130) naming the saved checkpoint.
    metadata: {"training": {...}, "history": [...], "metrics": {"validation": {...}}}, ready
    for :func:`forcegp.io.save_model`.
    """
    settings = settings or TrainSettings()
    say = progress or (lambda event, info: None)
    check_settings(settings)
    _check_labelled(train, "training", 2)
    config = make_config(train.n_atoms, config_kwargs)
    if valid is None:
        train, valid = train.split(valid_fraction, seed=seed)
        _check_labelled(train, "training", 2)
        split = {"valid_fraction": float(valid_fraction)}
    else:
        _check_labelled(valid, "validation")
        if not np.array_equal(train.numbers, valid.numbers):
            raise InputError(
                f"the validation data has {formula(valid.numbers)} but the training data has "
                f"{formula(train.numbers)}; both must list the same atoms in the same order"
            )
        split = {"valid_fingerprint": valid.fingerprint()}
    mesh = posterior.make_mesh(devices)  # a bad --devices fails before anything else
    n_dev = int(mesh.devices.size)

    key = jax.random.key(seed)  # the one place a key is made from the seed
    key_init, key_train = jax.random.split(key)
    model = initialize(
        config, train.numbers, train.positions, train.energies, train.forces, key=key_init
    )
    # The explicit block's local terms depend on the geometries, so the basis size (and the
    # memory of every K x K step) is known now: a --max-memory that cannot be met fails here,
    # before the explicit prefit and training.
    config = model.config
    chunk = posterior.chunk_for(model, max_memory, n_dev)
    if settings.epochs == AUTO:
        settings = dataclasses.replace(settings, epochs=budgeted_epochs(model))
    fingerprint = train.fingerprint()
    run_settings = {**settings.to_dict(), "seed": int(seed), "n_devices": n_dev, **split}
    x, y, g = _standardised(model, train)
    train_mesh = mesh if n_dev > 1 else None
    # Planned from the compiled step (which training then reuses), also before the prefit.
    check_step_memory(soft_only(model), x, y, g, settings, mesh=train_mesh, max_memory=max_memory)

    # Stagewise selection (forcegp.stagewise): the explicit block is fitted exactly first and
    # DSoftKI is trained on its residual. Deterministic given the seed, so a resumed run
    # recomputes exactly the residuals of the interrupted one.
    say("message", {"text": "fitting the explicit block"})
    model, y_res, g_res = explicit_prefit(model, x, y, g, chunk=chunk)
    # Strongly typed leaves, as a checkpoint or model file gives them back: fresh, resumed and
    # loaded models then share every compilation (predict, the fit, the training step).
    model = strong_types(match_prior_scale(model, x, g_res))

    state = None
    if checkpoint is not None and resume:
        if Path(checkpoint).exists():
            opt = optimizer(settings, model.hyper, train.n_frames)
            saved = load_checkpoint(
                checkpoint, model, opt, fingerprint=fingerprint, settings=run_settings
            )
            model, state, key_train = saved.model, saved.state, saved.key
            say("message", {"text": f"resuming from {checkpoint} after epoch {state.epoch}"})
        else:
            say("message", {"text": f"no checkpoint {checkpoint} yet; starting from scratch"})

    done = {"epoch": state.epoch if state else 0, "saved": None}
    started = time.perf_counter()

    def on_epoch(s: TrainState) -> None:
        done["epoch"] = s.epoch
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                model,
                s,
                key=key_train,
                epoch=s.epoch,
                fingerprint=fingerprint,
                settings=run_settings,
            )
            done["saved"] = s.epoch
        info = {"epoch": s.epoch, "epochs": settings.epochs, "loss": s.history[-1]["loss"]}
        say("epoch", {**info, "seconds": time.perf_counter() - started})

    try:
        state = run(
            soft_only(model), x, y_res, g_res, settings, key=key_train, state=state,
            mesh=train_mesh, on_epoch=on_epoch,
        )  # fmt: skip
    except KeyboardInterrupt:
        # Ctrl-C may land between writing a checkpoint and noting it: ask the file itself.
        done["saved"] = _saved_epoch(checkpoint, fingerprint, run_settings)
        raise TrainingInterrupted(_interrupted_message(done, checkpoint)) from None
    train_seconds = time.perf_counter() - started

    model = with_hyper(model, state.hyper)
    if not all_finite(model.hyper):
        raise NumericalError(
            "training diverged: the hyperparameters are not finite; lower --lr or --lr-mlp"
        )
    started = time.perf_counter()
    total = train.n_frames
    fitted = {"n": 0}

    def on_chunk(n: int) -> None:
        fitted["n"] += n
        say("fit", {"done": fitted["n"], "total": total})

    try:
        model = posterior.fit(model, x, y, g, chunk=chunk, mesh=mesh, progress=on_chunk)
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted_message(done, checkpoint, "the fit")) from None
    fit_seconds = time.perf_counter() - started
    say("evaluate", {})
    pred = posterior.predict(model, valid.positions, with_std=True)
    model, calibration = calibrate(model, valid, pred)
    metrics = prediction_metrics(amplified(pred, calibration["kappa"]), valid)
    metadata = {
        "training": {
            "fingerprint": fingerprint,
            "n_structures": train.n_frames,
            "n_valid": valid.n_frames,
            "sources": list(train.sources),
            "valid_sources": list(valid.sources),
            "formula": formula(train.numbers),
            "settings": run_settings,
            "config": config.to_dict(),
            "train_seconds": round(train_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
            "skipped_steps": state.history[-1]["skipped_steps"] if state.history else 0,
            "calibration": calibration,
        },
        "history": list(state.history),
        "metrics": {"validation": metrics},
    }
    return model, metadata


def check_step_memory(
    model: ForceGP, x, y, g, settings: TrainSettings, *, mesh=None, max_memory: float | None = None
) -> None:
    """ResourceError, before any training, where one training step would need more than
    --max-memory (or the share of available memory the fit may plan for): the batch's feature
    rows grow with the batch, the permuted copies and the molecule, and an out-of-memory kill
    mid-training would lose the run."""
    need = step_memory_bytes(model, x, y, g, settings, mesh=mesh)
    n_dev = 1 if mesh is None else mesh.devices.size
    limit, what = posterior.memory_limit(max_memory, n_dev)
    if need is None or limit is None or need <= limit:
        return
    batch = batch_size(settings, len(x), n_dev)
    fits = int(batch * limit / need) // n_dev * n_dev
    hint = f"about {fits} would fit" if fits >= 1 else "even 1 would not fit"
    copies = copies_per_step(settings, model.n_copies)
    raise ResourceError(
        f"a training step needs about {need / 2**30:.2f} GiB ({batch} structures per step, "
        f"{copies} permuted copies, M={model.config.n_inducing} interpolation points), more than "
        f"{what} ({limit / 2**30:.2f} GiB); lower --batch-size ({hint}), --train-permutations "
        "or --inducing, or raise --max-memory"
    )


def calibrate(model: ForceGP, valid: Dataset, pred: dict | None = None) -> tuple[ForceGP, dict]:
    """Set the GP's overall amplitude so that 95% of held-out force components fall within
    +-1.96 predicted std.

    The exact evidence picks the hyperparameters on the training data, where the residuals of a
    model with thousands of basis functions are smaller than on new structures. One factor kappa
    on all prior scales and noise levels (posterior.with_amplitude) leaves the mean unchanged
    and multiplies every variance by kappa^2; kappa is the 95% quantile of |error| / std over the
    validation force components, divided by 1.96. The result is still an exact GP posterior.
    ``pred``: the model's prediction with stds on ``valid``, where it is already at hand.
    """
    if pred is None:
        pred = posterior.predict(model, valid.positions, with_std=True)
    z = np.abs(pred["forces"] - valid.forces) / pred["forces_std"]
    coverage = float(np.mean(z <= 1.96))
    kappa = float(np.quantile(z, 0.95) / 1.96)
    if not (np.isfinite(kappa) and kappa > 0):
        return model, {"kappa": 1.0, "valid_coverage_before": coverage}
    kappa = float(np.clip(kappa, 0.1, 10.0))
    return posterior.with_amplitude(model, kappa), {
        "kappa": kappa,
        "valid_coverage_before": coverage,
    }


def amplified(pred: dict, kappa: float) -> dict:
    """A prediction with stds as posterior.with_amplitude(model, kappa) would give it: the same
    means, every std multiplied by kappa."""
    out = dict(pred)
    for key in ("energy_std", "forces_std"):
        out[key] = pred[key] * kappa
    return out


def _saved_epoch(checkpoint, fingerprint: str, settings: dict) -> int | None:
    """Epoch of the checkpoint on disk if it belongs to this run (same data and settings)."""
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    try:
        header = read_header(checkpoint, CHECKPOINT_FORMAT)
    except ForceGPError:
        return None
    if header.get("fingerprint") != fingerprint or header.get("settings") != json_safe(settings):
        return None
    return header.get("epoch")


def _interrupted_message(done: dict, checkpoint, during: str | None = None) -> str:
    saved = done["saved"]
    if saved:
        where = f"during {during} (training finished)" if during else f"after epoch {saved}"
        return f"interrupted {where}; checkpoint saved to {checkpoint}; rerun with --resume"
    where = f"during {during}" if during else f"after epoch {done['epoch']}"
    if checkpoint is None:
        return f"interrupted {where}; no checkpoint was written (none was asked for)"
    return f"interrupted {where}; no epoch had completed, so there is no checkpoint to resume"


# ----------------------------------------------------------------------------- evaluation


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, ties sharing their average rank (as scipy.stats.rankdata)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation; NaN if fewer than 2 values or one side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return float("nan")
    ra, rb = rank(a) - (len(a) + 1) / 2, rank(b) - (len(b) + 1) / 2
    denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denom) if denom > 0 else float("nan")


def _require_posterior(model: ForceGP) -> None:
    if model.posterior is None:
        raise InputError("the model has no fitted posterior; train it with forcegp train")


def evaluate(model: ForceGP, data: Dataset, *, per_frame: bool = False) -> dict:
    """Errors and calibration of ``model`` on labelled ``data`` (eV, eV/Å).

    Returns n_frames, energy_mae, energy_rmse, forces_mae, forces_rmse (per Cartesian
    component), energy_coverage_95, forces_coverage_95 (fraction of |error| <= 1.96 predicted
    std), forces_std_error_spearman (rank correlation across frames between mean predicted force
    std and force MAE), mean predicted stds; with ``per_frame`` also the per-frame arrays.
    """
    _require_posterior(model)
    _check_labelled(data, "evaluation")
    check_numbers(model.numbers, data.numbers, "the model")
    pred = posterior.predict(model, data.positions, with_std=True)
    return prediction_metrics(pred, data, per_frame=per_frame)


def prediction_metrics(pred: dict, data: Dataset, *, per_frame: bool = False) -> dict:
    """The metrics of evaluate from a prediction with stds (posterior.predict) on ``data``."""
    de = pred["energy"] - data.energies
    df = pred["forces"] - data.forces
    frame_mae = np.mean(np.abs(df), axis=(1, 2))
    frame_std = np.mean(pred["forces_std"], axis=(1, 2))
    metrics = {
        "n_frames": int(data.n_frames),
        "energy_mae": float(np.mean(np.abs(de))),
        "energy_rmse": float(np.sqrt(np.mean(de**2))),
        "forces_mae": float(np.mean(np.abs(df))),
        "forces_rmse": float(np.sqrt(np.mean(df**2))),
        "energy_coverage_95": float(np.mean(np.abs(de) <= 1.96 * pred["energy_std"])),
        "forces_coverage_95": float(np.mean(np.abs(df) <= 1.96 * pred["forces_std"])),
        "forces_std_error_spearman": spearman(frame_std, frame_mae),
        "energy_std_mean": float(np.mean(pred["energy_std"])),
        "forces_std_mean": float(np.mean(pred["forces_std"])),
    }
    if per_frame:
        metrics["per_frame"] = {
            "energy_error": de,
            "energy_std": pred["energy_std"],
            "forces_mae": frame_mae,
            "forces_std_mean": frame_std,
        }
    return metrics


def predict_dataset(model: ForceGP, data: Dataset) -> list[Atoms]:
    """One ase.Atoms per frame with predicted energy and forces (eV, eV/Å) and their stds.

    The prediction is attached as a SinglePointCalculator (energy, forces) and also stored in
    atoms.info["forcegp_energy"], info["energy_std"], arrays["forcegp_forces"] and
    arrays["forces_std"], which survive an extxyz round trip. Reference labels of the data, if
    any, are kept as info["ref_energy"] and arrays["ref_forces"].
    """
    _require_posterior(model)
    check_numbers(model.numbers, data.numbers, "the model")
    pred = posterior.predict(model, data.positions, with_std=True)
    images = []
    for i in range(data.n_frames):
        atoms = Atoms(numbers=data.numbers, positions=data.positions[i])
        energy, forces = float(pred["energy"][i]), np.array(pred["forces"][i], dtype=np.float64)
        atoms.info["forcegp_energy"] = energy
        atoms.info["energy_std"] = float(pred["energy_std"][i])
        atoms.arrays["forcegp_forces"] = forces.copy()
        atoms.arrays["forces_std"] = np.array(pred["forces_std"][i], dtype=np.float64)
        if data.energies is not None:
            atoms.info["ref_energy"] = float(data.energies[i])
        if data.forces is not None:
            atoms.arrays["ref_forces"] = np.array(data.forces[i], dtype=np.float64)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        images.append(atoms)
    return images
