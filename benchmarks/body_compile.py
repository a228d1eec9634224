"""Compilation and run time of the body-ordered block's rows (gp.body_order.structure_terms with
its gradient), the library's form against one vmap per element, in the same process.

    python benchmarks/body_compile.py                  # ethanol, l <= 3 and l <= 4
    python benchmarks/body_compile.py --lmax 3 --molecule aspirin
    python benchmarks/body_compile.py --quick          # smoke run (l <= 1, 2 channels)

The body-ordered invariants and their forward-mode derivatives are the largest graph a
body-ordered model compiles, and a training run compiles it in several programs (the
initialisation's statistics, the prefit's rows, the fit's rows, the predictions). The library
maps all atoms through one vmap, whatever their element; the comparison form, written here,
maps each element's atoms through a vmap of its own with the slots of each neighbour element
as static slices (XLA then compiles one copy of the contractions per element). For each form:
the CPU seconds of lowering and compiling a jit of the rows of a chunk of structures of rMD17
(split 01), and the best of five runs of it (wall and CPU seconds). The two forms' outputs must
agree. The mixing is random: shapes, not values, set both times.
Results: benchmarks/results/body_compile.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def per_element_invariants(x, element, mixing, env, orders, *, jacobian):
    """The comparison form: one vmap per element, each neighbour element's slots a static slice
    (environment.species_ranges), the outputs put back in atom order."""
    import jax
    import jax.numpy as jnp

    from forcegp.gp import body_order, environment

    n = len(element)
    idx, local, species = environment.local_environments(x, element, env.k)
    outs, atoms_of = [], []
    for e in range(env.n_species):
        atoms = np.flatnonzero(element == e)
        ranges = environment.species_ranges(element, e, env.n_species) if env.k == n - 1 else None

        def one(loc, s, ranges=ranges):
            a, dg = environment._density(loc, s, env, ranges, jacobian=jacobian)
            f = body_order.atom_invariants(a, mixing, *orders)
            if not jacobian:
                return f, None
            k = dg.shape[0]
            onehot = np.zeros((k, env.n_species))
            for c, (lo, hi) in enumerate(ranges):
                onehot[lo:hi, c] = 1.0
            t = jnp.einsum("ks,knlx->kxsnl", jnp.asarray(onehot, a.dtype), dg).reshape(k * 3, *a.shape)

            def along(tangent):
                return jax.jvp(
                    lambda b: body_order.atom_invariants(b, mixing, *orders), (a,), (tangent,)
                )[1]

            df = jax.vmap(along)(t).reshape(k, 3, -1)
            return f, jnp.concatenate([-jnp.sum(df, axis=0)[None], df], axis=0)

        outs.append(jax.vmap(one)(local[atoms], species[atoms]))
        atoms_of.append(atoms)
    order = np.argsort(np.concatenate(atoms_of))
    f = jnp.concatenate([o[0] for o in outs])[order]
    return f, (jnp.concatenate([o[1] for o in outs])[order], idx)


def measure(form: str, x, element, mixing, env, orders) -> tuple[dict, tuple]:
    import jax

    from forcegp.gp import body_order

    library = body_order.invariants
    if form == "one vmap per element":
        body_order.invariants = per_element_invariants
    try:
        rows = jax.jit(jax.vmap(lambda xi: body_order.structure_terms(
            xi, element, mixing, env, orders, jacobian=True)))  # fmt: skip
        cpu = time.process_time()
        compiled = rows.lower(x).compile()
        compile_cpu = time.process_time() - cpu
    finally:
        body_order.invariants = library
    out = jax.block_until_ready(compiled(x))
    runs = []
    for _ in range(5):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(x))
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    row = {"form": form, "compile_cpu_s": compile_cpu, "run_wall_s": min(r[0] for r in runs),
           "run_cpu_s": min(r[1] for r in runs)}  # fmt: skip
    return row, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--molecule", default="ethanol")
    ap.add_argument("--lmax", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--channels", type=int, default=7, help="env_body4 (default 7)")
    ap.add_argument("--radial", type=int, default=6, help="env_radial (default 6)")
    ap.add_argument("--chunk", type=int, default=64, help="structures per call (default 64)")
    ap.add_argument("--name", default="body_compile")
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.lmax, args.channels, args.chunk = [1], 2, 4
    common.enable_x64()
    import jax.numpy as jnp

    from forcegp.data import read_dataset
    from forcegp.gp import body_order, environment
    from forcegp.gp.config import Config

    machine = common.machine_info()
    data = read_dataset([common.rmd17_path(args.molecule, "train")], energy_unit="kcal/mol")
    x = jnp.asarray(data.positions[: args.chunk].reshape(args.chunk, -1))
    element = environment.element_index(data.numbers)
    n_species = int(element.max()) + 1
    rows = []
    for lmax in args.lmax:
        config = Config(n_atoms=len(element), descriptor="atomic", n_species=n_species,
                        env_body4=args.channels, env_radial=args.radial,
                        env_body4_lmax=lmax)  # fmt: skip
        env, orders = environment.EnvSettings(config), body_order.orders(config)
        n_channels = n_species * args.radial
        rng = np.random.default_rng(0)
        mixing = jnp.asarray(rng.standard_normal((lmax + 1, args.channels, n_channels)))
        outs = []
        for form in ("library (one vmap)", "one vmap per element"):
            row, out = measure(form, x, element, mixing, env, orders)
            row.update(molecule=args.molecule, lmax=lmax, chunk=args.chunk,
                       n_body=int(out[0].shape[1]))  # fmt: skip
            print(row, flush=True)
            rows.append(row)
            outs.append(out)
        for a, b in zip(outs[0], outs[1], strict=True):
            scale = float(jnp.max(jnp.abs(b)))
            if not float(jnp.max(jnp.abs(a - b))) <= 1e-12 * scale:
                raise SystemExit(f"l <= {lmax}: the two forms disagree")
    columns = [
        ("molecule", "molecule"), ("lmax", "l ≤"), ("n_body", "invariants (all elements)"),
        ("chunk", "structures per call"), ("form", "form"),
        ("compile_cpu_s", "compile (CPU s)"), ("run_wall_s", "run (s)"), ("run_cpu_s", "run (CPU s)"),
    ]  # fmt: skip
    common.write_table(
        args.name, args, machine, "Compiling the body-ordered rows",
        f"env_body4 {args.channels}, env_radial {args.radial}; rows and their gradient for a "
        "chunk of rMD17 structures; the two forms' outputs agree to 1e-12.",
        rows, columns,
    )  # fmt: skip


if __name__ == "__main__":
    main()
