"""The calibration report of forcegp on held-out data, in and off distribution.

    python benchmarks/uncertainty.py                        # all cases below, about an hour
    python benchmarks/uncertainty.py --cases ethanol acac   # some of them
    python benchmarks/uncertainty.py --models /tmp/models   # keep the trained models
    python benchmarks/uncertainty.py --quick                # smoke run (tiny models)

Each case is what a user would type: ``forcegp train TRAIN [units] -o MODEL [flags]`` with the
default settings, then ``forcegp test MODEL TEST --json`` on every test set of the case, run as
subprocesses one after the other. Cases:

  * ethanol, aspirin: rMD17 split 01 (1000 training structures; the official test split, kcal/mol);
  * acac: the BOTNet acetylacetone set, trained at 300 K, tested at 300 K and at 600 K (off
    distribution: hotter, wider geometries);
  * ala3: GFN2-xTB Ac-Ala3-NHMe at 500 K (data/xtb), tested on an independent trajectory.

One JSON line per test set goes to benchmarks/results/uncertainty.jsonl (the whole calibration
report of forcegp/calibration.py, the commands, the commit and the machine);
benchmarks/results/uncertainty.md tables every line of that file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import common

PUBLISHED = common.DATA
XTB = common.ROOT / "data" / "xtb"
KCAL = ["--energy-unit", "kcal/mol"]
#: case -> (training file, reader flags, {test set name: file}, extra train flags)
CASES = {
    "ethanol": (PUBLISHED / "rmd17_ethanol_train_01.npz", KCAL,
                {"rMD17 test 01": PUBLISHED / "rmd17_ethanol_test_01.npz"}, []),
    "aspirin": (PUBLISHED / "rmd17_aspirin_train_01.npz", KCAL,
                {"rMD17 test 01": PUBLISHED / "rmd17_aspirin_test_01.npz"}, []),
    "acac": (PUBLISHED / "acac_train_300K.npz", [],
             {"MD 300 K": PUBLISHED / "acac_test_MD_300K.npz",
              "MD 600 K": PUBLISHED / "acac_test_MD_600K.npz"}, []),
    "ala3": (XTB / "ala3_train.npz", [], {"independent trajectory": XTB / "ala3_test.npz"},
             ["--epochs", "20"]),
}  # fmt: skip
QUICK_FLAGS = ["--inducing", "16", "--features", "4", "--width", "8", "--depth", "1",
               "--explicit-dim", "4", "--epochs", "1"]  # fmt: skip
#: report keys kept per test set (energy_* and forces_*)
KEYS = ("mae", "coverage_68", "coverage_95", "zms", "nll", "miscalibration_area",
        "sparsification_ause", "binned_worst_ratio", "std_error_spearman")  # fmt: skip


def quick_file(src: Path, folder: Path, n: int = 60) -> Path:
    """The first n frames of an npz data file (the smoke run)."""
    import numpy as np

    data = np.load(src)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / src.name
    first = {k: (data[k][:n] if data[k].ndim and len(data[k]) > n and k not in ("z", "nuclear_charges")
                 else data[k]) for k in data.files}  # fmt: skip
    np.savez(path, **first)
    return path


def run_case(case: str, flags: list[str], work: Path, quick: bool) -> list[dict]:
    train, reader, tests, case_flags = CASES[case]
    if quick:
        train = quick_file(train, work / "train")
        tests = {
            name: quick_file(path, work / f"test{i}") for i, (name, path) in enumerate(tests.items())
        }
    model = work / f"{case}.fgp"
    forcegp = [sys.executable, "-m", "forcegp"]
    train_cmd = [*forcegp, "train", train, *reader, "-o", model, *case_flags, *flags]
    trained = common.run_measured(train_cmd)
    base = {"case": case, "train_command": _words(train_cmd[2:]),
            "train_s": round(trained["wall_s"], 1), "rc": trained["rc"]}  # fmt: skip
    if trained["rc"] != 0:
        return [base | {"error": (trained["stderr"] or trained["stdout"]).strip()[-300:]}]
    base |= noise_choice(model)
    rows = []
    for name, path in tests.items():
        metrics = work / f"{case}_{name.replace(' ', '_')}.json"
        test_cmd = [*forcegp, "test", model, path, *reader, "--json", metrics]
        tested = common.run_measured(test_cmd)
        row = base | {"test_set": name, "test_command": _words(test_cmd[2:])}
        if tested["rc"] != 0:
            rows.append(row | {"error": tested["stderr"].strip()[-300:]})
            continue
        m = json.loads(metrics.read_text())
        row |= {f"{q}_{k}": m[f"{q}_{k}"] for q in ("energy", "forces") for k in KEYS
                if f"{q}_{k}" in m}  # fmt: skip
        row["forces_mean_abs"] = m["forces_mean_abs"]
        rows.append(row)
    return rows


def noise_choice(model: Path) -> dict:
    """gamma of the model's input-dependent noise (0: constant) and the seconds its choice took,
    from the model file's header line (forcegp.modelfile)."""
    with open(model, "rb") as f:
        header = json.loads(f.readline())
    calibration = header.get("training", {}).get("calibration", {})
    return {"misfit_gamma": calibration.get("misfit_gamma", 0.0),
            "misfit_s": calibration.get("misfit_seconds")}  # fmt: skip


def _words(cmd) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def table(rows: list[dict]) -> str:
    head = (
        "| case | test set | F MAE (meV/Å) | F cov. 68 / 95 | F ZMS | F NLL | F miscal. area | "
        "F AUSE | F binned worst | Spearman | E MAE (meV) | E cov. 68 / 95 | E ZMS | "
        "train (s) | commit | machine |\n|" + "---|" * 16
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r.get('test_set', '–')} | failed: {r['error'][-80:]} |")
            continue
        case = f"{r['case']} `{r['flags']}`" if r.get("flags") else r["case"]
        lines.append(
            f"| {case} | {r['test_set']} | {1e3 * r['forces_mae']:.1f} | "
            f"{r['forces_coverage_68']:.3f} / {r['forces_coverage_95']:.3f} | "
            f"{r['forces_zms']:.2f} | {r['forces_nll']:.2f} | "
            f"{r['forces_miscalibration_area']:.3f} | {r['forces_sparsification_ause']:.3f} | "
            f"{r['forces_binned_worst_ratio']:.2f} | {r['forces_std_error_spearman']:.2f} | "
            f"{1e3 * r['energy_mae']:.1f} | "
            f"{r['energy_coverage_68']:.3f} / {r['energy_coverage_95']:.3f} | "
            f"{r['energy_zms']:.2f} | {r['train_s']:.0f} | {r['commit']} | {r['cpu']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--flags", default="", help="extra forcegp train flags, one string")
    ap.add_argument("--models", default=None, help="folder to keep the trained models in")
    common.add_common_args(ap)
    args = ap.parse_args(argv)
    out, flags, machine = common.cli_run_setup(args, QUICK_FLAGS)
    lines = out / "uncertainty.jsonl"
    rows = (
        [json.loads(ln) for ln in lines.read_text().splitlines() if ln.strip()] if lines.exists() else []
    )
    with tempfile.TemporaryDirectory() as work:
        for case in args.cases:
            folder = Path(work) / case
            folder.mkdir()
            for row in run_case(case, flags, folder, args.quick):
                rows = common.append_record(lines, row | {"flags": " ".join(flags)}, machine, args.quick)
            if args.models and (folder / f"{case}.fgp").exists():
                Path(args.models).mkdir(parents=True, exist_ok=True)
                shutil.copy(folder / f"{case}.fgp", Path(args.models) / f"{case}.fgp")
    title = "# Calibration report on held-out data (forcegp test --json)\n\n"
    common.write_results("uncertainty", {"quick": args.quick, "machine": machine, "rows": rows},
                         title + table(rows), out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
