"""The one place for unit conversions. Inside forcegp energies are eV, lengths Å, forces eV/Å."""

from __future__ import annotations

from .errors import InputError

#: 1 kcal/mol in eV (CODATA-based, the value used by ASE: ase.units.kcal / ase.units.mol).
KCAL_PER_MOL = 0.0433641043
#: 1 kJ/mol in eV.
KJ_PER_MOL = 0.0103642688
#: 1 Hartree in eV.
HARTREE = 27.211386245988
#: 1 Bohr in Å.
BOHR = 0.529177210903

ENERGY_UNITS = {
    "ev": 1.0,
    "mev": 1e-3,
    "kcal/mol": KCAL_PER_MOL,
    "kj/mol": KJ_PER_MOL,
    "hartree": HARTREE,
    "ha": HARTREE,
}
LENGTH_UNITS = {"ang": 1.0, "a": 1.0, "å": 1.0, "angstrom": 1.0, "bohr": BOHR, "nm": 10.0}


def energy_factor(unit: str) -> float:
    """Factor that converts an energy in ``unit`` to eV."""
    key = str(unit).strip().lower()
    if key not in ENERGY_UNITS:
        raise InputError(f"unknown energy unit {unit!r}; use one of eV, meV, kcal/mol, kJ/mol, Hartree")
    return ENERGY_UNITS[key]


def length_factor(unit: str) -> float:
    """Factor that converts a length in ``unit`` to Å."""
    key = str(unit).strip().lower()
    if key not in LENGTH_UNITS:
        raise InputError(f"unknown length unit {unit!r}; use one of Ang, Bohr, nm")
    return LENGTH_UNITS[key]
