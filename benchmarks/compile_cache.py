"""What the command line's compilation cache saves: `forcegp train` and `forcegp test` run twice
each as subprocesses, first with an empty cache folder, then with the programs the first run left
there, and `forcegp test` once with the cache off.

    python benchmarks/compile_cache.py                       # default and body-ordered models
    python benchmarks/compile_cache.py --cases default       # one of them
    python benchmarks/compile_cache.py --quick               # smoke run (tiny model)

Cases (rMD17 ethanol from data/, the first --n training frames, the 1000 test frames):
  * default: `forcegp train` with the default settings;
  * body4: `--descriptor atomic --env-body4 7 --env-radial 6 --epochs 2` (the body-ordered
    model whose programs take longest to compile; two epochs, since the epochs' time is not
    what the cache changes).
Each case in a fresh temporary cache folder (FORCEGP_COMPILE_CACHE), one command at a time:
train (cold), train again (warm: the same data, flags and seed, so the same programs), test
with the cache off, test with the cache (the programs training compiled for the validation
predictions are reused where their shapes agree), test again (warm). The two trained models
must give the same test errors. Results: benchmarks/results/compile_cache.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DATA = common.ROOT / "data"
CASES = {
    "default": [],
    "body4": ["--descriptor", "atomic", "--env-body4", "7", "--env-radial", "6", "--epochs", "2"],
}
QUICK_FLAGS = ["--inducing", "16", "--features", "4", "--width", "8", "--depth", "1",
               "--explicit-dim", "4", "--epochs", "1"]  # fmt: skip


#: Environment of every command; --quick keeps even the tiny models' programs (JAX keeps only
#: those that took at least a second to compile).
ENV = {}


def timed(args: list[str], cache: str) -> float:
    """Seconds of one `forcegp` subprocess with FORCEGP_COMPILE_CACHE=cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(ENV, FORCEGP_COMPILE_CACHE=cache)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "forcegp", *args], capture_output=True,
                          text=True, env=env)  # fmt: skip
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"forcegp {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*") if p.is_file())


def run_case(name: str, flags: list[str], n: int, work: Path) -> dict:
    import ase.io

    train = work / "train.extxyz"
    ase.io.write(train, ase.io.read(DATA / "ethanol_train.extxyz", index=f":{n}"))
    test = DATA / "ethanol_test.extxyz"
    cache = work / f"cache-{name}"
    row = {"case": name, "flags": " ".join(flags), "n_train": n}
    maes = []
    for run in ("cold", "warm"):
        model = work / f"{name}-{run}.fgp"
        row[f"train_{run}_s"] = timed(["train", str(train), "-o", str(model), *flags], str(cache))
        print(f"{name}: train ({run}) {row[f'train_{run}_s']:.1f} s", flush=True)
        out = work / f"{name}-{run}.json"
        timed(["test", str(model), str(test), "--json", str(out)], "0")
        maes.append(json.loads(out.read_text())["forces_mae"])
    row["cache_mib_after_training"] = folder_bytes(cache) / 2**20
    model = work / f"{name}-cold.fgp"
    for label, where in (("off", "0"), ("first", str(cache)), ("warm", str(cache))):
        row[f"test_{label}_s"] = timed(["test", str(model), str(test)], where)
        print(f"{name}: test ({label}) {row[f'test_{label}_s']:.1f} s", flush=True)
    row["cache_mib"] = folder_bytes(cache) / 2**20
    row["same_test_errors"] = maes[0] == maes[1]
    row["forces_mae_mev_per_ang"] = 1000 * maes[0]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--n", type=int, default=200, help="training frames (default 200)")
    ap.add_argument("--name", default="compile_cache")
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.quick:
        ENV["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    machine = common.machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="forcegp-cache-bench-") as tmp:
        for name in args.cases:
            flags = CASES[name] + (QUICK_FLAGS if args.quick else [])
            work = Path(tmp) / name
            work.mkdir()
            row = run_case(name, flags, 40 if args.quick else args.n, work)
            shutil.rmtree(work)
            if not row["same_test_errors"]:
                raise SystemExit(f"{name}: the warm run's model differs from the cold run's")
            rows.append(row)
            write(args, machine, rows)  # after every case: a cut run keeps what it measured


def write(args, machine: dict, rows: list[dict]) -> None:
    columns = [
        ("case", "case"), ("flags", "flags"), ("n_train", "structures"),
        ("train_cold_s", "train, empty cache (s)"), ("train_warm_s", "train again (s)"),
        ("test_off_s", "test, cache off (s)"), ("test_first_s", "test after training (s)"),
        ("test_warm_s", "test again (s)"), ("cache_mib", "cache (MiB)"),
        ("forces_mae_mev_per_ang", "test F MAE (meV/Å)"),
    ]  # fmt: skip
    common.write_table(
        args.name, args, machine, "The command line's compilation cache",
        "rMD17 ethanol (data/), 1000 test structures; each command a subprocess, one at a time, "
        "in a fresh cache folder per case; both trained models give the same test errors.",
        rows, columns,
    )  # fmt: skip


if __name__ == "__main__":
    main()
