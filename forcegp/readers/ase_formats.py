"""Reading files in any format ase.io.read knows (extxyz, xyz, traj, ...): labels from the
attached calculator or from named info / arrays keys; forcegp's own predictions refused where
reference labels are required."""

from __future__ import annotations

import ase.io
import numpy as np
from ase import Atoms
from ase.io.formats import filetype

from .. import units
from . import ENERGY_KEYS, FORCES_KEYS, Frames, describe, fail, no_labels, select


def _images(path, index) -> tuple[list[Atoms], np.ndarray]:
    """The frames ``index`` picks (Atoms, and their indices in the file), of one atom count."""
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
    return images, ids


def read_ase(
    path,
    *,
    energy_key,
    forces_key,
    energy_unit,
    length_unit,
    require_labels,
    index,
    allow_predicted=False,
) -> Frames:
    """One file in any format ase.io.read knows, as Frames in eV, Å and eV/Å."""
    images, ids = _images(path, index)
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
            raise no_labels(path, what, looked, int(missing[0]))
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
            " ref_forces: pass `energy_key` ref_energy and `forces_key` ref_forces"
        )
    raise fail(path, f"holds forcegp predictions, not reference labels; {fix}", frame)


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
