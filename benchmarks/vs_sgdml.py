"""forcegp against sGDML on rMD17 on the same machine: training time, peak memory, force and energy
MAE, prediction and MD step time.

    python benchmarks/vs_sgdml.py                  # both codes; ethanol, aspirin; n = 200 500 1000
    python benchmarks/vs_sgdml.py --only forcegp   # re-measure forcegp, keep the stored sGDML rows
    python benchmarks/vs_sgdml.py --only sgdml --molecules ethanol --sizes 1000
    python benchmarks/vs_sgdml.py --quick          # smoke test (tiny, seconds)

Data: rMD17 split 01 (benchmarks/common.py DATA, or $FORCEGP_PUBLISHED): the FIRST n structures of
rmd17_<mol>_train_01 for training and the 1000 structures of rmd17_<mol>_test_01 (the official
test split) for the errors. Both codes see exactly the same n training structures.

sGDML 1.0.3 (pip package ``sgdml``) runs through its Python API in its own virtual environment
(.venv-sgdml: it breaks on NumPy 2.4), in a subprocess: GDMLTrain().create_task(..., sig=SIGMA,
use_sym=True, use_E=True, use_E_cstr=False) and GDMLTrain().train(task) (analytic solver), i.e.
what ``sgdml all`` does for ONE sigma. ``sgdml all`` would cross-validate sigma over its grid 10,
20, ..., 90 with one full solve each; here sigma is chosen ONCE per molecule on that grid at the
smallest size, on 200 validation structures of train_01 not used for training at that size, and
reused for all sizes. The search's own time is reported apart ("sigma search").

Memory pre-check: sGDML's analytic solver needs about 3 (n 3N)^2 8 bytes (its own estimate,
sgdml.solvers.analytic.Analytic.est_memory_requirement) times --sgdml-safety (1.4: 23.5 GB were
measured for 1000 ethanol structures against an estimate of 17.5 GB). A size whose need exceeds
MemAvailable minus --reserve-gib is not run, and is recorded as skipped with the reason.

forcegp runs forcegp.train_model with the default Config() and TrainSettings() (nothing
overridden; --epochs only for experiments), seed 0, in another subprocess. Its validation set
(reported, never used for any choice) is the first 100 structures of train_02.

For both: wall time and peak RSS of the whole subprocess (os.wait4 ru_maxrss), training time,
force/energy MAE on the test structures, the time to predict them (energies and forces, warm),
and the time per step of a VelocityVerlet MD (0.5 fs, 300 K start, --md-steps steps after 5
warm-up steps) through each code's ASE calculator.

--only CODE measures one code and takes the other code's rows (and the sGDML sigma search) from
the stored results (--reuse, default the results file this run writes); every entry records when
and at which commit it was measured. The results file is rewritten after every measurement.
Results: benchmarks/results/vs_sgdml.json and vs_sgdml.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
CODES = ("sgdml", "forcegp")
N_ATOMS = {"ethanol": 9, "malonaldehyde": 9, "uracil": 12, "aspirin": 21}
SIGMA_GRID = tuple(range(10, 100, 10))  # sgdml all's default


# ----------------------------------------------------------------------------- both workers


def load_rmd17(molecule: str, part: str, split: str = "01", frames=slice(None)) -> dict:
    """Raw rMD17 arrays in the file's units (Å, kcal/mol, kcal/mol/Å)."""
    with np.load(common.rmd17_path(molecule, part, split)) as f:
        return {
            "z": np.asarray(f["nuclear_charges"]),
            "R": np.asarray(f["coords"], dtype=np.float64)[frames],
            "E": np.asarray(f["energies"], dtype=np.float64)[frames],
            "F": np.asarray(f["forces"], dtype=np.float64)[frames],
        }


def md_time_per_step(atoms, steps: int, *, warmup: int = 5) -> dict:
    """Time per VelocityVerlet step (0.5 fs, 300 K start) after ``warmup`` steps."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    def total_energy():
        return float(np.ravel(atoms.get_potential_energy())[0]) + atoms.get_kinetic_energy()

    common.thermalize(atoms, 300, seed=0)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    e0 = total_energy()
    dyn.run(warmup)
    t0 = time.perf_counter()
    dyn.run(steps)
    dt = time.perf_counter() - t0
    return {
        "md_steps": steps,
        "md_step_ms": 1000 * dt / steps,
        "md_energy_drift_eV": total_energy() - e0,
    }


# ----------------------------------------------------------------------------- sGDML worker


def _sgdml_dataset(raw: dict, molecule: str) -> dict:
    from sgdml.utils import io

    ds = {
        "type": "d",
        "code_version": "external",
        "name": np.array(f"rmd17_{molecule}"),
        "theory": np.array("PBE/def2-SVP (rMD17)"),
        "z": raw["z"],
        "R": raw["R"],
        "E": raw["E"][:, None],
        "F": raw["F"],
        "r_unit": np.array("Ang"),
        "e_unit": np.array("kcal/mol"),
    }
    ds["md5"] = io.dataset_md5(ds)
    return ds


def _sgdml_train(train_raw, valid_raw, molecule, sigma, n_valid, processes):
    from sgdml.train import GDMLTrain

    np.random.seed(0)
    gdml = GDMLTrain(max_processes=processes)
    train_ds, valid_ds = _sgdml_dataset(train_raw, molecule), _sgdml_dataset(valid_raw, molecule)
    n = len(train_raw["E"])
    task = gdml.create_task(train_ds, n, valid_ds, n_valid, sig=sigma, use_sym=True, use_E=True)
    return gdml.train(task)


def _sgdml_errors(model, raw, processes) -> dict:
    from sgdml.predict import GDMLPredict

    pred = GDMLPredict(model, max_processes=processes)
    n = len(raw["E"])
    t0 = time.perf_counter()
    e, f = pred.predict(raw["R"].reshape(n, -1))
    dt = time.perf_counter() - t0
    f = f.reshape(raw["F"].shape)
    return {
        "forces_mae_meV_A": 1000 * common.KCAL_MOL * float(np.mean(np.abs(f - raw["F"]))),
        "energy_mae_meV": 1000 * common.KCAL_MOL * float(np.mean(np.abs(e.ravel() - raw["E"]))),
        "predict_s": dt,
        "n_predicted": n,
    }


def worker_sgdml_sigma(spec: dict) -> dict:
    """sGDML at n for every sigma of the grid; validation force MAE; the best sigma."""
    mol, n, n_valid = spec["molecule"], spec["n"], spec["n_valid"]
    train_raw = load_rmd17(mol, "train", frames=slice(0, n))
    valid_raw = load_rmd17(mol, "train", frames=slice(n, n + n_valid))
    rows = []
    for sigma in spec["sigmas"]:
        t0 = time.perf_counter()
        model = _sgdml_train(train_raw, valid_raw, mol, sigma, n_valid, spec["processes"])
        train_s = time.perf_counter() - t0
        rows.append(
            {"sigma": sigma, "train_s": train_s, **_sgdml_errors(model, valid_raw, spec["processes"])}
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    best = min(rows, key=lambda r: r["forces_mae_meV_A"])
    return {"grid": rows, "best_sigma": best["sigma"], "n_valid": n_valid}


def worker_sgdml(spec: dict) -> dict:
    """sGDML with one sigma: train, test, MD step time."""
    import sgdml
    from ase import Atoms
    from sgdml.intf.ase_calc import SGDMLCalculator

    mol, n, processes = spec["molecule"], spec["n"], spec["processes"]
    train_raw = load_rmd17(mol, "train", frames=slice(0, n))
    test_raw = load_rmd17(mol, "test", frames=slice(0, spec["n_test"]))
    valid_raw = load_rmd17(mol, "train", "02", frames=slice(0, 50))  # create_task wants one
    t0 = time.perf_counter()
    model = _sgdml_train(train_raw, valid_raw, mol, spec["sigma"], 50, processes)
    out = {"train_s": time.perf_counter() - t0, "sigma": spec["sigma"], "n_test": len(test_raw["E"])}
    out.update(_sgdml_errors(model, test_raw, processes))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.npz")
        np.savez_compressed(path, **model)
        atoms = Atoms(numbers=test_raw["z"], positions=test_raw["R"][0])
        atoms.calc = SGDMLCalculator(path)
        out.update(md_time_per_step(atoms, spec["md_steps"]))
    return out | {"sgdml_version": sgdml.__version__, "numpy": np.__version__}


# ----------------------------------------------------------------------------- forcegp worker


def worker_forcegp(spec: dict) -> dict:
    """forcegp.train_model with the defaults; test errors; warm prediction; MD step time."""
    common.enable_x64()
    import dataclasses

    from ase import Atoms

    import forcegp
    from forcegp import ForceGPCalculator, TrainSettings, evaluate, read_dataset, train_model
    from forcegp.training import evaluation

    mol, n = spec["molecule"], spec["n"]

    def rmd17(part, split, frames):
        data = read_dataset(common.rmd17_path(mol, part, split), energy_unit="kcal/mol")
        return data.subset(np.arange(min(frames, data.n_frames)))

    train, test, valid = (
        rmd17("train", "01", n),
        rmd17("test", "01", spec["n_test"] or 1000),
        rmd17("train", "02", 100),
    )
    settings = TrainSettings()
    if spec["epochs"]:
        settings = dataclasses.replace(settings, epochs=spec["epochs"])

    def progress(event, info):
        if event == "epoch":
            print(f"epoch {info['epoch']}/{info['epochs']} {info['seconds']:.1f}s", file=sys.stderr)

    t0 = time.perf_counter()
    model, meta = train_model(
        train, settings=settings, seed=0, valid=valid, config_kwargs=spec["config"], progress=progress
    )
    out = {
        "train_s": time.perf_counter() - t0,
        "hyper_train_s": meta["training"]["train_seconds"],
        "fit_s": meta["training"]["fit_seconds"],
        "settings": meta["training"]["settings"],  # the epochs as run, not AUTO
        "config": model.config.to_dict(),
        "K": model.config.n_basis,
        "n_test": test.n_frames,
        "forcegp_version": forcegp.__version__,
    }
    metrics = evaluate(model, test)
    out["forces_mae_meV_A"] = 1000 * metrics["forces_mae"]
    out["energy_mae_meV"] = 1000 * metrics["energy_mae"]
    out["forces_coverage_95"] = metrics["forces_coverage_95"]
    evaluation.predict(model, test.positions[:1], with_std=False)  # compiles; sGDML has nothing to
    t0 = time.perf_counter()
    evaluation.predict(model, test.positions, with_std=False)
    out["predict_s"] = time.perf_counter() - t0
    atoms = Atoms(numbers=test.numbers, positions=test.positions[0])
    atoms.calc = ForceGPCalculator(model)
    out.update(md_time_per_step(atoms, spec["md_steps"]))
    out["md_traces"] = atoms.calc.n_traces  # 1: compiled once, never again during the MD
    return out


WORKERS = {"sgdml": worker_sgdml, "sgdml-sigma": worker_sgdml_sigma, "forcegp": worker_forcegp}


# ----------------------------------------------------------------------------- driver


def sgdml_available() -> str | None:
    """None when sGDML imports in .venv-sgdml, otherwise why not."""
    if not common.SGDML_PYTHON.exists():
        return f"{common.SGDML_PYTHON} not found (create .venv-sgdml, see benchmarks/README.md)"
    res = common.run_measured([common.SGDML_PYTHON, "-c", "import sgdml, ase"], echo=False, timeout=300)
    return None if res["rc"] == 0 else "sgdml does not import in .venv-sgdml: " + res["stderr"][-500:]


def precheck(n: int, n_atoms: int, args) -> dict:
    """sGDML's own memory estimate against the available memory; skip_reason if it cannot fit."""
    dim = n * 3 * n_atoms
    est = 3 * dim * dim * 8 + dim * 8
    need = est * args.sgdml_safety
    avail = common.mem_available_bytes() - args.reserve_gib * common.GiB
    info = {
        "sgdml_estimate_gib": est / common.GiB,
        "sgdml_need_with_safety_gib": need / common.GiB,
        "available_gib": avail / common.GiB,
    }
    if need > avail:
        info["skip_reason"] = (
            f"memory pre-check: sGDML needs ~{need / common.GiB:.1f} GiB (3(n·3N)²·8 B = "
            f"{est / common.GiB:.1f} GiB × safety {args.sgdml_safety}), only "
            f"{avail / common.GiB:.1f} GiB available (MemAvailable − {args.reserve_gib} GiB reserve)"
        )
    return info


def measured_now() -> dict:
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": common.git_commit(),
        "load_average": common.load_average(),
    }


def run_sgdml(row: dict, state: dict, args) -> None:
    """Measure sGDML for one row (after the sigma search of its molecule, if not yet done)."""
    mol, n = row["molecule"], row["n"]
    if state["sgdml_unavailable"]:
        row["sgdml_skipped"] = state["sgdml_unavailable"]
        return
    row.update(precheck(n, N_ATOMS[mol], args))
    if "skip_reason" in row:
        row["sgdml_skipped"] = row.pop("skip_reason")
        print(row["sgdml_skipped"], file=sys.stderr, flush=True)
        return
    sigma = args.sgdml_sigma.get(mol)
    if sigma is None:
        if mol not in state["sigma_search"]:
            spec = {"kind": "sgdml-sigma", "molecule": mol, "n": n, "n_valid": args.sigma_valid}
            spec |= {"sigmas": args.sigma_grid, "processes": args.processes}
            r = common.run_worker(SCRIPT, spec, python=common.SGDML_PYTHON, timeout=args.timeout)
            state["sigma_search"][mol] = r | {"n": n, "measured": measured_now()}
        sigma = state["sigma_search"][mol].get("best_sigma")
    if sigma is None:
        row["sgdml_skipped"] = "the sigma search failed"
        return
    spec = {"kind": "sgdml", "molecule": mol, "n": n, "sigma": sigma, "md_steps": args.md_steps}
    spec |= {"n_test": args.n_test, "processes": args.processes}
    r = common.run_worker(SCRIPT, spec, python=common.SGDML_PYTHON, timeout=args.timeout)
    row["sgdml"] = r | {"measured": measured_now()}


def run_forcegp(row: dict, args) -> None:
    spec = {"kind": "forcegp", "molecule": row["molecule"], "n": row["n"], "md_steps": args.md_steps}
    spec |= {
        "n_test": args.n_test,
        "config": common.QUICK_CONFIG if args.quick else None,
        "epochs": args.epochs,
    }
    row["forcegp"] = common.run_worker(SCRIPT, spec, timeout=args.timeout) | {"measured": measured_now()}


def stored(args) -> tuple[list[dict], dict]:
    """Rows and sigma search of the stored results, each entry stamped with when it was measured."""
    path = Path(args.reuse) if args.reuse else common.results_dir(args) / f"{args.name}.json"
    if not path.exists():
        print(f"no stored results {path}: the other code's rows stay empty", file=sys.stderr)
        return [], {}
    payload = json.loads(path.read_text())
    machine = payload.get("machine", {})
    when = {
        "time_utc": machine.get("time_utc"),
        "git_commit": machine.get("git_commit"),
        "load_average": machine.get("load_average_1_5_15min"),
    }
    for entry in [*payload["sigma_search"].values()] + [
        r[c] for r in payload["rows"] for c in CODES if c in r
    ]:
        entry.setdefault("measured", when)
    return payload["rows"], payload["sigma_search"]


def run(args, write) -> dict:
    """Measure the codes of this run for every (molecule, n); keep whatever else is stored."""
    rows, sigma_search = stored(args) if args.only else ([], {})
    if not args.only and args.sgdml_sigma:  # keep the stored search that chose these sigmas
        sigma_search = {m: r for m, r in stored(args)[1].items() if m in args.sgdml_sigma}
    codes = [args.only] if args.only else list(CODES)
    state = {"sigma_search": sigma_search, "sgdml_unavailable": None}
    if "sgdml" in codes:
        state["sgdml_unavailable"] = sgdml_available()
        print(f"sGDML: {state['sgdml_unavailable'] or 'available'}", file=sys.stderr, flush=True)
    result = {"rows": rows, "sigma_search": sigma_search}
    by_key = {(r["molecule"], r["n"]): r for r in rows}
    for mol in args.molecules:
        for n in args.sizes:
            if (mol, n) not in by_key:
                by_key[mol, n] = {"molecule": mol, "n_atoms": N_ATOMS[mol], "n": n}
                rows.append(by_key[mol, n])
            row = by_key[mol, n]
            for code in codes:
                row.pop(code, None)
                row.pop(f"{code}_skipped", None)
                if code == "sgdml":
                    run_sgdml(row, state, args)
                else:
                    run_forcegp(row, args)
                print(json.dumps(row.get(code) or row.get(f"{code}_skipped")), flush=True)
                write(result, complete=False)
    return result


def table_rows(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        for code in CODES:
            r = row.get(code)
            entry = {"molecule": row["molecule"], "n": row["n"], "code": code}
            out.append(entry)
            if r is None:
                entry["note"] = "not run: " + row.get(f"{code}_skipped", "not measured")
                continue
            if "error" in r:
                entry["note"] = "failed: " + r["error"][-200:]
                continue
            entry |= {
                "wall_s": r["subprocess_wall_s"],
                "train_s": r["train_s"],
                "peak_gib": r["subprocess_peak_rss_bytes"] / common.GiB,
                "fmae": r["forces_mae_meV_A"],
                "emae": r["energy_mae_meV"],
                "predict_ms": 1000 * r["predict_s"] / r["n_test"],
                "md_ms": r["md_step_ms"],
            }
            if code == "sgdml":
                entry["note"] = f"sigma={r['sigma']}"
                continue
            s, sg = r["settings"], row.get("sgdml") or {}
            epochs = s["epochs"] if s["epochs"] > 0 else "auto"  # rows stored before the fix
            entry["note"] = f"epochs={epochs}, K={r['K']}; fit {r['fit_s']:.0f} s"
            if "train_s" in sg:
                entry["note"] += f"; sGDML train / forcegp train = {sg['train_s'] / r['train_s']:.2g}"
    return out


COLUMNS = [
    ("molecule", "molecule"),
    ("n", "n train"),
    ("code", "code"),
    ("wall_s", "wall (s)"),
    ("train_s", "train (s)"),
    ("peak_gib", "peak RSS (GiB)"),
    ("fmae", "force MAE (meV/Å)"),
    ("emae", "energy MAE (meV)"),
    ("predict_ms", "test predict (ms/structure)"),
    ("md_ms", "MD step (ms)"),
    ("note", "notes"),
]


def when_measured(result: dict) -> list[str]:
    """One line per code: when, at which commit and under which load its entries were measured."""
    lines = []
    for code, name in (("sgdml", "sGDML"), ("forcegp", "forcegp")):
        stamps = [r[code]["measured"] for r in result["rows"] if "measured" in r.get(code, {})]
        if not stamps:
            continue
        times = sorted({s["time_utc"] for s in stamps})
        commits = sorted({s["git_commit"] for s in stamps})
        loads = sorted({s["load_average"][0] for s in stamps if s.get("load_average")})
        when = times[0] if len(times) == 1 else f"{times[0]} to {times[-1]}"
        line = f"{name} entries measured {when} (UTC), commit {', '.join(commits)}"
        if loads:
            line += f", 1-min load average {loads[0]}" + (f" to {loads[-1]}" if len(loads) > 1 else "")
        notes = sorted({s["note"] for s in stamps if s.get("note")})
        lines.append(line + "".join(f"; {n}" for n in notes) + ".")
    return lines


def searched(r: dict) -> str:
    """When a stored sigma search ran (runs given --sgdml-sigma keep the earlier search)."""
    m = r.get("measured")
    return f" (measured {m['time_utc']}, load {m['load_average'][0]})" if m else ""


def markdown(result: dict, info: dict, quick: bool) -> str:
    parts = ["# forcegp vs sGDML on rMD17 (split 01)", "", common.machine_markdown(info), ""]
    if quick:
        parts += ["**--quick: tiny models (smoke test), numbers are not meaningful.**", ""]
    parts += [common.md_table(table_rows(result["rows"]), COLUMNS), ""]
    parts += [
        "wall: the whole subprocess (start-up, data, training, test prediction, MD). train: "
        "forcegp.train_model (hyperparameters + posterior fit + 100-structure validation) or "
        "sGDML's create_task + train for one sigma. Peak RSS of the subprocess (os.wait4). Test "
        "predict: energies and forces of the test structures (forcegp: after compilation). MD: "
        "VelocityVerlet through each code's ASE calculator.",
        "",
        *when_measured(result),
        "",
    ]
    for mol, r in result["sigma_search"].items():
        if "grid" not in r:
            parts += [f"sGDML sigma search, {mol}: failed: {r.get('error', '')[-300:]}", ""]
            continue
        grid = ", ".join(f"{g['sigma']}: {g['forces_mae_meV_A']:.1f}" for g in r["grid"])
        parts += [
            f"sGDML sigma search, {mol}: n={r['n']}, {r['n_valid']} validation structures of "
            f"train_01; force MAE (meV/Å) per sigma: {grid}; chosen sigma {r['best_sigma']}; "
            f"search took {r['subprocess_wall_s']:.0f} s, peak RSS "
            f"{r['subprocess_peak_rss_bytes'] / common.GiB:.2f} GiB{searched(r)}.",
            "",
        ]
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(p)
    p.add_argument("--only", choices=CODES, default=None, help="measure one code, keep the other's rows")
    p.add_argument("--reuse", default=None, help="stored results for --only (default: the file written)")
    p.add_argument("--molecules", nargs="+", default=None, choices=sorted(N_ATOMS))
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="n train (200 500 1000)")
    p.add_argument("--sgdml-sigma", nargs="+", default=[], metavar="MOL=SIGMA", help="skip the search")
    p.add_argument("--sigma-grid", nargs="+", type=int, default=list(SIGMA_GRID))
    p.add_argument("--sigma-valid", type=int, default=200, help="validation structures (200)")
    p.add_argument("--sgdml-safety", type=float, default=1.4)
    p.add_argument("--reserve-gib", type=float, default=2.0)
    p.add_argument("--epochs", type=int, default=None, help="override forcegp's default epochs")
    p.add_argument("--md-steps", type=int, default=None, help="timed MD steps (100)")
    p.add_argument("--n-test", type=int, default=None, help="test structures (all 1000)")
    p.add_argument("--processes", type=int, default=None, help="sGDML processes (all cores)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per subprocess")
    p.add_argument("--name", default="vs_sgdml", help="results file name (vs_sgdml)")
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        common.emit_result(WORKERS[spec["kind"]](spec))
        return 0
    args.sgdml_sigma = {k: int(v) for k, v in (s.split("=") for s in args.sgdml_sigma)}
    if args.quick:
        common.use_quick_compile_cache()
        args.sgdml_sigma = args.sgdml_sigma or {"ethanol": 20}
        args.epochs = args.epochs or 1
    args.molecules = args.molecules or (["ethanol"] if args.quick else ["ethanol", "aspirin"])
    args.sizes = args.sizes or ([20] if args.quick else [200, 500, 1000])
    args.md_steps = args.md_steps or (5 if args.quick else 100)
    args.n_test = args.n_test or (50 if args.quick else None)
    info = common.machine_info()
    started = time.perf_counter()

    def write(result: dict, *, complete: bool) -> str:
        info["load_average_end"] = common.load_average()
        payload = {"benchmark": "vs_sgdml", "argv": sys.argv[1:] if argv is None else list(argv)}
        payload |= {"quick": args.quick, "complete": complete, "machine": info}
        payload |= {"total_seconds": time.perf_counter() - started, **result}
        md = markdown(result, info, args.quick)
        common.write_results(args.name, payload, md, common.results_dir(args))
        return md

    result = run(args, write)
    print(write(result, complete=True))
    codes = [args.only] if args.only else CODES
    failed = [r[c] for r in result["rows"] for c in codes if "error" in r.get(c, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
