"""``forcegp train``: its options are the library's Config and TrainSettings fields, with their
defaults read from those (jax-free) dataclasses."""

from __future__ import annotations

from pathlib import Path

import click

from ..gp.config import (
    AUTO,
    AUTO_DESCRIPTOR,
    BODY_SCALINGS,
    DESCRIPTORS,
    EXPLICIT_BLOCKS,
    LARGE_MOLECULE_ATOMS,
    PAIR_POWERS,
    Config,
)
from ..training.settings import PRECISIONS, TrainSettings
from .app import cli
from .display import TrainProgress, metrics_table
from .options import AutoInt, ByteSize, check_output, defaults, reader_kwargs, reader_options

CONFIG = defaults(Config)
SETTINGS = defaults(TrainSettings)


def _shown(name: str, fields: dict = CONFIG):
    """The default of ``name`` (a Config field, or of ``fields``) as the CLI shows and takes
    it ('auto' for AUTO)."""
    return "auto" if fields[name] == AUTO else fields[name]


@cli.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Model file to write."
)
@click.option(
    "--valid",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Validation data file (repeatable); default: a random part of DATA.",
)
@click.option(
    "--valid-fraction",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Fraction of DATA held out for validation when --valid is not given.",
)
@click.option(
    "--inducing",
    default=CONFIG["n_inducing"],
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of interpolation points M.",
)
@click.option(
    "--features",
    default=CONFIG["n_features"],
    show_default=True,
    type=click.IntRange(min=0),
    help="Deep-kernel feature dimension p (0 = no MLP).",
)
@click.option(
    "--width",
    default=_shown("width"),
    show_default=True,
    type=AutoInt(minimum=1),
    help="Width of the deep-kernel MLP (auto: 128 where permutation copies x (1 + 3N) is at "
    "most 350, else 64).",
)
@click.option(
    "--depth",
    default=CONFIG["depth"],
    show_default=True,
    type=click.IntRange(min=1),
    help="Hidden layers of the deep-kernel MLP.",
)
@click.option(
    "--descriptor",
    default=AUTO_DESCRIPTOR,
    show_default=True,
    type=click.Choice([AUTO_DESCRIPTOR, *DESCRIPTORS]),
    help="Invariant descriptor: 'inverse-distance' (every atom pair, one per structure), "
    "'atomic' (each atom's environment within --env-cutoff; the model is a sum over atoms) or "
    f"'cartesian' (not invariant); auto: inverse-distance up to {LARGE_MOLECULE_ATOMS} atoms, "
    "atomic beyond.",
)
@click.option(
    "--explicit",
    default=CONFIG["explicit"],
    show_default=True,
    type=click.Choice(list(EXPLICIT_BLOCKS)),
    help="Exact explicit-feature kernel block added to the soft interpolation: 'polynomial' "
    "(per-pair powers, local products, PCA products), 'quadratic' (PCA terms only) or 'none'.",
)
@click.option(
    "--explicit-dim",
    default=CONFIG["explicit_dim"],
    show_default=True,
    type=click.IntRange(min=1),
    help="Leading PCA components of the descriptor in the explicit block's product terms.",
)
@click.option(
    "--explicit-cubic",
    default=_shown("explicit_cubic"),
    show_default=True,
    type=AutoInt(),
    help="Leading PCA components in the cubic terms of the polynomial block (0: none; auto: "
    "as many as a cost budget in training structures and atoms allows, at most --explicit-dim).",
)
@click.option(
    "--local-cutoff",
    default=CONFIG["local_cutoff"],
    show_default=True,
    type=click.FloatRange(min=0),
    help="Polynomial block: products of atom pairs that share an atom and are on average "
    "shorter than this (Å).",
)
@click.option(
    "--pair-powers",
    default="auto",
    show_default=True,
    type=AutoInt(minimum=0),
    help="Polynomial block: powers v, v^2, ... of every atom pair's inverse distance (0: none; "
    f"auto: {PAIR_POWERS} up to {LARGE_MOLECULE_ATOMS} atoms, none beyond). These terms grow "
    "with the number of atom pairs.",
)
@click.option(
    "--pair-bound",
    default=CONFIG["pair_bound"],
    show_default=True,
    type=click.FloatRange(min=0, max=1e3, max_open=True),
    help="Atomic descriptor: take the pair powers of C tanh(z/C), z each pair's standardised "
    "inverse distance, C this bound (0: of z itself). Bounded, they cannot blow up where pairs "
    "come closer than in any training structure (a folding chain); 4 is a good start.",
)
@click.option(
    "--env-cutoff",
    default=CONFIG["env_cutoff"],
    show_default=True,
    type=click.FloatRange(min=1.0, max=50.0, max_open=True),
    help="Atomic descriptor: radius of each atom's environment (Å).",
)
@click.option(
    "--env-dim",
    default=CONFIG["env_dim"],
    show_default=True,
    type=click.IntRange(min=1),
    help="Atomic descriptor: components of each atom's power spectrum kept (per element).",
)
@click.option(
    "--env-products",
    default=CONFIG["env_products"],
    show_default=True,
    type=click.IntRange(min=1),
    help="Atomic descriptor: leading components whose pairwise products enter the explicit "
    "block (at most --env-dim; the products grow as its square).",
)
@click.option(
    "--env-radial",
    default=CONFIG["env_radial"],
    show_default=True,
    type=click.IntRange(min=2),
    help="Atomic descriptor: radial basis functions per neighbour element.",
)
@click.option(
    "--env-lmax",
    default=CONFIG["env_lmax"],
    show_default=True,
    type=click.IntRange(min=0),
    help="Atomic descriptor: highest angular momentum of the spherical harmonics.",
)
@click.option(
    "--env-neighbours",
    default=CONFIG["env_neighbours"],
    show_default=True,
    type=click.IntRange(min=0),
    help="Atomic descriptor: neighbour slots per atom, its nearest atoms (0: every other atom "
    "up to 64 atoms, beyond that the most atoms found within the cutoff plus a margin).",
)
@click.option(
    "--env-body4",
    default=CONFIG["env_body4"],
    show_default=True,
    type=click.IntRange(min=0),
    help="Atomic descriptor: body-ordered invariants (orders two to four, as in linear ACE) on "
    "this many mixed channels per l replace the explicit block's products (0: the products).",
)
@click.option(
    "--env-body4-lmax",
    default=CONFIG["env_body4_lmax"],
    show_default=True,
    type=click.IntRange(min=0),
    help="Atomic descriptor: highest l of the body-ordered invariants' couplings (at most --env-lmax).",
)
@click.option(
    "--env-body3",
    default=CONFIG["env_body3"],
    show_default=True,
    type=click.IntRange(min=0),
    help="Atomic descriptor: mixed channels of body order three (0: those of --env-body4; "
    "elements x --env-radial: every pair of channels).",
)
@click.option(
    "--body-scaling",
    default=CONFIG["body_scaling"],
    show_default=True,
    type=click.Choice(BODY_SCALINGS),
    help="Atomic descriptor with --env-body4: the prior's footing for the invariants, one RMS "
    "per element and body order (keeps the stronger channels' invariants larger) or per column.",
)
@click.option(
    "--symmetrize/--no-symmetrize",
    default=CONFIG["n_permutations"] > 1,
    show_default=True,
    help="Average the model over the molecule's graph automorphisms (methyl rotations, ring "
    "flips), as sGDML does: the largest accuracy gain on molecules with equivalent atoms; each "
    "permutation (up to 24) adds one deep-kernel evaluation per structure.",
)
@click.option(
    "--epochs",
    default=_shown("epochs", SETTINGS),
    show_default=True,
    type=AutoInt(minimum=1),
    help="Training epochs (auto: 60 for molecules whose permutation copies x (1 + 3N) are at "
    "most 350, else 40; 5 with --env-body4, whose exact block fits first).",
)
@click.option(
    "--train-permutations",
    default=SETTINGS["train_permutations"],
    show_default=True,
    type=click.IntRange(min=0),
    help="Symmetrised models: permutation copies each training step averages over, drawn at "
    "random per step (0: all). The fitted posterior and predictions always use all of them.",
)
@click.option(
    "--precision",
    default=SETTINGS["precision"],
    show_default=True,
    type=click.Choice(PRECISIONS),
    help="Precision of the feature rows in training steps (deep kernel and interpolation, the "
    "bulk of an epoch's work, faster in float32 on CPUs). The "
    "whitening by K_zz, the likelihood, the posterior fit and predictions are float64 either way.",
)
@click.option(
    "--misfit-noise/--constant-noise",
    default=SETTINGS["misfit_noise"],
    show_default=True,
    help="After the fit, let the noise grow where the training data constrain the model less "
    "(its posterior variance there), if that makes the validation data more likely: stds then "
    "grow with the error off the training distribution. --constant-noise: one noise level "
    "for energies and one for forces.",
)
@click.option(
    "--batch-size",
    default=SETTINGS["batch_size"],
    show_default=True,
    type=click.IntRange(min=1),
    help="Structures per optimisation step.",
)
@click.option(
    "--lr",
    default=SETTINGS["lr"],
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Learning rate of GP parameters.",
)
@click.option(
    "--lr-mlp",
    default=SETTINGS["lr_mlp"],
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Learning rate of the MLP.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of the split, initialisation and batch order.",
)
@reader_options
@click.option("--devices", type=click.IntRange(min=1), help="Devices to use (default: all).")
@click.option(
    "--max-memory",
    type=ByteSize(),
    help="Memory cap, e.g. 4G: chooses the posterior fit's chunks and refuses a training "
    "step that would exceed it, summed over the devices (default: 70% of the memory "
    "available: the GPUs' free memory on GPU, the machine's on CPU).",
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of an earlier run.")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="Checkpoint written after every epoch [default: MODEL.ckpt].",
)
def train(data, output, valid, valid_fraction, symmetrize, seed, devices, max_memory, resume,
          checkpoint, **opts) -> None:  # fmt: skip
    """Train a model on DATA (files of one molecule with energies and forces)."""
    from ..data import read_dataset
    from ..modelfile import save_model
    from ..training.pipeline import MAX_SYMMETRY_PERMUTATIONS, train_model

    output = check_output(output)
    checkpoint = check_output(checkpoint or output.with_name(output.name + ".ckpt"))
    read = reader_kwargs(opts)
    train_data = read_dataset(data, **read)
    valid_data = read_dataset(valid, **read) if valid else None
    config_kwargs = {
        "n_inducing": opts["inducing"],
        "n_features": opts["features"],
        "width": opts["width"],
        "depth": opts["depth"],
        "descriptor": opts["descriptor"],
        "explicit": opts["explicit"],
        "explicit_dim": opts["explicit_dim"],
        "explicit_cubic": opts["explicit_cubic"],
        "local_cutoff": opts["local_cutoff"],
        "pair_powers": opts["pair_powers"],
        "pair_bound": opts["pair_bound"],
        "env_cutoff": opts["env_cutoff"],
        "env_dim": opts["env_dim"],
        "env_products": opts["env_products"],
        "env_radial": opts["env_radial"],
        "env_lmax": opts["env_lmax"],
        "env_neighbours": opts["env_neighbours"],
        "env_body4": opts["env_body4"],
        "env_body4_lmax": opts["env_body4_lmax"],
        "env_body3": opts["env_body3"],
        "body_scaling": opts["body_scaling"],
        "n_permutations": MAX_SYMMETRY_PERMUTATIONS if symmetrize else 1,
    }
    settings = TrainSettings(
        epochs=opts["epochs"],
        batch_size=opts["batch_size"],
        lr=opts["lr"],
        lr_mlp=opts["lr_mlp"],
        train_permutations=opts["train_permutations"],
        precision=opts["precision"],
        misfit_noise=opts["misfit_noise"],
    )
    model, metadata = train_model(
        train_data,
        config_kwargs=config_kwargs,
        settings=settings,
        seed=seed,
        valid=valid_data,
        valid_fraction=valid_fraction,
        checkpoint=checkpoint,
        resume=resume,
        devices=devices,
        max_memory=max_memory,
        progress=TrainProgress(),
    )
    save_model(output, model, metadata=metadata)
    checkpoint.unlink(missing_ok=True)  # the model file now holds everything the run made
    validation = metadata["metrics"]["validation"]
    click.echo(metrics_table(validation, "validation:"))
    click.echo(f"wrote {output}")
