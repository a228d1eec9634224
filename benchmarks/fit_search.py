"""What the posterior fit's evidence search sets, after the explicit block's prefit.

    python benchmarks/fit_search.py      # ethanol, atomic model with the body-ordered block
    python benchmarks/fit_search.py --molecules aspirin
    python benchmarks/fit_search.py --searches "DSoftKI + noise, one start" \
        "DSoftKI + noise, one start, Newton" --name fit_search_newton
    python benchmarks/fit_search.py --quick                       # smoke test (tiny model)

train_model (forcegp.training.pipeline) first fits the explicit block alone: its block scales
and both noise levels by the exact evidence of all training data (stagewise.explicit_prefit);
then trains DSoftKI on the residual; then the posterior fit searches block scales and noise
levels again by the exact evidence of the joint model, one K x K Cholesky factorisation and
inverse per evaluation. This script runs train_model on the first --n structures of rMD17
train_01 (5% held out for the calibration, seed 0) up to that fit, then fits from the same
trained model once per search:

- "all groups": every block's scale and the noise levels (evidence.maximise's two starts);
- "DSoftKI + noise": DSoftKI's scale and the noise levels, the explicit block keeping the
  prefit's scales (two starts);
- "DSoftKI + noise, one start": the same from the trained noise levels only (the library's
  search for a model with the body-ordered block, stagewise.fit_search);
- "DSoftKI + noise, one start, Newton": the same search by Newton's method on the exact
  Hessian instead of L-BFGS (evidence.maximise's method).

The time of training before the fit and the evaluations and seconds of the prefit's evidence
search are reported once per molecule. Each fit is followed by the amplitude calibration on
the held-out structures (no input-dependent noise) and tested on the 1000 structures of
test_01: the fit's time, the evaluations and NLL per observation of each search, force and
energy MAE, force coverage and mean squared z-score.
Results: benchmarks/results/fit_search.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import evidence_tolerance  # noqa: E402

CONFIG = ["descriptor=atomic", "env_body4=7", "env_radial=6"]

#: name -> posterior.fit's search (evidence.maximise's search_groups, restart and method)
SEARCHES = {
    "all groups": {},
    "DSoftKI + noise": {"search_groups": (0,)},
    "DSoftKI + noise, one start": {"search_groups": (0,), "restart": False},
    "DSoftKI + noise, one start, Newton": {"search_groups": (0,), "restart": False, "method": "newton"},
}

COLUMNS = [
    ("molecule", "molecule"),
    ("before_fit_s", "training before the fit (s)"),
    ("prefit_evaluations", "prefit evaluations"),
    ("prefit_search_s", "prefit search (s)"),
    ("K", "K"),
    ("search", "fit searches"),
    ("fit_s", "whole fit (s)"),
    ("evaluations", "evaluations per start"),
    ("search_seconds", "seconds per start"),
    ("nll_per_obs", "NLL per observation"),
    ("noise_force", "force noise (std. units)"),
    ("forces_mae_mev", "test F MAE (meV/Å)"),
    ("energy_mae_mev", "test E MAE (meV)"),
    ("forces_coverage_95", "F coverage 95%"),
    ("forces_zms", "F mean sq. z"),
]


def fit_with(name: str, held: dict, valid, test) -> dict:
    """The fit from train_model's state with the search `name`, calibrated and tested."""
    from forcegp.gp import posterior
    from forcegp.training import evaluation

    with common.EvidenceCalls() as counted:
        t0 = time.perf_counter()
        kwargs = {**held["kwargs"], "progress": None, "search": SEARCHES[name]}
        model = posterior.fit(*held["args"], **kwargs)
        fit_s = time.perf_counter() - t0
    model, calibration = evaluation.calibrate(model, valid)
    metrics = evaluation.evaluate(model, test)
    return {
        "search": name,
        "K": model.config.n_basis,
        "fit_s": fit_s,
        **counted.per_search(),
        "nll_per_obs": min(v for _, v, _ in counted.searches),
        "noise_force": float(model.hyper.noise_force),
        "kappa": calibration["kappa"],
        "n_test": test.n_frames,
        "forces_mae_mev": 1000 * metrics["forces_mae"],
        "energy_mae_mev": 1000 * metrics["energy_mae"],
        "forces_coverage_95": metrics["forces_coverage_95"],
        "forces_zms": metrics["forces_zms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--molecules", nargs="+", default=["ethanol"])
    ap.add_argument("--n", type=int, default=1000, help="training structures (first of train_01)")
    ap.add_argument("--config", nargs="*", default=CONFIG, help="KEY=VALUE Config settings")
    ap.add_argument("--searches", nargs="+", default=list(SEARCHES), choices=list(SEARCHES))
    ap.add_argument("--name", default="fit_search")
    common.add_common_args(ap)
    args = ap.parse_args()
    common.enable_x64()
    if args.quick:
        common.use_quick_compile_cache()
    # --quick: the tiny global model of the other smoke tests (its compilations are cached)
    config = common.QUICK_CONFIG if args.quick else common.config_options(args.config)
    n = 60 if args.quick else args.n
    machine = common.machine_info()
    rows = []
    for molecule in args.molecules:
        with common.EvidenceCalls() as prefit:  # the only evidence search before the fit
            held, valid, test, before = evidence_tolerance.trained_before_fit(
                molecule, n, args.quick, config
            )
        done = {"molecule": molecule, "n": n, "before_fit_s": before,
                "prefit_evaluations": len(prefit.calls),
                "prefit_search_s": prefit.seconds()}  # fmt: skip
        for name in args.searches:
            rows.append(done | fit_with(name, held, valid, test))
            print(rows[-1], flush=True)
    intro = (f"config {config}; {n} training structures (95% fitted, 5% for the calibration); "
             "every fit from the same trained model.")  # fmt: skip
    title = "The posterior fit's evidence search after the explicit prefit"
    common.write_table(args.name, args, machine, title, intro, rows, COLUMNS)


if __name__ == "__main__":
    main()
