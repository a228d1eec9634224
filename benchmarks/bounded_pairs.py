"""Global pair terms that stay bounded outside the training shapes: an experiment on the
explicit block alone, outside the library.

    python benchmarks/bounded_pairs.py --cases aspirin --bounds 2 4 --margins 1
    python benchmarks/bounded_pairs.py --cases dha --frames 150 --bounds 2 4 --margins 1
        --config env_body4=4 env_radial=4 env_body4_lmax=2          # (one command)
    python benchmarks/bounded_pairs.py --no-reference --bounds --margins 1   # range clamps only
    python benchmarks/bounded_pairs.py --quick          # smoke run (tiny)

An atomic model's pair powers are z^k (k = 1..3) of each atom pair's inverse distance,
standardised over the training frames (z: that pair's distance in units of its own spread).
They buy accuracy where the test frames stay within the training shapes and extrapolate
without bound where far atoms come close: a folding chain sends z of its new close pairs to
tens. The variants here replace z before the powers by C tanh(z / C) (near z = 0 the same,
never beyond C), or by z clamped smoothly to that pair's range over the training frames
(unchanged within it, at most a margin beyond it): outside the training shapes the pair terms
then hold their value. Beside them the library's powers and no pair terms at all.

The model is the explicit block alone (a one-point DSoftKI block without MLP, as in
evidence_starts.py) of the body-ordered atomic model (descriptor=atomic env_body4=7
env_radial=6 and --config), its block scales and noise levels from the exact evidence
(Newton's method, one start), its exact posterior tested:
  * aspirin: the first --n structures of rMD17 train_01, all 1000 of test_01 (rigid molecule:
    the test frames lie within the training shapes);
  * dha: --frames frames spread over data/xtb/dha_train.npz (333: every third), as many
    plus one over dha_test.npz,
    split by the radius of gyration into the frames inside the training range and outside it
    (the test trajectory folds; benchmarks/extrapolation.py).
The patched pair terms reach the library's model through forcegp.gp.explicit._pair_powers;
JAX's caches are cleared between variants so no trace of another variant is reused.
Results: benchmarks/results/bounded_pairs.{jsonl,json,md} (--name; the jsonl row by row).
At K about 9900 (DHA's 4620 pair terms beside the l <= 3 body-ordered block) the harness needs
more than 24 GB (its statistics, search and posterior held at once, unlike the library's
streamed fit); --config env_body4=4 ... makes a smaller block.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import extrapolation  # noqa: E402

BASE = ["descriptor=atomic", "env_body4=7", "env_radial=6"]
QUICK = {"env_body4": 2, "env_radial": 3, "env_lmax": 2, "env_body4_lmax": 1, "env_dim": 6}


#: Per-pair range of z over the training frames (lo, hi), filled by fit_and_test before the
#: statistics are accumulated (the clamped variant's traces read it).
TRAINING_RANGE: dict = {}
#: Stands in for the hyperparameters where the library's pair terms are wanted unscaled (z).
UNIT_SCALE = types.SimpleNamespace(scale_pair=1.0)


def tanh_bound(bound: float):
    """z -> bound * tanh(z / bound) and its derivative (the library's --pair-bound form)."""
    from forcegp.gp.explicit import bounded_pair_distance

    return lambda z: bounded_pair_distance(z, bound)


def range_clamp(margin: float):
    """z -> z within each pair's training range [lo, hi], beyond it hi + margin tanh((z - hi) /
    margin) (and the same below lo): the library's powers on the training data, at most
    `margin` past the range outside it; continuous with its first derivative."""
    import jax.numpy as jnp

    def warp(z):
        lo, hi = TRAINING_RANGE["lo"], TRAINING_RANGE["hi"]
        above, below = jnp.tanh((z - hi) / margin), jnp.tanh((lo - z) / margin)
        out = jnp.where(z > hi, hi + margin * above, jnp.where(z < lo, lo - margin * below, z))
        slope = jnp.where(z > hi, 1.0 - above**2, jnp.where(z < lo, 1.0 - below**2, 1.0))
        return out, slope

    return warp


def bounded_pair_powers(warp, library):
    """``library`` (forcegp.gp.explicit._pair_powers) with z replaced by warp(z) before the
    powers: the library's first power at unit scale gives z and its gradient rows dz/dx, and
    the powers of warp(z) take their chain rule from those rows."""
    import dataclasses

    import jax.numpy as jnp

    def pair_powers(config, stats, hyper, x, with_grad: bool):
        one = dataclasses.replace(config, pair_powers=1)
        z, dz = library(one, stats, UNIT_SCALE, x, with_grad)
        vp, dvp = warp(z)
        ks = range(1, config.pair_powers + 1)
        value = hyper.scale_pair * jnp.concatenate([vp**k for k in ks])
        if not with_grad:
            return value, None
        coef = jnp.concatenate([k * vp ** (k - 1) * dvp for k in ks])
        return value, hyper.scale_pair * coef[:, None] * jnp.tile(dz, (config.pair_powers, 1))

    return pair_powers


def load(case: str, n: int, frames: int, quick: bool):
    """(train, test, inside mask or None) as forcegp Datasets: aspirin's first n training
    structures, or `frames` spread over each xTB trajectory."""
    from forcegp import read_dataset

    if case == "aspirin":
        train = read_dataset(common.rmd17_path("aspirin", "train"), energy_unit="kcal/mol")
        test = read_dataset(common.rmd17_path("aspirin", "test"), energy_unit="kcal/mol")
        train = train.subset(np.arange(min(n, train.n_frames)))
        test = test.subset(np.arange(100 if quick else test.n_frames))
        return train, test, None
    data = common.ROOT / "data" / "xtb"
    size = 40 if quick else frames
    train = extrapolation.every(read_dataset(data / f"{case}_train.npz"), size)
    test = extrapolation.every(read_dataset(data / f"{case}_test.npz"), size + 1)
    rg, rg_test = (extrapolation.radius_of_gyration(d.positions) for d in (train, test))
    inside = (rg_test >= rg.min()) & (rg_test <= rg.max())
    return train, test, inside


def fit_and_test(train, test, inside, overrides: dict, library) -> dict:
    """The explicit block of ``overrides`` fitted on ``train`` by the exact evidence and tested;
    ``library``: the library's own pair terms (z over the training frames for range_clamp)."""
    import dataclasses

    import equinox as eqx
    import jax

    from forcegp.gp import evidence, posterior
    from forcegp.gp.config import Config
    from forcegp.training import evaluation, initialise

    z = train.numbers
    n = train.n_frames
    config = Config(n_atoms=len(z), n_species=len(set(z.tolist())), n_inducing=1, n_features=0,
                    **overrides)  # fmt: skip
    r, e, f = train.positions, train.energies, train.forces
    model = initialise.initialize(config, z, r, e, f, key=jax.random.key(0))
    if config.pair_powers:
        one = dataclasses.replace(config, pair_powers=1)
        zs = np.asarray(jax.vmap(lambda xi: library(one, model.stats, UNIT_SCALE, xi, False)[0])(
            r.reshape(n, -1)))  # fmt: skip
        TRAINING_RANGE.update(lo=zs.min(axis=0), hi=zs.max(axis=0))
    y, g = initialise.standardise_targets(e, f, model.stats.energy_mean, model.stats.energy_scale)
    t0 = time.perf_counter()
    suff = posterior.accumulate(model, r.reshape(n, -1), y, g)
    groups = posterior.basis_groups(model.config)
    h = model.hyper
    mult, ne, nf = evidence.maximise(suff, groups, float(h.noise_energy), float(h.noise_force),
                                     restart=False, method="newton")  # fmt: skip
    fitted = posterior.with_multipliers(model, mult, ne, nf)
    scaled = posterior.scaled_statistics(suff, np.asarray(mult)[groups])
    post = posterior.solve(scaled, fitted.hyper.noise_energy, fitted.hyper.noise_force)
    fitted = eqx.tree_at(lambda m: m.posterior, fitted, post, is_leaf=lambda v: v is None)
    fit_s = time.perf_counter() - t0
    pred = evaluation.predict(fitted, test.positions, with_std=True)
    row = {"K": int(model.config.n_basis), "fit_s": fit_s}
    parts = {"all": np.ones(test.n_frames, bool)}
    if inside is not None:
        parts |= {"inside": inside, "outside": ~inside}
    for name, mask in parts.items():
        for key, value in extrapolation.part_metrics(pred, test, mask).items():
            row[f"{name}_{key}"] = value
    return row


COLUMNS = [("case", "case"), ("variant", "pair terms"), ("K", "K"),
           ("all_forces_mae_meV", "F MAE (meV/Å)"), ("all_forces_mae_percent", "% of mean abs F"),
           ("inside_forces_mae_percent", "% inside"), ("outside_forces_mae_percent", "% outside"),
           ("all_energy_mae_meV", "E MAE (meV)"), ("all_forces_coverage_95", "F cov. 95"),
           ("outside_std_ratio", "std ratio outside"), ("fit_s", "fit (s)")]  # fmt: skip


def main(argv=None) -> int:
    import jax

    from forcegp.gp import explicit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["aspirin"], choices=("aspirin", "dha", "ala3"))
    ap.add_argument("--n", type=int, default=1000, help="aspirin training structures")
    ap.add_argument("--frames", type=int, default=333, help="frames of each xTB trajectory")
    ap.add_argument("--bounds", nargs="*", type=float, default=[3.0], help="tanh widths C")
    ap.add_argument(
        "--margins",
        nargs="*",
        type=float,
        default=[],
        help="range clamps: margins beyond each pair's training range (std units)",
    )
    ap.add_argument(
        "--no-reference",
        action="store_true",
        help="leave out the library's powers and the model without pair terms",
    )
    ap.add_argument("--config", nargs="*", default=[], help="KEY=VALUE beside " + " ".join(BASE))
    ap.add_argument("--name", default="bounded_pairs")
    common.add_common_args(ap)
    args = ap.parse_args(argv)
    common.enable_x64()
    base = common.config_options(BASE + args.config) | (QUICK if args.quick else {})
    library = explicit._pair_powers
    variants = [] if args.no_reference else [("powers (library)", 3, library), ("none", 0, library)]
    variants += [(f"tanh, C = {c:g}", 3, bounded_pair_powers(tanh_bound(c), library))
                 for c in args.bounds]  # fmt: skip
    variants += [(f"training range, margin {m:g}", 3, bounded_pair_powers(range_clamp(m), library))
                 for m in args.margins]  # fmt: skip
    machine = common.machine_info()
    rows = []
    for case in args.cases:
        train, test, inside = load(case, 60 if args.quick else args.n, args.frames, args.quick)
        for label, powers, terms in variants:
            explicit._pair_powers = terms
            jax.clear_caches()
            try:
                row = fit_and_test(train, test, inside, base | {"pair_powers": powers}, library)
            finally:
                explicit._pair_powers = library
            row = {"case": case, "variant": label, "config": base, "frames": train.n_frames, **row}
            rows.append(row)
            # Each row as it comes, so a run stopped later keeps what it measured.
            lines = common.results_dir(args) / f"{args.name}.jsonl"
            common.append_record(lines, row, machine, args.quick)
    intro = (f"config {base}; explicit block alone, scales and noise by the exact evidence "
             "(Newton, one start); pair terms z^k, k <= 3, of the standardised inverse distances, "
             "of C tanh(z / C), or of z clamped to each pair's training range.")  # fmt: skip
    common.write_table(args.name, args, machine, "Bounded global pair terms", intro, rows, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
