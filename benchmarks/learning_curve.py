"""Learning curves on rMD17: force and energy MAE against the number of training structures.

    python benchmarks/learning_curve.py                      # ethanol, aspirin; 50 ... 1000
    python benchmarks/learning_curve.py --molecules uracil --sizes 100 1000
    python benchmarks/learning_curve.py --config n_permutations=1    # not symmetrised

Each point trains forcegp.train_model (default settings) on the FIRST n structures of
the official train_01 split and tests on all 1000 structures of test_01 (benchmarks/rmd17.py's
run_one, so the rows are the same JSON records). Appends them to
benchmarks/results/learning_curve.jsonl and writes learning_curve.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rmd17  # noqa: E402

RESULTS = rmd17.RESULTS


def table(rows: list[dict]) -> str:
    lines = [
        "| molecule | n train | F MAE (meV/Å) | E MAE (meV) | F coverage 95 | train time (s) "
        "| GAP at 1000 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["molecule"], r["n_train"])):
        gap = rmd17.PUBLISHED.get(r["molecule"], ("–",) * 4)[3]
        lines.append(
            f"| {r['molecule']} | {r['n_train']} | {r['forces_mae_mev_per_ang']:.1f} | "
            f"{r['energy_mae_mev']:.1f} | {r['forces_coverage_95']:.3f} | "
            f"{r['train_seconds']:.0f} | {gap} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[50, 100, 200, 500, 1000])
    ap.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--settings", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny model, 30 and 60 structures, 1 epoch")
    ap.add_argument("--out", default=str(RESULTS / "learning_curve.jsonl"))
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    if args.quick:
        args.sizes, args.epochs, args.molecules = [30, 60], 1, args.molecules[:1]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for mol in args.molecules:
        for n in args.sizes:
            run_args = argparse.Namespace(
                n_train=n,
                epochs=args.epochs,
                quick=args.quick,
                inducing=None,
                config=args.config,
                settings=args.settings,
                seed=0,
            )
            row = rmd17.run_one(mol, "01", run_args)
            rows.append(row)
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(table([row]).splitlines()[-1], flush=True)
    md = table(rows)
    print(md)
    out.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
