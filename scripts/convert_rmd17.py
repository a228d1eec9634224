"""Convert an rMD17 .npz file (kcal/mol, kcal/mol/Å, Å) to extxyz in eV, eV/Å and Å.

    PYTHONPATH=. python scripts/convert_rmd17.py IN.npz OUT.extxyz

Energies and forces are written as the standard extxyz ``energy``/``forces`` fields, which
ase.io.read turns into a SinglePointCalculator (so get_potential_energy() works). Each frame also
gets ``md17_index``, the frame's index in the original MD17 trajectory (the file's
``old_indices``). The output is written atomically and is the same for the same input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from forcegp.data import read_dataset
from forcegp.errors import ForceGPError
from forcegp.files import write_extxyz_atomic


def convert(source: Path, target: Path, energy_unit: str = "kcal/mol") -> int:
    """Write ``source`` (rMD17 npz) to ``target`` (extxyz, eV and eV/Å); returns the frame count."""
    dataset = read_dataset(source, energy_unit=energy_unit)
    images = dataset.to_atoms()
    with np.load(source, allow_pickle=False) as archive:
        old = archive["old_indices"] if "old_indices" in archive.files else None
    if old is not None and old.shape == (len(images),):
        for atoms, index in zip(images, old, strict=True):
            atoms.info["md17_index"] = int(index)
    write_extxyz_atomic(target, images)
    return len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="rMD17 .npz file")
    parser.add_argument("target", type=Path, help="output .extxyz file")
    parser.add_argument(
        "--energy-unit", default="kcal/mol", help="energy unit of the input (default kcal/mol)"
    )
    args = parser.parse_args(argv)
    try:
        n_frames = convert(args.source, args.target, args.energy_unit)
    except ForceGPError as exc:
        print(f"convert_rmd17: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n_frames} frames to {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
