"""Option types, the options shared by commands, and the translation of the library's parameter
names (written `like_this` in its messages) into this command line's flags."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click

from ..errors import InputError

#: Library parameter -> the flag that sets it. Library messages name parameters in backquotes.
FLAGS = {
    "n_inducing": "--inducing",
    "n_features": "--features",
    "width": "--width",
    "depth": "--depth",
    "descriptor": "--descriptor",
    "explicit": "--explicit",
    "explicit_dim": "--explicit-dim",
    "explicit_cubic": "--explicit-cubic",
    "pair_powers": "--pair-powers",
    "pair_bound": "--pair-bound",
    "local_cutoff": "--local-cutoff",
    "n_permutations": "--no-symmetrize",
    "env_cutoff": "--env-cutoff",
    "env_dim": "--env-dim",
    "env_products": "--env-products",
    "env_radial": "--env-radial",
    "env_lmax": "--env-lmax",
    "env_neighbours": "--env-neighbours",
    "env_body4": "--env-body4",
    "env_body4_lmax": "--env-body4-lmax",
    "env_body3": "--env-body3",
    "body_scaling": "--body-scaling",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "lr_mlp": "--lr-mlp",
    "train_permutations": "--train-permutations",
    "precision": "--precision",
    "misfit_noise": "--misfit-noise/--constant-noise",
    "max_memory": "--max-memory",
    "devices": "--devices",
    "resume": "--resume",
    "energy_key": "--energy-key",
    "forces_key": "--forces-key",
    "energy_unit": "--energy-unit",
    "length_unit": "--length-unit",
}


def flags_for(message: str) -> str:
    """``message`` with every `parameter` the library names replaced by its flag (unknown names
    just lose their backquotes)."""
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", lambda m: FLAGS.get(m.group(1), m.group(1)), message)


class ByteSize(click.ParamType):
    """Sizes like 4G, 512M, 1.5GiB, 2e9 (bytes); K/M/G/T are powers of 1024."""

    name = "size"
    _units = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value).lower())
        if not match:
            self.fail(f"{value!r} is not a size like 4G, 512M or 2000000000", param, ctx)
        try:
            number = float(match.group(1))
        except ValueError:
            self.fail(f"{value!r} is not a size like 4G, 512M or 2000000000", param, ctx)
        size = number * self._units[match.group(2)]
        if not size > 0:
            self.fail(f"{value!r} must be a positive size", param, ctx)
        return size


class AutoInt(click.ParamType):
    """An integer of at least ``minimum``, or 'auto' (passed on as -1: the library chooses)."""

    name = "integer|auto"

    def __init__(self, minimum: int = 0):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if str(value).strip().lower() == "auto":
            return -1
        try:
            number = int(str(value))
        except ValueError:
            number = self.minimum - 1
        if number < self.minimum:
            self.fail(f"{value!r} is neither an integer >= {self.minimum} nor 'auto'", param, ctx)
        return number


def defaults(cls) -> dict:
    """Field defaults of a dataclass (Config, TrainSettings): the one source of CLI defaults."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def reader_options(func):
    """--energy-key, --forces-key, --energy-unit, --length-unit for commands that read data."""
    options = [
        click.option("--energy-key", help="info key (ASE formats) or array (npz) of energies."),
        click.option("--forces-key", help="arrays key (ASE formats) or array (npz) of forces."),
        click.option(
            "--energy-unit",
            help="energy unit of the data files: eV, meV, kcal/mol, kJ/mol, Hartree "
            "(default: eV for ASE formats; npz files must say it).",
        ),
        click.option("--length-unit", help="length unit of the data files: Ang, Bohr, nm."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def reader_kwargs(opts: dict) -> dict:
    names = ("energy_key", "forces_key", "energy_unit", "length_unit")
    return {name: opts.get(name) for name in names}


def check_output(path) -> Path:
    """Fail early (before any long computation) if ``path`` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {path.parent} does not exist")
    return path
