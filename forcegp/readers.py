"""Format readers: one file in, :class:`Frames` out, in eV, Å and eV/Å.

Every problem a file can have becomes an :class:`~forcegp.errors.InputError` with one line that
names the file (and the frame) and says how to fix it. Readers parse and convert units; the
checks that apply to every format (same atoms in every frame, finite numbers) are in
:func:`check_frames`. :mod:`forcegp.data` builds datasets from these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.io.formats import filetype

from . import units
from .errors import InputError

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
        return _read_npz(path, **options)
    return _read_ase(path, **options)


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


# --- ASE formats --------------------------------------------------------------------------------


def _read_ase(
    path,
    *,
    energy_key,
    forces_key,
    energy_unit,
    length_unit,
    require_labels,
    index,
    allow_predicted=False,
):
    try:
        fmt = filetype(str(path))
    except Exception as exc:
        raise fail(
            path,
            f"format not recognised ({describe(exc)}); use extxyz, xyz, traj or another format"
            " ase.io.read knows, or an .npz file",
        ) from None
    if fmt in ("extxyz", "xyz"):
        _check_xyz_layout(path)
    try:
        images = ase.io.read(str(path), index=":", format=fmt)
    except Exception as exc:  # ASE raises anything from KeyError to StopIteration on bad input
        raise fail(path, f"could not be read as {fmt} ({describe(exc)}); check the file") from None
    images = [images] if isinstance(images, Atoms) else list(images)
    ids = select(path, len(images), index)
    images = [images[i] for i in ids]
    n_atoms = len(images[0])
    if n_atoms == 0:
        raise fail(path, "has no atoms", int(ids[0]))
    for atoms, frame in zip(images, ids, strict=True):  # stacking below needs equal counts
        if len(atoms) != n_atoms:
            raise fail(
                path,
                f"has {len(atoms)} atoms but frame {ids[0]} has {n_atoms}; every frame must be"
                " the same molecule",
                frame,
            )
    e_factor = units.energy_factor(energy_unit) if energy_unit is not None else 1.0
    l_factor = units.length_factor(length_unit) if length_unit is not None else 1.0
    pairs = list(zip(images, ids, strict=True))
    if require_labels and not allow_predicted:
        for atoms, frame in pairs:
            _refuse_predictions(path, atoms, int(frame), energy_key, forces_key)
    energies = [_frame_label(path, a, f, energy_key, "energy") for a, f in pairs]
    forces = [_frame_label(path, a, f, forces_key, "forces") for a, f in pairs]
    for values, what, key, defaults in (
        (energies, "energy", energy_key, ENERGY_KEYS),
        (forces, "forces", forces_key, FORCES_KEYS),
    ):
        missing = [f for v, f in zip(values, ids, strict=True) if v is None]
        if require_labels and missing:
            looked = repr(key) if key else f"calculator results, {', '.join(defaults)}"
            raise _no_labels(path, what, looked, int(missing[0]))
    has_e = all(e is not None for e in energies)
    has_f = all(f is not None for f in forces)
    return Frames(
        numbers=np.stack([a.numbers for a in images]).astype(np.int64),
        positions=np.stack([a.positions for a in images]).astype(np.float64) * l_factor,
        energies=np.array(energies, dtype=np.float64) * e_factor if has_e else None,
        forces=np.stack(forces) * (e_factor / l_factor) if has_f else None,
        frame_ids=ids,
    )


def _frame_label(path, atoms, frame, key, what) -> np.ndarray | None:
    """The frame's energy () or forces (n_atoms, 3), in the file's units, or None if absent."""
    results = getattr(atoms.calc, "results", None) or {}
    store = atoms.info if what == "energy" else atoms.arrays
    if key is not None:
        candidates = [store.get(key), results.get(key)]
    else:
        defaults = ENERGY_KEYS if what == "energy" else FORCES_KEYS
        candidates = [results.get(what)] + [store.get(k) for k in defaults]
    value = next((c for c in candidates if c is not None), None)
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise fail(path, f"{what} {str(value)[:40]!r} is not numeric", frame) from None
    shape = () if what == "energy" else (len(atoms), 3)
    if array.shape != shape and not (what == "energy" and array.size == 1):
        raise fail(path, f"{what} has shape {array.shape}, expected {shape}", frame)
    return array.reshape(shape)


def _refuse_predictions(path, atoms, frame, energy_key, forces_key) -> None:
    """Refuse a frame whose energy or forces would be a forcegp prediction, not a reference label.

    ``forcegp md`` marks its frames info["forcegp_predicted"]; ``forcegp predict`` writes
    info["forcegp_energy"] and arrays["forcegp_forces"]. Both store the prediction as the standard
    energy and forces, which reading moves into the calculator. Labels from there or from a
    forcegp_* key are predictions; other keys (predict's ref_energy / ref_forces) are accepted.
    """
    from_md = bool(atoms.info.get("forcegp_predicted", False))
    from_predict = "forcegp_energy" in atoms.info or "forcegp_forces" in atoms.arrays
    if not (from_md or from_predict):
        return
    results = getattr(atoms.calc, "results", None) or {}

    def predicted(key, store) -> bool:
        if key is None or key.startswith("forcegp_"):
            return True  # the defaults look at the calculator first
        return key not in store and results.get(key) is not None

    if not (predicted(energy_key, atoms.info) or predicted(forces_key, atoms.arrays)):
        return
    if from_md:
        fix = (
            "label it with a reference method (forcegp select picks which frames) and drop its"
            " info forcegp_predicted before training or testing on it"
        )
    else:
        fix = (
            "forcegp predict keeps reference labels, where the input had them, as ref_energy /"
            " ref_forces: pass --energy-key ref_energy --forces-key ref_forces"
        )
    raise fail(path, f"holds forcegp predictions, not reference labels; {fix}", frame)


def _no_labels(path, what, looked, frame=None) -> InputError:
    option = "--energy-key" if what.startswith("energ") else "--forces-key"
    return fail(
        path,
        f"has no {what} (looked for {looked}); name the key with {option}, or pass a labelled"
        " file (or use require_labels=False where labels are optional)",
        frame,
    )


def _check_xyz_layout(path) -> None:
    """Walk the atom-count lines of an (ext)xyz file as ASE does, before ASE does.

    ASE's extxyz reader skips ``natoms`` lines for each frame without checking for the end of
    the file, so a corrupt atom count of 10**12 would hang it; this check bounds it first.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise fail(path, "is not UTF-8 text, so not an xyz file; check the file") from None
    except OSError as exc:
        raise fail(path, f"cannot be read ({describe(exc)})") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    i, frame = 0, 0
    while i < len(lines) and lines[i].strip():
        try:
            natoms = int(lines[i])
        except ValueError:
            raise fail(
                path,
                f"line {i + 1} should hold the atom count of frame {frame} but reads"
                f" {lines[i][:40]!r}; not an xyz trajectory or truncated",
            ) from None
        if natoms < 1:
            raise fail(path, f"atom count {natoms} on line {i + 1} must be positive", frame)
        if i + 2 + natoms > len(lines):
            raise fail(
                path,
                f"atom count {natoms} on line {i + 1} runs past the end of the file; truncated?",
                frame,
            )
        i += 2 + natoms
        while i < len(lines) and lines[i].lstrip().startswith("VEC"):
            i += 1
        frame += 1


# --- npz ----------------------------------------------------------------------------------------


def _read_npz(
    path,
    *,
    energy_key,
    forces_key,
    energy_unit,
    length_unit,
    require_labels,
    index,
    allow_predicted=False,  # npz files never hold forcegp predictions
):
    arrays, names = _load_npz(path, energy_key, forces_key)
    if arrays["R"] is None:
        raise fail(
            path,
            f"has no positions (looked for {', '.join(NPZ_POSITIONS)}; it has"
            f" {', '.join(names) or 'nothing'})",
        )
    if arrays["z"] is None:
        raise fail(path, f"has no atomic numbers (looked for {', '.join(NPZ_NUMBERS)})")
    for key, wanted in (("E", energy_key), ("F", forces_key)):
        if wanted is not None and arrays[key] is None:
            raise fail(path, f"has no array {wanted!r} (it has {', '.join(names)})")
    positions = _numeric(path, arrays["R"], "positions")
    n_frames = positions.shape[0] if positions.ndim == 3 else 0
    if positions.ndim != 3 or positions.shape[2] != 3 or positions.shape[1] == 0:
        raise fail(path, f"positions have shape {positions.shape}, expected (n_frames, n_atoms, 3)")
    n_atoms = positions.shape[1]
    numbers = _npz_numbers(path, arrays["z"], n_frames, n_atoms)
    energies = forces = None
    if arrays["E"] is not None:
        energies = _numeric(path, arrays["E"], "energies")
        if energies.shape not in ((n_frames,), (n_frames, 1)):
            raise fail(path, f"energies have shape {energies.shape}, expected ({n_frames},)")
        energies = energies.reshape(n_frames)
    if arrays["F"] is not None:
        forces = _numeric(path, arrays["F"], "forces")
        if forces.shape != positions.shape:
            raise fail(path, f"forces have shape {forces.shape}, expected {positions.shape}")
    if require_labels and energies is None:
        raise _no_labels(path, "energies", ", ".join(NPZ_ENERGY))
    if require_labels and forces is None:
        raise _no_labels(path, "forces", ", ".join(NPZ_FORCES))
    e_factor, l_factor, f_factor = _npz_factors(
        path, arrays, energy_unit, length_unit, labelled=energies is not None or forces is not None
    )
    ids = select(path, n_frames, index)
    return Frames(
        numbers=numbers[ids],
        positions=positions[ids] * l_factor,
        energies=energies[ids] * e_factor if energies is not None else None,
        forces=forces[ids] * f_factor if forces is not None else None,
        frame_ids=ids,
    )


def _load_npz(path, energy_key, forces_key):
    """The arrays forcegp uses, by role (R, z, E, F, units...), loaded without pickle."""
    wanted = {
        "R": NPZ_POSITIONS,
        "z": NPZ_NUMBERS,
        "E": (energy_key,) if energy_key else NPZ_ENERGY,
        "F": (forces_key,) if forces_key else NPZ_FORCES,
        "e_unit": ("e_unit",),
        "r_unit": ("r_unit",),
        "units": ("units",),
    }
    arrays, key = {}, None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise fail(path, "is a single .npy array, not an .npz archive of named arrays")
            names = list(archive.files)
            for role, keys in wanted.items():
                key = next((k for k in keys if k in names), None)
                arrays[role] = archive[key] if key is not None else None
    except InputError:
        raise
    except ValueError as exc:
        if key is None and "pickle" in str(exc).lower():
            raise fail(
                path,
                "is not an .npz archive: neither zip nor .npy data (forcegp never"
                " loads pickle files); save arrays with np.savez",
            ) from None
        if "pickle" in str(exc).lower() or "object arrays" in str(exc).lower():
            raise fail(
                path,
                f"array {key!r} holds pickled Python objects, which forcegp never"
                " loads; save plain numeric arrays with np.savez",
            ) from None
        raise fail(path, f"is not a readable .npz archive ({describe(exc)})") from None
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, OSError, MemoryError, ...
        raise fail(path, f"is not a readable .npz archive ({describe(exc)})") from None
    return arrays, names


def _numeric(path, array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind not in "iuf":
        raise fail(path, f"{name} have dtype {array.dtype}, expected real numbers")
    return array.astype(np.float64)


def _npz_numbers(path, z: np.ndarray, n_frames: int, n_atoms: int) -> np.ndarray:
    """Atomic numbers (n_frames, n_atoms) int64 from z (n_atoms,) or (n_frames, n_atoms)."""
    if z.shape not in ((n_atoms,), (n_frames, n_atoms)):
        raise fail(path, f"atomic numbers have shape {z.shape}, expected ({n_atoms},)")
    values = _numeric(path, z, "atomic numbers")
    if not np.isfinite(values).all() or (values != np.round(values)).any():
        raise fail(path, "atomic numbers are not all whole numbers")
    bad = np.flatnonzero((values < 1) | (values > MAX_Z))
    if bad.size:
        value = values.reshape(-1)[bad[0]]
        raise fail(path, f"atomic number {value:g} is not an element (must be 1 to {MAX_Z})")
    values = values.astype(np.int64)
    return np.broadcast_to(values, (n_frames, n_atoms))


def _unit_text(path, array, name) -> str | None:
    if array is None:
        return None
    if array.size != 1 or array.dtype.kind not in "US":
        raise fail(path, f"{name} is not a string (it has dtype {array.dtype}, shape {array.shape})")
    value = array.reshape(()).item()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_units_field(text: str) -> dict[str, str]:
    """Units from a field like "R: Angstrom; E: kcal/mol; F: kcal/mol/Angstrom (MD22 native units)".

    Returns a dict with any of the keys "R", "E", "F"; parenthetical remarks and items without
    a colon ("no energies or forces") are ignored.
    """
    found = {}
    for item in text.split(";"):
        key, sep, value = item.partition(":")
        value = re.sub(r"\([^)]*\)", "", value).strip()
        if sep and key.strip().upper() in ("R", "E", "F") and value:
            found[key.strip().upper()] = value
    return found


def _npz_factors(path, arrays, energy_unit, length_unit, *, labelled):
    """Factors (energy, length, force) to eV, Å and eV/Å; the caller's units win over the file's."""
    fields = {}
    if arrays["units"] is not None:
        fields = parse_units_field(_unit_text(path, arrays["units"], "units"))
    e_unit = energy_unit or _unit_text(path, arrays["e_unit"], "e_unit") or fields.get("E")
    r_unit = length_unit or _unit_text(path, arrays["r_unit"], "r_unit") or fields.get("R") or "Ang"
    if labelled and e_unit is None:
        raise InputError(
            f"energy unit unknown for {path}: pass --energy-unit (rMD17 and MD17 files are kcal/mol)"
        )
    try:
        l_factor = units.length_factor(r_unit)
        if not labelled:
            return 1.0, l_factor, 1.0
        e_factor = units.energy_factor(e_unit)
        f_factor = e_factor / l_factor
        if energy_unit is None and length_unit is None and "F" in fields:
            f_energy, _, f_length = fields["F"].rpartition("/")
            f_factor = units.energy_factor(f_energy) / units.length_factor(f_length)
    except InputError as exc:
        raise fail(path, f"{exc}") from None
    return e_factor, l_factor, f_factor
