"""Train a ForceGP on rMD17 ethanol through the library API and test it.

    python examples/train_ethanol.py                      # small and quick (a few minutes, CPU)
    python examples/train_ethanol.py --frames 1000 --epochs 40 --inducing 256 \
        -o ethanol.fgp                                    # the forcegp train defaults

The same as ``forcegp train data/ethanol_train.extxyz -o ethanol.fgp`` followed by ``forcegp test
ethanol.fgp data/ethanol_test.extxyz``, spelled out: read, train, save, evaluate, print.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

DATA = Path(__file__).resolve().parent.parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("ethanol.fgp"))
    parser.add_argument("--frames", type=int, default=200, help="training frames (of 1000)")
    parser.add_argument("--test-frames", type=int, default=1000, help="test frames (of 1000)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--inducing", type=int, default=64)
    parser.add_argument("--explicit-dim", type=int, default=36)
    parser.add_argument(
        "--symmetrize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average over the molecule's atom permutations (at most 24; the default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    jax.config.update("jax_enable_x64", True)  # forcegp models are float64: first thing
    import numpy as np

    from forcegp import TrainSettings, evaluate, read_dataset, save_model, train_model
    from forcegp.training.pipeline import MAX_SYMMETRY_PERMUTATIONS

    train = read_dataset(DATA / "ethanol_train.extxyz")
    test = read_dataset(DATA / "ethanol_test.extxyz")
    rng = np.random.default_rng(args.seed)
    train = train.subset(np.sort(rng.permutation(train.n_frames)[: args.frames]))
    test = test.subset(np.arange(min(args.test_frames, test.n_frames)))
    print(f"training on {train.n_frames} frames, testing on {test.n_frames} (rMD17 ethanol)")

    def progress(event: str, info: dict) -> None:
        if event == "epoch":
            print(f"  epoch {info['epoch']}/{info['epochs']}  loss {info['loss']:.4f}")

    started = time.perf_counter()
    model, metadata = train_model(
        train,
        config_kwargs={
            "n_inducing": args.inducing,
            "explicit_dim": args.explicit_dim,
            "n_permutations": MAX_SYMMETRY_PERMUTATIONS if args.symmetrize else 1,
        },
        settings=TrainSettings(epochs=args.epochs),
        seed=args.seed,
        progress=progress,
    )
    print(f"trained in {time.perf_counter() - started:.0f} s")
    save_model(args.output, model, metadata=metadata)
    print(f"wrote {args.output}")

    metrics = evaluate(model, test)
    print(f"test ({test.n_frames} frames):")
    print(f"  energy MAE          {1e3 * metrics['energy_mae']:8.2f} meV")
    print(f"  forces MAE          {1e3 * metrics['forces_mae']:8.2f} meV/Å")
    print(f"  forces RMSE         {1e3 * metrics['forces_rmse']:8.2f} meV/Å")
    print(f"  forces 95% coverage {100 * metrics['forces_coverage_95']:8.1f} %")
    print(f"  mean force std      {1e3 * metrics['forces_std_mean']:8.2f} meV/Å")


if __name__ == "__main__":
    main()
