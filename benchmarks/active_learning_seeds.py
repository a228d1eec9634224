"""Active learning against random picks, over several seeds: examples/active_learning.py once per
seed, as a user runs it, and the force MAE per round as mean and standard deviation over seeds.

    python benchmarks/active_learning_seeds.py                  # seeds 0 1 2, about 25 minutes
    python benchmarks/active_learning_seeds.py --seeds 0 1 2 3 4
    python benchmarks/active_learning_seeds.py --quick          # smoke run (EMT, tiny)

Each seed draws its own initial structures, MD starts and random picks. Rows: one JSON line per
seed in benchmarks/results/active_learning_seeds.jsonl (the example's rows, its command, the
commit and the machine); the .md table gives, per round, the mean ± standard deviation over the
seeds of that file's rows that share the newest row's arguments (each seed's newest run, with
its commit).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import common

EXAMPLE = common.ROOT / "examples" / "active_learning.py"
QUICK = ["--initial", "10", "--rounds", "1", "--pick", "4", "--test", "5", "--valid", "5",
         "--batch-size", "4",
         "--md-runs", "1", "--md-steps", "10", "--interval", "2", "--reference", "emt",
         "--inducing", "8", "--explicit-dim", "4", "--epochs", "1"]  # fmt: skip


def table(rows: list[dict]) -> str:
    import numpy as np

    newest = rows[-1]["example_args"]
    # The newest completed run of each seed with the newest row's arguments, whatever its commit
    # (each row names it: a seed added later joins the earlier ones).
    by_seed = {r["seed"]: r for r in rows if r["example_args"] == newest and "rounds" in r}
    runs = [by_seed[s] for s in sorted(by_seed)]
    commits = ", ".join(f"seed {r['seed']} {r['commit']}" for r in runs)
    lines = [
        f"Seeds {sorted(by_seed)}; reference {runs[-1]['reference']}; example "
        f"arguments `{' '.join(newest) or '(defaults)'}`; commits: {commits}; {runs[-1]['cpu']}.",
        "",
        "| round | structures | selected: force MAE (meV/Å) | random picks: force MAE (meV/Å) | "
        "selected / random | selected: 95% coverage |",
        "|---|---|---|---|---|---|",
    ]
    for i, first in enumerate(runs[0]["rounds"]):
        sel = np.array([r["rounds"][i]["mae"] for r in runs])
        cov = np.array([r["rounds"][i]["cov"] for r in runs])
        rnd = np.array([r["rounds"][i].get("random", np.nan) for r in runs])
        ratio = f"{np.mean(sel / rnd):.2f}" if np.all(np.isfinite(rnd)) else "–"
        rnd_text = f"{rnd.mean():.1f} ± {rnd.std():.1f}" if np.all(np.isfinite(rnd)) else "–"
        lines.append(
            f"| {first['round']} | {first['n']} | {sel.mean():.1f} ± {sel.std():.1f} | {rnd_text} | "
            f"{ratio} | {cov.mean():.1f}% |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--example-args", default="", help="extra arguments of the example, one string")
    common.add_common_args(ap)
    args = ap.parse_args(argv)
    out = common.results_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    extra = args.example_args.split() + (QUICK if args.quick else [])
    machine = common.machine_info()
    lines = out / "active_learning_seeds.jsonl"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            record = Path(work) / f"seed{seed}.json"
            cmd = [sys.executable, EXAMPLE, *extra, "--seed", str(seed), "--json", record,
                   "--workdir", Path(work) / f"md{seed}"]  # fmt: skip
            ran = common.run_measured(cmd)
            row = {"seed": seed, "example_args": extra, "rc": ran["rc"], "wall_s": ran["wall_s"]}
            if ran["rc"] == 0:
                row |= json.loads(record.read_text())
            else:
                row["error"] = ran["stderr"].strip()[-300:]
            rows = common.append_record(lines, row, machine, args.quick)
    common.write_results(
        "active_learning_seeds",
        {"quick": args.quick, "machine": machine, "rows": rows},
        "# Active learning against random picks, several seeds\n\n" + table(rows),
        out,
    )
    return 0 if all(r["rc"] == 0 for r in rows[-len(args.seeds) :]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
