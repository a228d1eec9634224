"""What each stage of training adds, measured on the test set in one run.

    python benchmarks/stages.py --molecules aspirin --config descriptor=atomic env_body4=7 \
        env_radial=6 env_body4_lmax=3 pair_bound=4
    python benchmarks/stages.py --xtb --molecules ala3 --config env_body4=7 env_radial=6 pair_bound=4
    python benchmarks/stages.py --quick

Trains one model through the library's own stages (training.pipeline: prepare, prefit,
train_soft, fit, misfit_noise, then the amplitude's calibration) on the rMD17 training split
(split 01; with --xtb the GFN2-xTB trajectories data/xtb/<molecule>_train.npz) and tests three
models on the official test split (--xtb: the independent trajectory <molecule>_test.npz), all
on the same training and validation structures:

- ``explicit``: the explicit block alone, its exact posterior with the scales and noise levels
  its prefit chose by the evidence (the DSoftKI block's prior scale at the floor, 1e-6 of the
  standardised energy variance), not calibrated;
- ``joint``: both blocks, the exact posterior of the fit (constant noise), not calibrated;
  with the DSoftKI block's prior scale and the noise levels its evidence search chose;
- ``final``: the model train_model returns (input-dependent noise, calibrated amplitude).

Each stage's seconds are recorded beside it. A row per (molecule, stage) is appended to
benchmarks/results/stages.jsonl and the table written to stages.md / stages.json.
"""

from __future__ import annotations

import argparse
import time

import jax
from common import (
    ROOT,
    add_common_args,
    append_record,
    config_options,
    enable_x64,
    machine_info,
    results_dir,
    rmd17_path,
    write_table,
)

XTB = ROOT / "data" / "xtb"
QUICK = {"n_inducing": 16, "n_features": 4, "width": 8, "explicit_dim": 6}


def _errors(model, test) -> dict:
    from forcegp.training.evaluation import evaluate

    m = evaluate(model, test)
    return {
        "forces_mae_mev_per_ang": 1000 * m["forces_mae"],
        "forces_mae_percent": 100 * m["forces_mae"] / m["forces_mean_abs"],
        "forces_binned_worst_ratio": m["forces_binned_worst_ratio"],
        "energy_mae_mev": 1000 * m["energy_mae"],
        "forces_coverage_95": m["forces_coverage_95"],
        "forces_zms": m["forces_zms"],
    }


def _levels(model) -> dict:
    """The DSoftKI block's prior scale and the noise stds (standardised units) of a fit."""
    h = model.hyper
    return {"soft_scale": float(h.scale), "noise_energy": float(h.noise_energy),
            "noise_force": float(h.noise_force)}  # fmt: skip


def run_molecule(molecule: str, args) -> list[dict]:
    from forcegp.data import read_dataset
    from forcegp.gp import evidence, posterior
    from forcegp.gp.config import SCALE_FLOOR
    from forcegp.training import pipeline
    from forcegp.training.settings import TrainSettings

    if args.xtb:
        train = read_dataset([XTB / f"{molecule}_train.npz"])
        test = read_dataset([XTB / f"{molecule}_test.npz"])
    else:
        train = read_dataset([rmd17_path(molecule, "train")], energy_unit="kcal/mol")
        test = read_dataset([rmd17_path(molecule, "test")], energy_unit="kcal/mol")
    if args.n_train:
        train = train.subset(list(range(args.n_train)))
    if args.n_test:
        test = test.subset(list(range(args.n_test)))
    config = {**(QUICK if args.quick else {}), **config_options(args.config)}
    settings = TrainSettings(**({"epochs": args.epochs} if args.epochs else {}))
    seconds = {}

    started = time.perf_counter()
    run = pipeline.prepare(train, None, 0.05, config, settings, args.seed, None, None)
    seconds["prepare"] = time.perf_counter() - started

    # The prefit's evidence optimum (its multipliers are folded into the model it returns, its
    # noise levels are not: the fit searches them again).
    found = {}
    maximise = evidence.maximise

    def keep(*a, **k):
        found["result"] = maximise(*a, **k)
        return found["result"]

    evidence.maximise = keep
    try:
        started = time.perf_counter()
        model, y_res, g_res, explicit = pipeline.prefit(run, lambda *_: None)
        seconds["prefit"] = time.perf_counter() - started
    finally:
        evidence.maximise = maximise
    _, noise_e, noise_f = found["result"]

    # The explicit block alone: DSoftKI's prior scale at the floor, the prefit's noise levels.
    started = time.perf_counter()
    floor = 2 * SCALE_FLOOR / float(model.hyper.scale)
    alone = posterior.with_multipliers(model, [floor**0.5], noise_e, noise_f)
    alone = posterior.fit(alone, run.x, run.y, run.g, refine=False, chunk=run.chunk, mesh=run.mesh)
    seconds["explicit_posterior"] = time.perf_counter() - started
    rows = [{"stage": "explicit", **_errors(alone, test), "seconds": seconds["prefit"],
             **_levels(alone)}]  # fmt: skip
    del alone

    started = time.perf_counter()
    model, state, _ = pipeline.train_soft(run, model, y_res, g_res, None, False, lambda *_: None)
    seconds["epochs"] = time.perf_counter() - started
    model, seconds["fit"] = pipeline.fit(run, model, None, lambda *_: None, explicit)
    del explicit  # as train_model: the prefit's statistics are not kept past the fit
    joint_seconds = seconds["epochs"] + seconds["fit"]
    rows.append({"stage": "joint", **_errors(model, test), "seconds": joint_seconds,
                 **_levels(model)})  # fmt: skip

    started = time.perf_counter()
    model, meta = pipeline.finish(run, model, state, {}, lambda *_: None)
    seconds["noise_and_calibration"] = time.perf_counter() - started
    gamma = meta["training"]["calibration"].get("misfit_gamma", 0.0)
    rows.append({"stage": "final", **_errors(model, test), "seconds": seconds["noise_and_calibration"],
                 "misfit_gamma": gamma})  # fmt: skip
    for row in rows:
        row.update(molecule=molecule, n_train=run.train.n_frames, n_valid=run.valid.n_frames,
                   n_test=test.n_frames, config=" ".join(args.config) or "default",
                   stage_seconds={k: round(v, 1) for k, v in seconds.items()})  # fmt: skip
    return rows


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--molecules", nargs="+", default=["ethanol"])
    parser.add_argument("--config", nargs="*", default=[], help="Config fields KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=None, help="DSoftKI epochs (default: auto)")
    parser.add_argument("--n-train", type=int, default=None, help="first N training structures")
    parser.add_argument("--n-test", type=int, default=None, help="first N test structures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--xtb", action="store_true", help="data/xtb/<molecule>_{train,test}.npz")
    parser.add_argument("--name", default="stages")
    add_common_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.epochs = args.n_train or 60, args.n_test or 20, args.epochs or 1
    enable_x64()
    machine = machine_info()
    out = results_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    table = []
    for molecule in args.molecules:
        for row in run_molecule(molecule, args):
            append_record(out / f"{args.name}.jsonl", row, machine, args.quick)
            table.append(row)
    columns = [("molecule", "molecule"), ("stage", "stage"), ("forces_mae_mev_per_ang", "F MAE (meV/Å)"),
               ("energy_mae_mev", "E MAE (meV)"), ("forces_coverage_95", "F cov. 95"),
               ("forces_zms", "F ZMS"), ("forces_mae_percent", "F MAE (% of mean abs F)"),
               ("forces_binned_worst_ratio", "worst std bin"), ("seconds", "stage (s)")]  # fmt: skip
    write_table(
        args.name,
        args,
        machine,
        "Test errors after each stage of training",
        "the library's stages on one training run.",
        table,
        columns,
    )
    print(jax.devices())


if __name__ == "__main__":
    main()
