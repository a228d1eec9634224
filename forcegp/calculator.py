"""ASE calculator for a trained ForceGP: energy, forces and their standard deviations.

    calc = ForceGPCalculator("ethanol.fgp")
    atoms.calc = calc
    atoms.get_potential_energy()            # eV, a Python float
    atoms.get_forces()                      # (N, 3) eV/Å, float64
    calc.get_property("forces_std", atoms)  # (N, 3) eV/Å, standard deviations

Each evaluation is one call of a function compiled once per calculator, so molecular dynamics
never recompiles. The model is folded for prediction once (gp.predict.predictor: K_zz's
Cholesky factor applied to the posterior up front), and the compiled function takes the folded
arrays as a flat list, so a call costs the structure's feature map and little else. Standard
deviations cost more than energy and forces (O(K^2 D) against O(K)): they are computed only when
asked for, by a second compiled function, and cached with the rest until the atoms change.

    calc = ForceGPCalculator("aspirin.fgp", std_sketch=128)   # stds for MD monitoring

With ``std_sketch`` s the posterior part of each variance is estimated from a random projection
of the covariance factor with s columns (gp.predict.posterior_variances, docs/method.md §11):
O(s K D) per call instead of O(K^2 D). ``energy_std`` / ``forces_std`` are then unbiased-variance
estimates, and ``energy_std_upper`` / ``forces_std_upper`` bounds that the exact std exceeds
with probability 1e-3 per output (equal to the stds when exact).

The calculator needs no global JAX setting: it loads the model and runs its compiled functions
inside a scoped float64 context (jax.enable_x64), and leaves the caller's setting as it found it,
so a float32 JAX program can use it side by side.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .data import check_numbers
from .errors import InputError
from .gp.params import ForceGP
from .gp.predict import predict_folded, predictor
from .modelfile import load_model

STD_PROPERTIES = ("energy_std", "forces_std", "energy_std_upper", "forces_std_upper")


def float64_scope():
    """A context in which JAX runs in float64, restoring the caller's setting on leaving it."""
    scope = getattr(jax, "enable_x64", None)
    if scope is None:  # JAX before the context manager moved out of jax.experimental
        from jax.experimental import enable_x64 as scope
    return scope(True)


class ForceGPCalculator(Calculator):
    """ASE calculator of a ForceGP model (a ForceGP or the path of a model file).

    Properties: energy and free_energy (eV), forces (N, 3, eV/Å), energy_std (eV) and
    forces_std (N, 3, eV/Å), the posterior predictive standard deviations (observation noise
    included). std_sketch (int, optional): estimate the stds from a random projection with that
    many columns (module doc); energy_std_upper and forces_std_upper are their upper bounds
    (equal to the stds when exact). The atoms
    must be the model's molecule in the model's atom order, without periodic boundary
    conditions. JAX's global float64 setting is neither needed nor changed.
    """

    implemented_properties = ["energy", "free_energy", "forces", *STD_PROPERTIES]
    default_parameters: dict = {}
    nolabel = True

    def __init__(self, model_or_path, *, std_sketch: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if std_sketch is not None and (not isinstance(std_sketch, int) or std_sketch < 30):
            raise InputError(f"std_sketch must be an integer >= 30, got {std_sketch!r}")
        if isinstance(model_or_path, ForceGP):
            model, self.source = model_or_path, "the model"
        else:
            with float64_scope():
                model, _ = load_model(model_or_path)
            self.source = f"model {model_or_path}"
        if model.posterior is None:
            raise InputError(f"{self.source} has no fitted posterior; train it first")
        self.model = model
        exact = std_sketch is None or std_sketch >= model.config.n_basis
        self.std_sketch = None if exact else std_sketch
        self.n_traces = 0  # how often a prediction function was traced (compiled)
        self._compiled: dict[bool, tuple] = {}  # with_std -> (function, folded arrays)

    def _predict(self, x: np.ndarray, with_std: bool) -> np.ndarray:
        """One compiled call. The folded model is split once into its arrays (passed flat, the
        cheapest way into a compiled function) and its static rest (closed over). The folded
        covariance factor of the std function is a second K x K array beside the model's."""
        with float64_scope():
            return self._call(x, with_std)

    def _call(self, x: np.ndarray, with_std: bool) -> np.ndarray:
        if with_std not in self._compiled:
            sketch = self.std_sketch if with_std else None
            folded = eqx.filter_jit(predictor)(self.model, with_std, sketch)
            arrays, static = eqx.partition(folded, eqx.is_array)
            leaves, treedef = jax.tree_util.tree_flatten(arrays)

            def predict(leaves, x):
                self.n_traces += 1  # runs only while tracing
                pred = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)
                # One flat result: one transfer to the host instead of two or four.
                out = predict_folded(pred, x, with_std, upper=with_std)
                return jnp.concatenate([jnp.ravel(v) for v in out])

            self._compiled[with_std] = (jax.jit(predict), leaves)
        function, leaves = self._compiled[with_std]
        return np.asarray(function(leaves, x))

    def check_state(self, atoms, tol=1e-15):
        """Which of the inputs the model depends on differ from the last calculation.

        ASE's default compares every per-atom array with allclose, which costs about as much as
        the prediction itself; exact comparisons of the atomic numbers, positions, cell and pbc
        take microseconds. (Magnetic moments and charges do
        not enter the model, so their changes need no recalculation.)
        """
        old = self.atoms
        if old is None:
            return list(all_changes)
        pairs = (
            ("numbers", old.numbers, atoms.numbers),
            ("positions", old.positions, atoms.positions),
            ("cell", old.cell.array, atoms.cell.array),
            ("pbc", old.pbc, atoms.pbc),
        )
        return [name for name, a, b in pairs if not np.array_equal(a, b)]

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
        x = np.asarray(self.atoms.positions, dtype=np.float64).reshape(-1)
        with_std = any(p in STD_PROPERTIES for p in properties)
        # [E, F (3N)] or [E, F, E std, F std (3N), E std upper, F std upper (3N)]
        out = self._predict(x, with_std)
        d = len(x)
        if with_std:
            for name, at in (("", 1 + d), ("_upper", 2 + 2 * d)):
                self.results["energy_std" + name] = float(out[at])
                self.results["forces_std" + name] = out[at + 1 : at + 1 + d].reshape(-1, 3).copy()
        self.results["energy"] = float(out[0])
        self.results["free_energy"] = float(out[0])
        self.results["forces"] = out[1 : 1 + d].reshape(-1, 3).copy()
