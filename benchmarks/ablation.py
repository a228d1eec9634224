"""Ablation runs on one rMD17 molecule (README accuracy section, 'How we got here').

    python benchmarks/ablation.py joint ethanol --epochs 30     # DSoftKI + explicit, joint batch MLL
    python benchmarks/ablation.py stagewise ethanol --epochs 40      # the default pipeline

'joint' trains all hyperparameters by the batch marginal likelihood of the full model and fits
without the exact refinement; 'stagewise' is what forcegp.train_model does.
Extra Config fields: --config "n_inducing=128,explicit='none'".
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import numpy as np

DATA = Path(
    os.environ.get("FORCEGP_PUBLISHED", Path(__file__).resolve().parents[2] / "shared/data/published")
)
KCAL = 0.0433641043


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["joint", "stagewise"])
    ap.add_argument("molecule")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--split", default="01")
    ap.add_argument("--config", default="")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    from forcegp.gp import params, posterior
    from forcegp.gp.config import Config
    from forcegp.training import evaluation, initialise, loop, stagewise
    from forcegp.training import settings as settings_mod

    tr = np.load(DATA / f"rmd17_{args.molecule}_train_{args.split}.npz")
    te = np.load(DATA / f"rmd17_{args.molecule}_test_{args.split}.npz")
    r, e, f, z = tr["coords"], tr["energies"] * KCAL, tr["forces"] * KCAL, tr["nuclear_charges"]
    cfg = Config(n_atoms=len(z), **eval(f"dict({args.config})"))
    st = settings_mod.TrainSettings(epochs=args.epochs)
    t0 = time.time()
    m = initialise.initialize(cfg, z, r, e, f, key=jax.random.key(0))
    y, g = initialise.standardise_targets(e, f, m.stats.energy_mean, m.stats.energy_scale)
    x = r.reshape(len(r), -1)
    if args.mode == "stagewise":
        m, ry, rg, _ = stagewise.explicit_prefit(m, x, y, g)
        m = initialise.match_prior_scale(m, x, rg)
        state = loop.run(stagewise.soft_only(m), x, ry, rg, st, key=jax.random.key(1))
    else:
        state = loop.run(m, x, y, g, st, key=jax.random.key(1))
    m = params.with_hyper(m, state.hyper)
    t1 = time.time()
    m = posterior.fit(m, x, y, g, refine=args.mode == "stagewise")
    t2 = time.time()
    out = evaluation.predict(m, te["coords"])
    ef = out["forces"] - te["forces"] * KCAL
    ee = out["energy"] - te["energies"] * KCAL
    cov = np.mean(np.abs(ef) <= 1.96 * out["forces_std"])
    print(
        f"| {args.mode} | {args.molecule} | {args.epochs} | {1000 * np.abs(ee).mean():.1f} | "
        f"{1000 * np.abs(ef).mean():.1f} | {cov:.3f} | {t1 - t0:.0f} s + fit {t2 - t1:.0f} s |"
    )


if __name__ == "__main__":
    main()
