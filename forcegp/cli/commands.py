"""``forcegp test / predict / info / md / select``: each parses its options, calls the library
and prints. Heavy imports (JAX, ASE) happen inside the commands, so ``--help`` stays fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..gp.config import MONITOR_STD_SKETCH
from .app import cli
from .display import format_summary, metrics_table, model_summary
from .options import check_output, reader_kwargs, reader_options


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
    from ..data import read_dataset
    from ..files import atomic_write, json_safe
    from ..modelfile import load_model
    from ..training.evaluation import evaluate

    if json_path is not None:
        check_output(json_path)
    if plot is not None:
        from ..plots import prepare_directory

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
        from ..plots import plot_test

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
    from ..data import read_dataset
    from ..files import write_extxyz_atomic
    from ..modelfile import load_model
    from ..training.evaluation import predict_dataset

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
    from ..files import json_safe
    from ..modelfile import load_model

    gp, header = load_model(model)
    summary = model_summary(gp, header)
    if as_json:
        click.echo(json.dumps(json_safe(summary), indent=2))
    else:
        click.echo(format_summary(model, summary))
    if plot is not None:
        from ..plots import plot_history

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
    "did it is written last, with info trigger=True. The std includes the noise, so set "
    "it above the model's typical value (forcegp predict shows it).",
)
@click.option(
    "--std-sketch",
    default=MONITOR_STD_SKETCH,
    show_default=True,
    type=click.IntRange(min=0),
    help="With --max-force-std: columns of the random projection that estimates the checked "
    "std; its upper bound is checked, which the exact std exceeds with probability 1e-3. "
    "0: the exact std, several times slower.",
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
    from ..md import read_start, run_md

    output = check_output(output)
    atoms = read_start(start, frame)
    steps = opts["steps"]
    if opts["std_sketch"] and opts["std_sketch"] < 30:
        raise click.BadParameter("must be 0 or at least 30", param_hint="--std-sketch")
    opts["std_sketch"] = opts["std_sketch"] or None
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
    help="Condition on each pick before the next (diverse batch), or plain top-n by the objective.",
)
@click.option(
    "--objective",
    type=click.Choice(["variance", "integrated"]),
    default="variance",
    show_default=True,
    help="variance: the frames whose own forces are most uncertain. integrated: the frames whose "
    "labels would lower the summed force variance of the targets most (typical and uncertain "
    "frames over unusual ones).",
)
@click.option(
    "--targets",
    "targets",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Structures whose force uncertainty --objective integrated lowers (repeatable; labels "
    "not needed). Default: the candidates themselves.",
)
@click.option(
    "--misfit",
    type=click.Choice(["noise", "error"]),
    default="noise",
    show_default=True,
    help="How a model's input-dependent noise counts: as noise that a label cannot lower, or as "
    "model error that labels remove nearby (the picks then follow the std the model reports).",
)
@reader_options
def select_command(
    model, candidates, count, output, batch_aware, objective, targets, misfit, **opts
) -> None:
    """Pick the frames of CANDIDATES whose labels would teach MODEL most.

    Greedy by posterior force variance (--objective); with --batch-aware each pick is treated as
    labelled before the next, so near-duplicates are not picked twice. Picked frames keep the
    candidates' reference labels (not model predictions from forcegp md) and get info
    select_rank, select_score (eV^2/Å^2), select_force_std (eV/Å) and, for --objective
    integrated, select_gain (eV^2/Å^2, the targets' summed force variance the pick removes).
    """
    from ..data import concatenate, read_dataset
    from ..files import write_extxyz_atomic
    from ..modelfile import load_model
    from ..select import label_note, picked_atoms, read_candidates, select_structures

    output = check_output(output)
    pool = read_candidates(candidates, **reader_kwargs(opts))
    gp, _ = load_model(model, numbers=pool.data.numbers)
    target_positions = None
    if targets:
        if objective != "integrated":
            raise click.BadParameter("used only by --objective integrated", param_hint="--targets")
        parts = [read_dataset(t, require_labels=False, **reader_kwargs(opts)) for t in targets]
        target_positions = concatenate(parts).positions  # positions only: no label checks
    selection = select_structures(
        gp, pool.data.positions, count, batch_aware=batch_aware, numbers=pool.data.numbers,
        objective=objective, targets=target_positions, misfit=misfit,
    )  # fmt: skip
    write_extxyz_atomic(output, picked_atoms(pool, selection))
    rms = selection.rms_force_std()
    click.echo(
        f"picked {count} of {pool.data.n_frames} candidates "
        f"({'batch-aware' if batch_aware else 'top-n'}, {objective}); RMS force std at pick "
        f"{rms[0]:.3g} .. {rms[-1]:.3g} eV/Å"
    )
    click.echo(f"wrote {output} ({label_note(pool, selection)})")
