"""Molecular dynamics with a ForceGP, watching the model's own uncertainty.

    summary = run_md(model, atoms, "traj.extxyz", steps=1000, temperature=300, timestep=0.5,
                     seed=0, max_force_std=0.5)

ASE's Langevin (NVT) or velocity Verlet (NVE) integrator drives the atoms with a
:class:`~forcegp.calculator.ForceGPCalculator`. Every ``interval``-th step is written to an extxyz
file with the predicted energy and forces (the standard ``energy``/``forces`` fields) and their
standard deviations (``info["energy_std"]`` eV, ``arrays["forces_std"]`` eV/Å), which survive a
round trip. Frames are marked ``info["forcegp_predicted"] = True``: their energies and forces are
the model's, not reference labels (``forcegp select`` drops them for that reason).

With ``max_force_std`` the run stops at the first step whose largest force-component standard
deviation exceeds it; that frame is always written, last, with ``info["trigger"] = True``. This
is the usual active-learning loop: run until the model is unsure, label what it was unsure about.

The file is written atomically: frames go to a temporary file that is renamed onto the output
when the run ends, stops early, or is interrupted (Ctrl-C raises :class:`MDInterrupted` after
saving what was run), so a reader never sees a half-written trajectory.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

try:  # ASE >= 3.29 renamed MaxwellBoltzmannDistribution (now deprecated) to thermalize_momenta
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms, temperature_K, *, rng):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


from .calculator import ForceGPCalculator
from .errors import ForceGPError, InputError, NumericalError
from .files import atomic_write
from .gp.config import MONITOR_STD_SKETCH
from .gp.params import ForceGP

THERMOSTATS = ("langevin", "nve")

#: Per-atom arrays copied from the running atoms into each written frame.
_KEEP_ARRAYS = ("numbers", "positions", "momenta", "masses")


@dataclass(frozen=True)
class MDSummary:
    """What :func:`run_md` did.

    stopped: "completed", "uncertain" (max_force_std exceeded), "interrupted" (Ctrl-C) or
    "non-finite" (the prediction blew up; raised as NumericalError).
    steps: MD steps run; frames: frames written; time_fs: simulated time (fs).
    trigger_step / trigger_force_std (eV/Å): the step that exceeded max_force_std, if any.
    max_force_std: largest force-component std (eV/Å) seen on the steps that were checked
    (every step with max_force_std, otherwise the written frames).
    """

    output: Path
    stopped: str
    steps: int
    requested_steps: int
    frames: int
    time_fs: float
    seconds: float
    max_force_std: float
    trigger_step: int | None = None
    trigger_force_std: float | None = None
    threshold: float | None = None

    def message(self) -> str:
        """One line for the user."""
        if self.stopped == "uncertain":
            head = (
                f"stopped at step {self.trigger_step} ({self.time_fs:g} fs): max force std "
                f"{self.trigger_force_std:.3g} eV/Å > {self.threshold:g} eV/Å"
            )
        elif self.stopped == "interrupted":
            head = f"interrupted after {self.steps} of {self.requested_steps} steps"
        elif self.stopped == "non-finite":
            head = f"non-finite forces after step {self.steps}"
        else:
            head = f"ran {self.steps} steps ({self.time_fs:g} fs)"
        return (
            f"{head}; wrote {self.frames} frame(s) to {self.output} "
            f"(largest force std seen {self.max_force_std:.3g} eV/Å)"
        )


class MDInterrupted(ForceGPError):
    """Ctrl-C during :func:`run_md`; the frames run so far were saved. ``summary`` says what."""

    exit_code = 130

    def __init__(self, summary: MDSummary):
        super().__init__(summary.message())
        self.summary = summary


class _MonitoredCalculator(ForceGPCalculator):
    """Computes the standard deviations with every evaluation: one compiled call per MD step
    instead of two when every step's force std is checked."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, (*properties, "forces_std"), system_changes)


def make_calculator(
    model: ForceGP | str | Path, *, monitor: bool = False, std_sketch: int | None = MONITOR_STD_SKETCH
) -> ForceGPCalculator:
    """A ForceGPCalculator for :func:`run_md`. monitor=True: the stds come with every evaluation,
    which halves the cost of checking every step, estimated from a random projection with
    ``std_sketch`` columns (None: exact). The run checks the std's upper bound, so it stops no
    later than the exact std would stop it but with probability 1e-3 per force component
    checked (ForceGPCalculator). Pass one calculator to several runs of the same
    model to compile its prediction once."""
    if not monitor:
        return ForceGPCalculator(model)
    return _MonitoredCalculator(model, std_sketch=std_sketch)


def check_md_settings(
    *, steps, temperature, timestep, thermostat, friction, interval, max_force_std
) -> None:
    """Raise InputError for unusable MD settings (once, before anything runs)."""
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    if not np.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be >= 0 K, got {temperature!r}")
    if not np.isfinite(timestep) or timestep <= 0:
        raise InputError(f"timestep must be > 0 fs, got {timestep!r}")
    if thermostat not in THERMOSTATS:
        raise InputError(f"unknown thermostat {thermostat!r}; use one of {', '.join(THERMOSTATS)}")
    if thermostat == "langevin" and not (np.isfinite(friction) and friction > 0):
        raise InputError(f"friction must be > 0 per fs, got {friction!r}")
    if not isinstance(interval, int) or interval < 1:
        raise InputError(f"interval must be an integer >= 1, got {interval!r}")
    if max_force_std is not None and not (np.isfinite(max_force_std) and max_force_std > 0):
        raise InputError(f"max force std must be > 0 eV/Å, got {max_force_std!r}")


def read_start(path, frame: int = 0) -> Atoms:
    """Frame ``frame`` (ASE index, -1 = last) of a structure file, as InputError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"start structure {path} does not exist")
    try:
        atoms = ase.io.read(str(path), index=frame)
    except IndexError:
        raise InputError(f"{path} has no frame {frame}") from None
    except Exception as exc:  # ASE raises anything on bad input
        raise InputError(f"{path} could not be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise InputError(f"{path} frame {frame} has no atoms")
    return atoms


def run_md(
    model: ForceGP | str | Path | ForceGPCalculator,
    atoms: Atoms,
    output,
    *,
    steps: int,
    temperature: float,
    timestep: float,
    seed: int,
    thermostat: str = "langevin",
    friction: float = 0.01,
    interval: int = 1,
    max_force_std: float | None = None,
    std_sketch: int | None = MONITOR_STD_SKETCH,
    progress: Callable[[int], None] | None = None,
) -> MDSummary:
    """Run MD from ``atoms`` (not modified) and write every ``interval``-th frame to ``output``.

    model: a ForceGP, a model file, or a calculator from :func:`make_calculator` (reused).

    temperature (K): of the Maxwell-Boltzmann start velocities (centre-of-mass motion and
    rotation removed) and, for "langevin", of the bath. timestep (fs). friction (1/fs, Langevin).
    seed: of the start velocities and the Langevin noise. max_force_std (eV/Å): stop at the
    first step after the start whose largest force-component std exceeds it, the std's upper
    bound from a ``std_sketch``-column projection (make_calculator; None: exact). progress(step):
    called after every step. Frame 0 (the start) is always written. Returns an MDSummary;
    Ctrl-C raises MDInterrupted (its ``summary`` attached) after saving the frames run so far.
    """
    check_md_settings(
        steps=steps, temperature=temperature, timestep=timestep, thermostat=thermostat,
        friction=friction, interval=interval, max_force_std=max_force_std,
    )  # fmt: skip
    output = Path(output)
    atoms, calc = _prepared(model, atoms, monitor=max_force_std is not None, std_sketch=std_sketch)
    dyn = _dynamics(atoms, thermostat, temperature, timestep, friction, seed)
    started = time.perf_counter()
    with atomic_write(output) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        record = _Record(atoms, calc, timestep, handle)
        try:
            stopped = _drive(dyn, atoms, calc, record, steps, interval, max_force_std, progress)
        except KeyboardInterrupt:
            stopped = "interrupted"  # leave the block normally: the frames so far are kept
    summary = MDSummary(
        output=output,
        stopped=stopped,
        steps=record.step,
        requested_steps=steps,
        frames=record.frames,
        time_fs=record.step * timestep,
        seconds=time.perf_counter() - started,
        max_force_std=record.max_std,
        trigger_step=record.trigger,
        trigger_force_std=record.trigger_std,
        threshold=max_force_std,
    )
    if stopped == "interrupted":
        raise MDInterrupted(summary)
    if stopped == "non-finite":
        raise NumericalError(
            f"the predicted forces became non-finite after MD step {summary.steps}; the "
            f"{summary.frames} frame(s) before were written to {output} (lower the timestep or "
            "temperature, or stop earlier with max_force_std)"
        )
    return summary


def _prepared(model, atoms: Atoms, *, monitor: bool, std_sketch) -> tuple[Atoms, ForceGPCalculator]:
    """A copy of the start atoms (custom masses kept, no periodicity) with the calculator
    attached; a wrong molecule or atom order fails here, before anything is written."""
    if isinstance(model, ForceGPCalculator):
        calc = model
    else:
        calc = make_calculator(model, monitor=monitor, std_sketch=std_sketch)
    masses = atoms.arrays.get("masses")  # custom masses (e.g. deuterium) are kept
    atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions, masses=masses, pbc=False)
    atoms.calc = calc
    calc.check_atoms(atoms)
    return atoms, calc


def _dynamics(atoms: Atoms, thermostat: str, temperature, timestep, friction, seed: int):
    """Maxwell-Boltzmann start velocities (no centre-of-mass motion or rotation) and the
    integrator, both drawing from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dt = timestep * units.fs
    if thermostat == "langevin":
        return Langevin(
            atoms, dt, temperature_K=temperature, friction=friction / units.fs, fixcm=False,
            rng=rng,
        )  # fmt: skip
    return VelocityVerlet(atoms, dt)


class _Record:
    """The frames written so far and what was seen: one extxyz frame per write, whole."""

    def __init__(self, atoms: Atoms, calc, timestep: float, handle):
        self.atoms, self.calc, self.timestep, self.handle = atoms, calc, timestep, handle
        self.step, self.frames, self.max_std = 0, 0, 0.0
        self.trigger: int | None = None
        self.trigger_std: float | None = None

    def saw(self, std: float) -> None:
        self.max_std = max(self.max_std, std)

    def write(self, step: int, trigger: bool = False) -> None:
        frame = _frame(self.atoms, self.calc, step, self.timestep, trigger=trigger)
        self.saw(float(frame.arrays["forces_std"].max()))
        text = io.StringIO()
        ase.io.write(text, frame, format="extxyz")
        self.handle.write(text.getvalue())  # one write: Ctrl-C cannot leave half a frame
        self.handle.flush()
        self.frames += 1


def _drive(dyn, atoms, calc, record: _Record, steps, interval, max_force_std, progress) -> str:
    """Run the steps, writing every interval-th frame; returns how the run stopped."""
    for _ in dyn.irun(steps):
        step = int(dyn.nsteps)
        if not np.all(np.isfinite(atoms.get_forces())):
            return "non-finite"
        record.step = step
        if step > 0 and max_force_std is not None:
            std = float(np.max(calc.get_property("forces_std_upper", atoms)))
            record.saw(std)
            if std > max_force_std:
                record.trigger, record.trigger_std = step, std
                record.write(step, trigger=True)
                return "uncertain"
        if step % interval == 0:
            record.write(step)
        if step > 0 and progress is not None:
            progress(step)
    return "completed"


def _frame(atoms: Atoms, calc, step: int, timestep: float, *, trigger: bool) -> Atoms:
    """A copy of the running atoms with the prediction and its std stored to survive extxyz."""
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(), dtype=np.float64)
    energy_std = float(calc.get_property("energy_std", atoms))
    forces_std = np.array(calc.get_property("forces_std", atoms), dtype=np.float64)
    frame = atoms.copy()
    for name in list(frame.arrays):
        if name not in _KEEP_ARRAYS:
            del frame.arrays[name]
    frame.info = {
        "step": int(step),
        "time_fs": float(step * timestep),
        "temperature_K": float(atoms.get_temperature()),
        "energy_std": energy_std,
        "forcegp_predicted": True,
    }
    if trigger:
        frame.info["trigger"] = True
    frame.arrays["forces_std"] = forces_std
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
    return frame
