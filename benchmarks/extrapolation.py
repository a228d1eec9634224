"""Errors inside and outside the training distribution of a flexible molecule.

    python benchmarks/extrapolation.py --molecule dha --n-train 333 --n-test 334 \
        --variants "descriptor=atomic env_body4=7 env_radial=6" \
                   "descriptor=atomic env_body4=7 env_radial=6 pair_powers=0"
    python benchmarks/extrapolation.py --quick          # smoke run (tiny)

Trains each variant (Config fields KEY=VALUE; 20 epochs) on every k-th frame of
data/xtb/<molecule>_train.npz (n_train frames spread over the whole trajectory) and predicts
every k-th frame of the independent test trajectory. A test frame is "inside" where its radius
of gyration lies within the training frames' range, "outside" elsewhere (DHA's test trajectory
folds: more compact than any training frame). Per variant and part: force MAE, its share of the
mean |force component|, energy MAE, force coverage at 95%, and the mean force std against the
RMS force error (std ratio: 1 where the std has the error's size). One JSON line per variant goes
to benchmarks/results/extrapolation.jsonl with the commit and the machine.
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np

QUICK = {"pair_powers": 0, "n_inducing": 8, "n_features": 4, "width": 8, "depth": 1,
         "env_dim": 4, "explicit_dim": 4}  # fmt: skip


def radius_of_gyration(positions: np.ndarray) -> np.ndarray:
    centred = positions - positions.mean(axis=1, keepdims=True)
    return np.sqrt(np.mean(np.sum(centred**2, axis=-1), axis=1))


def every(data, n: int):
    """n frames spread evenly over ``data`` (every k-th)."""
    step = max(1, data.n_frames // n)
    return data.subset(np.arange(0, data.n_frames, step)[:n])


def part_metrics(pred: dict, data, mask: np.ndarray) -> dict:
    """The library's prediction_metrics on the frames of ``mask``, in meV and percent, with the
    mean force std against the RMS force error."""
    from forcegp.training.evaluation import prediction_metrics

    if not mask.any():
        return {"n": 0}
    m = prediction_metrics({key: value[mask] for key, value in pred.items()}, data.subset(mask))
    return {
        "n": int(mask.sum()),
        "forces_mae_meV": 1e3 * m["forces_mae"],
        "forces_mae_percent": 100 * m["forces_mae"] / m["forces_mean_abs"],
        "energy_mae_meV": 1e3 * m["energy_mae"],
        "forces_coverage_95": m["forces_coverage_95"],
        "std_ratio": m["forces_std_mean"] / m["forces_rmse"],
    }


COLUMNS = [("molecule", "molecule"), ("variant", "variant"), ("n_train", "n train"),
           ("part", "part"), ("n", "frames"), ("forces_mae_meV", "F MAE (meV/Å)"),
           ("forces_mae_percent", "% of mean abs F"), ("energy_mae_meV", "E MAE (meV)"),
           ("forces_coverage_95", "F cov. 95"), ("std_ratio", "std ratio"),
           ("train_s", "train (s)"), ("commit", "commit")]  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecule", default="dha", choices=("ala3", "dha"))
    ap.add_argument("--n-train", type=int, default=333)
    ap.add_argument("--n-test", type=int, default=334)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--variants", nargs="+", default=["descriptor=atomic env_body4=7 env_radial=6"])
    common.add_common_args(ap)
    args = ap.parse_args(argv)
    common.enable_x64()
    from forcegp import TrainSettings, read_dataset, train_model
    from forcegp.training.evaluation import predict

    out = common.results_dir(args)
    machine = common.machine_info()
    folder = common.ROOT / "data" / "xtb"
    n_train, n_test = (40, 30) if args.quick else (args.n_train, args.n_test)
    train = every(read_dataset(folder / f"{args.molecule}_train.npz"), n_train)
    test = every(read_dataset(folder / f"{args.molecule}_test.npz"), n_test)
    rg_train, rg_test = radius_of_gyration(train.positions), radius_of_gyration(test.positions)
    inside = (rg_test >= rg_train.min()) & (rg_test <= rg_train.max())
    rows = []
    for variant in args.variants:
        options = common.config_options(variant.split())
        if args.quick:
            options = {**options, **QUICK}
        epochs = 1 if args.quick else args.epochs
        started = time.perf_counter()
        model, meta = train_model(train, config_kwargs=options,
                                  settings=TrainSettings(epochs=epochs), seed=0)  # fmt: skip
        seconds = time.perf_counter() - started
        pred = predict(model, test.positions, with_std=True)
        row = {
            "molecule": args.molecule,
            "variant": variant,
            "n_train": train.n_frames,
            "n_test": test.n_frames,
            "train_rg": [round(float(rg_train.min()), 3), round(float(rg_train.max()), 3)],
            "train_s": round(seconds, 1),
            "K": int(model.config.n_basis),
            **common.noise_record(meta["training"]["calibration"]),
            "all": part_metrics(pred, test, np.ones_like(inside)),
            "inside": part_metrics(pred, test, inside),
            "outside": part_metrics(pred, test, ~inside),
        }
        rows = common.append_record(out / "extrapolation.jsonl", row, machine, args.quick)
        print({k: row[k] for k in ("variant", "K", "train_s", "all", "inside", "outside")})
    parts = [{**r, "part": part, **r[part]} for r in rows for part in ("all", "inside", "outside")
             if r[part]["n"]]  # fmt: skip
    table = common.md_table(parts, COLUMNS)
    common.write_results(
        "extrapolation",
        {"quick": args.quick, "machine": machine, "rows": rows},
        "# Inside and outside the training distribution\n\n" + table,
        out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
