"""Ablation of the explicit block alone (exact Bayesian linear model with derivative observations).

    python benchmarks/explicit_ablation.py                       # ethanol and aspirin, split 01
    python benchmarks/explicit_ablation.py --molecules uracil

For each variant the model is the explicit block with a one-point DSoftKI block (n_inducing=1,
no MLP, so it adds essentially nothing): its two scales and the noise levels are set by the
exact full-data marginal likelihood (forcegp.stagewise.explicit_prefit), the posterior is the
exact one (posterior.fit), and the force MAE is measured on the 1000 official test structures.
It shows what each group of terms of the 'polynomial' block contributes. Writes
benchmarks/results/explicit_ablation.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FORCEGP_PUBLISHED", ROOT.parent / "shared" / "data" / "published"))
KCAL = 0.0433641043  # eV per kcal/mol

VARIANTS = {
    "PCA-36 linear + quadratic (old default)": dict(explicit="quadratic", n_permutations=1),
    "+ per-pair powers 1-3": dict(local_cutoff=0.0, explicit_cubic=0, n_permutations=1),
    "+ local products (< 4 Å)": dict(explicit_cubic=0, n_permutations=1),
    "+ PCA-16 cubic (new default)": dict(n_permutations=1),
    "+ averaged over the molecular graph's permutations": dict(n_permutations=24),
}


def run(molecule: str, overrides: dict) -> tuple[float, float, int, float]:
    from forcegp.gp import posterior
    from forcegp.gp.config import Config
    from forcegp.training import evaluation, initialise, stagewise

    tr = np.load(DATA / f"rmd17_{molecule}_train_01.npz")
    te = np.load(DATA / f"rmd17_{molecule}_test_01.npz")
    r, e, f, z = tr["coords"], tr["energies"] * KCAL, tr["forces"] * KCAL, tr["nuclear_charges"]
    config = Config(n_atoms=len(z), n_inducing=1, n_features=0, **overrides)
    started = time.perf_counter()
    model = initialise.initialize(config, z, r, e, f, key=jax.random.key(0))
    y, g = initialise.standardise_targets(e, f, model.stats.energy_mean, model.stats.energy_scale)
    x = r.reshape(len(r), -1)
    model, *_ = stagewise.explicit_prefit(model, x, y, g)
    model = posterior.fit(model, x, y, g, refine=False)
    seconds = time.perf_counter() - started
    out = evaluation.predict(model, te["coords"], with_std=False)
    f_mae = 1000 * np.mean(np.abs(out["forces"] - te["forces"] * KCAL))
    e_mae = 1000 * np.mean(np.abs(out["energy"] - te["energies"] * KCAL))
    return f_mae, e_mae, model.config.n_explicit, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"])
    ap.add_argument("--variants", nargs="+", type=int, help="indices into the variant list (all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "explicit_ablation.md"))
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    lines = [
        "# Explicit block alone, rMD17 split 01 (1000 train / 1000 test)",
        "",
        "| molecule | explicit block | terms | F MAE (meV/Å) | E MAE (meV) | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for mol in args.molecules:
        for k, (name, overrides) in enumerate(VARIANTS.items()):
            if args.variants and k not in args.variants:
                continue
            f_mae, e_mae, terms, seconds = run(mol, overrides)
            lines.append(f"| {mol} | {name} | {terms} | {f_mae:.1f} | {e_mae:.1f} | {seconds:.0f} |")
            print(lines[-1], flush=True)
    md = "\n".join(lines)
    Path(args.out).write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
