"""The input-dependent noise (forcegp.gp.misfit) against the dense heteroscedastic GP."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from test_posterior import check_posterior, dense_posterior, dense_problem

from forcegp.gp import misfit, posterior
from forcegp.gp.basis import noise_vector
from forcegp.gp.likelihood import batch_rows
from forcegp.training import evaluation

GAMMAS = (0.5, 20.0)


@pytest.fixture(scope="module")
def misfit_fits(small_problem, fitted_small):
    """(projection, {gamma: model refitted with the input-dependent noise})."""
    pb = small_problem
    proj = misfit.projection(fitted_small, columns=8)
    p, b = misfit.systems(fitted_small, proj, GAMMAS, pb.x, pb.y, pb.g, chunk=5)
    models = {
        gamma: misfit.with_misfit(fitted_small, posterior.solve_system(p[i], b[i]), proj, gamma)
        for i, gamma in enumerate(GAMMAS)
    }
    return proj, models


def misfit_variances(model, proj, x):
    """gamma u(x) per output row, (n * (1+D),), standardised, from the dense rows."""
    rows = np.asarray(batch_rows(model, model.hyper, jnp.asarray(x)))
    post = model.posterior
    return np.sum((rows @ np.asarray(post.misfit)) ** 2, axis=2).reshape(-1), rows


def test_projection_estimates_the_posterior_variance(small_problem, fitted_small):
    """u(x) = ||phi B||^2 is unbiased for phi C0 C0^T phi^T: the mean over many draws is close."""
    pb = small_problem
    rows = np.asarray(batch_rows(fitted_small, fitted_small.hyper, jnp.asarray(pb.x[:2])))
    rows = rows.reshape(-1, rows.shape[-1])
    inv_chol = np.asarray(fitted_small.posterior.inv_chol)
    exact = np.sum((rows @ inv_chol.T) ** 2, axis=1)
    draws = [np.sum((rows @ np.asarray(misfit.projection(fitted_small, 64, seed))) ** 2, axis=1)
             for seed in range(20)]  # fmt: skip
    ratio = np.mean(draws, axis=0) / exact  # 1280 columns in all: relative std about 0.04
    assert np.all(np.abs(ratio - 1) < 0.2), ratio


@pytest.mark.parametrize("gamma", GAMMAS)
def test_refit_is_the_exact_heteroscedastic_posterior(small_problem, fitted_small, misfit_fits, gamma):
    """theta | data with noise variances lam + gamma u(x_i) per row, via the dense n x n K_xx."""
    pb = small_problem
    proj, models = misfit_fits
    phi, lam, t = dense_problem(fitted_small, pb.x, pb.y, pb.g)
    u = np.sum((phi @ np.asarray(proj)) ** 2, axis=1)
    assert np.ptp(u) > 0.1 * np.mean(u)  # the noise really depends on the input
    check_posterior(models[gamma].posterior, *dense_posterior(phi, lam + gamma * u, t))


def test_predictions_add_the_misfit_to_the_exact_variance(small_problem, misfit_fits):
    pb = small_problem
    proj, models = misfit_fits
    model = models[GAMMAS[1]]
    x = pb.test_positions.reshape(3, -1)
    extra, rows = misfit_variances(model, proj, x)
    inv_chol = np.asarray(model.posterior.inv_chol)
    var = np.sum((rows.reshape(-1, rows.shape[-1]) @ inv_chol.T) ** 2, axis=1)
    lam = np.tile(np.asarray(noise_vector(model.config, model.hyper)), 3)
    sigma = float(model.stats.energy_scale)
    std = sigma * np.sqrt(var + lam + extra).reshape(3, -1)
    out = evaluation.predict(model, pb.test_positions)
    np.testing.assert_allclose(out["energy_std"], std[:, 0], rtol=1e-6)
    np.testing.assert_allclose(out["forces_std"].reshape(3, -1), std[:, 1:], rtol=1e-6)
    mean = rows.reshape(-1, rows.shape[-1]) @ np.asarray(model.posterior.mean)
    np.testing.assert_allclose(out["energy"], sigma * mean.reshape(3, -1)[:, 0]
                               + float(model.stats.energy_mean), rtol=1e-10)  # fmt: skip
    # The misfit part is what makes these stds larger than the constant-noise model's would be.
    assert np.all(extra > 0)


def test_amplitude_keeps_the_misfit_model_exact(small_problem, misfit_fits):
    """with_amplitude scales every std by kappa, the input-dependent noise included."""
    pb = small_problem
    model = misfit_fits[1][GAMMAS[1]]
    a = evaluation.predict(model, pb.test_positions)
    b = evaluation.predict(posterior.with_amplitude(model, 1.7), pb.test_positions)
    np.testing.assert_allclose(b["forces"], a["forces"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b["forces_std"], 1.7 * a["forces_std"], rtol=1e-8)
    np.testing.assert_allclose(b["energy_std"], 1.7 * a["energy_std"], rtol=1e-8)


def test_held_out_nll_by_hand():
    """Per value: mean log std + 0.5 log(mean z^2), z = error / std."""

    class Data:
        energies = np.array([0.0, 1.0])
        forces = np.zeros((2, 1, 3))

    pred = {
        "energy": np.array([0.1, 0.8]),
        "energy_std": np.array([0.1, 0.1]),
        "forces": np.full((2, 1, 3), 0.2),
        "forces_std": np.full((2, 1, 3), 0.4),
    }
    z2 = (1 + 4 + 6 * 0.25) / 8
    expected = (2 * np.log(0.1) + 6 * np.log(0.4)) / 8 + 0.5 * np.log(z2)
    assert evaluation.held_out_nll(pred, Data()) == pytest.approx(expected, rel=1e-12)


def test_the_noise_pass_reuses_the_fits_compiled_rows(small_problem):
    """statistics.chunk_rows, compiled by the fit's pass (on the model before its refinement,
    as in training), serves misfit.systems on the fitted model: the rows' graph (the costly
    part to compile) is not compiled again for the same chunk."""
    import jax.monitoring

    pb = small_problem
    fitted = posterior.fit(pb.model, pb.x, pb.y, pb.g, chunk=5)  # compiles chunk_rows
    names = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        proj = misfit.projection(fitted, columns=8)
        misfit.systems(fitted, proj, (3.0,), pb.x, pb.y, pb.g, chunk=5)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert names, "the candidates' accumulation itself is compiled here"
    assert not [n for n in names if "chunk_rows" in n], names
