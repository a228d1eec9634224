"""Tests of forcegp.data: every reader, units, datasets, atomic writes, and bad inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from forcegp import units
from forcegp.data import Dataset, concatenate, read_dataset
from forcegp.errors import InputError
from forcegp.files import atomic_write, write_extxyz_atomic
from forcegp.readers.npz import parse_units_field

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])  # ethanol, as in rMD17


def frames(n=3, numbers=NUMBERS, seed=0, labelled=True):
    """Small labelled frames (eV, eV/Å) with a SinglePointCalculator."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        atoms = Atoms(numbers=numbers, positions=rng.normal(size=(len(numbers), 3)))
        if labelled:
            atoms.calc = SinglePointCalculator(
                atoms, energy=float(rng.normal()), forces=rng.normal(size=(len(numbers), 3))
            )
        images.append(atoms)
    return images


def arrays_of(images):
    return (
        np.stack([a.positions for a in images]),
        np.array([a.get_potential_energy() for a in images]),
        np.stack([a.get_forces() for a in images]),
    )


def write(path, images, **kw):
    ase.io.write(path, images, **kw)
    return path


def check_message(exc_info, name, frame=None):
    message = str(exc_info.value)
    assert "\n" not in message
    assert name in message
    if frame is not None:
        assert f"frame {frame}" in message


# --- readers ------------------------------------------------------------------------------------


def test_extxyz_with_calculator(tmp_path):
    images = frames(4)
    path = write(tmp_path / "a.extxyz", images)
    data = read_dataset(path)
    R, E, F = arrays_of(images)
    assert data.n_frames == len(data) == 4 and data.n_atoms == 9
    assert data.numbers.dtype == np.int64 and np.array_equal(data.numbers, NUMBERS)
    np.testing.assert_allclose(data.positions, R, atol=1e-8)
    np.testing.assert_allclose(data.energies, E, rtol=1e-12)
    np.testing.assert_allclose(data.forces, F, atol=1e-8)
    assert data.sources == (str(path),)


def test_extxyz_with_custom_keys(tmp_path):
    images = frames(3)
    R, E, F = arrays_of(images)
    for atoms, e, f in zip(images, E, F, strict=True):
        atoms.calc = None
        atoms.info["my_energy"] = e
        atoms.arrays["my_forces"] = f
    path = write(tmp_path / "a.xyz", images, format="extxyz")
    with pytest.raises(InputError) as info:
        read_dataset(path)
    check_message(info, "a.xyz", frame=0)
    data = read_dataset(path, energy_key="my_energy", forces_key="my_forces")
    np.testing.assert_allclose(data.energies, E)
    np.testing.assert_allclose(data.forces, F, atol=1e-8)


def test_extxyz_with_common_keys_found_without_options(tmp_path):
    images = frames(2)
    R, E, F = arrays_of(images)
    for atoms, e, f in zip(images, E, F, strict=True):
        atoms.calc = None
        atoms.info["REF_energy"] = e
        atoms.arrays["REF_forces"] = f
    data = read_dataset(write(tmp_path / "ref.extxyz", images))
    np.testing.assert_allclose(data.energies, E)


def test_energy_key_named_energy_finds_the_calculator_value(tmp_path):
    images = frames(2)
    data = read_dataset(write(tmp_path / "a.extxyz", images), energy_key="energy")
    np.testing.assert_allclose(data.energies, arrays_of(images)[1])


def test_traj(tmp_path):
    images = frames(3)
    data = read_dataset(write(tmp_path / "a.traj", images))
    R, E, F = arrays_of(images)
    np.testing.assert_array_equal(data.positions, R)
    np.testing.assert_array_equal(data.energies, E)
    np.testing.assert_array_equal(data.forces, F)


def test_sgdml_npz_with_units(tmp_path):
    R, E, F = arrays_of(frames(3))
    path = tmp_path / "sgdml.npz"
    k = units.KCAL_PER_MOL
    np.savez(
        path,
        R=R,
        z=NUMBERS.astype(np.uint8),
        E=(E / k)[:, None],
        F=F / k,
        e_unit="kcal/mol",
        r_unit="Ang",
        name="ethanol",
        theory="test",
    )
    data = read_dataset(path)
    np.testing.assert_allclose(data.energies, E, rtol=1e-12)
    np.testing.assert_allclose(data.forces, F, rtol=1e-12)


def test_rmd17_npz_needs_an_energy_unit(tmp_path):
    R, E, F = arrays_of(frames(3))
    path = tmp_path / "rmd17_like.npz"
    k = units.KCAL_PER_MOL
    np.savez(path, coords=R, nuclear_charges=NUMBERS, energies=E / k, forces=F / k)
    with pytest.raises(InputError, match="energy unit unknown") as info:
        read_dataset(path)
    check_message(info, "rmd17_like.npz")
    assert "`energy_unit`" in str(info.value)
    data = read_dataset(path, energy_unit="kcal/mol")
    np.testing.assert_allclose(data.energies, E, rtol=1e-12)
    np.testing.assert_allclose(data.forces, F, rtol=1e-12)


def test_energy_unit_argument_wins_over_the_file(tmp_path):
    R, E, F = arrays_of(frames(2))
    path = tmp_path / "a.npz"
    np.savez(path, R=R, z=NUMBERS, E=E, F=F, e_unit="kcal/mol")
    data = read_dataset(path, energy_unit="eV")
    np.testing.assert_allclose(data.energies, E)


def test_length_unit_converts_positions_and_forces(tmp_path):
    R, E, F = arrays_of(frames(2))
    path = tmp_path / "bohr.npz"
    np.savez(path, R=R / units.BOHR, z=NUMBERS, E=E, F=F * units.BOHR, e_unit="eV", r_unit="bohr")
    data = read_dataset(path)
    np.testing.assert_allclose(data.positions, R, rtol=1e-12)
    np.testing.assert_allclose(data.forces, F, rtol=1e-12)


def test_units_field_of_published_files():
    assert parse_units_field("R: Angstrom; E: kcal/mol; F: kcal/mol/Angstrom (MD22 native units)") == {
        "R": "Angstrom",
        "E": "kcal/mol",
        "F": "kcal/mol/Angstrom",
    }
    assert parse_units_field("R: Angstrom; E: eV (no forces in source)") == {
        "R": "Angstrom",
        "E": "eV",
    }
    assert parse_units_field("R: Angstrom; no energies or forces") == {"R": "Angstrom"}


def test_units_field_and_positions_variant(tmp_path):
    R, E, F = arrays_of(frames(2))
    k = units.KCAL_PER_MOL
    path = tmp_path / "md22_like.npz"
    np.savez(
        path,
        R=R,
        z=NUMBERS,
        E=E / k,
        F=F / k,
        units="R: Angstrom; E: kcal/mol; F: kcal/mol/Angstrom (native)",
    )
    np.testing.assert_allclose(read_dataset(path).forces, F, rtol=1e-12)
    variant = tmp_path / "variant.npz"
    np.savez(
        variant,
        positions=R,
        energy=(E / k)[:, None],
        forces=F / k,
        atomic_numbers=np.tile(NUMBERS, (2, 1)),
    )
    data = read_dataset(variant, energy_unit="kcal/mol")
    np.testing.assert_allclose(data.energies, E, rtol=1e-12)
    assert data.numbers.shape == (9,)


def test_kcal_file_equals_ev_file(tmp_path):
    images = frames(3)
    R, E, F = arrays_of(images)
    ev = read_dataset(write(tmp_path / "ev.extxyz", images))
    k = units.KCAL_PER_MOL
    np.savez(tmp_path / "kcal.npz", R=ev.positions, z=NUMBERS, E=ev.energies / k, F=ev.forces / k)
    kcal = read_dataset(tmp_path / "kcal.npz", energy_unit="kcal/mol")
    np.testing.assert_allclose(kcal.energies, ev.energies, rtol=1e-13)
    np.testing.assert_allclose(kcal.forces, ev.forces, rtol=1e-13, atol=1e-15)


def test_positions_only(tmp_path):
    path = tmp_path / "geom.npz"
    np.savez(path, R=arrays_of(frames(2))[0], z=NUMBERS)
    with pytest.raises(InputError, match="no energies"):
        read_dataset(path)
    data = read_dataset(path, require_labels=False)
    assert data.energies is None and data.forces is None and not data.labelled
    xyz = write(tmp_path / "geom.xyz", frames(2, labelled=False), format="extxyz")
    assert read_dataset(xyz, require_labels=False).energies is None


def test_index_selects_frames(tmp_path):
    images = frames(5)
    data = read_dataset(write(tmp_path / "a.extxyz", images), index="1:4")
    np.testing.assert_allclose(data.energies, arrays_of(images)[1][1:4])
    assert read_dataset(tmp_path / "a.extxyz", index="-1").n_frames == 1


def test_published_example_data():
    train = read_dataset(ROOT / "data" / "ethanol_train.extxyz")
    assert train.n_frames == 1000 and np.array_equal(train.numbers, NUMBERS)
    assert ase.io.read(ROOT / "data" / "ethanol_test.extxyz", 0).get_potential_energy() < -4000


def test_multiple_files_are_concatenated(tmp_path):
    a, b = frames(2, seed=1), frames(3, seed=2)
    data = read_dataset([write(tmp_path / "a.extxyz", a), write(tmp_path / "b.traj", b)])
    assert data.n_frames == 5 and len(data.sources) == 2
    np.testing.assert_allclose(data.energies, np.concatenate([arrays_of(a)[1], arrays_of(b)[1]]))


# --- Dataset ------------------------------------------------------------------------------------


def dataset(n=10, seed=0):
    R, E, F = arrays_of(frames(n, seed=seed))
    return Dataset(NUMBERS, R, E, F, ("mem",))


def test_fingerprint_stable_and_sensitive():
    data = dataset()
    assert data.fingerprint() == dataset().fingerprint()
    assert len(data.fingerprint()) == 64
    positions = np.array(data.positions)
    positions[3, 2, 1] += 1e-12
    changed = Dataset(data.numbers, positions, data.energies, data.forces)
    assert changed.fingerprint() != data.fingerprint()
    unlabelled = Dataset(data.numbers, data.positions, None, None)
    assert unlabelled.fingerprint() != data.fingerprint()


def test_fingerprint_known_value():
    # Pinned: model files record this digest, so the format must never change silently.
    data = Dataset(np.array([1, 1]), np.zeros((1, 2, 3)), np.zeros(1), np.zeros((1, 2, 3)))
    expected = hashlib.sha256(b"forcegp.Dataset v1\n")
    expected.update(b"numbers (2,)\n" + np.array([1, 1], "<i8").tobytes())
    expected.update(b"positions (1, 2, 3)\n" + bytes(48))
    expected.update(b"energies (1,)\n" + bytes(8))
    expected.update(b"forces (1, 2, 3)\n" + bytes(48))
    assert data.fingerprint() == expected.hexdigest()
    assert data.fingerprint() == "13e753fce40984a91013b96d40a162e9ee85ff1bfeaab9c31a930886b6dfbd02"


def test_split_deterministic_and_disjoint():
    data = dataset(10)
    train, valid = data.split(0.3, seed=4)
    again_train, again_valid = data.split(0.3, seed=4)
    assert train.n_frames == 7 and valid.n_frames == 3
    np.testing.assert_array_equal(train.positions, again_train.positions)
    np.testing.assert_array_equal(valid.energies, again_valid.energies)
    together = np.sort(np.concatenate([train.energies, valid.energies]))
    np.testing.assert_array_equal(together, np.sort(data.energies))
    other = data.split(0.3, seed=5)[1]
    assert not np.array_equal(other.energies, valid.energies)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.01, 0.99, -1])
def test_split_needs_a_frame_in_each_part(fraction):
    with pytest.raises(InputError):
        dataset(10).split(fraction, seed=0)


def test_subset_and_immutability():
    data = dataset(6)
    part = data.subset(np.array([4, 1]))
    np.testing.assert_array_equal(part.energies, data.energies[[4, 1]])
    with pytest.raises(ValueError):
        data.positions[0, 0, 0] = 1.0
    with pytest.raises(InputError):
        data.subset(np.array([6]))
    with pytest.raises(InputError):
        data.subset(np.array([], dtype=int))


def test_to_atoms_round_trip(tmp_path):
    data = dataset(3)
    images = data.to_atoms()
    assert images[1].get_potential_energy() == data.energies[1]
    np.testing.assert_array_equal(images[2].get_forces(), data.forces[2])
    path = tmp_path / "out.extxyz"
    write_extxyz_atomic(path, images)
    back = read_dataset(path)
    np.testing.assert_allclose(back.energies, data.energies, rtol=1e-15)
    np.testing.assert_allclose(back.forces, data.forces, atol=1e-8)
    assert Dataset(data.numbers, data.positions, None, None).to_atoms()[0].calc is None


def test_concatenate_checks_atoms():
    data = dataset(2)
    both = concatenate([data, dataset(3, seed=1)])
    assert both.n_frames == 5
    swapped = Dataset(NUMBERS[::-1], data.positions, data.energies, data.forces, ("other",))
    with pytest.raises(InputError, match="same order"):
        concatenate([data, swapped])
    assert concatenate([data, Dataset(NUMBERS, data.positions, None, None)]).energies is None


# --- atomic writes ------------------------------------------------------------------------------


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "model.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_write_extxyz_atomic_failure_keeps_old_file(tmp_path):
    target = tmp_path / "out.extxyz"
    write_extxyz_atomic(target, frames(2))
    before = target.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever ASE raises for a non-Atoms frame
        write_extxyz_atomic(target, [*frames(1), "not atoms"])
    assert target.read_bytes() == before
    assert len(list(tmp_path.iterdir())) == 1


# --- bad inputs ---------------------------------------------------------------------------------


def bad_file(tmp_path, kind):
    """(path, frame index named in the message or None) for one kind of bad input."""
    path = tmp_path / f"bad_{kind}.extxyz"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "bad_atom_line":
        path.write_text("2\ncomment\nH 0 0\nC 1 2 3\n")
    elif kind == "garbage_traj":
        path = tmp_path / "garbage.traj"
        path.write_bytes(b"- of UlmASE-Trajectory" + bytes(range(200)))
    elif kind == "text":
        path.write_text("This is a shopping list.\nMilk\nEggs\n")
    elif kind == "no_energy":
        images = frames(3)
        images[1].calc = SinglePointCalculator(images[1], forces=np.zeros((9, 3)))
        write(path, images)
        return path, 1
    elif kind == "no_forces":
        images = frames(3)
        images[2].calc = SinglePointCalculator(images[2], energy=1.0)
        write(path, images)
        return path, 2
    elif kind == "atom_count":
        write(path, frames(2) + frames(1, numbers=NUMBERS[:-1]))
        return path, 2
    elif kind == "reordered":
        write(path, frames(2) + frames(2, numbers=np.roll(NUMBERS, 1)))
        return path, 2
    elif kind == "nan_positions":
        images = frames(4)
        images[3].positions[0, 0] = np.nan
        write(path, images)
        return path, 3
    elif kind == "inf_forces":
        images = frames(3)
        forces = np.zeros((9, 3))
        forces[4, 1] = np.inf
        images[1].calc = SinglePointCalculator(images[1], energy=0.5, forces=forces)
        write(path, images)
        return path, 1
    elif kind == "missing":
        path = tmp_path / "does_not_exist.extxyz"
    elif kind == "directory":
        path = tmp_path / "a_directory.xyz"
        path.mkdir()
    elif kind == "huge_count":
        path.write_text("1000000000000\ncomment\nH 0 0 0\n")
    elif kind == "pickled_npz":
        path = tmp_path / "pickled.npz"
        np.savez(path, R=np.array([{"a": 1}], dtype=object), z=NUMBERS)
    elif kind == "npz_shape":
        path = tmp_path / "shape.npz"
        np.savez(path, R=np.zeros((2, 9, 2)), z=NUMBERS, E=np.zeros(2), F=np.zeros((2, 9, 2)))
    elif kind == "npz_numbers_rows":
        path = tmp_path / "rows.npz"
        z = np.tile(NUMBERS, (3, 1))
        z[2] = np.roll(NUMBERS, 1)
        np.savez(path, R=np.zeros((3, 9, 3)), z=z, E=np.zeros(3), F=np.zeros((3, 9, 3)), e_unit="eV")
        return path, 2
    elif kind == "npz_energy_length":
        path = tmp_path / "elen.npz"
        np.savez(
            path,
            R=np.zeros((3, 9, 3)),
            z=NUMBERS,
            E=np.zeros(2),
            F=np.zeros((3, 9, 3)),
            e_unit="eV",
        )
    elif kind == "npz_not_zip":
        path = tmp_path / "notzip.npz"
        path.write_bytes(b"PK\x03\x04" + bytes(100))
    return path, None


BAD_KINDS = [
    "empty",
    "garbage",
    "garbage_traj",
    "text",
    "bad_atom_line",
    "no_energy",
    "no_forces",
    "atom_count",
    "reordered",
    "nan_positions",
    "inf_forces",
    "missing",
    "directory",
    "huge_count",
    "pickled_npz",
    "npz_shape",
    "npz_numbers_rows",
    "npz_energy_length",
    "npz_not_zip",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_raises_one_line_input_error(tmp_path, kind):
    path, frame = bad_file(tmp_path, kind)
    with pytest.raises(InputError) as info:
        read_dataset(path)
    check_message(info, path.name, frame)


def test_second_file_with_other_atoms(tmp_path):
    first = write(tmp_path / "first.extxyz", frames(2))
    second = write(tmp_path / "second.extxyz", frames(2, numbers=np.roll(NUMBERS, 2)))
    with pytest.raises(InputError) as info:
        read_dataset([first, second])
    check_message(info, "second.extxyz", 0)
    assert "first.extxyz" in str(info.value)


def test_no_paths():
    with pytest.raises(InputError):
        read_dataset([])


# --- published files and the example data -----------------------------------------------------

PUBLISHED = Path("/work/shared/data/published")
needs_published = pytest.mark.skipif(not PUBLISHED.is_dir(), reason="published data not here")


@needs_published
def test_published_units_fields():
    md22 = read_dataset(PUBLISHED / "md22_Ac-Ala3-NHMe_first5.npz")  # units field: kcal/mol
    assert -26920 < md22.energies.mean() < -26915
    acac = read_dataset(PUBLISHED / "acac_test_dihedral.npz", require_labels=False)  # eV, no F
    assert acac.forces is None and -9400 < acac.energies.mean() < -9380
    unlabelled = read_dataset(
        PUBLISHED / "md22_Ac-Ala3-NHMe_first98_positions_only.npz", require_labels=False
    )
    assert unlabelled.n_frames == 98 and unlabelled.energies is None


@needs_published
def test_example_data_is_the_conversion_of_rmd17(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert", ROOT / "scripts" / "convert_rmd17.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    out = tmp_path / "ethanol_test.extxyz"
    assert convert.main([str(PUBLISHED / "rmd17_ethanol_test_01.npz"), str(out)]) == 0
    assert out.read_bytes() == (ROOT / "data" / "ethanol_test.extxyz").read_bytes()
