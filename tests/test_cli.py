"""The forcegp command through CliRunner: train -> test -> predict -> info, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import click
import jax
import pytest
from click.testing import CliRunner

from forcegp.cli import cli
from forcegp.cli.app import CACHE_MAX_BYTES, compile_cache_settings
from forcegp.cli.options import AutoInt, ByteSize, defaults
from forcegp.data import read_dataset
from forcegp.files import write_extxyz_atomic
from forcegp.gp.config import LARGE_MOLECULE_ATOMS, Config
from forcegp.training import evaluation, pipeline
from forcegp.training.budget import size_defaults
from forcegp.training.settings import TrainSettings

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--inducing", "8", "--features", "4", "--width", "8", "--depth", "1",
    "--explicit-dim", "4", "--no-symmetrize", "--epochs", "2", "--batch-size", "8",
    "--valid-fraction", "0.2",
]  # fmt: skip


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, code=2) -> str:
    """The one error line of a failed command: exit ``code``, no traceback, nothing after it."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    # Progress lines may come first; the error is one line, the last, and has no traceback.
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("forcegp: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    return errors[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """40 ethanol frames as extxyz (from the example data, or from the published npz)."""
    path = tmp_path_factory.mktemp("cli")
    source = ROOT / "data" / "ethanol_train.extxyz"
    if source.exists():
        data = read_dataset(source, index="0:40")
    else:  # pragma: no cover - only without the example data
        npz = "/work/shared/data/published/rmd17_ethanol_train_01.npz"
        data = read_dataset(npz, energy_unit="kcal/mol", index="0:40")
    write_extxyz_atomic(path / "small.extxyz", data.to_atoms())
    return path


@pytest.fixture(scope="module")
def model(workdir):
    m = workdir / "m.fgp"
    result = invoke("train", workdir / "small.extxyz", "-o", m, *TINY, "--pair-powers", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    return m, result


def test_train(model):
    path, result = model
    assert path.exists()
    assert not Path(str(path) + ".ckpt").exists()  # removed once the model is written
    assert f"wrote {path}" in result.stdout
    assert "forces MAE" in result.stdout and "meV/Å" in result.stdout
    assert "epoch 2/2" in result.stderr and "loss" in result.stderr


def test_test_json(workdir, model):
    out = workdir / "metrics.json"
    result = invoke("test", model[0], workdir / "small.extxyz", "--json", out)
    assert result.exit_code == 0, result.output
    assert "energy MAE" in result.stdout and "meV" in result.stdout
    metrics = json.loads(out.read_text())
    for key in ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse",
                "energy_coverage_95", "forces_coverage_95"):  # fmt: skip
        assert isinstance(metrics[key], float) and metrics[key] >= 0
    assert metrics["n_frames"] == 40
    assert 0 <= metrics["forces_coverage_95"] <= 1


def test_train_an_atomic_model_and_report_it(workdir):
    """--descriptor atomic with body-ordered invariants trains from the command line, and info
    names the descriptor and the body orders' channels."""
    path = workdir / "atomic.fgp"
    result = invoke("train", workdir / "small.extxyz", "-o", path, *TINY, "--descriptor", "atomic",
                    "--env-dim", "4", "--env-cutoff", "4.0", "--env-radial", "2", "--env-lmax",
                    "1", "--env-body4", "2", "--env-body4-lmax", "1", "--env-body3", "4",
                    "--pair-bound", "2")  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(invoke("info", path, "--json").stdout)
    config = info["config"]
    assert config["descriptor"] == "atomic" and config["n_species"] == 3
    assert config["env_dim"] == 4 and config["env_cutoff"] == 4.0 and config["n_permutations"] == 1
    assert (config["env_body4"], config["env_body3"], config["env_body4_lmax"]) == (2, 4, 1)
    assert config["pair_bound"] == 2.0 and config["pair_powers"] == 3
    text = invoke("info", path).stdout
    assert "body orders 2-4: order 3 on 4 channels, 4 on 2, l <= 1) + pair powers 3 bounded by 2" in text


def test_predict(workdir, model):
    out = workdir / "pred.extxyz"
    result = invoke("predict", model[0], workdir / "small.extxyz", "-o", out)
    assert result.exit_code == 0, result.output
    frames = ase.io.read(out, ":")
    assert len(frames) == 40
    assert frames[0].info["energy_std"] > 0
    assert frames[0].arrays["forces_std"].shape == (9, 3)
    assert frames[0].get_forces().shape == (9, 3)


def test_info(model):
    result = invoke("info", model[0])
    assert result.exit_code == 0, result.output
    for text in ("C2H6O", "noise energy", "misfit noise", "meV/Å", "lengthscales", "fingerprint",
                 "jax"):  # fmt: skip
        assert text in result.stdout
    assert "MLP width 8, explicit polynomial (PCA 4, cubic " in result.stdout  # resolved sizes
    result = invoke("info", model[0], "--json")
    summary = json.loads(result.stdout)
    assert summary["numbers"] == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    assert summary["training"]["n_structures"] == 32
    assert summary["hyperparameters"]["noise_forces_eV_per_Ang"] > 0
    gamma = summary["training"]["calibration"]["misfit_gamma"]
    assert summary["hyperparameters"]["misfit_gamma"] == gamma
    assert summary["history"]["epochs"] == 2
    assert summary["config"]["pair_powers"] == 2  # --pair-powers reaches the model


def test_nonexistent_file(workdir):
    out = workdir / "none.fgp"
    err = one_line_error(invoke("train", workdir / "missing.extxyz", "-o", out, *TINY), 2)
    assert "missing.extxyz" in err
    assert not out.exists() and not Path(str(out) + ".ckpt").exists()
    err = one_line_error(invoke("test", workdir / "missing.fgp", workdir / "small.extxyz"), 2)
    assert "missing.fgp" in err and "not found" in err
    out = workdir / "none.extxyz"
    one_line_error(invoke("predict", workdir / "missing.fgp", workdir / "small.extxyz", "-o", out), 2)
    assert not out.exists()


def test_too_many_devices(workdir):
    out = workdir / "dev.fgp"
    err = one_line_error(
        invoke("train", workdir / "small.extxyz", "-o", out, *TINY, "--devices", "99"), 1
    )
    assert "--devices 99" in err
    assert not out.exists()


def test_bad_inputs(workdir, model):
    # A model file that is not one.
    err = one_line_error(invoke("info", workdir / "small.extxyz"), 2)
    assert "not a forcegp model file" in err
    # Data of another molecule.
    other = workdir / "water.extxyz"
    atoms = ase.io.read(workdir / "small.extxyz", "0:2")
    write_extxyz_atomic(other, [a[[2, 7, 8]] for a in atoms])
    err = one_line_error(invoke("predict", model[0], other, "-o", workdir / "w.extxyz"), 2)
    assert "trained for C2H6O" in err and not (workdir / "w.extxyz").exists()
    # An output directory that does not exist: refused before any work.
    one_line_error(invoke("train", workdir / "small.extxyz", "-o", workdir / "no" / "m.fgp"), 2)
    # Click's own usage errors exit with 2 too.
    result = invoke("train", workdir / "small.extxyz", "-o", workdir / "x.fgp", "--inducing", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = invoke("train", workdir / "small.extxyz", "-o", "x.fgp", "--max-memory", "lots")
    assert result.exit_code == 2
    # Settings that do not fit this molecule are named by their flags.
    body = ["--descriptor", "atomic", "--env-body4", "40"]
    err = one_line_error(invoke("train", workdir / "small.extxyz", "-o", workdir / "x.fgp", *body), 2)
    assert "--env-body4=40 mixed channels" in err and "--env-radial=" in err, err
    assert not (workdir / "x.fgp").exists()
    bounded = ["--descriptor", "inverse-distance", "--pair-bound", "2"]
    err = one_line_error(invoke("train", workdir / "small.extxyz", "-o", workdir / "x.fgp", *bounded), 2)
    assert "--pair-bound=2" in err and "--descriptor='atomic'" in err, err
    assert not (workdir / "x.fgp").exists()
    # A memory cap the fit cannot meet: refused before training, with the basis size named.
    err = one_line_error(
        invoke("train", workdir / "small.extxyz", "-o", workdir / "x.fgp", "--max-memory", "1K"), 1
    )
    assert "--max-memory" in err and "K=" in err and not (workdir / "x.fgp").exists()
    # A cap the fit meets but a training step does not (its compiled plan): refused up front.
    step = ["--explicit", "none", "--inducing", "64", "--no-symmetrize", "--batch-size", "32"]
    err = one_line_error(
        invoke("train", workdir / "small.extxyz", "-o", workdir / "x.fgp", *step, "--max-memory", "1M"),
        1,
    )
    assert "training step" in err and "--batch-size" in err and not (workdir / "x.fgp").exists()


def test_debug_shows_the_traceback(workdir):
    result = invoke("--debug", "info", workdir / "missing.fgp")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "forcegp: error:" in result.stderr


def test_unexpected_errors_are_one_line(workdir, model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(evaluation, "evaluate", broken)
    err = one_line_error(invoke("test", model[0], workdir / "small.extxyz"), 1)
    assert "unexpected RuntimeError: boom" in err and "--debug" in err


def test_out_of_device_memory_is_one_line(workdir, model, monkeypatch):
    """An allocation XLA cannot make (a GPU's memory) is named as such, with what to lower."""

    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.50GiB.\nBufferAssignment"
        )

    monkeypatch.setattr(evaluation, "evaluate", exhausted)
    err = one_line_error(invoke("test", model[0], workdir / "small.extxyz"), 1)
    assert "out of device memory (RESOURCE_EXHAUSTED: Out of memory" in err
    assert "--max-memory" in err and "unexpected" not in err


def test_interrupted_training_resumes(workdir, monkeypatch):
    out = workdir / "r.fgp"
    checkpoint = workdir / "r.fgp.ckpt"
    real = pipeline.save_checkpoint

    def save_then_interrupt(*args, epoch, **kwargs):
        real(*args, epoch=epoch, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "save_checkpoint", save_then_interrupt)
    err = one_line_error(invoke("train", workdir / "small.extxyz", "-o", out, *TINY), 130)
    assert "interrupted after epoch 1" in err and "--resume" in err and str(checkpoint) in err
    assert checkpoint.exists() and not out.exists()
    monkeypatch.undo()
    result = invoke("train", workdir / "small.extxyz", "-o", out, *TINY, "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr
    assert out.exists() and not checkpoint.exists()


def test_defaults_come_from_the_dataclasses():
    params = {p.name: p for p in cli.commands["train"].params}
    config = defaults(Config)
    assert params["inducing"].default == config["n_inducing"]
    assert params["features"].default == config["n_features"]
    assert params["explicit_dim"].default == config["explicit_dim"]
    # The descriptor and pair powers depend on the molecule's size ('auto', budget.size_defaults):
    # up to LARGE_MOLECULE_ATOMS atoms they are Config's own.
    assert params["pair_powers"].default == params["descriptor"].default == "auto"
    small = size_defaults(LARGE_MOLECULE_ATOMS, {})
    assert small == {"descriptor": config["descriptor"], "pair_powers": config["pair_powers"]}
    # Config's -1 is the library's own choice, shown and accepted as 'auto'.
    assert config["width"] == config["explicit_cubic"] == -1
    assert params["width"].default == params["explicit_cubic"].default == "auto"
    assert TrainSettings().epochs == -1 and params["epochs"].default == "auto"
    assert params["precision"].default == TrainSettings().precision == "float32"
    assert params["lr"].default == TrainSettings().lr
    assert params["symmetrize"].default is (config["n_permutations"] > 1)


@pytest.mark.parametrize(
    "text, size", [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", 1.5 * 2**30), ("2e9", 2e9)]
)
def test_byte_sizes(text, size):
    assert ByteSize().convert(text, None, None) == size


def test_auto_integers():
    assert AutoInt().convert("auto", None, None) == -1
    assert AutoInt().convert(" AUTO ", None, None) == -1
    assert AutoInt().convert("0", None, None) == 0
    assert AutoInt(minimum=1).convert(128, None, None) == 128
    for bad, minimum in (("-1", 0), ("0", 1), ("wide", 1), ("1.5", 0)):
        with pytest.raises(click.BadParameter):
            AutoInt(minimum=minimum).convert(bad, None, None)


def test_bad_byte_size():
    with pytest.raises(click.BadParameter):
        ByteSize().convert("4 apples", None, None)


def test_python_dash_m_switches_on_float64(model):
    """The entry point itself (not CliRunner) enables x64 before loading a float64 model."""
    proc = subprocess.run(
        [sys.executable, "-m", "forcegp", "info", str(model[0]), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["formula"].startswith("C2H6O")
    proc = subprocess.run(
        [sys.executable, "-m", "forcegp", "info", "missing.fgp"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "forcegp: error: model file missing.fgp not found"


def test_compile_cache_settings():
    """The command line keeps XLA's compiled programs on disk unless told not to, and leaves a
    cache folder the user chose, or JAX settings of a process that imported JAX, alone."""
    home = {"XDG_CACHE_HOME": "/scratch/cache"}
    assert compile_cache_settings(home, jax_imported=False) == {
        "JAX_COMPILATION_CACHE_DIR": "/scratch/cache/forcegp/jax",
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(CACHE_MAX_BYTES),
    }
    chosen = compile_cache_settings({**home, "FORCEGP_COMPILE_CACHE": "/data/xla"}, False)
    assert chosen["JAX_COMPILATION_CACHE_DIR"] == "/data/xla"
    for off in ("0", "off", "OFF"):
        assert compile_cache_settings({**home, "FORCEGP_COMPILE_CACHE": off}, False) == {}
    assert compile_cache_settings({**home, "JAX_COMPILATION_CACHE_DIR": "/mine"}, False) == {}
    assert compile_cache_settings(home, jax_imported=True) == {}
    bounded = compile_cache_settings({**home, "JAX_COMPILATION_CACHE_MAX_SIZE": "1000"}, False)
    assert bounded["JAX_COMPILATION_CACHE_MAX_SIZE"] == "1000"


def test_the_command_keeps_its_compiled_programs(workdir, model, tmp_path):
    """A `forcegp test` process writes its compiled programs into the cache folder; a second one
    finds every program there (it writes none) and gives the same numbers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(FORCEGP_COMPILE_CACHE=str(tmp_path / "xla"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # fmt: skip
    outputs, entries = [], []
    for run in range(2):
        out = tmp_path / f"metrics{run}.json"
        proc = subprocess.run(
            [sys.executable, "-m", "forcegp", "test", str(model[0]), str(workdir / "small.extxyz"),
             "--json", str(out)],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        outputs.append(json.loads(out.read_text()))
        entries.append(sorted(p.name for p in (tmp_path / "xla").glob("*-cache")))
    assert entries[0], "no compiled program was written to the cache"
    assert entries[1] == entries[0]
    assert outputs[0]["forces_mae"] == outputs[1]["forces_mae"]


def test_help_imports_no_jax():
    """`forcegp --help` and every `forcegp <command> --help` answer without importing JAX,
    equinox, optax or ASE: the commands import the library only when they run."""
    code = (
        "import sys\n"
        "from forcegp.cli import main\n"
        "for args in ([], ['train'], ['test'], ['predict'], ['info'], ['md'], ['select']):\n"
        "    try:\n"
        "        main([*args, '--help'])\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, (args, exit.code)\n"
        "heavy = sorted(m for m in ('jax', 'equinox', 'optax', 'ase') if m in sys.modules)\n"
        "print('heavy:', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stderr
    assert "--max-memory" in proc.stdout and "--max-force-std" in proc.stdout


def test_library_parameters_are_named_as_flags():
    """Library messages name parameters (`n_inducing`); the command line shows its flags."""
    from forcegp.cli.options import FLAGS, flags_for

    message = "lower `n_inducing`, `explicit_dim` or `n_permutations`, or raise `max_memory`"
    assert (
        flags_for(message)
        == "lower --inducing, --explicit-dim or --no-symmetrize, or raise --max-memory"
    )
    assert flags_for("`unknown_name` stays readable") == "unknown_name stays readable"
    config_fields = {f for f in defaults(Config)} - {"n_atoms", "n_species", "n_local", "jitter"}
    settings_fields = set(defaults(TrainSettings)) - {"clip", "final_lr_fraction"}
    assert config_fields | settings_fields <= set(FLAGS)
