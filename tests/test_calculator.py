"""The ASE calculator: the Calculator contract, gradients, and molecular dynamics."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from ase import units
from ase.calculators.calculator import Calculator, PropertyNotImplementedError
from ase.md import velocitydistribution
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet

from forcegp import ForceGPCalculator, modelfile
from forcegp.data import read_dataset
from forcegp.errors import InputError, ModelFileError
from forcegp.training import evaluation, pipeline
from forcegp.training.settings import TrainSettings

DATA = Path(__file__).resolve().parent.parent / "data" / "ethanol_train.extxyz"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = read_dataset(DATA, index="0:40")
    model, meta = pipeline.train_model(
        data,
        config_kwargs={"n_inducing": 8, "n_features": 4, "width": 8, "depth": 1,
                       "explicit_dim": 4, "n_permutations": 1},
        settings=TrainSettings(epochs=3, batch_size=8),
        seed=1,
        valid_fraction=0.1,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("calc") / "ethanol.fgp"
    modelfile.save_model(path, model, metadata=meta)
    return model, path, data


@pytest.fixture()
def atoms(trained):
    return trained[2].to_atoms()[5]


def counting(calc):
    """Count calls of calc.calculate (the expensive part) without changing what it does."""
    calls = []
    inner = calc.calculate

    def calculate(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("properties"))
        return inner(*args, **kwargs)

    calc.calculate = calculate
    return calls


def test_properties_are_our_own_list():
    assert ForceGPCalculator.implemented_properties == [
        "energy", "free_energy", "forces", "energy_std", "forces_std", "energy_std_upper",
        "forces_std_upper",
    ]  # fmt: skip
    assert ForceGPCalculator.implemented_properties is not Calculator.implemented_properties


def test_sketched_stds_come_with_upper_bounds(trained, atoms):
    """std_sketch: the same energy and forces, estimated stds near the exact ones (the noise is
    part of them), upper bounds above the estimates; the exact calculator's bounds are its stds.
    A sketch below 30 columns is refused."""
    model, _, _ = trained
    exact, sketched = ForceGPCalculator(model), ForceGPCalculator(model, std_sketch=32)
    assert sketched.std_sketch == 32 and ForceGPCalculator(model, std_sketch=10**6).std_sketch is None
    out = {}
    for name, calc in (("exact", exact), ("sketched", sketched)):
        atoms.calc = calc
        out[name] = {p: np.copy(calc.get_property(p, atoms)) for p in
                     ("energy", "forces", "forces_std", "forces_std_upper")}  # fmt: skip
    e, s = out["exact"], out["sketched"]
    np.testing.assert_allclose(s["forces"], e["forces"], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(e["forces_std"], e["forces_std_upper"])
    assert np.all(s["forces_std_upper"] > s["forces_std"])
    np.testing.assert_allclose(s["forces_std"], e["forces_std"], rtol=0.5)
    with pytest.raises(InputError, match="std_sketch"):
        ForceGPCalculator(model, std_sketch=8)


def test_results_types_units_and_caching(trained, atoms):
    model, path, _ = trained
    calc = ForceGPCalculator(path)  # from a file
    calls = counting(calc)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    assert type(energy) is float
    assert atoms.get_potential_energy() == energy
    forces = atoms.get_forces()
    assert forces.shape == (9, 3) and forces.dtype == np.float64
    assert len(calls) == 1  # energy and forces come from one evaluation
    assert "energy_std" not in calc.results  # standard deviations only when asked for
    energy_std = calc.get_property("energy_std", atoms)
    forces_std = calc.get_property("forces_std", atoms)
    assert len(calls) == 2
    assert type(energy_std) is float and energy_std > 0
    assert forces_std.shape == (9, 3) and np.all(forces_std > 0)
    assert atoms.get_potential_energy() == energy and len(calls) == 2
    assert calc.get_property("free_energy", atoms) == energy
    # The same numbers as the batch prediction path (in eV and eV/Å).
    batch = evaluation.predict(model, atoms.positions[None])
    assert energy == pytest.approx(float(batch["energy"][0]), abs=1e-9)
    np.testing.assert_allclose(forces, batch["forces"][0], atol=1e-9)
    assert energy_std == pytest.approx(float(batch["energy_std"][0]), rel=1e-9)
    np.testing.assert_allclose(forces_std, batch["forces_std"][0], rtol=1e-9)
    # Moving an atom recomputes.
    atoms.positions[0, 0] += 0.01
    assert atoms.get_potential_energy() != energy
    assert len(calls) == 3
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_what_triggers_a_recalculation(trained, atoms):
    """check_state compares only what the model depends on, exactly (ASE's default compares
    every per-atom array with allclose, as costly as a prediction)."""
    calc = ForceGPCalculator(trained[0])
    calls = counting(calc)
    atoms.calc = calc
    forces = atoms.get_forces()
    atoms.set_initial_magnetic_moments(np.ones(len(atoms)))
    atoms.set_initial_charges(np.full(len(atoms), 0.1))
    assert calc.check_state(atoms) == []  # ASE's default reports both and recomputes
    np.testing.assert_array_equal(atoms.get_forces(), forces)
    assert len(calls) == 1
    atoms.set_cell(np.eye(3) * 10.0)  # no pbc: reported as ASE does, the forces stay the same
    assert calc.check_state(atoms) == ["cell"]
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=1e-12)
    assert len(calls) == 2
    moved = atoms.copy()
    moved.positions[3, 1] += 1e-12  # any change of a coordinate recomputes
    assert calc.check_state(moved) == ["positions"]
    moved.calc = calc
    moved.get_forces()
    assert len(calls) == 3


def test_forces_are_minus_the_gradient_of_the_energy(trained, atoms):
    atoms.calc = ForceGPCalculator(trained[0])
    forces = atoms.get_forces()
    h = 1e-4
    numeric = np.zeros((9, 3))
    for a in range(9):
        for c in range(3):
            shifted = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.calc = atoms.calc
                moved.positions[a, c] += sign * h
                shifted.append(moved.get_potential_energy())
            numeric[a, c] = -(shifted[0] - shifted[1]) / (2 * h)
    np.testing.assert_allclose(forces, numeric, rtol=1e-5, atol=1e-6)


def _nve_energies(calc, atoms, timestep_fs, steps):
    """Total energies along velocity Verlet from atoms (300 K momenta, seed 0)."""
    atoms = atoms.copy()
    atoms.calc = calc
    # thermalize_momenta replaces MaxwellBoltzmannDistribution in newer ASE.
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None)
    thermalize = thermalize or velocitydistribution.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=300, rng=np.random.default_rng(0))
    velocitydistribution.Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    totals = []
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    dyn.run(steps)
    return np.asarray(totals)


def test_nve_conserves_energy_and_md_never_recompiles(trained, atoms):
    """Forces that are the exact gradient of the energy conserve a shadow energy under velocity
    Verlet: the total-energy spread shrinks as the timestep squared. Forces that were not a
    gradient would drift at any timestep instead."""
    calc = ForceGPCalculator(trained[0])
    coarse = _nve_energies(calc, atoms, 0.5, 50)
    traces = calc.n_traces
    assert traces == 1  # 50 steps, one compiled function
    fine = _nve_energies(calc, atoms, 0.25, 100)  # the same 25 fs
    assert np.all(np.isfinite(coarse)) and np.all(np.isfinite(fine))
    ratio = np.ptp(coarse) / np.ptp(fine)
    assert 3.0 < ratio < 5.0, ratio  # dt**2 would give 4
    assert np.ptp(fine) < 3e-3, np.ptp(fine)  # eV; kinetic energy is about 0.6 eV
    assert calc.n_traces == traces
    calc.get_property("forces_std", atoms)
    calc.get_property("forces_std", atoms)
    assert calc.n_traces == traces + 1  # the std path is compiled once too


def test_langevin_runs(trained, atoms):
    calc = ForceGPCalculator(trained[0])
    atoms.calc = calc
    dyn = Langevin(
        atoms, 0.5 * units.fs, temperature_K=300, friction=0.02, fixcm=False,
        rng=np.random.default_rng(2),
    )  # fmt: skip
    dyn.run(20)
    assert np.isfinite(atoms.get_potential_energy())
    assert np.all(np.isfinite(atoms.get_forces()))
    assert calc.n_traces == 1


def test_wrong_atoms_are_refused(trained, atoms):
    calc = ForceGPCalculator(trained[0])
    water = atoms[[2, 3, 4]]
    water.calc = calc
    with pytest.raises(ModelFileError, match="trained for C2H6O.*the atoms has"):
        water.get_potential_energy()
    periodic = atoms.copy()
    periodic.pbc = True
    periodic.cell = [10, 10, 10]
    periodic.calc = calc
    with pytest.raises(InputError, match="pbc"):
        periodic.get_potential_energy()


def test_needs_a_fitted_model(trained):
    model = trained[0]
    untrained = type(model)(model.config, model.numbers, model.stats, model.hyper, None)
    with pytest.raises(InputError, match="no fitted posterior"):
        ForceGPCalculator(untrained)


def test_works_without_the_global_float64_switch_and_leaves_it_alone(trained):
    """A script that never switches JAX to float64 gets the same float64 results, and its own
    float32 JAX code beside the calculator stays float32: the calculator works in a scoped
    float64 context and restores the caller's setting."""
    _, path, data = trained
    atoms = data.to_atoms()[3]
    atoms.calc = ForceGPCalculator(path)
    reference = (atoms.get_potential_energy(), atoms.get_forces(),
                 atoms.calc.get_property("forces_std", atoms))  # fmt: skip
    jax.config.update("jax_enable_x64", False)
    try:
        before = jax.numpy.ones(3) * 2.0
        calc = ForceGPCalculator(path)  # loaded and compiled under float32 JAX
        other = data.to_atoms()[3]
        other.calc = calc
        energy, forces = other.get_potential_energy(), other.get_forces()
        std = calc.get_property("forces_std", other)
        assert not jax.config.jax_enable_x64
        after = jax.numpy.ones(3) * 2.0
        assert before.dtype == after.dtype == np.float32
        assert isinstance(energy, float) and forces.dtype == std.dtype == np.float64
        assert energy == pytest.approx(reference[0], abs=1e-9)
        np.testing.assert_allclose(forces, reference[1], atol=1e-9)
        np.testing.assert_allclose(std, reference[2], rtol=1e-9)
        other.positions[0, 0] += 0.01  # a second structure: no global switch in between either
        assert other.get_potential_energy() != energy and not jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", True)
    assert jax.config.jax_enable_x64  # a float64 caller keeps float64
