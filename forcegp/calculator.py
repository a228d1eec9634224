"""ASE calculator for a trained ForceGP: energy, forces and their standard deviations.

    calc = ForceGPCalculator("ethanol.fgp")
    atoms.calc = calc
    atoms.get_potential_energy()            # eV, a Python float
    atoms.get_forces()                      # (N, 3) eV/Å, float64
    calc.get_property("forces_std", atoms)  # (N, 3) eV/Å, standard deviations

Each evaluation is one call of a function compiled once per calculator, so molecular dynamics
never recompiles. Standard deviations cost more than energy and forces (O(K^2 D) against
O(K)): they are computed only when asked for, by a second compiled function, and cached with
the rest until the atoms change.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .errors import ForceGPError, InputError
from .io import check_numbers, load_model
from .model import ForceGP
from .posterior import predict_one

STD_PROPERTIES = ("energy_std", "forces_std")


class ForceGPCalculator(Calculator):
    """ASE calculator of a ForceGP model (a ForceGP or the path of a model file).

    Properties: energy and free_energy (eV), forces (N, 3, eV/Å), energy_std (eV) and
    forces_std (N, 3, eV/Å), the posterior predictive standard deviations (observation noise
    included). The atoms must be the model's molecule in the model's atom order, without
    periodic boundary conditions. Needs JAX in float64 (the forcegp command line sets it).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energy_std", "forces_std"]
    default_parameters: dict = {}
    nolabel = True

    def __init__(self, model_or_path, **kwargs):
        super().__init__(**kwargs)
        if not jax.config.jax_enable_x64:
            raise ForceGPError(
                "ForceGPCalculator needs JAX in float64: call "
                'jax.config.update("jax_enable_x64", True) before creating it'
            )
        if isinstance(model_or_path, ForceGP):
            model, self.source = model_or_path, "the model"
        else:
            model, _ = load_model(model_or_path)
            self.source = f"model {model_or_path}"
        if model.posterior is None:
            raise InputError(f"{self.source} has no fitted posterior; train it first")
        self.model = model
        self.n_traces = 0  # how often a prediction function was traced (compiled)
        self._fast = eqx.filter_jit(self._traced(with_std=False))
        self._full = eqx.filter_jit(self._traced(with_std=True))

    def _traced(self, *, with_std: bool):
        def predict(model: ForceGP, x: jax.Array):
            self.n_traces += 1  # runs only while tracing
            return predict_one(model, x, with_std)

        return predict

    def check_atoms(self, atoms) -> None:
        check_numbers(self.model.numbers, atoms.numbers, self.source, "the atoms")
        if np.any(atoms.pbc):
            raise InputError(
                "ForceGP models one molecule in vacuum; set atoms.pbc = False "
                "(a cell without periodic boundaries is fine)"
            )

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        self.check_atoms(self.atoms)
        x = jnp.asarray(np.asarray(self.atoms.positions, dtype=np.float64).reshape(-1))
        with_std = any(p in STD_PROPERTIES for p in properties)
        if with_std:
            energy, forces, energy_std, forces_std = self._full(self.model, x)
            self.results["energy_std"] = float(energy_std)
            self.results["forces_std"] = np.array(forces_std, dtype=np.float64)
        else:
            energy, forces = self._fast(self.model, x)
        self.results["energy"] = float(energy)
        self.results["free_energy"] = float(energy)
        self.results["forces"] = np.array(forces, dtype=np.float64)
