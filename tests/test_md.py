"""MD with the ForceGP calculator: frames and their stds survive extxyz, monitoring stops the run,
Ctrl-C keeps what was run, and the CLI command works (tiny untrained model, a few steps)."""

import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from click.testing import CliRunner

from forcegp.cli import cli
from forcegp.errors import InputError, ModelFileError
from forcegp.md import MDInterrupted, run_md
from forcegp.modelfile import save_model


@pytest.fixture(scope="module")
def start(small_problem):
    return Atoms(numbers=small_problem.numbers, positions=small_problem.positions[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory, fitted_small, start):
    root = tmp_path_factory.mktemp("md")
    save_model(root / "m.fgp", fitted_small, metadata={})
    ase.io.write(root / "start.extxyz", start)
    return root


def _read(path):
    return ase.io.read(path, ":")


@pytest.mark.parametrize("thermostat", ["nve", "langevin"])
def test_frames_with_stds_survive_extxyz(fitted_small, start, tmp_path, thermostat):
    out = tmp_path / "traj.extxyz"
    summary = run_md(
        fitted_small, start, out, steps=4, temperature=300, timestep=0.25, seed=0,
        thermostat=thermostat, interval=2,
    )  # fmt: skip
    assert summary.stopped == "completed" and summary.steps == 4 and summary.frames == 3
    frames = _read(out)
    assert [f.info["step"] for f in frames] == [0, 2, 4]
    n = len(start)
    for frame in frames:
        assert frame.info["forcegp_predicted"] is True
        assert frame.info["energy_std"] > 0
        assert frame.arrays["forces_std"].shape == (n, 3)
        assert np.all(frame.arrays["forces_std"] > 0)
        assert np.isfinite(frame.get_potential_energy())
        assert frame.get_forces().shape == (n, 3)
        assert "trigger" not in frame.info
    assert np.isclose(summary.max_force_std, max(f.arrays["forces_std"].max() for f in frames))
    assert not np.allclose(frames[0].positions, frames[-1].positions)  # it moved
    assert np.allclose(start.positions, frames[0].positions)  # from the start, not modifying it
    if thermostat == "nve":  # velocity Verlet conserves the total energy at a small step
        total = [f.get_potential_energy() + f.get_kinetic_energy() for f in frames]
        assert np.ptp(total) < 1e-2 * frames[0].get_kinetic_energy() + 1e-6


def test_same_seed_same_trajectory(fitted_small, start, tmp_path):
    runs = []
    for name in ("a", "b"):
        run_md(fitted_small, start, tmp_path / name, steps=2, temperature=300, timestep=0.5, seed=7)
        runs.append(_read(tmp_path / name)[-1].positions)
    assert np.array_equal(*runs)


def test_sketched_monitor_checks_an_upper_bound(fitted_small, start, tmp_path):
    """With std_sketch the run checks the std's upper bound: the same trajectory (forces do not
    depend on it), and a threshold that the exact std crosses at some step stops the sketched
    run at that step or earlier (here; in general but with probability 1e-3 per component)."""
    kw = dict(steps=6, temperature=600, timestep=0.5, seed=3)
    exact = run_md(fitted_small, start, tmp_path / "e", max_force_std=1e3, std_sketch=None, **kw)
    sketched = run_md(fitted_small, start, tmp_path / "s", max_force_std=1e3, std_sketch=30, **kw)
    assert exact.stopped == sketched.stopped == "completed"
    e_frames, s_frames = _read(tmp_path / "e"), _read(tmp_path / "s")
    for e, s in zip(e_frames, s_frames, strict=True):
        np.testing.assert_array_equal(e.positions, s.positions)
        assert not np.array_equal(e.arrays["forces_std"], s.arrays["forces_std"])  # estimated
    assert sketched.max_force_std >= exact.max_force_std
    after_start = [f.arrays["forces_std"].max() for f in e_frames[1:]]  # step 0 is not checked
    threshold = 0.5 * (max(after_start) + min(after_start))
    e_run = run_md(fitted_small, start, tmp_path / "e2", max_force_std=threshold, std_sketch=None, **kw)
    s_run = run_md(fitted_small, start, tmp_path / "s2", max_force_std=threshold, std_sketch=30, **kw)
    assert e_run.stopped == "uncertain" and s_run.stopped == "uncertain"
    assert s_run.trigger_step <= e_run.trigger_step


def test_tiny_max_force_std_stops_at_step_1_cli(files):
    out = files / "stopped.extxyz"
    result = CliRunner().invoke(
        cli,
        ["md", str(files / "m.fgp"), str(files / "start.extxyz"), "-o", str(out),
         "--steps", "50", "--temperature", "300", "--timestep", "0.5", "--interval", "10",
         "--max-force-std", "1e-9", "--thermostat", "nve"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "stopped at step 1" in result.output and "eV/Å" in result.output
    frames = _read(out)
    assert [f.info["step"] for f in frames] == [0, 1]
    assert frames[-1].info["trigger"] is True
    assert frames[-1].arrays["forces_std"].max() > 1e-9
    assert not list(files.glob(".stopped.extxyz.*"))  # no temporary file left


def test_ctrl_c_saves_frames_run_so_far(fitted_small, start, tmp_path):
    out = tmp_path / "traj.extxyz"

    def interrupt(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(MDInterrupted, match="interrupted after 3 of 10 steps") as err:
        run_md(
            fitted_small, start, out, steps=10, temperature=300, timestep=0.5, seed=0,
            progress=interrupt,
        )  # fmt: skip
    assert err.value.exit_code == 130 and err.value.summary.frames == 4
    assert [f.info["step"] for f in _read(out)] == [0, 1, 2, 3]


def test_bad_input_fails_before_writing(fitted_small, start, tmp_path):
    out = tmp_path / "traj.extxyz"
    with pytest.raises(InputError, match="timestep"):
        run_md(fitted_small, start, out, steps=2, temperature=300, timestep=0.0, seed=0)
    other = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [0, 0.96, 0]])
    with pytest.raises(ModelFileError, match="trained for"):
        run_md(fitted_small, other, out, steps=2, temperature=300, timestep=0.5, seed=0)
    assert not out.exists()


def test_friction_is_per_fs(fitted_small, start, tmp_path, monkeypatch):
    import forcegp.md as md

    seen = {}
    real = md.Langevin

    def spy(atoms, dt, **kw):
        seen.update(dt=dt, **kw)
        return real(atoms, dt, **kw)

    monkeypatch.setattr(md, "Langevin", spy)
    run_md(fitted_small, start, tmp_path / "t", steps=1, temperature=10, timestep=0.5, seed=0,
           friction=0.02)  # fmt: skip
    assert np.isclose(seen["dt"], 0.5 * units.fs)
    assert np.isclose(seen["friction"], 0.02 / units.fs)
