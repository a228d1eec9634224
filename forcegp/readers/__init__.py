"""Format readers: one file in, :class:`Frames` out, in eV, Å and eV/Å.

Every problem a file can have becomes an :class:`~forcegp.errors.InputError` with one line that
names the file (and the frame) and says how to fix it. Readers parse and convert units; the
checks that apply to every format (same atoms in every frame, finite numbers) are in
:func:`check_frames`. :mod:`forcegp.data` builds datasets from these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from ..errors import InputError

# Keys tried, in order, when the caller names none. ASE's extxyz reader already moves the key
# "energy" and the array "forces" into a SinglePointCalculator, which is looked at first.
ENERGY_KEYS = ("energy", "Energy", "REF_energy")
FORCES_KEYS = ("forces", "REF_forces", "force")
NPZ_POSITIONS = ("R", "coords", "positions")
NPZ_NUMBERS = ("z", "nuclear_charges", "atomic_numbers", "numbers")
NPZ_ENERGY = ("E", "energies", "energy")
NPZ_FORCES = ("F", "forces")
MAX_Z = len(chemical_symbols) - 1


@dataclass(frozen=True)
class Frames:
    """The selected frames of one file, converted to forcegp units, not yet validated.

    numbers (n_frames, n_atoms) int64; positions (n_frames, n_atoms, 3) Å; energies (n_frames,)
    eV or None; forces (n_frames, n_atoms, 3) eV/Å or None; frame_ids (n_frames,) int64, the
    frames' indices in the file, used in messages.
    """

    numbers: np.ndarray
    positions: np.ndarray
    energies: np.ndarray | None
    forces: np.ndarray | None
    frame_ids: np.ndarray


def fail(path, problem: str, frame: int | None = None) -> InputError:
    """An InputError whose one-line message starts with the file and frame."""
    where = f"{path}: frame {frame}: " if frame is not None else f"{path}: "
    return InputError(" ".join((where + problem).split()))


def describe(exc: BaseException) -> str:
    """A short one-line description of a third-party exception, for wrapping it."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_file(path: Path, **options) -> Frames:
    """Read one file (.npz or anything ase.io.read knows) into :class:`Frames`.

    ``options`` are read_dataset's keyword arguments: energy_key, forces_key, energy_unit,
    length_unit, require_labels, allow_predicted, index.
    """
    if not path.exists():
        raise fail(path, "no such file; check the path")
    if path.is_dir():
        raise fail(path, "is a directory, not a data file; name the files inside it")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise fail(path, f"cannot be read ({describe(exc)})") from None
    if size == 0:
        raise fail(path, "is empty; it must hold at least one frame")
    if path.suffix.lower() == ".npz":
        from .npz import read_npz

        return read_npz(path, **options)
    from .ase_formats import read_ase

    return read_ase(path, **options)


def select(path, n_frames: int, index) -> np.ndarray:
    """Indices of the frames that ``index`` (ASE syntax: ":", "-1", "0:100:2", int, slice) picks."""
    if n_frames == 0:
        raise fail(path, "holds no frames; it must hold at least one")
    bad_index = fail(path, f"bad frame index {index!r}; use e.g. ':', '-1' or '0:100:2'")
    if isinstance(index, str):
        try:
            parts = [int(p) if p.strip() else None for p in index.split(":")]
        except ValueError:
            raise bad_index from None
        if len(parts) > 3:
            raise bad_index
        index = parts[0] if len(parts) == 1 else slice(*parts)
    if isinstance(index, slice):
        if index.step == 0:
            raise fail(path, "frame index step must not be 0")
        ids = np.arange(n_frames)[index]
    elif isinstance(index, (int, np.integer)):
        if not -n_frames <= index < n_frames:
            raise fail(path, f"frame index {index} is out of range for {n_frames} frames")
        ids = np.arange(n_frames)[[index]]
    else:
        raise bad_index
    if ids.size == 0:
        raise fail(path, f"frame index {index!r} selects none of its {n_frames} frames")
    return ids.astype(np.int64)


def check_frames(frames: Frames, path, reference: tuple[np.ndarray, object] | None) -> None:
    """Check atoms and finiteness of every frame; ``reference`` is (numbers, path) of frame 0."""
    ref_numbers, ref_path = reference if reference else (frames.numbers[0], path)
    ref_name = f"frame 0 of {ref_path}" if reference else "frame 0"
    for row, frame in zip(frames.numbers, frames.frame_ids, strict=True):
        if row.shape != ref_numbers.shape:
            raise fail(
                path,
                f"has {row.size} atoms but {ref_name} has {ref_numbers.size}; every frame must be"
                " the same molecule",
                frame,
            )
        bad = np.flatnonzero((row < 1) | (row > MAX_Z))
        if bad.size:
            raise fail(path, f"atom {bad[0]} has atomic number {row[bad[0]]}, not an element", frame)
        diff = np.flatnonzero(row != ref_numbers)
        if diff.size:
            i = diff[0]
            raise fail(
                path,
                f"atom {i} is {chemical_symbols[row[i]]} but in {ref_name} it is"
                f" {chemical_symbols[ref_numbers[i]]}; every frame must list the same atoms in"
                " the same order",
                frame,
            )
    for what, values in (
        ("positions contain", frames.positions),
        ("energy is", frames.energies),
        ("forces contain", frames.forces),
    ):
        if values is None:
            continue
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if not finite.all():
            frame = frames.frame_ids[np.flatnonzero(~finite)[0]]
            raise fail(path, f"{what} NaN or inf; remove or fix that frame", frame)


def no_labels(path, what, looked, frame=None) -> InputError:
    option = "`energy_key`" if what.startswith("energ") else "`forces_key`"
    return fail(
        path,
        f"has no {what} (looked for {looked}); name the key with {option}, or pass a labelled"
        " file (or use require_labels=False where labels are optional)",
        frame,
    )
