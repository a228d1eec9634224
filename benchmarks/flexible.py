"""Flexible molecules: train on one GFN2-xTB trajectory, test on an independent one.

    python benchmarks/flexible.py                                  # ala3 and dha, both descriptors
    python benchmarks/flexible.py --molecules ala3 --variants atomic
    python benchmarks/flexible.py --variants atomic --flags "--env-dim 64"   # a non-default model
    python benchmarks/flexible.py --quick                          # smoke run (tiny, 40 frames)

Data: data/xtb/<molecule>_train.npz and _test.npz (benchmarks/xtb_md.py: Langevin MD at 500 K,
two trajectories with different seeds). Each variant is the command line a user would type,
``forcegp train TRAIN --descriptor <variant> [flags]`` then ``forcegp test MODEL TEST --json``,
run as subprocesses one after the other (wall time and peak memory of the training measured).
One JSON line per run goes to benchmarks/results/flexible.jsonl with the commands, the commit
and the machine; benchmarks/results/flexible.md tables every line of that file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import common

MOLECULES = ("ala3", "dha")
VARIANTS = ("inverse-distance", "atomic")
QUICK_FLAGS = ["--inducing", "16", "--features", "4", "--width", "8", "--depth", "1",
               "--explicit-dim", "4", "--env-dim", "4", "--epochs", "1"]  # fmt: skip


def quick_data(molecule: str, part: str, folder: Path) -> Path:
    """The first 40 frames of a data file (the smoke run)."""
    import numpy as np

    src = np.load(common.ROOT / "data" / "xtb" / f"{molecule}_{part}.npz")
    path = folder / f"{molecule}_{part}.npz"
    np.savez(path, **{k: (src[k][:40] if src[k].ndim and len(src[k]) > 40 and k != "z" else src[k])
                      for k in src.files})  # fmt: skip
    return path


def run_one(molecule: str, variant: str, flags: list[str], work: Path, quick: bool) -> dict:
    data = common.ROOT / "data" / "xtb"
    train, test = data / f"{molecule}_train.npz", data / f"{molecule}_test.npz"
    if quick:
        train, test = quick_data(molecule, "train", work), quick_data(molecule, "test", work)
    model, metrics = work / f"{molecule}_{variant}.fgp", work / f"{molecule}_{variant}.json"
    forcegp = [sys.executable, "-m", "forcegp"]
    train_cmd = [*forcegp, "train", train, "--descriptor", variant, "-o", model, *flags]
    trained = common.run_measured(train_cmd)
    row = {"molecule": molecule, "variant": variant, "flags": " ".join(flags),
           "train_command": " ".join(shlex.quote(str(c)) for c in train_cmd[2:]),
           "train_s": round(trained["wall_s"], 1), "train_peak_gib": trained["peak_rss_bytes"] / 2**30,
           "rc": trained["rc"]}  # fmt: skip
    if trained["rc"] != 0:
        row["error"] = (trained["stderr"] or trained["stdout"]).strip().splitlines()[-1:]
        return row
    tested = common.run_measured([*forcegp, "test", model, test, "--json", metrics])
    if tested["rc"] != 0:
        row["error"] = tested["stderr"].strip().splitlines()[-1:]
        return row
    m = json.loads(metrics.read_text())
    # Whether the model has the input-dependent noise (0: constant noise; skipped for memory
    # where its pass would not fit): it shapes the calibration.
    info = common.run_measured([*forcegp, "info", model, "--json"])
    summary = json.loads(info["stdout"]) if info["rc"] == 0 else {}
    row.update(common.noise_record(summary.get("training", {}).get("calibration")))
    row.update(
        {
            "forces_mae_meV": 1e3 * m["forces_mae"],
            "forces_mae_percent": 100 * m["forces_mae"] / m["forces_mean_abs"],
            "energy_mae_meV": 1e3 * m["energy_mae"],
            "forces_coverage_95": m["forces_coverage_95"],
            "energy_coverage_95": m["energy_coverage_95"],
            "forces_zms": m["forces_zms"],
            "energy_zms": m["energy_zms"],
            "forces_binned_worst_ratio": m["forces_binned_worst_ratio"],
            "spearman": m["forces_std_error_spearman"],
        }
    )
    return row


COLUMNS = [("molecule", "molecule"), ("variant", "descriptor"), ("flags", "flags"),
           ("forces_mae_meV", "force MAE (meV/Å)"), ("forces_mae_percent", "% of mean abs F"),
           ("energy_mae_meV", "energy MAE (meV)"), ("forces_coverage_95", "force cov. 95%"),
           ("energy_coverage_95", "energy cov. 95%"), ("forces_zms", "force ZMS"),
           ("train_s", "train (s)"), ("train_peak_gib", "peak (GiB)"), ("commit", "commit"),
           ("cpu", "machine")]  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecules", nargs="+", default=list(MOLECULES), choices=MOLECULES)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--flags", default="", help="extra forcegp train flags, one string")
    common.add_common_args(ap)
    args = ap.parse_args(argv)
    out, flags, machine = common.cli_run_setup(args, QUICK_FLAGS)
    lines = out / "flexible.jsonl"
    with tempfile.TemporaryDirectory() as work:
        for molecule in args.molecules:
            for variant in args.variants:
                row = run_one(molecule, variant, flags, Path(work), args.quick)
                rows = common.append_record(lines, row, machine, args.quick)
    table = common.md_table(rows, COLUMNS)
    common.write_results("flexible", {"quick": args.quick, "machine": machine, "rows": rows},
                         "# Flexible molecules (GFN2-xTB, independent test trajectory)\n\n" + table,
                         out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
