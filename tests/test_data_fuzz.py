"""Fuzzing read_dataset: for any file, it returns a sound Dataset or raises InputError only."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forcegp.data import Dataset, read_dataset
from forcegp.errors import InputError

# FORCEGP_FUZZ_EXAMPLES=2000 for a longer hunt; 50 keeps the suite fast.
FUZZ = settings(
    max_examples=int(os.environ.get("FORCEGP_FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _valid_extxyz() -> bytes:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(3):
        atoms = Atoms("COH", positions=rng.normal(size=(3, 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=-1.5, forces=rng.normal(size=(3, 3)))
        images.append(atoms)
    buffer = io.StringIO()
    ase.io.write(buffer, images, format="extxyz")
    return buffer.getvalue().encode()


def _valid_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        R=np.ones((2, 3, 3)),
        z=np.array([6, 8, 1]),
        E=np.zeros(2),
        F=np.zeros((2, 3, 3)),
        e_unit="eV",
    )
    return buffer.getvalue()


VALID_EXTXYZ = _valid_extxyz()
VALID_NPZ = _valid_npz()


def check_sound(data: Dataset) -> None:
    """A dataset that read_dataset returned must be finite and consistent in shape."""
    n_frames, n_atoms = data.n_frames, data.n_atoms
    assert n_frames >= 1 and n_atoms >= 1
    assert data.numbers.shape == (n_atoms,) and data.numbers.dtype == np.int64
    assert ((data.numbers >= 1) & (data.numbers <= 118)).all()
    assert data.positions.shape == (n_frames, n_atoms, 3) and data.positions.dtype == np.float64
    assert np.isfinite(data.positions).all()
    if data.energies is not None:
        assert data.energies.shape == (n_frames,) and np.isfinite(data.energies).all()
    if data.forces is not None:
        assert data.forces.shape == (n_frames, n_atoms, 3) and np.isfinite(data.forces).all()
    assert len(data.fingerprint()) == 64


def read_bytes_as(content: bytes, name: str, **options) -> None:
    """Write ``content`` to a file called ``name`` and read it: InputError or a sound Dataset."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            data = read_dataset(path, **options)
        except InputError as exc:
            assert "\n" not in str(exc) and name in str(exc)
            return
        check_sound(data)


@FUZZ
@given(content=st.binary(max_size=600), suffix=st.sampled_from([".extxyz", ".xyz", ".npz"]))
def test_random_bytes(content, suffix):
    read_bytes_as(content, "fuzz" + suffix)


@FUZZ
@given(
    content=st.one_of(st.binary(max_size=200), st.text(max_size=300).map(str.encode)),
    require_labels=st.booleans(),
)
def test_random_bytes_with_known_headers(content, require_labels):
    # Prefixes that get past format guessing, so the parsers behind it see the junk.
    for prefix, name in ((b"PK\x03\x04", "z.npz"), (b"\x93NUMPY", "y.npz"), (b"3\n", "x.xyz")):
        read_bytes_as(prefix + content, name, require_labels=require_labels)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("delete_line"), st.integers(0, 100), st.just(0)),
    st.tuples(st.just("duplicate_line"), st.integers(0, 100), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
)


def mutate(content: bytes, mutations) -> bytes:
    data = bytearray(content)
    for kind, where, value in mutations:
        if kind in ("delete_line", "duplicate_line"):
            lines = bytes(data).split(b"\n")
            i = where % len(lines)
            lines[i : i + 1] = [] if kind == "delete_line" else [lines[i], lines[i]]
            data = bytearray(b"\n".join(lines))
        elif not data:
            break
        elif kind == "flip":
            data[where % len(data)] = value
        elif kind == "truncate":
            data = data[: where % len(data)]
        elif kind == "insert":
            data.insert(where % (len(data) + 1), value)
    return bytes(data)


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=4), require_labels=st.booleans())
def test_mutated_extxyz(mutations, require_labels):
    read_bytes_as(mutate(VALID_EXTXYZ, mutations), "mutated.extxyz", require_labels=require_labels)


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_npz(mutations):
    read_bytes_as(mutate(VALID_NPZ, mutations), "mutated.npz")


ROLES = {
    "R": ["R", "coords", "positions"],
    "z": ["z", "nuclear_charges", "atomic_numbers"],
    "E": ["E", "energies", "energy"],
    "F": ["F", "forces"],
}
UNIT_KEYS = ["e_unit", "r_unit", "units", "other"]
UNIT_TEXTS = [
    "eV",
    "kcal/mol",
    "Ang",
    "bohr",
    "nonsense",
    "",
    "R: Bohr; E: Ha; F: Ha/Bohr",
    "R: Angstrom; E: eV (x)",
    "E: eV; F: eV",
    ";;:",
]
DTYPES = ["float64", "float64", "int64", "float32", "uint8", "bool", "complex128", "U3", "object"]
NUMBER = st.one_of(st.integers(-3, 130), st.floats(allow_nan=True, allow_infinity=True, width=64))


@st.composite
def npz_array(draw, shape):
    dtype = draw(st.sampled_from(DTYPES))
    size = int(np.prod(shape))
    flat = np.array(draw(st.lists(NUMBER, min_size=size, max_size=size)), dtype=np.float64)
    if dtype == "object":
        return np.array([{"value": v} for v in flat] or [None], dtype=object)
    if dtype == "U3":
        return flat.astype("U3").reshape(shape)
    with np.errstate(invalid="ignore", over="ignore"):
        if np.dtype(dtype).kind in "iub":
            flat = np.nan_to_num(flat, nan=0, posinf=0, neginf=0).clip(0, 200)
        return flat.astype(dtype).reshape(shape)


@st.composite
def npz_contents(draw):
    """Arrays for an npz: each role absent, of the expected shape, or of a random shape."""
    n_frames, n_atoms = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    expected = {
        "R": (n_frames, n_atoms, 3),
        "z": (n_atoms,),
        "E": (n_frames,),
        "F": (n_frames, n_atoms, 3),
    }
    random_shape = st.lists(st.integers(0, 4), max_size=4).map(tuple)
    arrays = {}
    for role, names in ROLES.items():
        choice = draw(st.sampled_from(["absent", "good", "good", "expected", "random"]))
        if choice == "absent":
            continue
        if choice == "good":  # right shape, plain values: lets whole files get through
            values = st.integers(1, 20) if role == "z" else st.floats(-1e3, 1e3)
            size = int(np.prod(expected[role]))
            flat = draw(st.lists(values, min_size=size, max_size=size))
            array = np.array(flat, dtype=draw(st.sampled_from(["int64", "float64", "float32"])))
            array = array.reshape(expected[role])
        else:
            shape = expected[role] if choice == "expected" else draw(random_shape)
            array = draw(npz_array(shape))
        arrays[draw(st.sampled_from(names))] = array
    for key in draw(st.lists(st.sampled_from(UNIT_KEYS), max_size=2, unique=True)):
        arrays[key] = np.array(draw(st.sampled_from(UNIT_TEXTS)))
    return arrays


@FUZZ
@given(
    arrays=npz_contents(),
    energy_unit=st.sampled_from([None, "eV", "kcal/mol"]),
    require_labels=st.booleans(),
)
def test_npz_with_random_keys_shapes_dtypes(arrays, energy_unit, require_labels):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    read_bytes_as(
        buffer.getvalue(), "random.npz", energy_unit=energy_unit, require_labels=require_labels
    )


@FUZZ
@given(
    n_frames=st.integers(1, 3),
    z=st.lists(st.integers(1, 10), min_size=1, max_size=4),
    shape_noise=st.sampled_from(["ok", "E column", "z rows", "bad z rows", "F short"]),
    values=st.floats(allow_nan=True, allow_infinity=True, width=64),
)
def test_npz_near_valid(n_frames, z, shape_noise, values):
    # Mostly right files with one defect, so the checks after loading are exercised too.
    n_atoms = len(z)
    R = np.zeros((n_frames, n_atoms, 3)) + np.arange(n_atoms)[:, None]
    E = np.full(n_frames, values)
    F = np.zeros((n_frames, n_atoms, 3))
    zz = np.array(z)
    if shape_noise == "E column":
        E = E[:, None]
    elif shape_noise == "z rows":
        zz = np.tile(zz, (n_frames, 1))
    elif shape_noise == "bad z rows":
        zz = np.tile(zz, (n_frames, 1))
        zz[-1] = zz[-1][::-1]
    elif shape_noise == "F short":
        F = F[:, :-1]
    buffer = io.BytesIO()
    np.savez(buffer, R=R, z=zz, E=E, F=F, e_unit="eV")
    read_bytes_as(buffer.getvalue(), "near.npz")
