"""What symmetrisation costs: the compiled building blocks of training, fitting and prediction,
timed with and without the molecule's atom permutations.

    python benchmarks/sym_cost.py                          # ethanol, aspirin, toluene
    python benchmarks/sym_cost.py --molecules ethanol --repeats 20
    python benchmarks/sym_cost.py --quick                  # smoke test (tiny model, ethanol)

For each molecule (rMD17 train_01, default Config and TrainSettings) and n_permutations in
(1, 24) (the graph search caps the latter at the molecule's own count), after one compiled
warm-up call:

step      one Adam training step (forcegp.train.train_step) on a batch of the default size, on
          the DSoftKI block alone (stagewise training never sees the explicit block), with the
          default float32 feature rows and with TrainSettings.precision="float64";
rows fwd  the DSoftKI rows of one training batch (what the step's loss is built from), float64,
          forward;
rows grad the same with their gradient (the reverse pass of the step's rows);
rows      the full basis rows (1+D, K) of 64 structures, as the posterior fit streams them;
predict   energy, forces and their standard deviations of one structure (the ASE calculator's
          call), after the posterior is set to the identity (timing only).

Times are medians in milliseconds. Results: benchmarks/results/sym_cost.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MOLECULES = ("ethanol", "aspirin", "toluene")


def median_ms(fn, repeats: int) -> float:
    return 1e3 * float(np.median(common.call_seconds(fn, repeats)))


def measure(molecule: str, n_perm: int, repeats: int, quick: bool = False) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from forcegp.data import read_dataset
    from forcegp.gp import predict as predict_mod
    from forcegp.gp.basis import basis_rows, soft_cholesky
    from forcegp.gp.config import Config
    from forcegp.gp.likelihood import batch_rows
    from forcegp.gp.params import Posterior, strong_types
    from forcegp.training.initialise import initialize
    from forcegp.training.loop import optimizer, train_step
    from forcegp.training.settings import TrainSettings
    from forcegp.training.stagewise import soft_only

    data = read_dataset([common.rmd17_path(molecule, "train")], energy_unit="kcal/mol")
    n = len(data.energies)
    tiny = common.QUICK_CONFIG if quick else {}
    config = Config(n_atoms=data.positions.shape[1], n_permutations=n_perm, **tiny)
    model = initialize(
        config, data.numbers, data.positions, data.energies, data.forces, key=jax.random.key(0)
    )
    x = jnp.asarray(data.positions.reshape(n, -1))
    settings = TrainSettings()
    b = settings.batch_size
    y = jnp.zeros(b)
    g = jnp.zeros((b, x.shape[1]))
    soft = soft_only(model)
    hyper = strong_types(soft.hyper)
    opt_state = strong_types(optimizer(settings, hyper, n).init(eqx.filter(hyper, eqx.is_array)))
    rest = eqx.tree_at(lambda m: m.hyper, soft, None)

    def step(s=settings):
        out = train_step(hyper, opt_state, rest, x[:b], y, g, s, n)
        jax.block_until_ready(out)

    settings64 = dataclasses.replace(settings, precision="float64")

    weights = jax.random.normal(jax.random.key(1), (b, 1 + x.shape[1], config.n_inducing))
    batch_fwd = eqx.filter_jit(lambda h: batch_rows(rest, h, x[:b]))
    batch_grad = eqx.filter_jit(eqx.filter_grad(lambda h: jnp.sum(batch_rows(rest, h, x[:b]) * weights)))

    rows_fn = eqx.filter_jit(
        lambda m, xs: jax.vmap(
            lambda xi: basis_rows(m.config, m.stats, m.hyper, soft_cholesky(m.config, m.hyper), xi)
        )(xs)
    )

    def rows():
        jax.block_until_ready(rows_fn(model, x[:64]))

    k = model.config.n_basis
    fitted = eqx.tree_at(
        lambda m: m.posterior,
        model,
        Posterior(jnp.zeros(k), jnp.eye(k)),
        is_leaf=lambda v: v is None,
    )
    one = jnp.asarray(x[:1])
    folded = predict_mod.predictor(fitted)  # once, as the calculator and evaluation.predict do

    def predict():
        jax.block_until_ready(predict_mod.predict_batch(folded, one, True))

    return {
        "molecule": molecule,
        "n_permutations": model.n_copies,
        "K": k,
        "step_ms": median_ms(step, repeats),
        "step_f64_ms": median_ms(lambda: step(settings64), repeats),
        "rows_fwd_ms": median_ms(lambda: jax.block_until_ready(batch_fwd(hyper)), repeats),
        "rows_grad_ms": median_ms(lambda: jax.block_until_ready(batch_grad(hyper)), repeats),
        "rows64_ms": median_ms(rows, max(3, repeats // 4)),
        "predict_ms": median_ms(predict, repeats),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES))
    parser.add_argument("--repeats", type=int, default=10)
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    common.enable_x64()
    if args.quick:
        common.use_quick_compile_cache()
        args.molecules, args.repeats = args.molecules[:1], 1
    rows = []
    for molecule in args.molecules:
        for n_perm in (1, 24):
            row = measure(molecule, n_perm, args.repeats, args.quick)
            print(row, flush=True)
            rows.append(row)
    info = common.machine_info()
    columns = [
        ("molecule", "molecule"), ("n_permutations", "permutations"), ("K", "K"),
        ("step_ms", "train step (ms)"), ("step_f64_ms", "float64 rows step (ms)"),
        ("rows_fwd_ms", "step's rows fwd (ms)"),
        ("rows_grad_ms", "step's rows grad (ms)"), ("rows64_ms", "rows of 64 structures (ms)"),
        ("predict_ms", "E+F+std, one structure (ms)"),
    ]  # fmt: skip
    table = common.md_table(rows, columns)
    parts = ["# Cost of symmetrisation", "", common.machine_markdown(info), ""]
    if args.quick:
        parts += ["**--quick: tiny model (smoke test), numbers are not meaningful.**", ""]
    markdown = "\n".join([*parts, table])
    payload = {"quick": args.quick, "machine": info, "rows": rows}
    common.write_results("sym_cost", payload, markdown, common.results_dir(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
