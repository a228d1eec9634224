"""Reliability end to end: bad input through the command line, model predictions refused
as labels, out-of-distribution geometries, and a training run killed with SIGKILL then resumed.

The bad-input corpus is the readers' one from tests/test_data.py (``bad_file``); here every kind
goes through the CLI, which must exit 2 with one line naming the file and write nothing.
Models are tiny (tests/synthetic.py's CH2-OH fragment) so each test takes seconds; the SIGKILL
test runs three short ``python -m forcegp train`` processes (two at once) and is the slow one:
about 30 s with a warm compilation cache on 2 busy cores, 80 s without.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from synthetic import SMALL_NUMBERS, SMALL_REFERENCE, make_data, morse_energy
from test_cli import invoke, one_line_error
from test_data import BAD_KINDS, bad_file
from test_data import frames as ethanol_frames

from forcegp import ForceGPCalculator
from forcegp.data import read_dataset
from forcegp.errors import InputError, ModelFileError
from forcegp.modelfile import load_model, save_model

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--inducing", "8", "--features", "3", "--width", "8", "--depth", "1", "--explicit-dim", "4"]
MD = ["--steps", "2", "--temperature", "300", "--timestep", "0.5"]


def labelled(positions, numbers=SMALL_NUMBERS, **info) -> list[Atoms]:
    """Frames with exact Morse energies and forces (eV, eV/Å) of tests/synthetic.py."""
    grad = jax.jit(jax.value_and_grad(lambda x: morse_energy(x, numbers)))
    images = []
    for pos in positions:
        energy, g = grad(np.asarray(pos, dtype=np.float64).reshape(-1))
        atoms = Atoms(numbers=numbers, positions=pos)
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(energy), forces=-np.asarray(g).reshape(-1, 3)
        )
        atoms.info.update(info)
        images.append(atoms)
    return images


@pytest.fixture(scope="module")
def files(tmp_path_factory, fitted_small, small_problem):
    """A tiny CH2-OH model file, its (labelled) data, and ethanol data for another molecule."""
    root = tmp_path_factory.mktemp("reliability")
    save_model(root / "m.fgp", fitted_small, metadata={})
    ase.io.write(root / "data.extxyz", labelled(small_problem.positions))
    ase.io.write(root / "ethanol.extxyz", ethanol_frames(3))
    return root


# ----------------------------------------------------------------------------- model predictions


def md_frames(positions):
    """Frames as ``forcegp md`` writes them: the model's energy/forces, marked forcegp_predicted."""
    return labelled(positions, forcegp_predicted=True, energy_std=0.1, step=0)


def test_md_output_is_refused_as_labels(tmp_path, small_problem):
    path = tmp_path / "md.extxyz"
    ase.io.write(path, labelled(small_problem.positions[:2]) + md_frames(small_problem.positions[2:4]))
    with pytest.raises(InputError) as info:
        read_dataset(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: frame 2: ")
    assert "holds forcegp predictions, not reference labels" in message
    # Positions only (forcegp predict, select), or a caller that says so, still read them.
    assert read_dataset(path, require_labels=False).n_frames == 4
    assert read_dataset(path, allow_predicted=True).labelled
    # Reference labels stored under another key of the same frames are fine.
    images = ase.io.read(path, ":")
    for atoms in images:
        atoms.info["dft_energy"] = 1.0
        atoms.arrays["dft_forces"] = np.zeros((len(atoms), 3))
    ase.io.write(path, images)
    data = read_dataset(path, energy_key="dft_energy", forces_key="dft_forces")
    assert data.labelled and np.all(data.energies == 1.0)
    with pytest.raises(InputError, match="frame 2: holds forcegp predictions"):
        read_dataset(path, energy_key="energy", forces_key="dft_forces")


def test_predict_output_is_refused_unless_its_reference_keys_are_named(files, tmp_path):
    pred = tmp_path / "pred.extxyz"
    assert invoke("predict", files / "m.fgp", files / "data.extxyz", "-o", pred).exit_code == 0
    with pytest.raises(InputError, match=r"pred.extxyz: frame 0: holds forcegp predictions.*ref_energy"):
        read_dataset(pred)
    data = read_dataset(pred, energy_key="ref_energy", forces_key="ref_forces")
    np.testing.assert_allclose(data.energies, read_dataset(files / "data.extxyz").energies)


def test_cli_refuses_md_output_for_train_and_test_but_predicts_and_selects_it(files, tmp_path):
    md = tmp_path / "md.extxyz"
    positions = make_data(SMALL_NUMBERS, SMALL_REFERENCE, 4, seed=7, scale=0.2)[0]
    ase.io.write(md, md_frames(positions))
    out = tmp_path / "m2.fgp"
    err = one_line_error(invoke("train", md, "-o", out, *TINY, "--epochs", "1"))
    assert f"{md}: frame 0: holds forcegp predictions, not reference labels" in err
    assert not out.exists() and not Path(f"{out}.ckpt").exists()
    err = one_line_error(invoke("test", files / "m.fgp", md, "--json", tmp_path / "t.json"))
    assert "holds forcegp predictions" in err and not (tmp_path / "t.json").exists()
    result = invoke("predict", files / "m.fgp", md, "-o", tmp_path / "p.extxyz")
    assert result.exit_code == 0, result.output
    result = invoke("select", files / "m.fgp", md, "-n", "2", "-o", tmp_path / "s.extxyz")
    assert result.exit_code == 0, result.output
    assert all(a.calc is None for a in ase.io.read(tmp_path / "s.extxyz", ":"))


# ----------------------------------------------------------------------------- bad input via CLI

#: Kinds of bad data that forcegp predict (labels optional) reads without complaint.
LABEL_KINDS = {"no_energy", "no_forces"}


def outputs(tmp_path):
    return {
        "train": tmp_path / "out.fgp",
        "ckpt": tmp_path / "out.fgp.ckpt",
        "test": tmp_path / "out.json",
        "predict": tmp_path / "out.extxyz",
    }


def nothing_written(tmp_path, before):
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_data_through_every_reading_command(tmp_path, files, kind):
    path, frame = bad_file(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = outputs(tmp_path)
    commands = [
        ("train", path, "-o", out["train"], *TINY, "--epochs", "1"),
        ("test", files / "m.fgp", path, "--json", out["test"]),
    ]
    if kind not in LABEL_KINDS:
        commands.append(("predict", files / "m.fgp", path, "-o", out["predict"]))
    for args in commands:
        err = one_line_error(invoke(*args))
        assert path.name in err, (args[0], err)
        if frame is not None:
            assert f"frame {frame}" in err, (args[0], err)
        nothing_written(tmp_path, before)


def test_single_frame(tmp_path, files):
    one = tmp_path / "one.extxyz"
    ase.io.write(one, ase.io.read(files / "data.extxyz", ":1"))
    before = sorted(p.name for p in tmp_path.iterdir())
    err = one_line_error(invoke("train", one, "-o", tmp_path / "m.fgp", *TINY, "--epochs", "1"))
    assert "1 frame" in err and "at least 2" in err
    nothing_written(tmp_path, before)
    # One frame is enough to test or predict.
    assert invoke("test", files / "m.fgp", one).exit_code == 0
    assert invoke("predict", files / "m.fgp", one, "-o", tmp_path / "p.extxyz").exit_code == 0


def test_single_frame_message_names_the_file(tmp_path, files):
    one = tmp_path / "one.extxyz"
    ase.io.write(one, ase.io.read(files / "data.extxyz", ":1"))
    err = one_line_error(invoke("train", one, "-o", tmp_path / "m.fgp", *TINY, "--epochs", "1"))
    assert "one.extxyz" in err


def model_variants(good: Path, trajectory: Path, root: Path) -> dict[str, Path]:
    """Broken model files, by name: missing, not one, cut, corrupted, of a newer format."""
    raw = good.read_bytes()
    line, payload = raw.split(b"\n", 1)
    header = json.loads(line)
    variants = {
        "missing": root / "missing.fgp",
        "directory": root / "dir.fgp",
        "empty": root / "empty.fgp",
        "garbage": root / "garbage.fgp",
        "truncated": root / "truncated.fgp",
        "header_only": root / "header_only.fgp",
        "flipped_byte": root / "flipped.fgp",
        "newer_version": root / "newer.fgp",
        "trajectory": root / "traj.fgp",
    }
    variants["directory"].mkdir()
    variants["empty"].write_bytes(b"")
    variants["garbage"].write_bytes(bytes(range(256)) * 8)
    variants["truncated"].write_bytes(raw[: len(raw) - 100])
    variants["header_only"].write_bytes(line + b"\n")
    flipped = bytearray(raw)
    flipped[-50] ^= 0x10
    variants["flipped_byte"].write_bytes(bytes(flipped))
    newer = json.dumps({**header, "format_version": header["format_version"] + 1}).encode()
    variants["newer_version"].write_bytes(newer + b"\n" + payload)
    variants["trajectory"].write_bytes(trajectory.read_bytes())
    return variants


def test_bad_model_files_through_every_command(tmp_path, files):
    root = tmp_path / "models"
    root.mkdir()
    variants = model_variants(files / "m.fgp", files / "data.extxyz", root)
    data = files / "data.extxyz"
    start = tmp_path / "start.extxyz"
    ase.io.write(start, ase.io.read(data, "0"))
    out = tmp_path / "out"
    for name, model in variants.items():
        commands = [
            ("info", model),
            ("test", model, data, "--json", f"{out}.json"),
            ("predict", model, data, "-o", f"{out}.extxyz"),
            ("md", model, start, "-o", f"{out}.md.extxyz", *MD),
            ("select", model, data, "-n", "2", "-o", f"{out}.sel.extxyz"),
        ]
        for args in commands:
            err = one_line_error(invoke(*args))
            assert str(model) in err, (name, args[0], err)
            assert not list(tmp_path.glob("out*")), (name, args[0])
    expected = {
        "missing": "not found",
        "directory": "is a directory",
        "newer_version": "made by a newer forcegp",
        "flipped_byte": "checksum mismatch",
        "truncated": "truncated or corrupted",
        "header_only": "truncated or corrupted",
    }
    for name, text in expected.items():
        assert text in one_line_error(invoke("info", variants[name])), name


def test_model_for_another_molecule(tmp_path, files):
    ethanol = files / "ethanol.extxyz"
    start = tmp_path / "start.extxyz"
    ase.io.write(start, ase.io.read(ethanol, "0"))
    out = tmp_path / "out"
    model = files / "m.fgp"
    commands = [
        ("test", model, ethanol, "--json", f"{out}.json"),
        ("predict", model, ethanol, "-o", f"{out}.extxyz"),
        ("md", model, start, "-o", f"{out}.md.extxyz", *MD),
        ("select", model, ethanol, "-n", "2", "-o", f"{out}.sel.extxyz"),
    ]
    for args in commands:
        err = one_line_error(invoke(*args))
        assert str(model) in err and "trained for CH3O" in err and "C2H6O" in err, err
        assert not list(tmp_path.glob("out*")), args[0]


def test_float64_model_with_jax_in_float32(files):
    """The CLI switches JAX to float64 first thing, so it loads float64 models even when the
    process started in float32; library callers that forgot get one line naming the file."""
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ModelFileError) as info:
            load_model(files / "m.fgp")
        message = str(info.value)
        assert "\n" not in message and str(files / "m.fgp") in message
        assert "float64" in message and "jax_enable_x64" in message
        result = invoke("info", files / "m.fgp")
        assert result.exit_code == 0, result.output
        assert jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", True)


# ----------------------------------------------------------------------------- out of distribution


def ood_geometries(seed: int = 0) -> dict[str, np.ndarray]:
    """Structures far from the training data (CH2-OH, Å)."""
    ref = SMALL_REFERENCE
    centre = ref.mean(axis=0)
    near = ref.copy()
    near[1] = near[0] + [1e-3, 0.0, 0.0]  # an H 0.001 Å from the C
    on_top = ref.copy()
    on_top[1] = on_top[0]  # exactly coincident
    return {
        "stretched x2": centre + 2.0 * (ref - centre),
        "stretched x3": centre + 3.0 * (ref - centre),
        "compressed x0.5": centre + 0.5 * (ref - centre),
        "scrambled": np.random.default_rng(seed).uniform(-2.0, 2.0, ref.shape),
        "nearly coincident": near,
        "coincident": on_top,
    }


#: OOD kinds whose largest force std must exceed the in-distribution one. For strongly stretched
#: structures the inverse-distance descriptor flattens out, so force stds fall back towards the
#: learned noise and only the energy std flags them.
FORCE_STD_RISES = ("compressed x0.5", "nearly coincident", "coincident")


def test_ood_geometries_through_the_calculator(fitted_small, small_problem):
    calc = ForceGPCalculator(fitted_small)

    def predict(positions):
        atoms = Atoms(numbers=SMALL_NUMBERS, positions=positions)
        atoms.calc = calc
        out = (
            atoms.get_potential_energy(),
            atoms.get_forces(),
            calc.get_property("energy_std", atoms),
            calc.get_property("forces_std", atoms),
        )
        for value in out:
            assert np.all(np.isfinite(value))
        return out

    usual = [predict(p) for p in small_problem.test_positions]
    energy_std = max(u[2] for u in usual)
    forces_std = max(u[3].max() for u in usual)
    floor = min(u[3].min() for u in usual)
    for name, positions in ood_geometries().items():
        _, _, e_std, f_std = predict(positions)
        assert e_std > 5 * energy_std, name
        assert f_std.min() > 0.9 * floor, name  # never more confident than near the data
        if name in FORCE_STD_RISES:
            assert f_std.max() > 2 * forces_std, name


def test_ood_geometries_through_predict_and_test(files, small_problem, tmp_path):
    geometries = ood_geometries(seed=1)
    usual = tmp_path / "usual.extxyz"
    ase.io.write(usual, labelled(small_problem.test_positions))
    ood = tmp_path / "ood.extxyz"
    ase.io.write(ood, [Atoms(numbers=SMALL_NUMBERS, positions=p) for p in geometries.values()])
    stds = {}
    for name, path in (("usual", usual), ("ood", ood)):
        out = tmp_path / f"{name}_pred.extxyz"
        result = invoke("predict", files / "m.fgp", path, "-o", out)
        assert result.exit_code == 0, result.output
        frames = ase.io.read(out, ":")
        for atoms in frames:
            assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()
            assert np.isfinite(atoms.arrays["forces_std"]).all()
        stds[name] = np.array([a.info["energy_std"] for a in frames])
    assert stds["ood"].min() > 5 * stds["usual"].max()
    # Reference labels exist for all but exactly coincident atoms (the Morse force is NaN there).
    labels = tmp_path / "ood_labelled.extxyz"
    ase.io.write(labels, labelled([p for n, p in geometries.items() if n != "coincident"]))
    result = invoke("test", files / "m.fgp", labels, "--json", tmp_path / "ood.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ood.json").read_text())
    for key in ("energy_mae", "forces_mae", "energy_std_mean", "forces_std_mean"):
        assert np.isfinite(metrics[key]), key


# ----------------------------------------------------------------------------- kill -9 and resume

#: Runs the CLI with a hook that slows training after epoch 1 and holds it after epoch 3 of 4, so
#: a SIGKILL sent once the checkpoint shows epoch 1 always lands before the run ends: while an
#: epoch runs, while a checkpoint is written, or while the hook waits.
SLOW_CLI = """
import sys, time
from forcegp.training import pipeline
save = pipeline.save_checkpoint
def slow(*args, epoch, **kwargs):
    save(*args, epoch=epoch, **kwargs)
    time.sleep(600 if epoch >= 3 else 0.2)
pipeline.save_checkpoint = slow
from forcegp.cli import main
main(sys.argv[1:])
"""


def subprocess_env() -> dict:
    """The environment of the CLI runs: that of the tests, sharing their compilation cache."""
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    if os.environ.get("FORCEGP_TEST_JAX_CACHE", "1") != "0":
        cache = os.path.join(tempfile.gettempdir(), f"forcegp-test-jax-cache-{os.getuid()}")
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def checkpoint_epoch(path: Path) -> int:
    from forcegp.errors import ForceGPError
    from forcegp.modelfile import CHECKPOINT_FORMAT, read_header

    if not path.exists():
        return 0
    try:
        return int(read_header(path, CHECKPOINT_FORMAT)["epoch"])
    except ForceGPError:  # not expected: checkpoints are replaced atomically
        return -1


def test_kill_9_then_resume_gives_the_uninterrupted_model(files, tmp_path):
    args = ["train", str(files / "data.extxyz"), *TINY, "--epochs", "4", "--batch-size", "4",
            "--valid-fraction", "0.25", "--seed", "3"]  # fmt: skip
    env = subprocess_env()
    run = {"cwd": tmp_path, "env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    full = subprocess.Popen([sys.executable, "-m", "forcegp", *args, "-o", "full.fgp"], **run)
    killed = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args, "-o", "run.fgp"], **run)
    checkpoint = tmp_path / "run.fgp.ckpt"
    try:
        deadline = time.monotonic() + 600
        while checkpoint_epoch(checkpoint) < 1:
            assert killed.poll() is None, killed.communicate()[1].decode()
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()
    epoch = checkpoint_epoch(checkpoint)
    assert 1 <= epoch <= 3, epoch
    assert not (tmp_path / "run.fgp").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "forcegp", *args, "-o", "run.fgp", "--resume"],
        **run, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"resuming from run.fgp.ckpt after epoch {epoch}" in resumed.stderr.decode()
    assert full.wait(timeout=600) == 0, full.communicate()[1].decode()
    assert not checkpoint.exists()

    def header(name):
        return json.loads((tmp_path / name).read_bytes().split(b"\n", 1)[0])

    a, b = header("full.fgp"), header("run.fgp")
    assert a["payload_sha256"] == b["payload_sha256"]  # bit-identical parameters and posterior
    assert a["history"] == b["history"] and a["metrics"] == b["metrics"]
    assert a["training"]["fingerprint"] == b["training"]["fingerprint"]
