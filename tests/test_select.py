"""Greedy batch-aware selection: the first pick is the most uncertain structure, the square-root
update equals dense GP conditioning, duplicates are not picked twice, the CLI writes the picks."""

import ase.io
import jax.numpy as jnp
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from click.testing import CliRunner

from forcegp.cli import cli
from forcegp.errors import InputError
from forcegp.gp import misfit
from forcegp.gp.basis import noise_vector
from forcegp.gp.likelihood import batch_rows
from forcegp.modelfile import save_model
from forcegp.select import _whitened_rows, select_structures
from forcegp.training import evaluation


@pytest.fixture(scope="module")
def pool(small_problem):
    """15 candidates: the training structures and the test structures."""
    return np.concatenate([small_problem.positions, small_problem.test_positions])


@pytest.fixture(scope="module")
def initial(fitted_small, pool):
    return select_structures(fitted_small, pool, 1).initial_scores


def test_first_pick_has_the_largest_force_variance(fitted_small, pool, initial):
    sel = select_structures(fitted_small, pool, 4, numbers=fitted_small.numbers, chunk=4)
    assert len(set(sel.indices.tolist())) == 4
    # Independent check through the prediction: sum of force variances minus the noise.
    pred = evaluation.predict(fitted_small, pool, with_std=True)
    scale = float(fitted_small.stats.energy_scale)
    noise = float(fitted_small.hyper.noise_force) * scale
    expected = np.sum(pred["forces_std"] ** 2, axis=(1, 2)) - pool[0].size * noise**2
    np.testing.assert_allclose(initial, expected, rtol=1e-8, atol=1e-12)
    assert sel.indices[0] == np.argmax(expected)
    assert np.isclose(sel.scores[0], expected.max())
    assert np.all(np.diff(sel.scores) <= 1e-12)  # conditioning only lowers the variance
    assert np.all(sel.rms_force_std() > 0)


@pytest.mark.parametrize("with_misfit", [False, True])
def test_square_root_update_equals_dense_conditioning(fitted_small, pool, with_misfit):
    """With an input-dependent noise (gp.misfit) a pick is conditioned on its own noise."""
    model = fitted_small
    if with_misfit:
        model = misfit.with_misfit(model, model.posterior, misfit.projection(model, 8), 30.0)
    sel = select_structures(model, pool, 5, chunk=4)
    x = pool.reshape(len(pool), -1)
    s = np.asarray(_whitened_rows(model, x))  # (n, 1+D, K)
    noise = np.tile(np.asarray(noise_vector(model.config, model.hyper)), (len(pool), 1))
    if with_misfit:
        rows = np.asarray(batch_rows(model, model.hyper, jnp.asarray(x)))
        extra = np.sum((rows @ np.asarray(model.posterior.misfit)) ** 2, axis=2)
        assert np.all(extra > 0.01 * noise)  # large enough to change the picks' conditioning
        noise = noise + extra
    cov = np.eye(s.shape[2])  # covariance of the whitened weights
    scale2 = float(model.stats.energy_scale) ** 2
    for t, j in enumerate(sel.indices):
        scores = np.einsum("nrk,kl,nrl->n", s[:, 1:], cov, s[:, 1:]) * scale2
        scores[sel.indices[:t]] = -np.inf
        assert j == np.argmax(scores)
        np.testing.assert_allclose(sel.scores[t], scores[j], rtol=1e-8)
        u = s[j]
        cov = cov - cov @ u.T @ np.linalg.solve(u @ cov @ u.T + np.diag(noise[j]), u @ cov)


def test_batch_aware_skips_duplicates(fitted_small, pool, initial):
    best = int(np.argmax(initial))
    dup = np.concatenate([pool, pool[best : best + 1]])  # candidate 15 duplicates the best one
    top = select_structures(fitted_small, dup, 3, batch_aware=False)
    aware = select_structures(fitted_small, dup, 3, batch_aware=True)
    assert set(top.indices[:2].tolist()) == {best, len(pool)}  # top-k takes both copies
    assert aware.indices[0] == best and len(pool) not in aware.indices
    assert len(set(aware.indices.tolist())) == 3
    assert aware.indices.tolist() != top.indices.tolist()


def test_bad_count(fitted_small, pool):
    with pytest.raises(InputError, match="cannot pick"):
        select_structures(fitted_small, pool, len(pool) + 1)
    with pytest.raises(InputError, match="cannot pick"):
        select_structures(fitted_small, pool, 0)


def test_cli_writes_picks_with_labels_but_not_predictions(tmp_path, fitted_small, small_problem):
    pb = small_problem
    save_model(tmp_path / "m.fgp", fitted_small, metadata={})
    labelled = []
    for pos, e, f in zip(pb.positions, pb.energies, pb.forces, strict=True):
        atoms = ase.Atoms(numbers=pb.numbers, positions=pos)
        atoms.calc = SinglePointCalculator(atoms, energy=float(e), forces=f)
        labelled.append(atoms)
    ase.io.write(tmp_path / "pool.extxyz", labelled)
    predicted = [a.copy() for a in labelled[:3]]  # as forcegp md writes them
    rng = np.random.default_rng(0)
    for a in predicted:
        a.positions += rng.normal(scale=0.3, size=a.positions.shape)  # unlike the training data
        a.info["forcegp_predicted"] = True
        a.calc = SinglePointCalculator(a, energy=0.0, forces=np.zeros((len(a), 3)))
    ase.io.write(tmp_path / "md.extxyz", predicted)
    out = tmp_path / "picked.extxyz"
    args = ["select", str(tmp_path / "m.fgp"), str(tmp_path / "pool.extxyz"),
            str(tmp_path / "md.extxyz"), "-n", "6", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "picked 6 of 15 candidates (batch-aware)" in result.output
    assert "label the frames" in result.output
    frames = ase.io.read(out, ":")
    assert [f.info["select_rank"] for f in frames] == [1, 2, 3, 4, 5, 6]
    keys = {(f.info["select_source"], f.info["select_frame"]) for f in frames}
    assert len(keys) == 6
    for f in frames:
        assert f.info["select_score"] > 0 and f.info["select_force_std"] > 0
        src, i = f.info["select_source"], f.info["select_frame"]
        if src.endswith("md.extxyz"):
            assert f.calc is None  # model predictions are not labels
        else:
            assert np.isclose(f.get_potential_energy(), pb.energies[i])
            np.testing.assert_allclose(f.positions, pb.positions[i], atol=1e-7)  # extxyz digits
    assert any(f.info["select_source"].endswith("md.extxyz") for f in frames)
