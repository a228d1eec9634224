"""Reading sGDML (R z E F e_unit r_unit) and rMD17 (coords nuclear_charges energies forces)
style .npz files, without pickle; their units from the file or the caller."""

from __future__ import annotations

import re

import numpy as np

from .. import units
from ..errors import InputError
from . import (
    MAX_Z,
    NPZ_ENERGY,
    NPZ_FORCES,
    NPZ_NUMBERS,
    NPZ_POSITIONS,
    Frames,
    describe,
    fail,
    no_labels,
    select,
)


def read_npz(
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
        raise no_labels(path, "energies", ", ".join(NPZ_ENERGY))
    if require_labels and forces is None:
        raise no_labels(path, "forces", ", ".join(NPZ_FORCES))
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
            f"energy unit unknown for {path}: pass `energy_unit` (rMD17 and MD17 files are kcal/mol)"
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
