"""apax as a peer of forcegp: train it with its own defaults on the same data, on the same machine,
and append one row (test errors, training time, MD step time) to a JSONL results file.

    .venv-apax/bin/python benchmarks/peer_apax.py \\
        --train ../shared/data/published/rmd17_ethanol_train_01.npz \\
        --test ../shared/data/published/rmd17_ethanol_test_01.npz --n-train 1000 --name ethanol

    # smoke test (tiny, numbers meaningless)
    .venv-apax/bin/python benchmarks/peer_apax.py --train TRAIN.npz --test TEST.npz \\
        --n-train 50 --n-test 50 --epochs 2 --md-steps 20 --out /tmp/peers_test.jsonl

apax (PyPI ``apax``, a JAX neural-network potential, default model GMNN) lives in its own virtual
environment so that its pins cannot disturb forcegp's:

    python3 -m venv .venv-apax && .venv-apax/bin/pip install apax

Started with another Python, the script re-executes itself with .venv-apax/bin/python. It never
imports forcegp; it uses numpy, ase, apax and benchmarks/common.py (standard library at the top).

Data. TRAIN and TEST are .npz (rMD17 keys ``coords nuclear_charges energies forces``, always
kcal/mol; sGDML keys ``R z E F`` in the file's ``e_unit``) or anything ASE reads with energies and
forces (extxyz: eV and eV/Å unless --energy-unit says otherwise). --energy-unit overrides the
files' unit, for both files alike. The first --n-train structures of TRAIN and the first --n-test
of TEST (all by default) are written as extxyz in eV and eV/Å to the work folder
(1 kcal/mol = 0.0433641043 eV).

Training. ``apax train config.yaml`` in a subprocess, with the config that ``apax template train``
gives a new user (batch size 4, validation batch 100, loss energy 1 + forces 4, energy and force
MAE metrics) and apax's own code defaults for everything the template leaves out (GMNN, Bessel
basis with 16 functions and r_max 5 Å, n_radial 5, n_contr 8, readout [256, 256], Adam with
per-group learning rates and a linear decay, float32 descriptor and readout). Only what is needed
is set: the data file, n_train / n_valid (apax splits the training file at random: the validation
part is round(--valid-fraction x n), 5 % by default, as forcegp does), n_epochs, seed and the work
folder. apax has no default number of epochs (n_epochs is required); --epochs defaults to 100,
the value of apax's own ethanol tutorial (990 training structures, batch 4). The model evaluated
is the one apax keeps as best (lowest validation loss). JAX runs on the CPU with its default
threads; nothing is pinned.

Measured and appended to --out (one JSON object per line; the file is rewritten atomically):
  * energy_mae_mev, energy_rmse_mev: per structure, over the test structures;
  * forces_mae_mev_per_ang, forces_rmse_mev_per_ang: per Cartesian component, over all of them;
  * train_seconds: wall time of the whole ``apax train`` process (start, data pipeline,
    compilation, all epochs, checkpoints); train_peak_rss_bytes: its ru_maxrss (os.wait4);
    epoch_seconds_first / epoch_seconds_median: apax's own per-epoch times (its log.csv), the
    first epoch including compilation, the median over the later ones;
  * predict_seconds: ASECalculator.batch_eval over the test structures (compilation included);
  * md_step_ms: median time of one VelocityVerlet step (0.5 fs, 300 K Maxwell-Boltzmann start)
    through apax's ASE calculator (apax.md.ASECalculator) on the first test structure, over
    --md-steps steps after --md-warmup untimed ones; md_energy_drift_ev over the timed steps;
  * n_params: number of model parameters (every array of the checkpoint; apax sizes the pair
    embedding, scale and shift for all 119 elements), n_params_for_elements: those the data's
    elements use; versions of apax, jax, jaxlib, flax, tensorflow, ase, numpy; the machine (CPU,
    nproc, RAM, load average, float64 GEMM rate); the git commit of this repository; the command
    line; the date.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

APAX_PYTHON = common.ROOT / ".venv-apax" / "bin" / "python"
DEFAULT_OUT = common.RESULTS / "peers.jsonl"
DEFAULT_EPOCHS = 100  # apax has none; its ethanol tutorial trains 100 epochs

# Factors to eV and Å (forcegp/units.py's values; kcal/mol as in ASE).
ENERGY_UNITS = {
    "ev": 1.0,
    "mev": 1e-3,
    "kcal/mol": common.KCAL_MOL,
    "kj/mol": 0.0103642688,
    "hartree": 27.211386245988,
    "ha": 27.211386245988,
}
LENGTH_UNITS = {"ang": 1.0, "a": 1.0, "angstrom": 1.0, "bohr": 0.529177210903, "nm": 10.0}

RMD17_KEYS = ("coords", "nuclear_charges", "energies", "forces")
SGDML_KEYS = ("R", "z", "E", "F")


def ensure_apax_python() -> None:
    """Re-execute with .venv-apax/bin/python when this interpreter has no apax."""
    try:
        import apax  # noqa: F401
    except ImportError:
        here = Path(sys.executable).absolute()
        if APAX_PYTHON.exists() and here != APAX_PYTHON.absolute():
            os.execv(str(APAX_PYTHON), [str(APAX_PYTHON), *sys.argv])
        sys.exit(
            f"apax is not importable here and {APAX_PYTHON} does not exist: create it with\n"
            f"  python3 -m venv {APAX_PYTHON.parents[1]} && {APAX_PYTHON.parent}/pip install apax"
        )


# ----------------------------------------------------------------------------- data


def factor(table: dict, unit: str, what: str) -> float:
    key = str(unit).strip().lower()
    if key not in table:
        raise SystemExit(f"unknown {what} unit {unit!r}; use one of {', '.join(table)}")
    return table[key]


def npz_text(archive, key: str) -> str | None:
    if key not in archive.files:
        return None
    value = archive[key].reshape(()).item()
    return value.decode() if isinstance(value, bytes) else str(value)


def read_frames(path: Path, energy_unit: str | None, n: int | None) -> dict:
    """The first n labelled structures of ``path``: numbers (S, N), positions (S, N, 3) Å, energies
    (S,) eV and forces (S, N, 3) eV/Å."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            if all(k in f.files for k in RMD17_KEYS):
                R, z, E, F = (f[k] for k in RMD17_KEYS)
                file_unit, r_unit = "kcal/mol", "Ang"  # rMD17 is always kcal/mol and Å
            elif all(k in f.files for k in SGDML_KEYS):
                R, z, E, F = (f[k] for k in SGDML_KEYS)
                file_unit, r_unit = npz_text(f, "e_unit"), npz_text(f, "r_unit") or "Ang"
            else:
                raise SystemExit(
                    f"{path}: expected the keys {' '.join(RMD17_KEYS)} (rMD17) or"
                    f" {' '.join(SGDML_KEYS)} (sGDML); found {' '.join(f.files)}"
                )
        unit = energy_unit or file_unit
        if unit is None:
            raise SystemExit(f"{path} has no e_unit: pass --energy-unit")
        e, r = factor(ENERGY_UNITS, unit, "energy"), factor(LENGTH_UNITS, r_unit, "length")
        sl = slice(0, n)
        R, E, F = R[sl], E[sl], F[sl]
        z = np.asarray(z, dtype=np.int64)
        numbers = np.broadcast_to(z[sl] if z.ndim == 2 else z, R.shape[:2])
        return {
            "numbers": np.array(numbers),
            "positions": np.asarray(R, dtype=np.float64) * r,
            "energies": np.asarray(E, dtype=np.float64).reshape(len(R)) * e,
            "forces": np.asarray(F, dtype=np.float64) * (e / r),
            "energy_unit": unit,
        }
    import ase.io

    images = ase.io.read(str(path), index=f":{n}" if n else ":")
    e = factor(ENERGY_UNITS, energy_unit or "eV", "energy")
    return {
        "numbers": np.stack([a.numbers for a in images]),
        "positions": np.stack([a.positions for a in images]),
        "energies": np.array([a.get_potential_energy() for a in images]) * e,
        "forces": np.stack([a.get_forces() for a in images]) * e,
        "energy_unit": energy_unit or "eV",
    }


def to_atoms(frames: dict, labelled: bool = True) -> list:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    images = []
    for i in range(len(frames["positions"])):
        atoms = Atoms(numbers=frames["numbers"][i], positions=frames["positions"][i])
        if labelled:
            atoms.calc = SinglePointCalculator(
                atoms, energy=float(frames["energies"][i]), forces=frames["forces"][i]
            )
        images.append(atoms)
    return images


def write_extxyz(path: Path, frames: dict) -> None:
    import ase.io

    ase.io.write(str(path), to_atoms(frames), format="extxyz")


# ----------------------------------------------------------------------------- apax


def apax_config(train_file: Path, workdir: Path, n: int, n_valid: int, epochs: int, seed: int):
    """What ``apax template train`` writes, filled in; the rest is apax's code defaults."""
    return {
        "n_epochs": epochs,
        "seed": seed,
        "data": {
            "directory": str(workdir),
            "experiment": "model",
            "data_path": str(train_file),
            "n_train": n - n_valid,
            "n_valid": n_valid,
            "batch_size": 4,
            "valid_batch_size": 100,
            "energy_unit": "eV",
            "pos_unit": "Ang",
        },
        "metrics": [
            {"name": "energy", "reductions": ["mae"]},
            {"name": "forces", "reductions": ["mae", "mse"]},
        ],
        "loss": [{"name": "energy"}, {"name": "forces", "weight": 4.0}],
    }


def apax_command() -> list[str]:
    exe = Path(sys.executable).parent / "apax"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from apax.cli.apax_app import app; app()"]


def epoch_times(log_csv: Path) -> dict:
    try:
        with open(log_csv) as f:
            times = [float(row["epoch_time"]) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return {}
    out = {"epochs_run": len(times)}
    if times:
        out["epoch_seconds_first"] = times[0]
    if len(times) > 1:
        out["epoch_seconds_median"] = float(np.median(times[1:]))
    return out


def n_parameters(params, n_elements: int, n_species: int = 119) -> tuple[int, int]:
    """All parameters, and those a model of ``n_elements`` elements uses: apax sizes its
    per-element arrays (pair embedding, scale, shift) for all 119 elements; a leading axis of that
    length counts only the data's elements."""
    import jax

    total = used = 0
    for leaf in jax.tree_util.tree_leaves(params):
        shape = np.shape(leaf)
        total += int(np.prod(shape))
        lead = 0
        while lead < len(shape) and shape[lead] == n_species:
            lead += 1
        used += int(n_elements**lead * np.prod(shape[lead:]))
    return total, used


def evaluate(calc, test: dict) -> dict:
    t0 = time.perf_counter()
    predicted = calc.batch_eval(to_atoms(test, labelled=False), silent=True)
    seconds = time.perf_counter() - t0
    energies = np.array([a.get_potential_energy() for a in predicted])
    forces = np.stack([a.get_forces() for a in predicted])
    de = 1000 * (energies - test["energies"])
    df = 1000 * (forces - test["forces"])
    return {
        "energy_mae_mev": float(np.mean(np.abs(de))),
        "energy_rmse_mev": float(np.sqrt(np.mean(de**2))),
        "forces_mae_mev_per_ang": float(np.mean(np.abs(df))),
        "forces_rmse_mev_per_ang": float(np.sqrt(np.mean(df**2))),
        "predict_seconds": seconds,
    }


def md_step_times(calc, atoms, steps: int, warmup: int) -> dict:
    """Median wall time of one VelocityVerlet step (0.5 fs) after ``warmup`` untimed steps."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    common.thermalize(atoms, 300, seed=0)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(warmup)  # compiles the calculator's step and allocates its neighbour list
    e0 = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    stamps = [time.perf_counter()]
    dyn.attach(lambda: stamps.append(time.perf_counter()), interval=1)
    dyn.run(steps)
    per_step = np.diff(stamps)
    return {
        "md_steps": steps,
        "md_warmup_steps": warmup,
        "md_step_ms": 1000 * float(np.median(per_step)),
        "md_step_ms_mean": 1000 * float(np.mean(per_step)),
        "md_energy_drift_ev": float(atoms.get_potential_energy() + atoms.get_kinetic_energy() - e0),
    }


def versions() -> dict:
    out = {}
    for package in ("apax", "jax", "jaxlib", "flax", "tensorflow", "ase", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def row_head(code: str, args, train: dict, test: dict) -> dict:
    """The keys every peers row starts with: the code, the data and its sizes."""
    return {
        "code": code,
        "name": args.name or args.train.stem,
        "train_file": str(args.train),
        "test_file": str(args.test),
        "energy_unit_in": train["energy_unit"],
        "n_train": len(train["positions"]),
        "n_test": len(test["positions"]),
        "n_atoms": int(train["numbers"].shape[1]),
    }


def record(out: Path, row: dict, command: str) -> None:
    """Stamp ``row`` with the machine, the commit, the command and the time, append it to
    ``out`` and print its scalar entries."""
    info = common.machine_info()
    info["processor"] = platform.processor()
    row.update(machine=info, git_commit=info["git_commit"], command=command,
               date_utc=info["time_utc"])  # fmt: skip
    append_row(out, row)
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}, indent=1))
    print(f"appended to {out}", file=sys.stderr)


def append_row(out: Path, row: dict) -> None:
    """Old rows plus the new one, written to a temporary file beside ``out`` and moved over it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(old + json.dumps(row, default=common._json_default) + "\n")
    os.replace(tmp, out)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, type=Path, help=".npz or extxyz training file")
    p.add_argument("--test", required=True, type=Path, help=".npz or extxyz test file")
    p.add_argument("--energy-unit", default=None, help="unit of the files' energies (overrides)")
    p.add_argument("--n-train", type=int, default=1000, help="first N structures of TRAIN (1000)")
    p.add_argument("--n-test", type=int, default=None, help="first N structures of TEST (all)")
    p.add_argument("--valid-fraction", type=float, default=0.05, help="of TRAIN, for validation")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"({DEFAULT_EPOCHS})")
    p.add_argument("--seed", type=int, default=1, help="apax's seed (1, apax's default)")
    p.add_argument("--name", default=None, help="row label (default: TRAIN's file name)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL file to append to")
    p.add_argument("--workdir", type=Path, default=None, help="work folder (a new temporary one)")
    p.add_argument("--md-steps", type=int, default=300, help="timed MD steps (300)")
    p.add_argument("--md-warmup", type=int, default=5, help="untimed MD steps first (5)")
    p.add_argument("--timeout", type=float, default=None, help="seconds for apax train (none)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    ensure_apax_python()
    import apax

    command = shlex.join([sys.executable, *sys.argv])
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="peer_apax_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "model"
    if model_dir.exists():  # apax would resume from its checkpoints
        shutil.rmtree(model_dir)

    train = read_frames(args.train, args.energy_unit, args.n_train)
    test = read_frames(args.test, args.energy_unit, args.n_test)
    n = len(train["positions"])
    n_valid = int(round(args.valid_fraction * n))
    if not 1 <= n_valid < n:
        raise SystemExit(f"cannot split {n} structures with valid fraction {args.valid_fraction}")
    train_file = workdir / "train.extxyz"
    write_extxyz(train_file, train)
    write_extxyz(workdir / "test.extxyz", test)
    config = apax_config(train_file, workdir, n, n_valid, args.epochs, args.seed)
    config_file = workdir / "config.yaml"
    config_file.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML

    print(
        f"apax {apax.__version__}: training on {n - n_valid} + {n_valid} structures, "
        f"{args.epochs} epochs, in {workdir}",
        file=sys.stderr,
        flush=True,
    )
    run = common.run_measured([*apax_command(), "train", str(config_file)], timeout=args.timeout)
    (workdir / "train.stdout").write_text(run["stdout"])
    (workdir / "train.stderr").write_text(run["stderr"])
    if run["rc"] != 0:
        tail = run["stderr"].strip().splitlines()[-15:]
        raise SystemExit(
            f"apax train failed (rc {run['rc']}, timed out: {run['timed_out']}); log in"
            f" {workdir}/train.stderr:\n" + "\n".join(tail)
        )

    from apax.md import ASECalculator

    calc = ASECalculator(model_dir)
    row = row_head("apax", args, train, test)
    row.update(n_train_fit=n - n_valid, n_valid=n_valid, epochs=args.epochs, seed=args.seed)
    row.update(evaluate(calc, test))
    row["train_seconds"] = run["wall_s"]
    row["train_peak_rss_bytes"] = run["peak_rss_bytes"]
    row.update(epoch_times(model_dir / "log.csv"))
    row.update(md_step_times(calc, to_atoms(test, labelled=False)[0], args.md_steps, args.md_warmup))
    model = calc.model_config.model
    n_params, n_used = n_parameters(calc.params, len(np.unique(train["numbers"])))
    row["model"] = {
        "name": model.name,
        "basis": model.basis.name,
        "r_max": model.basis.r_max,
        "nn": list(model.nn),
        "n_params": n_params,
        "n_params_for_elements": n_used,
        "batch_size": calc.model_config.data.batch_size,
        "settings": "apax template train + code defaults; only data, n_epochs, seed set",
    }
    row["versions"] = versions()
    row["workdir"] = str(workdir)
    record(args.out, row, command)
    return row


if __name__ == "__main__":
    main()
