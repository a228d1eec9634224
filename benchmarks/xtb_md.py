"""GFN2-xTB molecular dynamics data for flexible molecules (Ac-Ala3-NHMe, DHA).

    python benchmarks/xtb_md.py                       # both molecules, train and test trajectories
    python benchmarks/xtb_md.py --molecules ala3 --frames 50   # a short run

Protocol: ASE Langevin at 500 K, 0.5 fs time step, friction 0.01/fs; 1 ps of equilibration
(2000 steps), then a frame every 20 steps until ``--frames`` frames. Two independent
trajectories per molecule, from the same start geometry with different seeds for the initial
velocities and the thermostat: ``train`` (seed 1) and ``test`` (seed 2). Labels are GFN2-xTB
energies (eV) and forces (eV/Å) from tblite, computed along the way.

Start geometries: Ac-Ala3-NHMe is the first MD22 frame (``md22_Ac-Ala3-NHMe_first5.npz`` in the
published data); DHA (docosahexaenoic acid, C22H32O2, 56 atoms), which has no published labelled
frame here, is embedded from its SMILES with RDKit's ETKDG and MMFF (``pip install rdkit``), then
relaxed with GFN2-xTB (BFGS, fmax 0.05 eV/Å). Output: ``data/xtb/<molecule>_<train|test>.npz``
in the sGDML layout (R, z, E, F, e_unit, r_unit), which every forcegp command reads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = Path(os.environ.get("FORCEGP_PUBLISHED", ROOT.parent / "shared" / "data" / "published"))
OUT = ROOT / "data" / "xtb"
DHA_SMILES = "CC/C=C\\C/C=C\\C/C=C\\C/C=C\\C/C=C\\C/C=C\\CCC(=O)O"
SEEDS = {"train": 1, "test": 2}
TEMPERATURE = 500.0
TIMESTEP_FS = 0.5
EQUILIBRATION = 2000
STRIDE = 20


def start_geometry(molecule: str):
    from ase import Atoms

    if molecule == "ala3":
        with np.load(PUBLISHED / "md22_Ac-Ala3-NHMe_first5.npz") as archive:
            return Atoms(numbers=archive["z"], positions=archive["R"][0])
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(DHA_SMILES))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    return Atoms(numbers=numbers, positions=mol.GetConformer().GetPositions())


def xtb():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def relaxed(atoms):
    from ase.optimize import BFGS

    atoms = atoms.copy()
    atoms.calc = xtb()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=500)
    return atoms


def trajectory(atoms, seed: int, frames: int):
    """(R, E, F) of ``frames`` frames of 500 K Langevin MD after equilibration."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    atoms = atoms.copy()
    atoms.calc = xtb()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(
        atoms,
        TIMESTEP_FS * units.fs,
        temperature_K=TEMPERATURE,
        friction=0.01 / units.fs,
        rng=rng,
        fixcm=False,
    )
    dyn.run(EQUILIBRATION)
    positions, energies, forces = [], [], []
    for _ in range(frames):
        dyn.run(STRIDE)
        positions.append(atoms.get_positions())
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return np.array(positions), np.array(energies), np.array(forces)


def write(path: Path, numbers, positions, energies, forces, note: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(
        tmp,
        R=positions,
        z=np.asarray(numbers),
        E=energies,
        F=forces,
        e_unit="eV",
        r_unit="Ang",
        source=note,
    )
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", nargs="+", default=["ala3", "dha"], choices=["ala3", "dha"])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    for molecule in args.molecules:
        start = relaxed(start_geometry(molecule))
        for split, seed in SEEDS.items():
            path = args.out / f"{molecule}_{split}.npz"
            if path.exists():
                print(f"{path} exists; skipped")
                continue
            t0 = time.perf_counter()
            R, E, F = trajectory(start, seed, args.frames)
            note = (
                f"GFN2-xTB (tblite) Langevin MD, {TEMPERATURE:g} K, {TIMESTEP_FS} fs, friction 0.01/fs, "
                f"{EQUILIBRATION} steps equilibration, a frame every {STRIDE} steps, seed {seed}"
            )
            write(path, start.numbers, R, E, F, note)
            print(
                f"{path}: {len(E)} frames, {len(start)} atoms, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
