"""The exact-evidence refinement's stopping rule against accuracy and calibration on rMD17.

    python benchmarks/evidence_tolerance.py                      # ethanol and aspirin, 1000
    python benchmarks/evidence_tolerance.py --molecules ethanol --tolerances 0 0.01 1
    python benchmarks/evidence_tolerance.py --n 200 --tolerances 0 0.01 --name evidence_tolerance_200
    python benchmarks/evidence_tolerance.py --quick              # smoke test (tiny model)

The posterior fit first sets one scale per block of basis functions and both noise levels by the
exact marginal likelihood of the whole training set (forcegp.gp.evidence.maximise, L-BFGS-B, one
K x K Cholesky factorisation and inverse per evaluation). Its stopping rule is
evidence.TOL_NATS: stop when an iteration improves the training set's total log evidence by
less than that many nats (0: scipy's default relative tolerance, 2.2e-9 of the NLL per
observation).

For each molecule: forcegp.training.pipeline.train_model with the default settings on the first
--n structures of rMD17 train_01 (5% of them held out for calibration, seed 0) up to the
posterior fit; then, from the same trained hyperparameters, the fit (accumulation, refinement,
solve) once per tolerance, the calibration on the held-out structures and the errors on the
1000 structures of test_01. Reported: the fit's time, the number of evidence evaluations and
their time, the final NLL per observation, the block multipliers and noise levels, force and
energy MAE (meV/Å, meV) and the 95% coverage of the force intervals.
Results: benchmarks/results/evidence_tolerance.json and .md.

With --whole, each tolerance instead runs the whole of train_model in its own subprocess (the
explicit block's prefit uses the same evidence search): train_model's time, its fit's time, the
evidence evaluations of the prefit and the fit with their time, and the same test errors.
Results: evidence_tolerance_whole.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TOLERANCES = (0.0, 0.01, 0.1)
MOLECULES = ("ethanol", "aspirin")


def read_split(molecule: str, n: int, quick: bool):
    """(train, valid, test): the first n structures of rMD17 train_01 less 5% held out for the
    calibration (seed 0), and test_01 (50 structures with --quick)."""
    from forcegp.data import read_dataset

    train = read_dataset(common.rmd17_path(molecule, "train"), energy_unit="kcal/mol")
    test = read_dataset(common.rmd17_path(molecule, "test"), energy_unit="kcal/mol")
    train, valid = train.subset(np.arange(n)).split(0.05, seed=0)
    return train, valid, test.subset(np.arange(50)) if quick else test


def test_metrics(model, test) -> dict:
    from forcegp.training import evaluation

    metrics = evaluation.evaluate(model, test)
    return {
        "forces_mae_mev": 1000 * metrics["forces_mae"],
        "energy_mae_mev": 1000 * metrics["energy_mae"],
        "forces_coverage_95": metrics["forces_coverage_95"],
        "energy_coverage_95": metrics["energy_coverage_95"],
    }


def worker_whole(spec: dict) -> dict:
    """train_model with evidence.TOL_NATS = spec["tol"], then the test errors."""
    common.enable_x64()
    from forcegp.gp import posterior
    from forcegp.training import pipeline

    train, valid, test = read_split(spec["molecule"], spec["n"], spec["quick"])
    config = common.QUICK_CONFIG if spec["quick"] else None
    real_fit, in_fit = posterior.fit, {}

    def fit(*args, **kwargs):
        in_fit["from"] = len(counter.calls)
        return real_fit(*args, **kwargs)

    posterior.fit = fit
    with common.EvidenceCalls(spec["tol"]) as counter:
        t0 = time.perf_counter()
        model, meta = pipeline.train_model(train, valid=valid, seed=0, config_kwargs=config)
        train_s = time.perf_counter() - t0
    posterior.fit = real_fit
    prefit, fitted = counter.calls[: in_fit["from"]], counter.calls[in_fit["from"] :]
    return {
        "molecule": spec["molecule"],
        "n": spec["n"],
        "tol_nats": spec["tol"],
        "K": model.config.n_basis,
        "train_model_s": train_s,
        "fit_s": meta["training"]["fit_seconds"],
        "prefit_evaluations": len(prefit),
        "prefit_evaluations_s": sum(s for s, _ in prefit),
        "fit_evaluations": len(fitted),
        "fit_evaluations_s": sum(s for s, _ in fitted),
        "noise_force": float(model.hyper.noise_force),
        "kappa": meta["training"]["calibration"]["kappa"],
        "n_test": test.n_frames,
        **test_metrics(model, test),
    }


WHOLE_COLUMNS = [
    ("molecule", "molecule"),
    ("tol_nats", "tolerance (nats)"),
    ("train_model_s", "train_model (s)"),
    ("prefit_evaluations", "prefit evaluations"),
    ("prefit_evaluations_s", "prefit evaluations (s)"),
    ("fit_evaluations", "fit evaluations"),
    ("fit_evaluations_s", "fit evaluations (s)"),
    ("fit_s", "whole fit (s)"),
    ("forces_mae_mev", "force MAE (meV/Å)"),
    ("energy_mae_mev", "energy MAE (meV)"),
    ("forces_coverage_95", "force coverage 95%"),
]


class _Captured(Exception):
    """Raised by the patched posterior.fit once it holds train_model's arguments."""


def trained_before_fit(molecule: str, n: int, quick: bool, config: dict | None = None):
    """({"args": (model, x, y, g), "kwargs": fit kwargs}, valid, test, seconds): train_model's
    state at its posterior fit; config: Config settings (default: the library's, or
    common.QUICK_CONFIG with quick)."""
    from forcegp.gp import posterior
    from forcegp.training import pipeline

    train, valid, test = read_split(molecule, n, quick)
    real_fit, held = posterior.fit, {}

    def capture(model, x, y, g, **kwargs):
        held.update(args=(model, x, y, g), kwargs=kwargs)
        raise _Captured

    if config is None:
        config = common.QUICK_CONFIG if quick else None
    posterior.fit = capture
    t0 = time.perf_counter()
    try:
        pipeline.train_model(train, valid=valid, seed=0, config_kwargs=config)
    except _Captured:
        pass
    finally:
        posterior.fit = real_fit
    return held, valid, test, time.perf_counter() - t0


def fit_with(tol: float, held: dict, valid, test) -> dict:
    from forcegp.gp import posterior
    from forcegp.training import evaluation

    with common.EvidenceCalls(tol) as counter:
        t0 = time.perf_counter()
        model = posterior.fit(*held["args"], **{**held["kwargs"], "progress": None})
        fit_s = time.perf_counter() - t0
    model, calibration = evaluation.calibrate(model, valid)
    h = model.hyper
    finite = [v for _, v in counter.calls if np.isfinite(v)]
    return {
        "tol_nats": tol,
        "fit_s": fit_s,
        "evaluations": len(counter.calls),
        "evaluations_s": counter.seconds(),
        "nll_per_obs": min(finite) if finite else None,
        "noise_energy": float(h.noise_energy),
        "noise_force": float(h.noise_force),
        "kappa": calibration["kappa"],
        **test_metrics(model, test),
    }


COLUMNS = [
    ("molecule", "molecule"),
    ("tol_nats", "tolerance (nats)"),
    ("evaluations", "evaluations"),
    ("evaluations_s", "evaluations (s)"),
    ("fit_s", "whole fit (s)"),
    ("nll_per_obs", "NLL per observation"),
    ("nll_total_above_best", "total NLL above the best (nats)"),
    ("noise_force", "force noise"),
    ("forces_mae_mev", "force MAE (meV/Å)"),
    ("energy_mae_mev", "energy MAE (meV)"),
    ("forces_coverage_95", "force coverage 95%"),
]


def whole(args, n: int, info: dict) -> int:
    rows, started = [], time.perf_counter()
    for molecule in args.molecules:
        for tol in args.tolerances:
            spec = {"molecule": molecule, "n": n, "tol": tol, "quick": args.quick}
            row = common.run_worker(Path(__file__).resolve(), spec)
            print({k: v for k, v in row.items() if k != "error"}, flush=True)
            rows.append(row)
    intro = (
        f"n = {n} training structures (95% fitted, 5% for the calibration), each tolerance "
        "in its own process; tolerance 0: scipy's default."
    )
    report(args, info, started, rows, "stopping rule, whole train_model", intro, WHOLE_COLUMNS)
    return 1 if any("error" in r for r in rows) else 0


def report(args, info, started, rows, title, intro, columns) -> None:
    """Print and write the results table (name: --name, else evidence_tolerance[_whole])."""
    info["load_average_end"] = common.load_average()
    total = time.perf_counter() - started
    quick = ["**--quick: tiny model (smoke test), numbers are not meaningful.**", ""]
    md = "\n".join(
        [
            f"# Evidence refinement: {title} (rMD17 split 01)",
            "",
            common.machine_markdown(info),
            "",
            *(quick if args.quick else []),
            intro,
            "",
            common.md_table(rows, columns),
            "",
            f"Total {total:.0f} s; load average at the end {info['load_average_end']}.",
        ]
    )
    print(md)
    payload = {"benchmark": "evidence_tolerance", "argv": sys.argv[1:], "whole": args.whole}
    payload |= {"quick": args.quick, "machine": info, "rows": rows, "total_seconds": total}
    name = args.name or ("evidence_tolerance_whole" if args.whole else "evidence_tolerance")
    common.write_results(name, payload, md, common.results_dir(args))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(p)
    p.add_argument("--molecules", nargs="+", default=list(MOLECULES))
    p.add_argument("--n", type=int, default=None, help="training structures (1000)")
    p.add_argument(
        "--tolerances", nargs="+", type=float, default=list(TOLERANCES), help="nats; 0: scipy's"
    )
    p.add_argument("--whole", action="store_true", help="whole train_model per tolerance")
    p.add_argument("--name", default=None, help="results name (evidence_tolerance[_whole])")
    args = p.parse_args(argv)
    if args.worker:
        common.emit_result(worker_whole(json.loads(args.worker)))
        return 0
    common.enable_x64()
    if args.quick:
        common.use_quick_compile_cache()
    n = args.n or (60 if args.quick else 1000)
    info = common.machine_info()
    if args.whole:
        return whole(args, n, info)
    from forcegp.gp import posterior

    rows, started = [], time.perf_counter()
    for molecule in args.molecules:
        held, valid, test, train_s = trained_before_fit(molecule, n, args.quick)
        model, x = held["args"][0], held["args"][1]
        n_obs = x.shape[0] * (1 + x.shape[1])
        mol_rows = []
        k = held["kwargs"].get("chunk", 64)  # compile the chunk's accumulation and the solve
        y, g = held["args"][2:]
        posterior.fit(model, x[:k], y[:k], g[:k], chunk=k, refine=False)
        for tol in args.tolerances:
            row = {"molecule": molecule, "n": n, "K": model.config.n_basis, "train_s": train_s}
            row["n_test"] = test.n_frames
            row |= fit_with(tol, held, valid, test)
            print(row, flush=True)
            mol_rows.append(row)
        best = min(r["nll_per_obs"] for r in mol_rows if r["nll_per_obs"] is not None)
        for r in mol_rows:
            if r["nll_per_obs"] is not None:
                r["nll_total_above_best"] = (r["nll_per_obs"] - best) * n_obs
        rows += mol_rows
    intro = (
        f"n = {n} training structures (95% fitted, 5% for the calibration), "
        f"{rows[0]['n_test']} test structures; tolerance 0: scipy's default. "
        "Each fit runs after a compiled warm-up on one chunk."
    )
    report(args, info, started, rows, "stopping rule against accuracy", intro, COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
