"""Langevin MD of ethanol with a trained ForceGP, printing the model's uncertainty as it goes.

    python examples/train_ethanol.py -o ethanol.fgp     # first, a model
    python examples/md_ethanol.py ethanol.fgp --steps 500 --every 50

Plain ASE: the ForceGPCalculator is an ordinary calculator, and energy_std / forces_std are two
more properties (eV, eV/Å) read with calc.get_property. ``forcegp md`` does the same from the
command line, writes the trajectory, and can stop when the uncertainty grows too large.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

DATA = Path(__file__).resolve().parent.parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--start", type=Path, default=DATA / "ethanol_test.extxyz")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=50, help="print every N steps")
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--friction", type=float, default=0.01, help="1/fs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    jax.config.update("jax_enable_x64", True)  # before the calculator is made
    import ase.io
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary

    from forcegp import ForceGPCalculator

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

    atoms = ase.io.read(args.start, index=0)
    atoms.calc = ForceGPCalculator(args.model)
    rng = np.random.default_rng(args.seed)
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(
        atoms,
        args.timestep * units.fs,
        temperature_K=args.temperature,
        friction=args.friction / units.fs,
        fixcm=False,
        rng=rng,
    )
    calc = atoms.calc
    started = time.perf_counter()
    print(" step   time/fs     T/K    E_pot/eV   energy_std/meV  max force std/(meV/Å)")

    def report() -> None:
        energy_std = calc.get_property("energy_std", atoms)
        forces_std = calc.get_property("forces_std", atoms)
        print(
            f"{dyn.nsteps:5d} {dyn.nsteps * args.timestep:9.1f} {atoms.get_temperature():7.1f} "
            f"{atoms.get_potential_energy():11.4f} {1e3 * energy_std:16.2f} "
            f"{1e3 * forces_std.max():22.1f}"
        )

    dyn.attach(report, interval=args.every)
    dyn.run(args.steps)
    seconds = time.perf_counter() - started
    print(f"{args.steps} steps in {seconds:.1f} s ({1e3 * seconds / args.steps:.1f} ms/step)")


if __name__ == "__main__":
    main()
