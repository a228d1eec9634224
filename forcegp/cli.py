"""The ``forcegp`` command: train, test, predict, info.

Each command parses its options, calls :mod:`forcegp.workflow` / :mod:`forcegp.io`, and prints.
Errors are reported by :class:`forcegp.cli_common.ForceGPGroup` as one line
``forcegp: error: <message>`` with exit status 2 for bad input (1 for numerical or resource
failures, 130 for Ctrl-C); ``--debug`` adds the traceback. Output files are written atomically,
so a failed command leaves none behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli_common import (
    AutoInt,
    ByteSize,
    ForceGPGroup,
    TrainProgress,
    check_output,
    defaults,
    enable_x64,
    format_summary,
    metrics_table,
    model_summary,
    reader_kwargs,
    reader_options,
)
from .descriptors import DESCRIPTORS
from .model import AUTO, EXPLICIT_BLOCKS, Config
from .train import PRECISIONS, TrainSettings

CONFIG = defaults(Config)
SETTINGS = defaults(TrainSettings)


def _shown(name: str, fields: dict = CONFIG):
    """The default of ``name`` (a Config field, or of ``fields``) as the CLI shows and takes
    it ('auto' for AUTO)."""
    return "auto" if fields[name] == AUTO else fields[name]


def _version() -> str:
    from . import __version__

    return __version__


@click.group(cls=ForceGPGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(version=_version(), prog_name="forcegp")
def cli(debug: bool) -> None:
    """Gaussian-process force fields with calibrated uncertainties (DSoftKI).

    Energies are in eV, lengths in Å and forces in eV/Å throughout.
    """
    enable_x64()  # also here, for callers that invoke the group directly (CliRunner)


def main(argv=None) -> None:
    """Console entry point (``forcegp`` and ``python -m forcegp``)."""
    enable_x64()  # first thing: models are float64
    cli.main(args=argv, prog_name="forcegp")


# ----------------------------------------------------------------------------- train


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
    default=CONFIG["descriptor"],
    show_default=True,
    type=click.Choice(DESCRIPTORS),
    help="Invariant descriptor of a structure.",
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
    default=CONFIG["pair_powers"],
    show_default=True,
    type=click.IntRange(min=0, max=8),
    help="Polynomial block: powers v, v^2, ... of every atom pair's inverse distance (0: none). "
    "These terms grow with the number of atom pairs: lower it for molecules beyond about 50 atoms.",
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
    "most 350, else 40).",
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
    "bulk of an epoch's work; float32 steps took a third less time on a 2-core CPU). The "
    "whitening by K_zz, the likelihood, the posterior fit and predictions are float64 either way.",
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
    from .data import read_dataset
    from .io import save_model
    from .workflow import MAX_SYMMETRY_PERMUTATIONS, train_model

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
        "n_permutations": MAX_SYMMETRY_PERMUTATIONS if symmetrize else 1,
    }
    settings = TrainSettings(
        epochs=opts["epochs"],
        batch_size=opts["batch_size"],
        lr=opts["lr"],
        lr_mlp=opts["lr_mlp"],
        train_permutations=opts["train_permutations"],
        precision=opts["precision"],
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


# ----------------------------------------------------------------------------- test


@cli.command("test")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    help="Also write the metrics (eV, eV/Å) to this JSON file.",
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    help="Directory for parity and calibration plots (PNG; needs matplotlib).",
)
@reader_options
def test_command(model, data, json_path, plot, **opts) -> None:
    """Errors and uncertainty calibration of MODEL on labelled DATA."""
    from .data import atomic_write, read_dataset
    from .io import json_safe, load_model
    from .workflow import evaluate

    if json_path is not None:
        check_output(json_path)
    if plot is not None:
        from .plots import prepare_directory

        prepare_directory(plot)  # fails now, not after the evaluation, without matplotlib
    dataset = read_dataset(data, **reader_kwargs(opts))
    gp, _ = load_model(model, numbers=dataset.numbers)
    metrics = evaluate(gp, dataset)
    click.echo(metrics_table(metrics, f"{model} on {', '.join(map(str, data))}:"))
    if json_path is not None:
        record = {
            **metrics,
            "model": str(model),
            "data": [str(p) for p in data],
            "fingerprint": dataset.fingerprint(),
            "units": {"energy": "eV", "forces": "eV/Ang"},
        }
        text = json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n"
        with atomic_write(json_path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        click.echo(f"wrote {json_path}")
    if plot is not None:
        from .plots import plot_test

        title = f"{model.name} on {dataset.n_frames} frames"
        for path in plot_test(gp, dataset, plot, title=title):
            click.echo(f"wrote {path}")


# ----------------------------------------------------------------------------- predict


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="extxyz file to write: energy, forces, energy_std, forces_std per frame.",
)
@reader_options
def predict(model, data, output, **opts) -> None:
    """Predict energies, forces and their standard deviations for DATA (labels not needed)."""
    from .data import read_dataset, write_extxyz_atomic
    from .io import load_model
    from .workflow import predict_dataset

    output = check_output(output)
    dataset = read_dataset(data, require_labels=False, **reader_kwargs(opts))
    gp, _ = load_model(model, numbers=dataset.numbers)
    write_extxyz_atomic(output, predict_dataset(gp, dataset))
    click.echo(f"wrote {output} ({dataset.n_frames} frames)")


# ----------------------------------------------------------------------------- info


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    help="Directory for the training-history plot (PNG; needs matplotlib).",
)
def info(model, as_json, plot) -> None:
    """Describe MODEL: molecule, training data, settings, hyperparameters, history."""
    from .io import json_safe, load_model

    gp, header = load_model(model)
    summary = model_summary(gp, header)
    if as_json:
        click.echo(json.dumps(json_safe(summary), indent=2))
    else:
        click.echo(format_summary(model, summary))
    if plot is not None:
        from .plots import plot_history

        scale = float(gp.stats.energy_scale)
        noise = (float(gp.hyper.noise_energy), float(gp.hyper.noise_force))
        for path in plot_history(header, plot, energy_scale=scale, final_noise=noise, title=model.name):
            click.echo(f"wrote {path}", err=as_json)  # keep stdout pure JSON with --json


# ----------------------------------------------------------------------------- md


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("start", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="extxyz to write.")
@click.option("--steps", required=True, type=click.IntRange(min=1), help="MD steps to run.")
@click.option("--temperature", required=True, type=click.FloatRange(min=0), help="Temperature (K).")
@click.option(
    "--timestep", required=True, type=click.FloatRange(min=0, min_open=True), help="Step (fs)."
)
@click.option(
    "--thermostat",
    default="langevin",
    show_default=True,
    type=click.Choice(["langevin", "nve"]),
    help="Langevin (NVT) or velocity Verlet (NVE).",
)
@click.option(
    "--friction",
    default=0.01,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Langevin friction (1/fs).",
)
@click.option(
    "--interval",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Write every K-th step.",
)
@click.option(
    "--max-force-std",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop when a force component's predicted std exceeds this (eV/Å); the frame that "
    "did it is written last, with info trigger=True. The std includes the learned noise, so set "
    "it above the model's typical value (forcegp predict shows it).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of velocities and noise.")
@click.option(
    "--frame",
    default=0,
    show_default=True,
    type=int,
    help="Frame of START to start from (-1 = last).",
)
def md(model, start, output, frame, **opts) -> None:
    """Molecular dynamics with MODEL from a structure in START, watching the uncertainty.

    Frames carry the predicted energy and forces and their stds (info energy_std, arrays
    forces_std). The file is written atomically when the run ends, stops or is interrupted.
    """
    from .md import read_start, run_md

    output = check_output(output)
    atoms = read_start(start, frame)
    steps = opts["steps"]
    with click.progressbar(length=steps, label="md", file=sys.stderr, show_pos=True) as bar:
        summary = run_md(model, atoms, output, progress=lambda n: bar.update(n - bar.pos), **opts)
    click.echo(summary.message())


# ----------------------------------------------------------------------------- select


@cli.command("select")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("candidates", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-n", "count", required=True, type=click.IntRange(min=1), help="Frames to pick.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="extxyz to write.")
@click.option(
    "--batch-aware/--greedy-std",
    default=True,
    show_default=True,
    help="Condition on each pick before the next (diverse batch), or plain top-n by force std.",
)
@reader_options
def select_command(model, candidates, count, output, batch_aware, **opts) -> None:
    """Pick the frames of CANDIDATES whose labels would teach MODEL most.

    Greedy maximum posterior force variance; with --batch-aware each pick is treated as labelled
    before the next, so near-duplicates are not picked twice. Picked frames keep the candidates'
    reference labels (not model predictions from forcegp md) and get info select_rank,
    select_score (eV^2/Å^2) and select_force_std (eV/Å).
    """
    from .data import write_extxyz_atomic
    from .io import load_model
    from .select import label_note, picked_atoms, read_candidates, select_structures

    output = check_output(output)
    pool = read_candidates(candidates, **reader_kwargs(opts))
    gp, _ = load_model(model, numbers=pool.data.numbers)
    selection = select_structures(
        gp, pool.data.positions, count, batch_aware=batch_aware, numbers=pool.data.numbers
    )
    write_extxyz_atomic(output, picked_atoms(pool, selection))
    rms = selection.rms_force_std()
    click.echo(
        f"picked {count} of {pool.data.n_frames} candidates "
        f"({'batch-aware' if batch_aware else 'top-n'}); RMS force std at pick "
        f"{rms[0]:.3g} .. {rms[-1]:.3g} eV/Å"
    )
    click.echo(f"wrote {output} ({label_note(pool, selection)})")
