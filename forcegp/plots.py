"""Diagnostic plots as PNG files: parity, calibration (error against predicted std), history.

matplotlib is optional (``pip install 'forcegp[plot]'``) and imported only when a plot is drawn.
Figures are built with matplotlib's object API (no pyplot), so nothing global changes: no
backend switch, no open figure windows. Each PNG is written atomically.

    # parity_energy.png, parity_forces.png, calibration_forces.png, calibration_structures.png,
    # reliability.png
    paths = plot_test(model, dataset, "plots/")
    paths = plot_history(header, "plots/", energy_scale=float(model.stats.energy_scale))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import coverage as coverage_of
from .calibration import miscalibration_area, reliability_curve
from .data import Dataset, require_labels
from .errors import InputError
from .files import atomic_write

DPI = 130


def require_matplotlib():
    """The matplotlib.figure module, or InputError with the install command."""
    try:
        import matplotlib.figure
    except ImportError:
        raise InputError(
            "plotting needs matplotlib, which is not installed: pip install 'forcegp[plot]'"
        ) from None
    return matplotlib.figure


def prepare_directory(directory) -> Path:
    """Create the plot directory if needed (its parent must exist); check matplotlib first."""
    require_matplotlib()
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"plot directory {directory} is a file; give a directory")
    if not directory.parent.is_dir():
        raise InputError(f"cannot create {directory}: {directory.parent} does not exist")
    directory.mkdir(exist_ok=True)
    return directory


def _figure(ncols: int = 1, width: float = 4.6, height: float = 4.2):
    fig = require_matplotlib().Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path: Path) -> Path:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# ----------------------------------------------------------------------------- pieces


def parity_axes(ax, reference, predicted, *, quantity: str, unit: str, scale: float = 1.0):
    """Predicted against reference with the y = x line; MAE and RMSE in the legend."""
    ref, pred = np.ravel(reference) * scale, np.ravel(predicted) * scale
    err = pred - ref
    mae, rmse = float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err**2)))
    many = ref.size > 2000
    ax.scatter(ref, pred, s=2 if many else 6, alpha=0.3 if many else 0.6, lw=0, color="C0")
    low, high = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    pad = 0.03 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="k", lw=0.8, label="y = x")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"reference {quantity} ({unit})")
    ax.set_ylabel(f"predicted {quantity} ({unit})")
    ax.plot([], [], " ", label=f"MAE {mae:.3g} {unit}\nRMSE {rmse:.3g} {unit}\nn = {ref.size}")
    ax.legend(loc="upper left", frameon=False, fontsize=8)


def binned_calibration(errors, stds, n_bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Equal-count bins of predicted std: (RMS predicted std, RMSE) per bin.

    For a calibrated model E[error^2] = std^2, so the points lie on y = x.
    """
    errors, stds = np.ravel(errors), np.ravel(stds)
    order = np.argsort(stds)
    bins = np.array_split(order, min(n_bins, len(order)))
    rms_std = np.array([np.sqrt(np.mean(stds[b] ** 2)) for b in bins if len(b)])
    rmse = np.array([np.sqrt(np.mean(errors[b] ** 2)) for b in bins if len(b)])
    return rms_std, rmse


def _calibration_axes(ax, x, y, *, unit: str, xlabel: str, ylabel: str, points=None):
    if points is not None:
        px, py = points
        ax.scatter(px, np.maximum(py, 1e-12), s=4, alpha=0.25, lw=0, color="0.6", label="samples")
    ax.plot(x, y, "o-", color="C3", ms=4, lw=1, label="binned RMSE")
    values = np.concatenate([x, y])
    if points is not None:  # robust limits: a few near-zero errors should not squash the plot
        cloud = np.concatenate([np.ravel(points[0]), np.ravel(points[1])])
        cloud = cloud[cloud > 0]
        if cloud.size:
            values = np.concatenate([values, np.percentile(cloud, [1, 99.5])])
    values = values[values > 0]
    low, high = values.min() / 1.5, values.max() * 1.5
    ax.plot([low, high], [low, high], color="k", lw=0.8, label="y = x (calibrated)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel(f"{xlabel} ({unit})")
    ax.set_ylabel(f"{ylabel} ({unit})")
    ax.legend(loc="upper left", frameon=False, fontsize=8)


# ----------------------------------------------------------------------------- files


def plot_test(model, data: Dataset, directory, *, title: str | None = None) -> list[Path]:
    """Parity and calibration PNGs of ``model`` on labelled ``data``; returns the paths.

    parity_energy.png, parity_forces.png (force components); calibration_forces.png (force
    components: RMSE per bin of predicted std against the bin's RMS std, log-log, y = x);
    calibration_structures.png (per structure: force RMSE against RMS predicted force std);
    reliability.png (observed against expected coverage of central intervals).
    Energies in meV relative to the mean reference energy, forces in meV/Å.
    """
    from .training.evaluation import predict

    directory = prepare_directory(directory)
    require_labels(data, "plotted")
    pred = predict(model, data.positions, with_std=True)
    return plot_predictions(
        data.energies, data.forces, pred, directory, title=title or ", ".join(data.sources)
    )


def plot_predictions(energies, forces, pred: dict, directory, *, title: str = "") -> list[Path]:
    """The PNGs of :func:`plot_test` from reference energies (n,) eV, forces (n, N, 3) eV/Å and
    predictions ``pred`` as returned by :func:`forcegp.training.evaluation.predict` (with stds)."""
    directory = prepare_directory(directory)
    paths = []
    fig, (ax,) = _figure()
    offset = float(np.mean(energies))  # absolute energies (-4209.6 eV) make unreadable ticks
    parity_axes(
        ax,
        np.asarray(energies) - offset,
        np.asarray(pred["energy"]) - offset,
        quantity=f"energy − ({offset:.3f} eV)",
        unit="meV",
        scale=1e3,
    )
    ax.set_title(f"energy: {title}", fontsize=9)
    paths.append(_save(fig, directory / "parity_energy.png"))

    fig, (ax,) = _figure()
    parity_axes(ax, forces, pred["forces"], quantity="force component", unit="meV/Å", scale=1e3)
    ax.set_title(f"forces: {title}", fontsize=9)
    paths.append(_save(fig, directory / "parity_forces.png"))

    err = (np.asarray(pred["forces"]) - np.asarray(forces)) * 1e3
    std = np.asarray(pred["forces_std"]) * 1e3
    fig, (ax,) = _figure()
    x, y = binned_calibration(err, std)
    sample = np.random.default_rng(0).permutation(err.size)[:5000]  # fixed, for legibility
    _calibration_axes(
        ax, x, y, unit="meV/Å", xlabel="predicted force std", ylabel="force error",
        points=(std.ravel()[sample], np.abs(err.ravel()[sample])),
    )  # fmt: skip
    coverage = coverage_of(err, std, 0.95)
    ax.set_title(f"force components, 95% coverage {100 * coverage:.1f}%: {title}", fontsize=9)
    paths.append(_save(fig, directory / "calibration_forces.png"))

    frame_rmse = np.sqrt(np.mean(err**2, axis=(1, 2)))
    frame_std = np.sqrt(np.mean(std**2, axis=(1, 2)))
    fig, (ax,) = _figure()
    x, y = binned_calibration(frame_rmse, frame_std, n_bins=10)
    _calibration_axes(
        ax, x, y, unit="meV/Å", xlabel="RMS predicted force std of a structure",
        ylabel="force RMSE of a structure", points=(frame_std, frame_rmse),
    )  # fmt: skip
    ax.set_title(f"per structure ({len(frame_rmse)}): {title}", fontsize=9)
    paths.append(_save(fig, directory / "calibration_structures.png"))
    paths.append(reliability_diagram(energies, forces, pred, directory, title=title))
    return paths


def reliability_diagram(energies, forces, pred: dict, directory: Path, *, title: str = "") -> Path:
    """Observed against expected coverage of the central Gaussian intervals, for energies and
    force components (the diagonal is perfect calibration; below it, the stds are too small)."""
    fig, (ax,) = _figure()
    for name, ref, key in (("energy", energies, "energy"), ("force components", forces, "forces")):
        err = np.asarray(pred[key]) - np.asarray(ref)
        expected, observed = reliability_curve(err, pred[f"{key}_std"])
        area = miscalibration_area(err, pred[f"{key}_std"])
        ax.plot(expected, observed, marker=".", label=f"{name} (miscalibration area {area:.3f})")
    ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("expected coverage of the central interval")
    ax.set_ylabel("observed coverage")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"reliability: {title}", fontsize=9)
    return _save(fig, directory / "reliability.png")


def plot_history(
    header: dict,
    directory,
    *,
    energy_scale: float,
    final_noise: tuple[float, float] | None = None,
    title: str = "",
) -> list[Path]:
    """training_history.png: loss per epoch, and the learned noise (meV, meV/Å) per epoch.

    header: a model file header (its "history", as written by training); energy_scale (eV):
    the model's energy scale, which turns the standardised noise into eV. final_noise: the
    model's (energy, force) noise in standardised units, drawn as dashed lines (training may
    refine the noise after the last epoch).
    """
    history = header.get("history") or []
    records = [h for h in history if isinstance(h, dict) and "epoch" in h]
    if not records:
        raise InputError("the model file has no training history to plot")
    directory = prepare_directory(directory)

    def column(name):
        return np.array([np.nan if h.get(name) is None else h[name] for h in records], float)

    epochs = column("epoch")
    fig, (ax_loss, ax_noise) = _figure(ncols=2)
    loss = column("loss")
    ax_loss.plot(epochs, loss, "o-", ms=3, lw=1)
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0 and finite.max() > 20 * finite.min():
        ax_loss.set_yscale("log")  # the first epochs would flatten the rest
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (batch NLL per observation, standardised)")
    ax_loss.set_title(f"loss: {title}", fontsize=9)
    scale = 1e3 * energy_scale
    ax_noise.plot(epochs, column("noise_energy") * scale, "o-", ms=3, lw=1, label="energy (meV)")
    ax_noise.plot(epochs, column("noise_force") * scale, "s-", ms=3, lw=1, label="forces (meV/Å)")
    if final_noise is not None:
        for value, color, what in zip(final_noise, ("C0", "C1"), ("energy", "forces"), strict=True):
            ax_noise.axhline(value * scale, color=color, ls="--", lw=0.8, label=f"final {what}")
    ax_noise.set_yscale("log")
    ax_noise.set_xlabel("epoch")
    ax_noise.set_ylabel("learned noise std")
    ax_noise.legend(frameon=False, fontsize=8)
    ax_noise.set_title("observation noise per epoch (dashed: the model's final noise)", fontsize=9)
    for ax in (ax_loss, ax_noise):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return [_save(fig, directory / "training_history.png")]
