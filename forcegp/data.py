"""Datasets of one molecule: reading, validation, splits, and the identity of a molecule.

Inside forcegp energies are eV, lengths Å and forces eV/Å. :func:`read_dataset` converts on the
way in (see :mod:`forcegp.readers` for the formats) and checks every frame, so a
:class:`Dataset` always holds one molecule with finite numbers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from .errors import InputError, ModelFileError
from .readers import check_frames, read_file

__all__ = ["Dataset", "check_numbers", "concatenate", "formula", "read_dataset"]


def _frozen(array, dtype) -> np.ndarray:
    # A read-only view: the dataset cannot be changed through it, and nothing is copied.
    view = np.ascontiguousarray(array, dtype=dtype).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class Dataset:
    """Frames of one molecule, with optional labels.

    numbers (n_atoms,) int64 atomic numbers, the same for every frame; positions
    (n_frames, n_atoms, 3) float64 Å; energies (n_frames,) float64 eV or None; forces
    (n_frames, n_atoms, 3) float64 eV/Å or None; sources, the files it was read from.
    Arrays are read-only. A dataset has at least one frame.
    """

    numbers: np.ndarray
    positions: np.ndarray
    energies: np.ndarray | None
    forces: np.ndarray | None
    sources: tuple[str, ...] = ()

    def __post_init__(self):
        numbers = _frozen(self.numbers, np.int64)
        positions = _frozen(self.positions, np.float64)
        n_atoms = numbers.shape[0] if numbers.ndim == 1 else -1
        if numbers.ndim != 1 or positions.ndim != 3 or positions.shape[1:] != (n_atoms, 3):
            raise InputError(
                f"Dataset needs numbers (n_atoms,) and positions (n_frames, n_atoms, 3); got"
                f" {numbers.shape} and {positions.shape}"
            )
        n_frames = positions.shape[0]
        if n_frames == 0 or n_atoms == 0:
            raise InputError("a Dataset needs at least one frame and one atom")
        energies = forces = None
        if self.energies is not None:
            energies = _frozen(self.energies, np.float64)
            if energies.shape != (n_frames,):
                raise InputError(f"energies have shape {energies.shape}, expected ({n_frames},)")
        if self.forces is not None:
            forces = _frozen(self.forces, np.float64)
            if forces.shape != positions.shape:
                raise InputError(f"forces have shape {forces.shape}, expected {positions.shape}")
        for name, values in (("positions", positions), ("energies", energies), ("forces", forces)):
            if values is not None and not np.isfinite(values).all():
                raise InputError(f"{name} of a Dataset must be finite")
        object.__setattr__(self, "numbers", numbers)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "energies", energies)
        object.__setattr__(self, "forces", forces)
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))

    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    @property
    def labelled(self) -> bool:
        """Whether both energies and forces are present."""
        return self.energies is not None and self.forces is not None

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        labels = "labelled" if self.labelled else "unlabelled"
        return f"Dataset({self.n_frames} frames, {self.n_atoms} atoms, {labels}, {self.sources})"

    def subset(self, index) -> Dataset:
        """The frames picked by ``index`` (an integer array, or a boolean mask (n_frames,))."""
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (self.n_frames,):
                raise InputError(f"mask has shape {index.shape}, expected ({self.n_frames},)")
            index = np.flatnonzero(index)
        if index.dtype.kind not in "iu":
            raise InputError(f"frame indices must be integers, got dtype {index.dtype}")
        index = index.reshape(-1)
        if index.size == 0:
            raise InputError("subset selects no frames; a Dataset needs at least one")
        if index.min() < -self.n_frames or index.max() >= self.n_frames:
            raise InputError(f"frame index out of range for a dataset of {self.n_frames} frames")
        return Dataset(
            numbers=self.numbers,
            positions=self.positions[index],
            energies=None if self.energies is None else self.energies[index],
            forces=None if self.forces is None else self.forces[index],
            sources=self.sources,
        )

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the numbers, positions, energies and forces, stable across runs.

        Arrays are hashed as little-endian C-order int64/float64 bytes after their name and
        shape, so unlabelled and labelled datasets never collide. Sources are not included.
        """
        digest = hashlib.sha256(b"forcegp.Dataset v1\n")
        for name, values, dtype in (
            ("numbers", self.numbers, "<i8"),
            ("positions", self.positions, "<f8"),
            ("energies", self.energies, "<f8"),
            ("forces", self.forces, "<f8"),
        ):
            if values is None:
                digest.update(f"{name} none\n".encode())
                continue
            digest.update(f"{name} {values.shape}\n".encode())
            digest.update(np.ascontiguousarray(values, dtype=dtype).tobytes())
        return digest.hexdigest()

    def split(self, valid_fraction: float, *, seed: int) -> tuple[Dataset, Dataset]:
        """Random (train, valid) split, the same for the same seed; frames keep file order.

        The validation part gets round(valid_fraction * n_frames) frames; both parts must get
        at least one frame.
        """
        if not 0.0 < valid_fraction < 1.0:
            raise InputError(f"valid fraction must be between 0 and 1, got {valid_fraction}")
        n_valid = int(round(valid_fraction * self.n_frames))
        if not 1 <= n_valid < self.n_frames:
            raise InputError(
                f"cannot split {self.n_frames} frames with valid fraction {valid_fraction}: each"
                " part needs at least one frame; change the fraction or add frames"
            )
        order = np.random.default_rng(seed).permutation(self.n_frames)
        return self.subset(np.sort(order[n_valid:])), self.subset(np.sort(order[:n_valid]))

    def to_atoms(self) -> list[Atoms]:
        """One ase.Atoms per frame; labels, when present, as a SinglePointCalculator (eV, eV/Å)."""
        images = []
        for i in range(self.n_frames):
            atoms = Atoms(numbers=self.numbers, positions=self.positions[i])
            results = {}
            if self.energies is not None:
                results["energy"] = float(self.energies[i])
            if self.forces is not None:
                results["forces"] = np.array(self.forces[i])
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
            images.append(atoms)
        return images


def read_dataset(
    paths,
    *,
    energy_key: str | None = None,
    forces_key: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    require_labels: bool = True,
    allow_predicted: bool = False,
    index=":",
) -> Dataset:
    """Read and check one or more files of the same molecule into one :class:`Dataset`.

    ``paths``: a path or a sequence of paths; ``.npz`` files (sGDML, rMD17 and similar keys)
    or anything ase.io.read knows (extxyz, xyz, traj, ...). ``energy_key``/``forces_key``
    name the info/arrays key (ASE formats) or the array (npz) holding the labels.
    ``energy_unit``/``length_unit`` give the file's units and win over units stored in it;
    by default ASE formats are eV and Å, and npz files must say their energy unit.
    ``require_labels=False`` accepts unlabelled frames (energies/forces None unless every
    frame has them). ``index`` picks frames of each file, in ASE syntax (":", "-1", "0:100").

    Frames written by ``forcegp md`` (info forcegp_predicted) or ``forcegp predict`` carry the
    model's own predictions as energy and forces. Where labels are required they are refused,
    as training or testing on them would be circular, unless ``allow_predicted=True``; with
    ``require_labels=False`` (positions wanted) they are read as they are.

    Raises InputError, with one line naming the file, frame and fix, for any bad input.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no data files given; pass at least one file")
    datasets, reference = [], None
    for path in paths:
        frames = read_file(
            path,
            energy_key=energy_key,
            forces_key=forces_key,
            energy_unit=energy_unit,
            length_unit=length_unit,
            require_labels=require_labels,
            allow_predicted=allow_predicted,
            index=index,
        )
        check_frames(frames, path, reference)
        if reference is None:
            reference = (frames.numbers[0], path)
        datasets.append(
            Dataset(
                numbers=frames.numbers[0],
                positions=frames.positions,
                energies=frames.energies,
                forces=frames.forces,
                sources=(str(path),),
            )
        )
    return concatenate(datasets)


def concatenate(datasets: Sequence[Dataset]) -> Dataset:
    """One dataset from several of the same molecule (same atoms in the same order).

    Energies (forces) are kept only if every part has them.
    """
    datasets = list(datasets)
    if not datasets:
        raise InputError("nothing to concatenate; pass at least one dataset")
    first = datasets[0]
    for other in datasets[1:]:
        if not np.array_equal(other.numbers, first.numbers):
            raise InputError(
                f"{', '.join(other.sources)} has atoms {formula(other.numbers)} but"
                f" {', '.join(first.sources)} has {formula(first.numbers)}; all datasets must"
                " list the same atoms in the same order"
            )
    if len(datasets) == 1:
        return first

    def joined(name):
        parts = [getattr(d, name) for d in datasets]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    sources = tuple(dict.fromkeys(s for d in datasets for s in d.sources))
    return Dataset(first.numbers, joined("positions"), joined("energies"), joined("forces"), sources)


def formula(numbers) -> str:
    """'C2H6O (atoms C C O H H H H H H)': the chemical formula and the atom order."""
    atoms = Atoms(numbers=[int(z) for z in numbers])
    return f"{atoms.get_chemical_formula()} (atoms {' '.join(atoms.get_chemical_symbols())})"


def check_numbers(model_numbers, numbers, what: str, data: str = "the data") -> None:
    """Raise ModelFileError unless ``numbers`` are the model's atoms in the model's order."""
    if numbers is None:
        return
    ours = np.asarray(model_numbers, dtype=np.int64)
    theirs = np.asarray(numbers, dtype=np.int64).reshape(-1)
    if ours.shape == theirs.shape and np.array_equal(ours, theirs):
        return
    hint = ""
    if ours.shape == theirs.shape and np.array_equal(np.sort(ours), np.sort(theirs)):
        hint = "; same atoms in another order: reorder the data to the model's order"
    raise ModelFileError(f"{what} was trained for {formula(ours)}, {data} has {formula(theirs)}{hint}")


def require_labels(data: Dataset, what: str, at_least: int = 1) -> None:
    where = ", ".join(data.sources) or "in memory"
    if not data.labelled:
        raise InputError(
            f"{what} data ({where}) has no energies and forces; training and evaluation need both"
        )
    if data.n_frames < at_least:
        raise InputError(
            f"{what} data ({where}) has {data.n_frames} frame(s); at least {at_least} are needed"
        )
