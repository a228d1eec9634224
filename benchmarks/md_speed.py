"""Prediction speed through the ASE calculator on aspirin (21 atoms): per call, with and without
uncertainties, and per MD step.

    python benchmarks/md_speed.py                   # default model shapes, about 2 minutes
    python benchmarks/md_speed.py --model aspirin.fgp
    python benchmarks/md_speed.py --quick           # smoke test (tiny model)
    python benchmarks/md_speed.py --model aspirin.fgp --std-sketches 64 128 256

Model: a model file (--model), or forcegp.train_model with the default Config() and
TrainSettings() except epochs=1, on the first 200 structures of rMD17 aspirin train_01. The cost of
a prediction depends on the model's shapes (K basis functions, 21 atoms), not on how well it is
trained, so one epoch is enough for timing.

Timed after warm-up (the first call of each kind compiles), each call on a new geometry (the
previous one plus 0.001 Å noise, so ASE's cache never answers):
  * energy + forces: atoms.get_forces() (the calculator's fast path); target <= 1 ms;
  * with uncertainties: calc.get_property("forces_std", atoms), which also gives the energy, the
    forces and energy_std in the same call; target <= 5 ms;
  * MD: VelocityVerlet, 0.5 fs, 300 K start, time per step; once with the plain calculator and
    once reading the force std every step, the way `forcegp md --max-force-std` does it
    (forcegp.md.make_calculator(monitor=True): one compiled call per step gives both).
Floors: the (1 + 3N) x K by K x K product inside every std call, on a random dense array and on
the covariance's nonzero column blocks as the library keeps them (predict_mod.cov_blocks), and one
K-vector times a K x K array (a single pass over it), timed alone.
Sketched stds (--std-sketches, default 64 128 256): the calculator with std_sketch=s estimates
the posterior part of each variance from a random projection with s columns and gives an upper
bound beside it (ForceGPCalculator, std_sketch). For each s: the time per call, the one-off
set-up, an MD step reading the upper bound every step (what forcegp md --max-force-std does),
and on --check-n rMD17 aspirin test structures how close it is to the exact std: the estimated
over the exact force-component std (median and extremes), the share of components whose exact
std exceeds the upper bound (stated: 1e-3), and the largest std per structure (the quantity MD
checks), upper bound over exact.
No recompilation: the calculators' trace counters (n_traces) and JAX's compile events must not
grow during the timed part. Per-call times are median, minimum and 90th percentile: the machine
may be shared, and the minimum is the least disturbed call.

Results: benchmarks/results/md_speed.json and md_speed.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_FAST_MS = 1.0
TARGET_STD_MS = 5.0


def get_model(args):
    from forcegp import TrainSettings, load_model, read_dataset, train_model

    if args.model:
        return load_model(args.model)[0], f"model file {args.model}"
    data = read_dataset(common.rmd17_path("aspirin", "train"), energy_unit="kcal/mol")
    n = 32 if args.quick else args.train_n
    settings = dataclasses.replace(TrainSettings(), epochs=1)
    t0 = time.perf_counter()
    model, _ = train_model(
        data.subset(np.arange(n)),
        settings=settings,
        seed=0,
        valid=data.subset(np.arange(n, n + 16)),
        config_kwargs=common.QUICK_CONFIG if args.quick else None,
    )
    config = "tiny config" if args.quick else "default Config()"
    return model, (
        f"train_model on {n} rMD17 aspirin structures, {config}, epochs=1 "
        f"({time.perf_counter() - t0:.0f} s)"
    )


def time_calls(atoms, call, repeats: int, rng) -> np.ndarray:
    """Seconds per call, each on a freshly displaced geometry."""
    ref = atoms.positions.copy()
    times = np.empty(repeats)
    for i in range(repeats):
        atoms.positions = ref + 1e-3 * rng.standard_normal(ref.shape)
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
    atoms.positions = ref
    return times


def stats_ms(times: np.ndarray) -> dict:
    ms = 1000 * times
    return {
        "median_ms": float(np.median(ms)),
        "min_ms": float(np.min(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "calls": len(ms),
    }


def covariance_floors(model, repeats: int) -> dict:
    """Median seconds of the products inside an exact std call: the (1 + 3N) x K rows times a
    random dense (K, K) array and times the model's folded covariance as the library keeps it
    (its nonzero column blocks, predict_mod.covariance_sq_norms: the std call's arithmetic), and
    one K-vector times the dense array (a single pass over K^2 float64 numbers, set by memory
    bandwidth rather than arithmetic)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from forcegp.gp import predict as predict_mod

    k, rows = model.config.n_basis, 1 + model.config.dim
    rng = np.random.default_rng(0)
    cov = jnp.asarray(rng.standard_normal((k, k)))
    product = jax.jit(lambda r, c: jnp.sum((r @ c) ** 2, axis=-1))
    pred = predict_mod.predictor(model)  # the blocks the library keeps (predict_mod.cov_blocks)
    blocked = eqx.filter_jit(predict_mod.covariance_sq_norms)

    def timed(f, *args):
        return stats_ms(common.call_seconds(lambda: jax.block_until_ready(f(*args)), repeats))

    r_rows = jnp.asarray(rng.standard_normal((rows, k)))
    out = {
        "rows_times_cov": timed(product, r_rows, cov),
        "rows_times_cov_blocks": timed(blocked, pred, r_rows),
        # What float32 would give (not the library's: its GP algebra is float64).
        "rows_times_cov_float32": timed(product, r_rows.astype(jnp.float32), cov.astype(jnp.float32)),
        "vector_times_cov": timed(product, jnp.asarray(rng.standard_normal(k)), cov),
    }
    out["cov_bytes"] = int(cov.nbytes)
    out["cov_blocks_bytes"] = int(sum(b.nbytes for b in pred.cov))
    return out


def md_run(atoms, calc, *, watch_std: bool):
    """A 0.5 fs VelocityVerlet from 300 K velocities, warmed up by 5 steps (compiles)."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    common.thermalize(atoms, 300, seed=1)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    if watch_std:  # what forcegp md does with --max-force-std: read the std after every step
        dyn.attach(lambda: calc.get_property("forces_std", atoms).max(), interval=1)
    dyn.run(5)
    return atoms, dyn


def time_md(atoms, dyn, steps: int) -> dict:
    e0 = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    t0 = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - t0
    e1 = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    return {"step_ms": 1000 * seconds / steps, "energy_drift_eV": e1 - e0}


def run(args) -> dict:
    common.enable_x64()
    from ase import Atoms

    from forcegp import ForceGPCalculator, read_dataset
    from forcegp.md import make_calculator

    model, source = get_model(args)
    test = read_dataset(common.rmd17_path("aspirin", "test"), energy_unit="kcal/mol")
    atoms = Atoms(numbers=test.numbers, positions=test.positions[0])
    calc = ForceGPCalculator(model)
    atoms.calc = calc
    rng = np.random.default_rng(0)

    def with_std():
        return calc.get_property("forces_std", atoms)

    t0 = time.perf_counter()
    atoms.get_forces()
    first_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    with_std()
    first_std = time.perf_counter() - t0
    time_calls(atoms, atoms.get_forces, 5, rng)
    time_calls(atoms, with_std, 5, rng)
    md_plain = md_run(atoms, ForceGPCalculator(model), watch_std=False)
    md_watch = md_run(atoms, make_calculator(model, monitor=True, std_sketch=None), watch_std=True)
    calcs = (calc, md_plain[0].calc, md_watch[0].calc)
    traces_before = [c.n_traces for c in calcs]

    with common.count_compilations() as compiled:
        fast = time_calls(atoms, atoms.get_forces, args.repeats, rng)
        full = time_calls(atoms, with_std, args.repeats, rng)
        md = time_md(*md_plain, args.md_steps)
        md_std = time_md(*md_watch, args.md_steps)
    traces_after = [c.n_traces for c in calcs]
    floors = covariance_floors(model, min(args.repeats, 100))
    check_x = test.positions[: args.check_n]
    exact = np.stack([_std_of(calc, atoms, pos)[0] for pos in check_x])
    sizes = [s for s in args.std_sketches if s < model.config.n_basis]
    sketches = [sketched(model, atoms, s, check_x, exact, args, rng) for s in sizes]

    out = {
        "model": source,
        "config": model.config.to_dict(),
        "K": model.config.n_basis,
        "n_atoms": model.n_atoms,
        "first_call_fast_s": first_fast,
        "first_call_std_s": first_std,
        "energy_forces": stats_ms(fast),
        "with_std": stats_ms(full),
        "md_steps": args.md_steps,
        "md": md,
        "md_with_std": md_std,
        "covariance_floors": floors,
        "sketched": sketches,
        "traces_before_timing": traces_before,
        "traces_after_timing": traces_after,
        "compiled_during_timing": compiled,
        "no_recompilation": not compiled and traces_after == traces_before,
    }
    out["meets_fast_target"] = out["energy_forces"]["median_ms"] <= TARGET_FAST_MS
    out["meets_std_target"] = out["with_std"]["median_ms"] <= TARGET_STD_MS
    return out


def _std_of(calc, atoms, positions):
    """(estimate, upper bound) of the force-component stds at positions, through calc."""
    atoms.positions = positions
    estimate = calc.get_property("forces_std", atoms).ravel().copy()
    return estimate, calc.results["forces_std_upper"].ravel().copy()


def sketched(model, atoms, size: int, positions, exact, args, rng) -> dict:
    """Time, MD step and accuracy of the calculator with std_sketch=size (module doc)."""
    from forcegp import ForceGPCalculator
    from forcegp.md import make_calculator

    t0 = time.perf_counter()
    calc = ForceGPCalculator(model, std_sketch=size)
    atoms = atoms.copy()
    atoms.calc = calc
    _std_of(calc, atoms, positions[0])
    setup = time.perf_counter() - t0
    pairs = [_std_of(calc, atoms, p) for p in positions]
    estimate, upper = (np.stack(v) for v in zip(*pairs, strict=True))
    atoms.positions = positions[0]
    times = time_calls(atoms, lambda: calc.get_property("forces_std", atoms), args.repeats, rng)
    md_atoms, dyn = md_run(atoms, make_calculator(model, monitor=True, std_sketch=size),
                           watch_std=True)  # fmt: skip
    ratio = estimate / exact
    return {
        "sketch": size,
        "setup_s": setup,
        "with_std": stats_ms(times),
        "md_with_std": time_md(md_atoms, dyn, args.md_steps),
        "ratio_median": float(np.median(ratio)),
        "ratio_min": float(np.min(ratio)),
        "ratio_max": float(np.max(ratio)),
        "exceed_upper_share": float(np.mean(exact > upper)),
        "max_std_upper_over_exact_min": float(np.min(upper.max(1) / exact.max(1))),
        "max_std_upper_over_exact_max": float(np.max(upper.max(1) / exact.max(1))),
        "structures": len(positions),
    }


COLUMNS = [
    ("what", "per call"),
    ("median_ms", "median (ms)"),
    ("min_ms", "min (ms)"),
    ("p90_ms", "p90 (ms)"),
    ("calls", "calls"),
    ("target", "target"),
    ("met", "median meets target"),
]


def markdown(r: dict, info: dict, quick: bool) -> str:
    rows = [
        {
            "what": "energy + forces (atoms.get_forces)",
            **r["energy_forces"],
            "target": f"<= {TARGET_FAST_MS} ms",
            "met": r["meets_fast_target"],
        },
        {
            "what": "+ uncertainties (get_property('forces_std'))",
            **r["with_std"],
            "target": f"<= {TARGET_STD_MS} ms",
            "met": r["meets_std_target"],
        },
        {"what": "MD step (VelocityVerlet)", "median_ms": r["md"]["step_ms"]},
        {"what": "MD step, force std every step", "median_ms": r["md_with_std"]["step_ms"]},
    ]
    floors = r.get("covariance_floors")
    if floors:
        k, rows_n = r["K"], 1 + 3 * r["n_atoms"]
        rows += [
            {"what": f"floor: ({rows_n} x {k}) @ ({k} x {k}) alone", **floors["rows_times_cov"]},
            {
                "what": "floor: the same product on the library's column blocks (nonzero part)",
                **floors["rows_times_cov_blocks"],
            },
            {"what": f"floor: one pass, ({k},) @ ({k} x {k})", **floors["vector_times_cov"]},
        ]
        if "rows_times_cov_float32" in floors:
            rows.append(
                {
                    "what": "floor: the dense product in float32 (for comparison only)",
                    **floors["rows_times_cov_float32"],
                }
            )
    md_fast = r["md"]["step_ms"]
    for b in r.get("sketched", []):
        rows += [
            {"what": f"+ uncertainties, std_sketch={b['sketch']}", **b["with_std"],
             "target": f"<= 5x energy + forces ({5 * r['energy_forces']['median_ms']:.2f} ms)",
             "met": b["with_std"]["median_ms"] <= 5 * r["energy_forces"]["median_ms"]},
            {"what": f"MD step, force std every step, std_sketch={b['sketch']}",
             "median_ms": b["md_with_std"]["step_ms"], "target": f"<= 5x MD step "
             f"({5 * md_fast:.2f} ms)", "met": b["md_with_std"]["step_ms"] <= 5 * md_fast},
        ]  # fmt: skip
    parts = [
        "# forcegp prediction speed (aspirin, ASE calculator)",
        "",
        common.machine_markdown(info),
        "",
    ]
    if quick:
        parts += ["**--quick: tiny model (smoke test), numbers are not meaningful.**", ""]
    parts += [
        f"Model: {r['model']}; K = {r['K']} basis functions, {r['n_atoms']} atoms.",
        "",
        common.md_table(rows, COLUMNS),
        "",
        f"MD rows: mean over {r['md_steps']} steps. First calls (compilation): energy+forces "
        f"{r['first_call_fast_s']:.2f} s, with uncertainties {r['first_call_std_s']:.2f} s. "
        f"Recompilation during timing: {'none' if r['no_recompilation'] else 'YES'} (calculator "
        f"traces {r['traces_before_timing']} → {r['traces_after_timing']}, XLA compilations "
        f"{len(r['compiled_during_timing'])}). Energy drift over the MD runs: "
        f"{r['md']['energy_drift_eV']:.2e} and {r['md_with_std']['energy_drift_eV']:.2e} eV.",
    ]
    if floors:
        parts += [
            "",
            "Floor rows: the products inside an exact std call, timed alone: the rows times "
            "a random dense array of the folded posterior covariance's shape "
            f"({floors['cov_bytes'] / 1e6:.0f} MB of float64), the same rows times the "
            "covariance as the library keeps it, its nonzero column blocks "
            f"({floors['cov_blocks_bytes'] / 1e6:.0f} MB; the factor is triangular beyond the "
            "DSoftKI rows, predict_mod.cov_blocks), a single pass over the dense array, and the "
            "dense product in float32 (what giving up float64 would buy; forcegp does not).",
        ]
    if r.get("sketched"):
        parts += ["", sketch_table(r["sketched"])]
    return "\n".join(parts)


def sketch_table(rows: list[dict]) -> str:
    n = rows[0]["structures"]
    lines = [
        f"Sketched force stds on {n} aspirin test structures (std_sketch = s columns; the "
        "stds include the learned noise):",
        "",
        "| s | set-up (s) | estimate / exact, median | min | max | exact above the upper bound "
        "(stated 0.1%) | largest std per structure, upper / exact, min | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in rows:
        lines.append(
            f"| {b['sketch']} | {b['setup_s']:.1f} | {b['ratio_median']:.4f} | "
            f"{b['ratio_min']:.4f} | {b['ratio_max']:.4f} | {b['exceed_upper_share']:.3%} | "
            f"{b['max_std_upper_over_exact_min']:.4f} | {b['max_std_upper_over_exact_max']:.4f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(p)
    p.add_argument("--model", default=None, help="a forcegp model file (default: train one)")
    p.add_argument("--train-n", type=int, default=200, help="structures to train on (200)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls of each kind (500)")
    p.add_argument("--md-steps", type=int, default=None, help="timed MD steps (300)")
    p.add_argument("--name", default="md_speed", help="results file name (md_speed)")
    p.add_argument(
        "--std-sketches",
        type=int,
        nargs="*",
        default=[64, 128, 256],
        help="std_sketch values to time and check (64 128 256)",
    )
    p.add_argument(
        "--check-n", type=int, default=None, help="test structures for the accuracy check (200)"
    )
    args = p.parse_args(argv)
    if args.quick:
        common.use_quick_compile_cache()
    args.repeats = args.repeats or (20 if args.quick else 500)
    args.md_steps = args.md_steps or (10 if args.quick else 300)
    args.check_n = args.check_n or (5 if args.quick else 200)
    if args.quick:
        args.std_sketches = [32]
    info = common.machine_info()
    result = run(args)
    info["load_average_end"] = common.load_average()
    info["peak_rss_gib"] = common.peak_rss_self() / common.GiB
    payload = {"benchmark": "md_speed", "argv": sys.argv[1:] if argv is None else list(argv)}
    payload |= {"quick": args.quick, "machine": info, "result": result}
    md = markdown(result, info, args.quick)
    print(md)
    common.write_results(args.name, payload, md, common.results_dir(args))
    return 0 if result["no_recompilation"] else 1


if __name__ == "__main__":
    sys.exit(main())
