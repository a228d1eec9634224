"""Plots: PNG files from the library and from forcegp test/info --plot; a clear error without
matplotlib or without a training history."""

import sys

import ase.io
import matplotlib
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from click.testing import CliRunner

from forcegp.cli import cli
from forcegp.data import Dataset
from forcegp.errors import InputError
from forcegp.modelfile import save_model
from forcegp.plots import binned_calibration, plot_history, plot_test

matplotlib.use("Agg")  # the plots use no pyplot; this only guards against a display backend

PNG = b"\x89PNG\r\n\x1a\n"
HISTORY = [
    {"epoch": e, "loss": 3.0 - e, "noise_energy": 0.1 / e, "noise_force": 0.2 / e} for e in (1, 2, 3)
]


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def data(small_problem):
    pb = small_problem
    return Dataset(pb.numbers, pb.positions, pb.energies, pb.forces, ("synthetic",))


def test_plot_test_writes_pngs(fitted_small, data, tmp_path):
    paths = plot_test(fitted_small, data, tmp_path / "plots")
    names = {p.name for p in paths}
    assert names == {
        "parity_energy.png",
        "parity_forces.png",
        "calibration_forces.png",
        "calibration_structures.png",
        "reliability.png",
    }
    assert all(_is_png(p) for p in paths)
    assert not list((tmp_path / "plots").glob(".*.tmp"))


def test_plot_history(tmp_path):
    (path,) = plot_history({"history": HISTORY}, tmp_path, energy_scale=0.5)
    assert path.name == "training_history.png" and _is_png(path)
    with pytest.raises(InputError, match="no training history"):
        plot_history({"history": []}, tmp_path, energy_scale=0.5)


def test_binned_calibration_of_a_calibrated_model():
    rng = np.random.default_rng(0)
    std = np.exp(rng.uniform(-3, 1, size=200_000))
    rms_std, rmse = binned_calibration(rng.normal(size=std.size) * std, std)
    np.testing.assert_allclose(rmse, rms_std, rtol=0.05)


def test_missing_matplotlib_is_a_clear_error(fitted_small, data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(InputError, match=r"pip install 'forcegp\[plot\]'"):
        plot_test(fitted_small, data, tmp_path / "plots")
    assert not (tmp_path / "plots").exists()


def test_cli_test_and_info_plot(fitted_small, small_problem, tmp_path):
    pb = small_problem
    model = tmp_path / "m.fgp"
    save_model(model, fitted_small, metadata={"history": HISTORY})
    frames = []
    for pos, e, f in zip(pb.positions, pb.energies, pb.forces, strict=True):
        atoms = ase.Atoms(numbers=pb.numbers, positions=pos)
        atoms.calc = SinglePointCalculator(atoms, energy=float(e), forces=f)
        frames.append(atoms)
    ase.io.write(tmp_path / "test.extxyz", frames)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["test", str(model), str(tmp_path / "test.extxyz"), "--plot", str(tmp_path / "p")]
    )
    assert result.exit_code == 0, result.output
    written = {
        "parity_energy.png",
        "parity_forces.png",
        "calibration_forces.png",
        "calibration_structures.png",
        "reliability.png",
    }
    assert result.output.count("wrote ") == len(written)
    assert {p.name for p in (tmp_path / "p").glob("*.png")} == written
    assert all(_is_png(p) for p in (tmp_path / "p").glob("*.png"))
    result = runner.invoke(cli, ["info", str(model), "--plot", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert _is_png(tmp_path / "p" / "training_history.png")
    result = runner.invoke(cli, ["info", str(model), "--plot", str(tmp_path / "no" / "such")])
    assert result.exit_code == 2 and "does not exist" in result.output
