"""Training a model end to end: prepare the data and the untrained model, fit the explicit block,
train DSoftKI on its residual, fit the exact posterior, calibrate on held-out data
(docs/method.md §7-§10).

:func:`train_model` is the one entry point (the command line and the examples call it); each
step below takes the prepared :class:`Run`, which carries the standardised data along.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from ..data import Dataset, formula, require_labels
from ..errors import ForceGPError, InputError, NumericalError
from ..files import json_safe
from ..gp import misfit, posterior
from ..gp.config import AUTO, Config, ConfigError, validate
from ..gp.params import ForceGP, all_finite, strong_types, with_hyper
from ..modelfile import CHECKPOINT_FORMAT, read_header
from . import loop
from .budget import budgeted_epochs, size_defaults
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluation import amplified, calibrate, held_out_nll, predict, prediction_metrics
from .initialise import initialize, match_prior_scale, standardise_targets
from .loop import TrainState, optimizer
from .resources import check_step_memory, chunk_for, make_mesh, misfit_pass_plan, room_beside_step
from .settings import TrainSettings, check_settings
from .stagewise import ExplicitStatistics, explicit_prefit, fit_search, soft_only

#: Largest number of atom permutations the symmetrised model averages over.
MAX_SYMMETRY_PERMUTATIONS = Config.n_permutations

#: progress(event, info): events "message" {text}, "epoch" {epoch, epochs, loss, seconds},
#: "fit" {done, total}, "evaluate" {}.
Progress = Callable[[str, dict], None]


class TrainingInterrupted(ForceGPError):
    """Training was stopped (Ctrl-C); the last completed epoch is in the checkpoint, if any."""

    exit_code = 130


def make_config(n_atoms: int, config_kwargs: dict | None) -> Config:
    """A Config for ``n_atoms`` from user options, checked by the one validator (InputError);
    the descriptor and the pair powers, where not given (or "auto"), by the molecule's size
    (budget.size_defaults)."""
    kwargs = dict(config_kwargs or {})
    if "n_atoms" in kwargs:
        raise InputError("unknown model option(s) ['n_atoms']: it comes from the data")
    if n_atoms < 2:
        raise InputError(f"a molecule needs at least 2 atoms, the data has {n_atoms}")
    kwargs = size_defaults(n_atoms, kwargs)
    try:
        return validate({**kwargs, "n_atoms": n_atoms}, resolved=False)
    except ConfigError as err:
        raise InputError(f"model option {err}") from None


def standardised(model: ForceGP, data: Dataset):
    """x (n, D) Å, y (n,) and g (n, D) of ``data`` in the model's standardised units (§1)."""
    y, g = standardise_targets(
        data.energies, data.forces, float(model.stats.energy_mean), float(model.stats.energy_scale)
    )
    return np.asarray(data.positions, dtype=np.float64).reshape(data.n_frames, -1), y, g


@dataclass(frozen=True)
class Run:
    """One training run, prepared: data, the untrained model and everything derived from them."""

    train: Dataset
    valid: Dataset
    split: dict  # how the validation data was chosen (stored with the model)
    model: ForceGP  # initialised, untrained
    settings: TrainSettings  # epochs resolved
    x: np.ndarray  # (n, D) training positions, Å
    y: np.ndarray  # (n,) standardised energies
    g: np.ndarray  # (n, D) standardised energy gradients
    mesh: Mesh  # devices of the fit
    chunk: int  # structures per chunk of the prefit, the fit and predictions
    max_memory: float | None  # bytes the fit may use (None: what the machine has)
    key: jax.Array  # the training key (batch order, permutation subsets)
    fingerprint: str  # of the training data
    run_settings: dict  # what a checkpoint must match
    step_bytes: int | None  # a training step's planned memory (None: no figures)

    @property
    def train_mesh(self) -> Mesh | None:
        return self.mesh if self.mesh.devices.size > 1 else None


def prepare(train, valid, valid_fraction, config_kwargs, settings, seed, devices, max_memory) -> Run:
    """Validate the inputs, split off validation data, initialise the model and plan its memory:
    whatever cannot work fails here, before the explicit prefit and training."""
    check_settings(settings)
    require_labels(train, "training", 2)
    config = make_config(train.n_atoms, config_kwargs)
    if valid is None:
        train, valid = train.split(valid_fraction, seed=seed)
        require_labels(train, "training", 2)
        split = {"valid_fraction": float(valid_fraction)}
    else:
        require_labels(valid, "validation")
        if not np.array_equal(train.numbers, valid.numbers):
            raise InputError(
                f"the validation data has {formula(valid.numbers)} but the training data has "
                f"{formula(train.numbers)}; both must list the same atoms in the same order"
            )
        split = {"valid_fingerprint": valid.fingerprint()}
    mesh = make_mesh(devices)  # too many devices fail before anything else
    key_init, key_train = jax.random.split(jax.random.key(seed))  # the one key from the seed
    model = initialize(
        config, train.numbers, train.positions, train.energies, train.forces, key=key_init
    )
    # The basis size is known now (the explicit block's local terms depend on the geometries).
    chunk = chunk_for(model, max_memory, int(mesh.devices.size))
    if settings.epochs == AUTO:
        settings = dataclasses.replace(settings, epochs=budgeted_epochs(model))
    n_dev = int(mesh.devices.size)
    run_settings = {**settings.to_dict(), "seed": int(seed), "n_devices": n_dev, **split}
    x, y, g = standardised(model, train)
    prepared = Run(train, valid, split, model, settings, x, y, g, mesh, chunk, max_memory,
                   key_train, train.fingerprint(), run_settings, None)  # fmt: skip
    # Planned from the compiled step, which training then reuses.
    step_bytes = check_step_memory(
        soft_only(model), x, y, g, settings, mesh=prepared.train_mesh, max_memory=max_memory
    )
    return dataclasses.replace(prepared, step_bytes=step_bytes)


def prefit(run: Run, say: Progress) -> tuple[ForceGP, np.ndarray, np.ndarray, ExplicitStatistics | None]:
    """The explicit block fitted exactly, the residual DSoftKI is trained on (§7), and the
    block's statistics for the fit (None where none, or where keeping them through training
    would leave a training step too little memory).

    Deterministic given the seed, so a resumed run recomputes exactly the residuals of the
    interrupted one."""
    say("message", {"text": "fitting the explicit block"})
    model, y_res, g_res, explicit = explicit_prefit(run.model, run.x, run.y, run.g, chunk=run.chunk)
    if explicit is not None:
        held = sum(int(a.nbytes) for a in (explicit.suff.a_e, explicit.suff.a_f))
        if not room_beside_step(run.step_bytes, held, run.max_memory, int(run.mesh.devices.size)):
            explicit = None
    # Strongly typed leaves, as a checkpoint or model file gives them back: fresh, resumed and
    # loaded models then share every compilation (predict, the fit, the training step).
    return strong_types(match_prior_scale(model, run.x, g_res)), y_res, g_res, explicit


def train_soft(run: Run, model: ForceGP, y_res, g_res, checkpoint, resume: bool, say: Progress):
    """Adam on the DSoftKI hyperparameters, checkpointed after every epoch. Returns (model with
    the trained hyperparameters, final TrainState, seconds)."""
    state, key = None, run.key
    if checkpoint is not None and resume:
        if Path(checkpoint).exists():
            opt = optimizer(run.settings, model.hyper, run.train.n_frames)
            saved = load_checkpoint(
                checkpoint, model, opt, fingerprint=run.fingerprint, settings=run.run_settings
            )
            model, state, key = saved.model, saved.state, saved.key
            say("message", {"text": f"resuming from {checkpoint} after epoch {state.epoch}"})
        else:
            say("message", {"text": f"no checkpoint {checkpoint} yet; starting from scratch"})
    done = {"epoch": state.epoch if state else 0, "saved": None}
    started = time.perf_counter()

    def on_epoch(s: TrainState) -> None:
        done["epoch"] = s.epoch
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, s, key=key, epoch=s.epoch,
                            fingerprint=run.fingerprint, settings=run.run_settings)  # fmt: skip
            done["saved"] = s.epoch
        info = {"epoch": s.epoch, "epochs": run.settings.epochs, "loss": s.history[-1]["loss"]}
        say("epoch", {**info, "seconds": time.perf_counter() - started})

    try:
        state = run_loop(run, model, y_res, g_res, key, state, on_epoch)
    except KeyboardInterrupt:
        # Ctrl-C may land between writing a checkpoint and noting it: ask the file itself.
        done["saved"] = _saved_epoch(checkpoint, run.fingerprint, run.run_settings)
        raise TrainingInterrupted(_interrupted_message(done, checkpoint)) from None
    model = with_hyper(model, state.hyper)
    if not all_finite(model.hyper):
        raise NumericalError(
            "training diverged: the hyperparameters are not finite; lower `lr` or `lr_mlp`"
        )
    return model, state, time.perf_counter() - started


def run_loop(run: Run, model, y_res, g_res, key, state, on_epoch) -> TrainState:
    return loop.run(soft_only(model), run.x, y_res, g_res, run.settings, key=key, state=state,
                    mesh=run.train_mesh, on_epoch=on_epoch)  # fmt: skip


def fit(run: Run, model: ForceGP, checkpoint, say: Progress,
        explicit: ExplicitStatistics | None = None) -> tuple[ForceGP, float]:  # fmt: skip
    """The exact posterior of the joint model on all training data (§8-§9). explicit: the
    prefit's statistics of the explicit block, which the fit's then reuse where the model's
    explicit scales are still the prefit's (statistics.accumulate's ``known``)."""
    known = explicit.for_model(model) if explicit is not None else None
    started, fitted = time.perf_counter(), {"n": 0}

    def on_chunk(n: int) -> None:
        fitted["n"] += n
        say("fit", {"done": fitted["n"], "total": run.train.n_frames})

    try:
        model = posterior.fit(model, run.x, run.y, run.g, chunk=run.chunk, mesh=run.mesh,
                              progress=on_chunk, search=fit_search(model.config),
                              known=known)  # fmt: skip
    except KeyboardInterrupt:
        saved = _saved_epoch(checkpoint, run.fingerprint, run.run_settings)
        done = {"epoch": run.settings.epochs, "saved": saved}
        raise TrainingInterrupted(_interrupted_message(done, checkpoint, "the fit")) from None
    return model, time.perf_counter() - started


def misfit_noise(run: Run, model: ForceGP, say: Progress) -> tuple[ForceGP, dict | None, dict]:
    """The input-dependent noise (gp.misfit, docs/method.md §15): gamma from misfit.GRID, or 0
    (the constant noise of the fit), whichever gives the validation data the highest Gaussian
    likelihood with the overall amplitude profiled out (evaluation.held_out_nll); the model
    with the posterior refitted for it. One pass over the training data serves as many
    candidates as fit in memory (all of them, unless K is large); where not even one fits, the
    noise stays constant. Returns (model, its prediction with stds on the validation data or
    None where none was made, what was chosen)."""
    if not run.settings.misfit_noise:
        return model, None, {"misfit_gamma": 0.0}
    n_dev = int(run.mesh.devices.size)
    per_pass, chunk = misfit_pass_plan(model, run.chunk, n_dev, len(misfit.GRID), run.max_memory)
    if per_pass == 0:
        say("message", {"text": "input-dependent noise skipped: too little memory for its pass"})
        return model, None, {"misfit_gamma": 0.0, "misfit_skipped": "memory"}
    say("message", {"text": "fitting the input-dependent noise"})
    started = time.perf_counter()
    proj = misfit.projection(model)
    pred = predict(model, run.valid.positions)
    nll = {0.0: held_out_nll(pred, run.valid)}
    best = (model, pred)
    for first in range(0, len(misfit.GRID), per_pass):
        gammas = misfit.GRID[first : first + per_pass]
        p, b = misfit.systems(model, proj, gammas, run.x, run.y, run.g, chunk=chunk,
                              mesh=run.mesh)  # fmt: skip
        for i, gamma in enumerate(gammas):
            candidate = misfit.with_misfit(model, posterior.solve_system(p[i], b[i]), proj, gamma)
            pred = predict(candidate, run.valid.positions)
            value = held_out_nll(pred, run.valid)
            if value < min(nll.values()):
                best = (candidate, pred)
            nll[gamma] = value
        del p, b
    return *best, {
        "misfit_gamma": min(nll, key=nll.get),
        "misfit_valid_nll": {f"{key:g}": round(value, 5) for key, value in nll.items()},
        "misfit_seconds": round(time.perf_counter() - started, 3),
    }


def finish(run: Run, model: ForceGP, state: TrainState, seconds: dict, say: Progress):
    """Calibrate the amplitude on the validation data (§10) and describe the run: (model,
    metadata) ready for forcegp.modelfile.save_model."""
    model, pred, noise = misfit_noise(run, model, say)
    say("evaluate", {})
    if pred is None:
        pred = predict(model, run.valid.positions, with_std=True)
    model, calibration = calibrate(model, run.valid, pred)
    calibration.update(noise)
    metrics = prediction_metrics(amplified(pred, calibration["kappa"]), run.valid)
    training = {
        "fingerprint": run.fingerprint,
        "n_structures": run.train.n_frames,
        "n_valid": run.valid.n_frames,
        "sources": list(run.train.sources),
        "valid_sources": list(run.valid.sources),
        "formula": formula(run.train.numbers),
        "settings": run.run_settings,
        "config": run.model.config.to_dict(),
        **{f"{name}_seconds": round(value, 3) for name, value in seconds.items()},
        "skipped_steps": state.history[-1]["skipped_steps"] if state.history else 0,
        "calibration": calibration,
    }
    metadata = {"training": training, "history": list(state.history), "metrics": {"validation": metrics}}
    return model, metadata


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

    config_kwargs: Config fields (n_inducing, explicit, ...), checked by gp.config.validate.
    valid: validation data; by default ``valid_fraction`` of ``train`` (at least one frame),
    picked with ``seed``. seed: the one source of randomness (data split, initialisation,
    batch order). checkpoint: path written atomically after every epoch; with ``resume`` an
    existing checkpoint of the same data and settings is continued, which gives the same model
    as an uninterrupted run. devices / max_memory (bytes): for the posterior fit (and batches).
    Ctrl-C raises TrainingInterrupted (exit code 130) naming the saved checkpoint.
    metadata: {"training": {...}, "history": [...], "metrics": {"validation": {...}}}, ready
    for :func:`forcegp.modelfile.save_model`.
    """
    say = progress or (lambda event, info: None)
    run = prepare(train, valid, valid_fraction, config_kwargs, settings or TrainSettings(), seed,
                  devices, max_memory)  # fmt: skip
    model, y_res, g_res, explicit = prefit(run, say)
    model, state, train_seconds = train_soft(run, model, y_res, g_res, checkpoint, resume, say)
    del y_res, g_res
    model, fit_seconds = fit(run, model, checkpoint, say, explicit)
    del explicit
    return finish(run, model, state, {"train": train_seconds, "fit": fit_seconds}, say)


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
        return f"interrupted {where}; checkpoint saved to {checkpoint}; rerun with `resume`"
    where = f"during {during}" if during else f"after epoch {done['epoch']}"
    if checkpoint is None:
        return f"interrupted {where}; no checkpoint was written (none was asked for)"
    return f"interrupted {where}; no epoch had completed, so there is no checkpoint to resume"
