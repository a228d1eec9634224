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
from forcegp.select import read_candidates, select_structures
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


def with_misfit(model):
    return misfit.with_misfit(model, model.posterior, misfit.projection(model, 8), 30.0)


def dense_factor(model, misfit_as: str):
    """The factor B of the weights' covariance B B^T (whitened: the identity is A^T's)."""
    rows_factor = np.asarray(model.posterior.inv_chol.T)
    if misfit_as == "error" and model.posterior.misfit is not None:
        return np.concatenate([rows_factor, np.asarray(model.posterior.misfit)], axis=1)
    return rows_factor


@pytest.mark.parametrize("misfit_as", [None, "noise", "error"])
def test_square_root_update_equals_dense_conditioning(fitted_small, pool, misfit_as):
    """With an input-dependent noise (gp.misfit) counted as noise a pick is conditioned on its
    own noise; counted as error, the misfit is a second, correlated term of the covariance that
    a pick lowers like the posterior's, and only the constant noise is the labels'."""
    model = fitted_small if misfit_as is None else with_misfit(fitted_small)
    sel = select_structures(model, pool, 5, chunk=4, misfit=misfit_as or "noise")
    x = pool.reshape(len(pool), -1)
    rows = np.asarray(batch_rows(model, model.hyper, jnp.asarray(x)))
    s = rows @ dense_factor(model, misfit_as)  # (n, 1+D, K')
    noise = np.tile(np.asarray(noise_vector(model.config, model.hyper)), (len(pool), 1))
    if misfit_as is not None:
        extra = np.sum((rows @ np.asarray(model.posterior.misfit)) ** 2, axis=2)
        assert np.all(extra > 0.01 * noise)  # large enough to change the picks' conditioning
        if misfit_as == "noise":
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


def test_misfit_as_error_scores_the_std_the_user_sees(fitted_small, pool):
    """misfit="error": a candidate's score is its summed force variance as the prediction
    reports it (posterior plus misfit), less only the constant noise; "noise" leaves the misfit
    out; a model without a misfit scores the same either way."""
    model = with_misfit(fitted_small)
    pred = evaluation.predict(model, pool, with_std=True)
    scale = float(model.stats.energy_scale)
    noise = float(model.hyper.noise_force) * scale
    total = np.sum(pred["forces_std"] ** 2, axis=(1, 2)) - pool[0].size * noise**2
    error = select_structures(model, pool, 1, misfit="error").initial_scores
    plain = select_structures(model, pool, 1, misfit="noise").initial_scores
    np.testing.assert_allclose(error, total, rtol=1e-8, atol=1e-12)
    assert np.all(plain < error - 1e-3 * error)  # the misfit is a visible part of the std
    same = select_structures(fitted_small, pool, 1, misfit="error").initial_scores
    np.testing.assert_allclose(same, select_structures(fitted_small, pool, 1).initial_scores)
    with pytest.raises(InputError, match="unknown misfit"):
        select_structures(model, pool, 1, misfit="both")


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
            str(tmp_path / "md.extxyz"), "-n", "6", "-o", str(out), "--misfit", "error"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "picked 6 of 15 candidates (batch-aware, variance)" in result.output
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


@pytest.mark.parametrize("misfit_as", [None, "noise", "error"])
@pytest.mark.parametrize("own_targets", [False, True])
def test_integrated_objective_equals_dense_variance_reduction(
    fitted_small, small_problem, pool, misfit_as, own_targets
):
    """Each pick lowers the targets' summed force variance the most, by exactly its gain, with
    the targets either the candidates themselves or another set."""
    model = fitted_small if misfit_as is None else with_misfit(fitted_small)
    targets = None if own_targets else small_problem.positions[:6] + 0.01
    sel = select_structures(
        model, pool, 5, chunk=4, objective="integrated", targets=targets, misfit=misfit_as or "noise"
    )
    x = pool.reshape(len(pool), -1)
    factor = dense_factor(model, misfit_as)
    rows = np.asarray(batch_rows(model, model.hyper, jnp.asarray(x)))
    s = rows @ factor
    t_pos = pool if targets is None else targets
    t_rows = np.asarray(batch_rows(model, model.hyper, jnp.asarray(t_pos.reshape(len(t_pos), -1))))
    tf = (t_rows @ factor)[:, 1:]
    tf = tf.reshape(-1, tf.shape[-1])  # all target force rows
    noise = np.tile(np.asarray(noise_vector(model.config, model.hyper)), (len(pool), 1))
    if misfit_as == "noise":
        noise = noise + np.sum((rows @ np.asarray(model.posterior.misfit)) ** 2, axis=2)
    cov = np.eye(s.shape[2])
    scale2 = float(model.stats.energy_scale) ** 2

    def conditioned(cov, j):
        u = s[j]
        return cov - cov @ u.T @ np.linalg.solve(u @ cov @ u.T + np.diag(noise[j]), u @ cov)

    for t, j in enumerate(sel.indices):
        before = np.trace(tf @ cov @ tf.T)
        gains = np.array([before - np.trace(tf @ conditioned(cov, c) @ tf.T) for c in range(len(s))])
        gains[sel.indices[:t]] = -np.inf
        assert j == np.argmax(gains)
        np.testing.assert_allclose(sel.gains[t], gains[j] * scale2, rtol=1e-7)
        own = np.einsum("rk,kl,rl->", s[j, 1:], cov, s[j, 1:]) * scale2
        np.testing.assert_allclose(sel.scores[t], own, rtol=1e-8)
        cov = conditioned(cov, j)
    assert sel.objective == "integrated" and np.all(sel.gains > 0)


def test_integrated_prefers_the_typical_over_the_unusual(fitted_small, pool, initial):
    """Ten copies of one structure and one structure of larger variance: the objective
    ``variance`` takes the latter, ``integrated`` a copy (labelling it informs all ten)."""
    order = np.argsort(initial)
    a = int(order[len(order) // 2])  # a structure of median variance
    ratio = initial / initial[a]
    b = int(np.flatnonzero((ratio > 1.5) & (ratio < 4))[0])  # more uncertain, not extremely so
    cands = np.concatenate([np.repeat(pool[a : a + 1], 10, axis=0), pool[b : b + 1]])
    variance = select_structures(fitted_small, cands, 1)
    integrated = select_structures(fitted_small, cands, 1, objective="integrated")
    assert variance.indices[0] == 10
    assert integrated.indices[0] < 10


def test_bad_objective_or_targets(fitted_small, pool):
    with pytest.raises(InputError, match="unknown objective"):
        select_structures(fitted_small, pool, 2, objective="entropy")
    with pytest.raises(InputError, match="targets must have shape"):
        select_structures(fitted_small, pool, 2, objective="integrated", targets=pool[:, :2])


def test_cli_integrated_objective_with_targets(tmp_path, fitted_small, small_problem):
    pb = small_problem
    save_model(tmp_path / "m.fgp", fitted_small, metadata={})
    ase.io.write(tmp_path / "pool.extxyz", [ase.Atoms(pb.numbers, p) for p in pb.positions])
    ase.io.write(tmp_path / "typical.xyz", [ase.Atoms(pb.numbers, p) for p in pb.test_positions])
    out = tmp_path / "picked.extxyz"
    base = ["select", str(tmp_path / "m.fgp"), str(tmp_path / "pool.extxyz"), "-n", "3", "-o", str(out)]
    targets = ["--targets", str(tmp_path / "typical.xyz")]
    result = CliRunner().invoke(cli, [*base, *targets])
    assert result.exit_code != 0 and "--objective integrated" in result.output and not out.exists()
    result = CliRunner().invoke(cli, [*base, "--objective", "integrated", *targets])
    assert result.exit_code == 0, result.output
    assert "(batch-aware, integrated)" in result.output
    frames = ase.io.read(out, ":")
    # Against the library on the positions as the files give them back (extxyz rounds to 1e-8 Å,
    # which moves the variances of these near-training structures by a few per cent).
    read = [read_candidates([tmp_path / f]).data.positions for f in ("pool.extxyz", "typical.xyz")]
    expected = select_structures(fitted_small, read[0], 3, objective="integrated", targets=read[1])
    assert [f.info["select_frame"] for f in frames] == expected.indices.tolist()
    np.testing.assert_allclose([f.info["select_gain"] for f in frames], expected.gains, rtol=1e-6)
