"""Active learning: train, explore with MD until unsure, pick, label, retrain.

    python examples/active_learning.py                 # ethanol, 5-10 minutes on 2 CPU cores
    python examples/active_learning.py --no-baseline   # without the random-picks comparison
    python examples/active_learning.py --reference xtb \
        --geometries data/xtb/ala3_train.npz --test-geometries data/xtb/ala3_test.npz

Round 0 trains on 50 structures drawn from --geometries (by default rMD17 ethanol; only their
positions are used). Each round then

1. runs a few Langevin MD trajectories with the current model from training structures (or,
   ``--starts typical``, from the unlabelled typical geometries), each
   stopping when the largest predicted force std exceeds a threshold (forcegp.md.run_md): twice
   the median such std over typical geometries (200 unlabelled frames of --geometries), so "unsure"
   means "less sure than on the structures it should know";
2. picks the most informative MD frames, greedily and batch-aware (forcegp.select): by default
   the most uncertain ones; with ``--objective integrated`` those whose labels would lower the
   summed force variance of the round's MD frames (or, ``--targets typical``, of the typical
   geometries) the most;
3. labels them with the reference calculator and retrains on everything labelled so far.

For comparison (``--baseline``, the default) a second model is trained each round on the same
number of frames picked at random from the same MD frames: the difference is what the selection
itself buys.

Labels, including those of the initial structures and of the fixed test set, come from one
reference calculator: GFN2-xTB through tblite (``pip install tblite``) when it is installed and
works, otherwise ASE's EMT as a toy stand-in. The output says which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tblite's threads fight JAX's on small machines

import jax  # noqa: E402
import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data"


def reference_calculator(choice: str):
    """(calculator, description): GFN2-xTB via tblite if it works, else EMT (a toy)."""
    from ase import Atoms

    probe = Atoms("CCO", positions=[[0, 0, 0], [1.52, 0, 0], [2.0, 1.35, 0]])
    if choice in ("auto", "xtb"):
        try:
            from tblite.ase import TBLite

            calc = TBLite(method="GFN2-xTB", verbosity=0)
            probe.calc = calc
            probe.get_forces()
            return calc, "GFN2-xTB (tblite)"
        except Exception as exc:  # not installed, or no working build offline
            if choice == "xtb":
                raise SystemExit(f"tblite does not work here: {exc}") from None
            print(f"note: tblite unavailable ({type(exc).__name__}: {exc}); using EMT")
    from ase.calculators.emt import EMT

    return EMT(), "EMT (ASE's toy potential: a stand-in, not chemistry)"


def label(calc, numbers, positions):
    """Reference energies (n,) eV and forces (n, N, 3) eV/Å; frames it cannot do are skipped."""
    from ase import Atoms

    keep, energies, forces = [], [], []
    for i, pos in enumerate(positions):
        atoms = Atoms(numbers=numbers, positions=pos)
        atoms.calc = calc
        try:
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
            keep.append(i)
        except Exception:  # e.g. an SCF that does not converge on a wild MD frame
            continue
    return np.array(keep, dtype=int), np.array(energies), np.array(forces)


def model_options(pairs: list[str]) -> dict:
    """--config KEY=VALUE ... as config keyword arguments (numbers as numbers)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--config takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--geometries",
        type=Path,
        default=DATA / "ethanol_train.extxyz",
        help="structures of one molecule to start from (their labels are not used)",
    )
    parser.add_argument(
        "--test-geometries",
        type=Path,
        default=DATA / "ethanol_test.extxyz",
        help="structures of the same molecule for the fixed test set (relabelled)",
    )
    parser.add_argument("--initial", type=int, default=50, help="structures of round 0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pick", type=int, default=20, help="structures labelled per round")
    parser.add_argument("--test", type=int, default=200, help="fixed test structures")
    parser.add_argument(
        "--valid", type=int, default=50, help="fixed validation structures (std calibration)"
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--inducing", type=int, default=64)
    parser.add_argument("--explicit-dim", type=int, default=36)
    parser.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="further model settings (forcegp.train_model's config_kwargs), e.g. "
        "descriptor=atomic env_body4=7 env_radial=6",
    )
    parser.add_argument("--md-runs", type=int, default=4, help="MD trajectories per round")
    parser.add_argument("--md-steps", type=int, default=400)
    parser.add_argument("--temperature", type=float, default=600.0, help="K")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--interval", type=int, default=4, help="keep every N-th MD frame")
    parser.add_argument(
        "--starts",
        choices=["training", "typical"],
        default="training",
        help="where the MD runs start: labelled training structures, or the unlabelled typical "
        "geometries (a cheap trajectory's frames, so the runs explore the data's distribution)",
    )
    parser.add_argument(
        "--threshold-factor",
        type=float,
        default=2.0,
        help="stop MD at this multiple of the median max force std on typical geometries",
    )
    parser.add_argument(
        "--objective",
        choices=["variance", "integrated"],
        default="variance",
        help="variance: the most uncertain frames; integrated: the frames whose labels lower the "
        "summed force variance of --targets most",
    )
    parser.add_argument(
        "--targets",
        choices=["pool", "typical"],
        default="pool",
        help="for --objective integrated: the round's MD frames, or the typical geometries",
    )
    parser.add_argument(
        "--misfit",
        choices=["noise", "error"],
        default="noise",
        help="how picking counts the input-dependent noise: as noise a label cannot lower, or as "
        "model error that labels remove (forcegp.select.select_structures)",
    )
    parser.add_argument("--reference", choices=["auto", "xtb", "emt"], default="auto")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train on random picks from the same MD frames",
    )
    parser.add_argument("--workdir", type=Path, help="keep MD trajectories here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rounds' rows to this JSON file")
    args = parser.parse_args()
    options = model_options(args.config)  # before any labelling: a malformed pair stops here

    jax.config.update("jax_enable_x64", True)  # first thing: models are float64
    import ase.io

    from forcegp import Dataset, TrainSettings, read_dataset, train_model
    from forcegp.data import concatenate, formula
    from forcegp.errors import NumericalError
    from forcegp.md import make_calculator, run_md
    from forcegp.select import select_structures
    from forcegp.training.evaluation import evaluate, predict

    started = time.perf_counter()
    calc, reference = reference_calculator(args.reference)
    rng = np.random.default_rng(args.seed)
    # Positions only: every label is the reference's, so a file's own labels (and their units:
    # the energy unit named here only lets a unit-less MD17 npz be read) are dropped.
    positions_only = {"require_labels": False, "energy_unit": "eV"}
    geometries = read_dataset(args.geometries, **positions_only)
    numbers = geometries.numbers
    test_set = read_dataset(args.test_geometries, **positions_only)
    if not np.array_equal(test_set.numbers, numbers):
        raise SystemExit(
            f"{args.test_geometries}: atoms {formula(test_set.numbers)}, but {args.geometries} "
            f"has {formula(numbers)}"
        )
    test_geometries = test_set.positions[: args.test]

    def labelled(positions, source: str) -> Dataset:
        keep, energies, forces = label(calc, numbers, positions)
        return Dataset(numbers, positions[keep], energies, forces, (source,))

    order = rng.permutation(geometries.n_frames)
    initial = geometries.positions[np.sort(order[: args.initial])]
    typical = geometries.positions[order[args.initial : args.initial + 200]]  # never labelled
    held = order[args.initial + 200 : args.initial + 200 + args.valid]
    data = labelled(initial, "initial")
    valid = labelled(geometries.positions[np.sort(held)], "validation")
    test = labelled(test_geometries, "test")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="forcegp-al-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"reference: {reference}")
    print(
        f"{formula(numbers).split()[0]}, {data.n_frames} initial structures, validation "
        f"{valid.n_frames} and test set "
        f"{test.n_frames} structures "
        f"(labelled in {time.perf_counter() - started:.0f} s); model M={args.inducing}"
        f"{''.join(' ' + pair for pair in args.config)}, "
        f"{args.epochs} epochs of batches of {args.batch_size}; {args.md_runs} MD runs x "
        f"{args.md_steps} steps at "
        f"{args.temperature:g} K per round, {args.pick} picks per round"
    )

    def fit(train: Dataset):
        # A fixed validation set of its own calibrates the std's amplitude (train_model uses
        # validation for nothing else); the test set is only evaluated, so it never shapes a model.
        model, meta = train_model(
            train,
            config_kwargs={
                "n_inducing": args.inducing,
                "explicit_dim": args.explicit_dim,
                **options,
            },
            settings=TrainSettings(epochs=args.epochs, batch_size=args.batch_size),
            seed=args.seed,
            valid=valid,
        )
        metrics = evaluate(model, test)
        metrics["gamma"] = meta["training"]["calibration"].get("misfit_gamma")  # noise's choice
        return model, metrics

    rows, baseline = [], data
    for round_ in range(args.rounds + 1):
        tick = time.perf_counter()
        model, metrics = fit(data)
        row = {
            "round": round_,
            "n": data.n_frames,
            "mae": 1e3 * metrics["forces_mae"],
            "emae": 1e3 * metrics["energy_mae"],
            "cov": 100 * metrics["forces_coverage_95"],
            "gamma": metrics["gamma"],
        }
        if args.baseline and round_ > 0:
            other = fit(baseline)[1]
            row["random"], row["random_gamma"] = 1e3 * other["forces_mae"], other["gamma"]
        if round_ == args.rounds:
            row["seconds"] = time.perf_counter() - tick
            rows.append(row)
            print(_row_text(row))
            break

        # 1. explore: MD from training structures until the model is unsure
        typical_std = predict(model, typical, with_std=True)["forces_std"].max(axis=(1, 2))
        threshold = args.threshold_factor * float(np.median(typical_std))
        md_calc = make_calculator(model, monitor=True)  # compiled once, reused by every run
        pool, steps_run, stops = [], [], 0
        starts = data.positions if args.starts == "training" else typical
        for run in range(args.md_runs):
            start = starts[rng.integers(len(starts))]
            out = workdir / f"round{round_}_md{run}.extxyz"
            try:
                summary = run_md(
                    md_calc,
                    ase.Atoms(numbers=numbers, positions=start),
                    out,
                    steps=args.md_steps,
                    temperature=args.temperature,
                    timestep=args.timestep,
                    seed=args.seed + 1000 * round_ + run,
                    interval=args.interval,
                    max_force_std=threshold,
                )
                steps_run.append(summary.steps)
                stops += summary.stopped == "uncertain"
            except NumericalError:  # the frames before the blow-up were written
                stops += 1
            frames = ase.io.read(out, ":")
            pool += [f.positions for f in frames[1:]]  # not the start: labelled, or a target
        candidates = np.array(pool)

        # 2. pick; 3. label and add
        k = min(args.pick, len(candidates))
        targets = typical if args.targets == "typical" else None
        picks = select_structures(
            model,
            candidates,
            k,
            numbers=numbers,
            objective=args.objective,
            targets=targets,
            misfit=args.misfit,
        )
        chosen = labelled(candidates[picks.indices], f"round {round_}")
        data = concatenate([data, chosen])
        # The current model's error on the frames it picked: whether the std found the frames
        # it gets most wrong (the labels exist anyway; nothing here shapes a model).
        row["pick_mae"] = 1e3 * evaluate(model, chosen)["forces_mae"]
        if args.baseline:
            random = rng.permutation(len(candidates))[:k]
            drawn = labelled(candidates[random], "random")
            baseline = concatenate([baseline, drawn])
            row["random_pick_mae"] = 1e3 * evaluate(model, drawn)["forces_mae"]
        row.update(
            threshold=1e3 * threshold,
            md_steps=float(np.mean(steps_run)) if steps_run else 0.0,
            stops=f"{stops}/{args.md_runs}",
            pool=len(candidates),
            pick_std=1e3 * float(np.mean(picks.rms_force_std())),
            seconds=time.perf_counter() - tick,
        )
        rows.append(row)
        print(_row_text(row))

    print()
    print("force MAE on the fixed test set (meV/Å), by round:")
    header = " round  structures  force MAE  energy MAE  95% coverage"
    print(header + ("  random picks" if args.baseline else ""))
    for r in rows:
        line = f" {r['round']:5d}  {r['n']:10d}  {r['mae']:9.1f}  {r['emae']:10.1f}  {r['cov']:11.1f}%"
        if "random" in r:
            line += f"  {r['random']:12.1f}"
        print(line)
    print(f"total {time.perf_counter() - started:.0f} s; MD trajectories in {workdir}")
    if args.json:
        record = {"reference": reference, "seed": args.seed, "argv": sys.argv[1:], "rounds": rows,
                  "seconds": time.perf_counter() - started}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1) + "\n")


def _row_text(r: dict) -> str:
    text = (
        f"round {r['round']}: {r['n']} structures, force MAE {r['mae']:.1f} meV/Å, energy MAE "
        f"{r['emae']:.1f} meV, force 95% coverage {r['cov']:.1f}%"
    )
    if "random" in r:
        text += f" (random picks: force MAE {r['random']:.1f} meV/Å)"
    if "pool" in r:
        text += (
            f"\n  MD stop at max force std > {r['threshold']:.0f} meV/Å: {r['stops']} runs "
            f"stopped, mean {r['md_steps']:.0f} steps; {r['pool']} candidate frames; picked "
            f"frames' RMS force std {r['pick_std']:.0f} meV/Å, force MAE {r['pick_mae']:.0f} meV/Å"
        )
        if "random_pick_mae" in r:
            text += f" (random picks' {r['random_pick_mae']:.0f})"
    return text + f"  [{r['seconds']:.0f} s]"


if __name__ == "__main__":
    main()
