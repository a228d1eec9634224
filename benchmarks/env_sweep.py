"""The atomic explicit block's descriptor settings, each searched by the exact evidence.

    python benchmarks/env_sweep.py                                   # the variants below
    python benchmarks/env_sweep.py --variants "" "env_dim=64" "env_radial=12 env_lmax=6"
    python benchmarks/env_sweep.py --quick                           # smoke test (tiny model)
    python benchmarks/env_sweep.py --n 1000 --molecules toluene --searches newton-one
        --base descriptor=atomic pair_powers=3
        --variants "env_body4=7 env_radial=6 env_lmax=5 env_body4_lmax=5"   # (one command)

Each variant is a set of KEY=VALUE config settings on top of --base (the atomic descriptor
without pair powers). The model is the explicit block alone on the first --n structures of
rMD17 train_01 (the harness of evidence_starts.py); its block scales and noise levels are
chosen by the library's exact evidence search (L-BFGS from both starts, or the --searches
given: "newton-one" is Newton's method from one start, as the library's prefit), and its exact
posterior is tested on the 1000 structures of test_01. The block's size K, the NLL per
observation the search ends at (comparable across variants: the same observations) and the
test errors are reported.
Results: benchmarks/results/env_sweep.{json,md}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import evidence_starts  # noqa: E402

VARIANTS = [
    "",
    "env_dim=32",
    "env_dim=64",
    "env_radial=12",
    "env_lmax=6",
    "env_cutoff=4.0",
]

COLUMNS = [("molecule", "molecule"), ("n", "structures"), ("variant", "settings"), ("K", "K"),
           ("accumulate_s", "statistics (s)"), *evidence_starts.RESULT_COLUMNS]  # fmt: skip


def main() -> None:
    ap = evidence_starts.harness_args(__doc__, "env_sweep", ["two"])
    ap.add_argument("--base", nargs="*", default=evidence_starts.BASE_CONFIG)
    ap.add_argument("--variants", nargs="+", default=VARIANTS,
                    help='each one string of KEY=VALUE settings ("" for the base alone)')  # fmt: skip
    args = ap.parse_args()
    common.enable_x64()
    base = common.config_options(args.base)
    n = evidence_starts.structures(args)
    machine = common.machine_info()
    rows = []
    for variant in args.variants:
        quick = evidence_starts.QUICK if args.quick else {}
        overrides = base | quick | common.config_options(variant.split())
        for m in args.molecules:
            for row in evidence_starts.run(m, n, overrides, args.quick, searches=args.searches):
                rows.append(row | {"variant": variant or "(base)"})
    intro = (
        f"base {base}; explicit block alone (a one-point DSoftKI block without MLP), block "
        f"scales and noise levels from the exact evidence (searches: {args.searches})."
    )
    title = "Atomic explicit block: descriptor settings under the exact evidence"
    common.write_table(args.name, args, machine, title, intro, rows, COLUMNS)


if __name__ == "__main__":
    main()
