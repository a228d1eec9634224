"""A fitted model on labelled data: predictions in memory-planned chunks, errors with the
calibration report, the amplitude calibration, and predictions as ASE frames
(docs/method.md §10-§11).

Each function takes Datasets and returns plain results (dicts of floats, ase.Atoms); printing
and file formats are the caller's business.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ..calibration import calibration_report, z_value
from ..data import Dataset, check_numbers, require_labels
from ..errors import InputError
from ..gp.params import ForceGP
from ..gp.posterior import with_amplitude
from ..gp.predict import predict_in_chunks
from .resources import chunk_for


def predict(
    model: ForceGP, positions, *, with_std: bool = True, max_memory: float | None = None, chunk: int = 64
) -> dict:
    """Predict for positions (n, N, 3) Å. Returns a dict of numpy arrays: energy (n,) eV, forces
    (n, N, 3) eV/Å and, with stds, energy_std and forces_std.

    With stds, each chunk computes its structures' observation rows: the chunk is at most
    ``chunk`` and small enough for max_memory or the memory available (resources.chunk_for;
    ResourceError if even one structure does not fit)."""
    if with_std and model.posterior is not None:
        chunk = chunk_for(model, max_memory, default=chunk)
    return predict_in_chunks(model, positions, with_std=with_std, chunk=chunk)


def calibrate(model: ForceGP, valid: Dataset, pred: dict | None = None) -> tuple[ForceGP, dict]:
    """Set the GP's overall amplitude so that 95% of held-out force components fall within
    +-z predicted std (z = 1.95996..., the Gaussian 95% interval).

    The exact evidence picks the hyperparameters on the training data, where the residuals of a
    model with thousands of basis functions are smaller than on new structures. One factor kappa
    on all prior scales and noise levels (gp.posterior.with_amplitude) leaves the mean unchanged
    and multiplies every variance by kappa^2; kappa is the 95% quantile of |error| / std over the
    validation force components, divided by z. The result is still an exact GP posterior.
    ``pred``: the model's prediction with stds on ``valid``, where it is already at hand.
    """
    if pred is None:
        pred = predict(model, valid.positions, with_std=True)
    z = np.abs(pred["forces"] - valid.forces) / pred["forces_std"]
    z95 = z_value(0.95)
    coverage = float(np.mean(z <= z95))
    kappa = float(np.quantile(z, 0.95) / z95)
    if not (np.isfinite(kappa) and kappa > 0):
        return model, {"kappa": 1.0, "valid_coverage_before": coverage}
    kappa = float(np.clip(kappa, 0.1, 10.0))
    return with_amplitude(model, kappa), {
        "kappa": kappa,
        "valid_coverage_before": coverage,
    }


def held_out_nll(pred: dict, data: Dataset) -> float:
    """Gaussian negative log-likelihood per value of ``data``'s energies and force components
    under a prediction with stds, at the overall amplitude that maximises it (every std times
    kappa, kappa^2 the mean squared z-score), without the constant 0.5 log(2 pi e)."""
    errors = np.concatenate([(pred["energy"] - data.energies).ravel(),
                             (pred["forces"] - data.forces).ravel()])  # fmt: skip
    stds = np.concatenate([pred["energy_std"].ravel(), pred["forces_std"].ravel()])
    kappa2 = np.mean((errors / stds) ** 2)
    return float(np.mean(np.log(stds)) + 0.5 * np.log(kappa2))


def amplified(pred: dict, kappa: float) -> dict:
    """A prediction with stds as with_amplitude(model, kappa) would give it: the same
    means, every std multiplied by kappa."""
    out = dict(pred)
    for key in ("energy_std", "forces_std"):
        out[key] = pred[key] * kappa
    return out


def require_posterior(model: ForceGP) -> None:
    if model.posterior is None:
        raise InputError("the model has no fitted posterior; train it with forcegp train")


def evaluate(model: ForceGP, data: Dataset, *, per_frame: bool = False) -> dict:
    """Errors and calibration of ``model`` on labelled ``data`` (eV, eV/Å).

    Returns n_frames, energy_mae, energy_rmse, forces_mae, forces_rmse (per Cartesian
    component), the calibration report of :func:`prediction_metrics` (coverage at 68% and 95%,
    mean squared z-score, NLL, miscalibration area, sparsification, binned calibration,
    Spearman across frames), mean predicted stds; with ``per_frame`` also per-frame arrays.
    """
    require_posterior(model)
    require_labels(data, "evaluation")
    check_numbers(model.numbers, data.numbers, "the model")
    pred = predict(model, data.positions, with_std=True)
    return prediction_metrics(pred, data, per_frame=per_frame)


def prediction_metrics(pred: dict, data: Dataset, *, per_frame: bool = False) -> dict:
    """The metrics of evaluate from a prediction with stds (:func:`predict`) on ``data``: errors
    (MAE and RMSE per energy and per force component) and the calibration report
    (forcegp.calibration.calibration_report: coverage at 68% and 95%, mean squared z-score,
    Gaussian NLL, miscalibration area, sparsification, binned calibration, Spearman)."""
    de = pred["energy"] - data.energies
    df = pred["forces"] - data.forces
    metrics = {
        "n_frames": int(data.n_frames),
        "energy_mae": float(np.mean(np.abs(de))),
        "energy_rmse": float(np.sqrt(np.mean(de**2))),
        "forces_mae": float(np.mean(np.abs(df))),
        "forces_rmse": float(np.sqrt(np.mean(df**2))),
        "forces_mean_abs": float(np.mean(np.abs(data.forces))),  # the scale of a relative error
        **calibration_report(de, pred["energy_std"], df, pred["forces_std"]),
        "energy_std_mean": float(np.mean(pred["energy_std"])),
        "forces_std_mean": float(np.mean(pred["forces_std"])),
    }
    if per_frame:
        metrics["per_frame"] = {
            "energy_error": de,
            "energy_std": pred["energy_std"],
            "forces_mae": np.mean(np.abs(df), axis=(1, 2)),
            "forces_std_mean": np.mean(pred["forces_std"], axis=(1, 2)),
        }
    return metrics


def predict_dataset(model: ForceGP, data: Dataset) -> list[Atoms]:
    """One ase.Atoms per frame with predicted energy and forces (eV, eV/Å) and their stds.

    The prediction is attached as a SinglePointCalculator (energy, forces) and also stored in
    atoms.info["forcegp_energy"], info["energy_std"], arrays["forcegp_forces"] and
    arrays["forces_std"], which survive an extxyz round trip. Reference labels of the data, if
    any, are kept as info["ref_energy"] and arrays["ref_forces"].
    """
    require_posterior(model)
    check_numbers(model.numbers, data.numbers, "the model")
    pred = predict(model, data.positions, with_std=True)
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
