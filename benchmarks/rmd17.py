"""rMD17 benchmark: train on the official train split, test on the official test split.

    python benchmarks/rmd17.py                       # all ten molecules, split 01, defaults
    python benchmarks/rmd17.py --splits 01 02 03 04 05 --molecules ethanol aspirin
    python benchmarks/rmd17.py --quick               # smoke run (tiny model, 100 structures)
    python benchmarks/rmd17.py --molecules ethanol --config explicit_cubic=26 explicit_dim=26 \
        --out benchmarks/results/rmd17_variants.jsonl   # a non-default model
    python benchmarks/rmd17.py --molecules malonaldehyde --settings batch_size=64 \
        --out benchmarks/results/rmd17_variants.jsonl   # non-default training settings

Each (molecule, split) trains in a fresh subprocess-free call of forcegp.train_model with
the library's default settings (override with --epochs, --inducing), tests on the 1000 test
structures of the same split, and appends a JSON line to benchmarks/results/rmd17.jsonl. The
markdown table (mean +- std over splits; the MLP width, cubic block and epochs the newest run
chose) is printed and written to benchmarks/results/rmd17.md beside the published force MAE of
MACE, NequIP, FCHL and GAP (MACE paper, NeurIPS 2022, Table 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FORCEGP_PUBLISHED", ROOT.parent / "shared" / "data" / "published"))
RESULTS = ROOT / "benchmarks" / "results"

# Force MAE, meV/Å, 1000 training structures (MACE, NequIP, FCHL, GAP).
PUBLISHED = {
    "aspirin": (6.6, 8.2, 20.9, 44.9),
    "azobenzene": (3.0, 2.9, 10.8, 24.5),
    "benzene": (0.3, 0.3, 2.6, 6.0),
    "ethanol": (2.1, 2.8, 6.2, 18.1),
    "malonaldehyde": (4.1, 5.1, 10.3, 26.4),
    "naphthalene": (1.6, 1.3, 6.5, 16.5),
    "paracetamol": (4.8, 5.9, 12.3, 28.9),
    "salicylic": (3.1, 4.0, 9.5, 24.7),
    "toluene": (1.5, 1.6, 8.8, 17.8),
    "uracil": (2.1, 3.1, 4.2, 17.6),
}


def run_one(molecule: str, split: str, args) -> dict:
    from common import machine_info

    from forcegp.data import read_dataset
    from forcegp.training.evaluation import evaluate
    from forcegp.training.pipeline import train_model
    from forcegp.training.settings import TrainSettings

    # Commit, load, GEMM rate: this machine's speed varies, so each row says what it ran on.
    machine = {
        k: v
        for k, v in machine_info().items()
        if k in ("git_commit", "cpu_model", "load_average_1_5_15min", "gemm_float64_gflops")
    }
    train = read_dataset([DATA / f"rmd17_{molecule}_train_{split}.npz"], energy_unit="kcal/mol")
    test = read_dataset([DATA / f"rmd17_{molecule}_test_{split}.npz"], energy_unit="kcal/mol")
    if args.n_train:
        train = train.subset(list(range(args.n_train)))
    overrides = {k: v for k, v in (("epochs", args.epochs),) if v is not None}
    settings = TrainSettings(**{**overrides, **parse_pairs(args.settings)})
    config = {"n_inducing": 16, "n_features": 4, "width": 8, "explicit_dim": 6} if args.quick else {}
    if args.inducing:
        config["n_inducing"] = args.inducing
    config.update(parse_pairs(args.config))
    started = time.perf_counter()
    model, meta = train_model(train, config_kwargs=config, settings=settings, seed=args.seed)
    seconds = time.perf_counter() - started
    m = evaluate(model, test)
    calibration = meta["training"].get("calibration", {})
    return {
        "molecule": molecule,
        "split": split,
        "variant": variant_label(args),
        "n_train": train.n_frames,
        "n_test": test.n_frames,
        "energy_mae_mev": 1000 * m["energy_mae"],
        "forces_mae_mev_per_ang": 1000 * m["forces_mae"],
        "forces_rmse_mev_per_ang": 1000 * m["forces_rmse"],
        "forces_coverage_95": m["forces_coverage_95"],
        "energy_coverage_95": m["energy_coverage_95"],
        "forces_coverage_68": m.get("forces_coverage_68"),
        "forces_zms": m.get("forces_zms"),
        "energy_zms": m.get("energy_zms"),
        "spearman_std_error": m.get("forces_std_error_spearman"),
        "train_seconds": seconds,
        # Inside train_seconds: DSoftKI's epochs, and the posterior fit with its refinement.
        "epochs_seconds": meta["training"]["train_seconds"],
        "fit_seconds": meta["training"]["fit_seconds"],
        # The input-dependent noise's gamma and the seconds its choice took (0 / None: off).
        "misfit_gamma": calibration.get("misfit_gamma", 0.0),
        "misfit_seconds": calibration.get("misfit_seconds"),
        # The held-out NLL of each candidate gamma, refitted (what chose misfit_gamma).
        "misfit_valid_nll": calibration.get("misfit_valid_nll"),
        "config": meta["training"]["config"],
        "settings": meta["training"]["settings"],
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "jax": jax.__version__, "device": str(jax.devices()[0]), **machine},
    }  # fmt: skip


def parse_pairs(items: list[str]) -> dict:
    """KEY=VALUE strings to a dict; numbers and JSON lists/objects are decoded."""
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        out[key] = json.loads(value) if value[:1].isdigit() or value[:1] in "-[{" else value
    return out


def variant_label(args) -> str:
    """What this run changed from the defaults ('default' for none)."""
    parts = [*args.config, *args.settings]
    parts += [f"{k}={v}" for k, v in (("epochs", args.epochs), ("n_inducing", args.inducing)) if v]
    return " ".join(parts) or "default"


def _name(row: dict) -> str:
    variant = row.get("variant", "default")
    return row["molecule"] if variant == "default" else f"{row['molecule']} ({variant})"


def _model_key(row: dict) -> str:
    """The model a row measured: its config (less the geometry-derived n_local) and settings."""
    config = {k: v for k, v in row.get("config", {}).items() if k != "n_local"}
    return json.dumps([config, row.get("settings", {})], sort_keys=True)


def newest_model_rows(rows: list[dict]) -> list[dict]:
    """Per table name, the newest row of each split among the rows that measured the same model
    as the name's newest row: when a default changes, the old default's rows of other splits
    drop out instead of being averaged with the new ones."""
    latest = {_name(r): _model_key(r) for r in rows}
    newest = {(_name(r), r["split"]): r for r in rows if _model_key(r) == latest[_name(r)]}
    return list(newest.values())


def sizes(row: dict) -> str:
    """The sizes the run chose (the 'auto' ones resolve per molecule): MLP width, cubic block
    and epochs."""
    config, settings = row.get("config", {}), row.get("settings", {})
    values = (config.get("width"), config.get("explicit_cubic"), settings.get("epochs"))
    return " / ".join("–" if v is None else str(v) for v in values)


def table(rows: list[dict]) -> str:
    import numpy as np

    head = (
        "| molecule | splits | E MAE (meV) | F MAE (meV/Å) | F coverage 95 | Spearman | "
        "train time (s) | width / cubic / epochs | MACE | NequIP | FCHL | GAP |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name in sorted({_name(r) for r in rows}):
        rs = [r for r in rows if _name(r) == name]
        mol = rs[0]["molecule"]

        def ms(key, fmt, rs=rs):
            v = np.array([r[key] for r in rs], dtype=float)
            return fmt.format(v.mean()) + (f" ± {fmt.format(v.std())}" if len(v) > 1 else "")

        pub = PUBLISHED.get(mol, ("–",) * 4)
        lines.append(
            f"| {name} | {len(rs)} | {ms('energy_mae_mev', '{:.1f}')} | "
            f"{ms('forces_mae_mev_per_ang', '{:.1f}')} | {ms('forces_coverage_95', '{:.3f}')} | "
            f"{ms('spearman_std_error', '{:.2f}')} | {ms('train_seconds', '{:.0f}')} | "
            f"{sizes(rs[-1])} | " + " | ".join(str(p) for p in pub) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=list(PUBLISHED))
    ap.add_argument("--splits", nargs="+", default=["01"])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--inducing", type=int, default=None)
    ap.add_argument(
        "--config", nargs="*", default=[], metavar="KEY=VALUE",
        help="other Config fields, e.g. explicit_cubic=26 explicit_dim=26",
    )  # fmt: skip
    ap.add_argument(
        "--settings", nargs="*", default=[], metavar="KEY=VALUE",
        help="other TrainSettings fields, e.g. batch_size=64 lr=0.01",
    )  # fmt: skip
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny model, 100 structures, 1 epoch")
    ap.add_argument("--out", default=str(RESULTS / "rmd17.jsonl"))
    ap.add_argument(
        "--table-only", action="store_true",
        help="rebuild the .md table from --out's rows (per molecule, the newest row of each split "
        "that measured the same model as the molecule's newest row)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.table_only:
        rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line]
        md = table(newest_model_rows(rows))
        print(md)
        Path(args.out).with_suffix(".md").write_text(md + "\n")
        return
    jax.config.update("jax_enable_x64", True)
    if args.quick:
        args.n_train, args.epochs = args.n_train or 100, args.epochs or 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for mol in args.molecules:
        for split in args.splits:
            if not (DATA / f"rmd17_{mol}_train_{split}.npz").exists():
                print(f"skip {mol} split {split}: not in {DATA}")
                continue
            row = run_one(mol, split, args)
            rows.append(row)
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"{mol} {split}: F MAE {row['forces_mae_mev_per_ang']:.1f} meV/Å, "
                f"E MAE {row['energy_mae_mev']:.1f} meV, coverage {row['forces_coverage_95']:.3f}, "
                f"{row['train_seconds']:.0f} s",
                flush=True,
            )
    print(table(rows))
    # The .md table covers every row of --out (as --table-only builds it), not this run's alone.
    every = [json.loads(line) for line in out.read_text().splitlines() if line]
    out.with_suffix(".md").write_text(table(newest_model_rows(every)) + "\n")


if __name__ == "__main__":
    main()
