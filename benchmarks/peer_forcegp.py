"""forcegp's row beside the peers: train and test it the way a user would, on the same data and
machine as benchmarks/peer_apax.py, and append one row of the same form to the peers' JSONL file;
then table every row of that file in a markdown file beside it.

    python benchmarks/peer_forcegp.py \\
        --train ../shared/data/published/rmd17_ethanol_train_01.npz \\
        --test ../shared/data/published/rmd17_ethanol_test_01.npz --name ethanol
    python benchmarks/peer_forcegp.py --train data/xtb/ala3_train.npz \\
        --test data/xtb/ala3_test.npz --name ala3 --energy-unit eV --flags "--epochs 20"
    python benchmarks/peer_forcegp.py --table-only      # rewrite peers.md from peers.jsonl

Training: ``forcegp train TRAIN -o MODEL [--flags]`` as a subprocess (wall time and peak RSS of
the whole process, like apax's), which holds out 5 % of TRAIN for validation as apax's run does;
then ``forcegp test MODEL TEST --json``. The first --n-train structures of TRAIN (all by default;
an rMD17 training split has 1000) and of TEST are written as extxyz (eV, eV/Å) with
peer_apax.py's reader, so both codes see the same structures in the same order.

MD: the median time of one VelocityVerlet step (0.5 fs, 300 K start) on the first test structure
through forcegp's ASE calculator after --md-warmup untimed steps (peer_apax.md_step_times), once
plain (energy and forces) and once reading the force std every step, as ``forcegp md
--max-force-std`` does (forcegp.md.make_calculator(monitor=True)).

The table (peers.md): per data set, force and energy MAE, training time and peak memory, MD step
time, per code; rows of several runs of one code on one data set are all listed with their
commit and machine. Compare rows of one machine and one day only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peer_apax  # noqa: E402  (numpy, ase and common only at import)

DEFAULT_OUT = peer_apax.DEFAULT_OUT

COLUMNS = [("name", "data"), ("code", "code"), ("n_train", "n"),
           ("forces_mae_mev_per_ang", "F MAE (meV/Å)"), ("energy_mae_mev", "E MAE (meV)"),
           ("train_seconds", "train (s)"), ("train_peak_gib", "peak (GiB)"),
           ("md_step_ms", "MD step (ms)"), ("md_step_ms_with_std", "MD step with std (ms)"),
           ("settings", "settings"), ("git_commit", "commit"), ("cpu", "machine"),
           ("gflops", "GEMM GFLOP/s")]  # fmt: skip


def table(rows: list[dict]) -> str:
    flat = []
    for r in sorted(rows, key=lambda r: (r.get("name", ""), r.get("code", ""))):
        machine = r.get("machine", {})
        settings = r.get("settings") or r.get("model", {}).get("settings")
        if r.get("code") == "apax":
            settings = f"{r.get('epochs')} epochs, {settings}"
        flat.append({**r, "train_peak_gib": r.get("train_peak_rss_bytes", 0) / common.GiB,
                     "settings": settings, "cpu": machine.get("cpu_model"),
                     "gflops": machine.get("gemm_float64_gflops")})  # fmt: skip
    head = ("# Peers on the same data and machine\n\n"
            "Test errors on the held-out file, the whole training process (wall time, peak "
            "RSS), one MD step through each code's ASE calculator. Made by "
            "`benchmarks/peer_apax.py` and `benchmarks/peer_forcegp.py`; each row's command is "
            "in peers.jsonl.\n\n")  # fmt: skip
    return head + common.md_table(flat, COLUMNS)


def write_table(out: Path) -> None:
    rows = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    md = out.with_suffix(".md")
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(table(rows) + "\n")
    tmp.replace(md)
    print(f"wrote {md}", file=sys.stderr)


def md_times(model: Path, atoms, steps: int, warmup: int) -> dict:
    from forcegp.md import make_calculator

    plain = peer_apax.md_step_times(make_calculator(model), atoms, steps, warmup)
    # the calculator of forcegp md --max-force-std: the force std comes with every step
    with_std = peer_apax.md_step_times(make_calculator(model, monitor=True), atoms, steps, warmup)
    return {**plain, "md_step_ms_with_std": with_std["md_step_ms"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=Path, help=".npz or extxyz training file")
    p.add_argument("--test", type=Path, help=".npz or extxyz test file")
    p.add_argument("--energy-unit", default=None, help="unit of the files' energies (overrides)")
    p.add_argument("--n-train", type=int, default=None, help="first N structures of TRAIN (all)")
    p.add_argument("--n-test", type=int, default=None, help="first N structures of TEST (all)")
    p.add_argument("--flags", default="", help="extra forcegp train flags, one string")
    p.add_argument("--name", default=None, help="row label (default: TRAIN's file name)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL file to append to")
    p.add_argument("--md-steps", type=int, default=300, help="timed MD steps (300)")
    p.add_argument("--md-warmup", type=int, default=5, help="untimed MD steps first (5)")
    p.add_argument("--table-only", action="store_true", help="only rewrite the markdown table")
    args = p.parse_args(argv)
    if not args.table_only and (args.train is None or args.test is None):
        p.error("--train and --test are required")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.table_only:
        write_table(args.out)
        return None
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])])
    train = peer_apax.read_frames(args.train, args.energy_unit, args.n_train)
    test = peer_apax.read_frames(args.test, args.energy_unit, args.n_test)
    flags = shlex.split(args.flags)
    with tempfile.TemporaryDirectory(prefix="peer_forcegp_") as work:
        work = Path(work)
        train_file, test_file = work / "train.extxyz", work / "test.extxyz"
        peer_apax.write_extxyz(train_file, train)
        peer_apax.write_extxyz(test_file, test)
        model, metrics = work / "model.fgp", work / "test.json"
        forcegp = [sys.executable, "-m", "forcegp"]
        run = common.run_measured([*forcegp, "train", train_file, "-o", model, *flags])
        if run["rc"] != 0:
            raise SystemExit(f"forcegp train failed (rc {run['rc']}): {run['stderr'][-2000:]}")
        tested = common.run_measured([*forcegp, "test", model, test_file, "--json", metrics])
        if tested["rc"] != 0:
            raise SystemExit(f"forcegp test failed (rc {tested['rc']}): {tested['stderr'][-2000:]}")
        m = json.loads(metrics.read_text())
        atoms = peer_apax.to_atoms(test, labelled=False)[0]
        md = md_times(model, atoms, args.md_steps, args.md_warmup)
    row = peer_apax.row_head("forcegp", args, train, test)
    row |= {
        "settings": "forcegp train defaults" + (f" {args.flags}" if flags else ""),
        "energy_mae_mev": 1e3 * m["energy_mae"],
        "energy_rmse_mev": 1e3 * m["energy_rmse"],
        "forces_mae_mev_per_ang": 1e3 * m["forces_mae"],
        "forces_rmse_mev_per_ang": 1e3 * m["forces_rmse"],
        "forces_coverage_95": m.get("forces_coverage_95"),
        "forces_zms": m.get("forces_zms"),
        "train_seconds": run["wall_s"],
        "train_peak_rss_bytes": run["peak_rss_bytes"],
        "test_seconds": tested["wall_s"],
        **md,
    }
    peer_apax.record(args.out, row, command)
    write_table(args.out)
    return row


if __name__ == "__main__":
    main()
