"""The evidence search (forcegp.gp.evidence.maximise) from one start against two, by L-BFGS
or by Newton's method.

    python benchmarks/evidence_starts.py                          # atomic ethanol block, 500
    python benchmarks/evidence_starts.py --n 1000 --config descriptor=atomic pair_powers=3
    python benchmarks/evidence_starts.py --n 1000 --config descriptor=atomic env_body4=7 \
        env_radial=6 --searches two newton-one newton-two --name evidence_newton
    python benchmarks/evidence_starts.py --n 950 --config descriptor=atomic env_body4=7 \
        env_radial=6 env_body4_lmax=3 pair_bound=4 --searches newton-one newton-fisher \
        --name evidence_saddle
    python benchmarks/evidence_starts.py --quick                  # smoke test (tiny model)

The model is the explicit block alone (a one-point DSoftKI block without MLP, as in
explicit_ablation.py) of the --config model (default: the atomic descriptor without pair
powers) on the first --n structures of rMD17 train_01, at its initial hyperparameters. Its
statistics are accumulated once; then the block scales and both noise levels are searched by
the exact marginal likelihood of all --n structures, once per --searches entry: L-BFGS or
Newton's method (evidence.maximise's method), from the initial noise only (restart=False) or
also from ten times smaller noise levels; ``newton-fisher`` replaces Newton's saddle-free step
(evidence.saddle_free) by Fisher scoring where the Hessian is not positive definite. Reported
per search: the NLL per observation it ends at, the block multipliers, the noise levels, its
time, and the exact posterior's force and energy MAE on the 1000 structures of test_01 (100
with --quick). Results:
benchmarks/results/evidence_starts.json and .md (--name).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

KCAL = common.KCAL_MOL
QUICK = {"env_dim": 6, "env_radial": 3, "env_lmax": 2}


#: key: (label, restart, method) of evidence.maximise.
SEARCHES = {
    "one": ("L-BFGS, one (initial noise)", False, "lbfgs"),
    "two": ("L-BFGS, two", True, "lbfgs"),
    "newton-one": ("Newton, one", False, "newton"),
    "newton-two": ("Newton, two", True, "newton"),
    "newton-fisher": ("Newton, one, Fisher-scoring fallback", False, "newton"),
}


def fisher_fallback(g, h, info):
    """A step rule to compare with evidence.saddle_free: the damped Newton step (H + lam
    diag F)^-1 g where that matrix is positive definite, Fisher scoring's (F + lam diag F)^-1 g
    where it is not (with no floor on lam)."""
    import scipy.linalg

    damp = np.diag(np.diag(info))

    def step(lam):
        try:
            return -scipy.linalg.cho_solve(scipy.linalg.cho_factor(h + lam * damp), g)
        except np.linalg.LinAlgError:
            eps = 1e-12 * np.max(damp) * np.eye(len(g))
            return -np.linalg.solve(info + lam * damp + eps, g)

    return step


#: Searches that replace _newton's step rule (its keywords), for comparison.
RULES = {"newton-fisher": {"direction": fisher_fallback, "lam_floor": 0.0}}


def run(molecule: str, n: int, overrides: dict, quick: bool, searches=("one", "two")) -> list[dict]:
    """One row per search in `searches` (keys of SEARCHES: L-BFGS or Newton's method, from the
    initial noise only or from two starts) on one accumulation of the --config model's
    statistics."""
    import equinox as eqx
    import jax

    from forcegp.gp import evidence, posterior
    from forcegp.gp.config import validate
    from forcegp.training import evaluation, initialise

    tr = np.load(common.rmd17_path(molecule, "train"))
    te = np.load(common.rmd17_path(molecule, "test"))
    r, e, f = tr["coords"][:n], tr["energies"][:n] * KCAL, tr["forces"][:n] * KCAL
    z = tr["nuclear_charges"]
    n_test = 100 if quick else len(te["coords"])
    # Checked as the library checks user options: a bad combination is named, not an XLA error.
    config = validate(dict(n_atoms=len(z), n_species=len(set(z.tolist())), n_inducing=1,
                           n_features=0, **overrides), resolved=False)  # fmt: skip
    model = initialise.initialize(config, z, r, e, f, key=jax.random.key(0))
    y, g = initialise.standardise_targets(e, f, model.stats.energy_mean, model.stats.energy_scale)
    t0 = time.perf_counter()
    suff = posterior.accumulate(model, r.reshape(n, -1), y, g)
    accumulate_s = time.perf_counter() - t0
    groups = posterior.basis_groups(model.config)
    st = evidence.Statistics(suff)
    h = model.hyper
    rows = []
    for key in searches:
        starts, restart, method = SEARCHES[key]
        t0 = time.perf_counter()
        real_newton = evidence._newton
        evidence._newton = functools.partial(real_newton, **RULES.get(key, {}))
        try:
            with common.EvidenceCalls() as counted:
                mult, ne, nf = evidence.maximise(suff, groups, float(h.noise_energy),
                                                 float(h.noise_force), restart=restart,
                                                 method=method)  # fmt: skip
        finally:
            evidence._newton = real_newton
        search_s = time.perf_counter() - t0
        params = np.log(np.concatenate([mult, [ne, nf]]))
        fitted = posterior.with_multipliers(model, mult, ne, nf)
        scaled = posterior.scaled_statistics(suff, np.asarray(mult)[groups])
        post = posterior.solve(scaled, fitted.hyper.noise_energy, fitted.hyper.noise_force)
        fitted = eqx.tree_at(lambda m: m.posterior, fitted, post, is_leaf=lambda v: v is None)
        out = evaluation.predict(fitted, te["coords"][:n_test], with_std=False)
        f_err = out["forces"] - te["forces"][:n_test] * KCAL
        e_err = out["energy"] - te["energies"][:n_test] * KCAL
        rows.append({
            "molecule": molecule, "n": n, "config": overrides, "K": int(model.config.n_basis),
            "starts": starts, "nll_per_obs": float(evidence.nll_and_grad(params, st, groups)[0]),
            "multipliers": [float(v) for v in mult], "noise_energy": ne, "noise_force": nf,
            "accumulate_s": accumulate_s, "search_s": search_s, "n_test": n_test,
            **counted.per_search(),
            "forces_mae_mev": 1000 * float(np.mean(np.abs(f_err))),
            "energy_mae_mev": 1000 * float(np.mean(np.abs(e_err))),
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


#: The columns of run's rows after the ones that name the row (here and in env_sweep.py).
RESULT_COLUMNS = [
    ("nll_per_obs", "NLL per observation"),
    ("noise_force", "force noise (std. units)"),
    ("search_s", "search (s)"),
    ("evaluations", "evaluations per start"),
    ("search_ends", "NLL per obs. per start"),
    ("forces_mae_mev", "test F MAE (meV/Å)"),
    ("energy_mae_mev", "test E MAE (meV)"),
]
COLUMNS = [("molecule", "molecule"), ("n", "structures"), ("K", "K"), ("starts", "search, starts"),
           ("multipliers", "block multipliers"), *RESULT_COLUMNS]  # fmt: skip
BASE_CONFIG = ["descriptor=atomic", "pair_powers=0"]


def harness_args(description: str, name: str, searches: list[str]) -> argparse.ArgumentParser:
    """The options of run's harness (--molecules, --n, --name, --searches with its default
    ``searches``, and the common ones)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["ethanol"])
    ap.add_argument("--n", type=int, default=500, help="training structures (first of train_01)")
    ap.add_argument("--name", default=name)
    ap.add_argument("--searches", nargs="+", default=searches, choices=list(SEARCHES),
                    help="the evidence searches (keys of SEARCHES), one row each")  # fmt: skip
    common.add_common_args(ap)
    return ap


def structures(args) -> int:
    """Training structures of the harness: --n, or 60 with --quick."""
    return 60 if args.quick else args.n


def main() -> None:
    ap = harness_args(__doc__, "evidence_starts", ["one", "two"])
    ap.add_argument("--config", nargs="*", default=BASE_CONFIG)
    args = ap.parse_args()
    common.enable_x64()
    overrides = common.config_options(args.config) | (QUICK if args.quick else {})
    n = structures(args)
    machine = common.machine_info()
    rows = [row for m in args.molecules for row in run(m, n, overrides, args.quick, args.searches)]
    for row in rows:
        row["multipliers"] = " ".join(f"{v:.3g}" for v in row["multipliers"])
    intro = (f"config {overrides}; explicit block alone (a one-point DSoftKI block without MLP), "
             "at its initial hyperparameters.")  # fmt: skip
    title = "The evidence search from one start and from two"
    common.write_table(args.name, args, machine, title, intro, rows, COLUMNS)


if __name__ == "__main__":
    main()
