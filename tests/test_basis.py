"""The ForceGP feature map: observation rows against autodiff, physics of predictions, symmetry."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import METHANOL_NUMBERS, METHANOL_REFERENCE, build_model, random_rotation

from forcegp import symmetry
from forcegp.gp import basis, deep_kernel, descriptors, environment, misfit, posterior
from forcegp.gp import predict as predict_mod
from forcegp.gp.basis import basis_rows, basis_value, soft_cholesky
from forcegp.training import evaluation


@eqx.filter_jit
def rows_and_autodiff(model, x):
    """basis_rows (1+D, K) and jax.jacfwd(basis_value) (K, D) at one structure x (D,)."""
    cfg, stats, hyper = model.config, model.stats, model.hyper
    chol = soft_cholesky(cfg, hyper)
    rows = basis_rows(cfg, stats, hyper, chol, x)
    value = basis_value(cfg, stats, hyper, chol, x)
    jac = jax.jacfwd(lambda y: basis_value(cfg, stats, hyper, chol, y))(x)
    return rows, value, jac


@eqx.filter_jit
def values(model, x):
    """basis_value for a batch x (B, D)."""
    cfg, stats, hyper = model.config, model.stats, model.hyper
    chol = soft_cholesky(cfg, hyper)
    return jax.vmap(lambda y: basis_value(cfg, stats, hyper, chol, y))(x)


@eqx.filter_jit
def energies(model, x):
    """Predicted energies (B,) eV for a batch x (B, D), no variances."""
    return jax.vmap(lambda y: predict_mod.predict_one(model, y, with_std=False)[0])(x)


VARIANTS = {
    "invdist-polynomial-mlp": dict(),
    "invdist-quadratic-mlp": dict(explicit="quadratic"),
    "invdist-none-nomlp": dict(explicit="none", n_features=0),
    "cartesian-quadratic-nomlp": dict(descriptor="cartesian", n_features=0, explicit="quadratic"),
    "cartesian-polynomial-nomlp": dict(descriptor="cartesian", n_features=0),
    "cartesian-none-mlp": dict(descriptor="cartesian", explicit="none"),
    "invdist-polynomial-mlp-sym": dict(n_permutations=6),
    "invdist-none-nomlp-sym": dict(explicit="none", n_features=0, n_permutations=6),
    "invdist-polynomial-nomlp-sym": dict(n_features=0, n_permutations=6),
    "invdist-polynomial-nolocal": dict(local_cutoff=0.5),  # no local products (as at 56 atoms)
    "cartesian-polynomial-mlp-sym": dict(descriptor="cartesian", n_permutations=6),
    "atomic-polynomial-mlp": dict(descriptor="atomic", env_dim=6, explicit_dim=4),
    "atomic-polynomial-products": dict(descriptor="atomic", env_dim=6, env_products=3, n_features=0),
    # Pair powers of C tanh(z / C) with C small enough that the new structure's pairs bend it.
    "atomic-polynomial-bounded": dict(descriptor="atomic", env_dim=6, pair_bound=0.5),
    # Body-ordered invariants in place of the products: order three on 5 mixed channels, four
    # on 3, couplings to l = 2.
    "atomic-body4-mlp": dict(
        descriptor="atomic",
        env_dim=6,
        env_radial=3,
        env_lmax=2,
        env_body4=3,
        env_body4_lmax=2,
        env_body3=5,
    ),  # fmt: skip
    "atomic-body4-near": dict(
        descriptor="atomic",
        env_dim=6,
        env_radial=3,
        env_lmax=2,
        env_body4=2,
        env_body4_lmax=1,
        env_neighbours=4,
        env_cutoff=1.7,
        n_features=0,
    ),  # fmt: skip
    "atomic-none-nomlp": dict(descriptor="atomic", env_dim=5, explicit="none", n_features=0),
    # Four of the five other atoms as slots: every atom's neighbours within 1.7 Å fit them.
    "atomic-polynomial-mlp-near": dict(descriptor="atomic", env_dim=6, env_neighbours=4, env_cutoff=1.7),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradient_rows_equal_autodiff(methanol_data, variant):
    positions, e, f = methanol_data
    model = build_model(METHANOL_NUMBERS, positions, e, f, **VARIANTS[variant])
    cfg = model.config
    assert (model.hyper.mlp is None) == (cfg.n_features == 0)
    assert model.stats.permutations.shape[0] == cfg.n_permutations
    if cfg.explicit == "polynomial" and cfg.descriptor == "inverse-distance":
        assert (cfg.n_local > 0) == ("local_cutoff" not in VARIANTS[variant])
    # A training structure and a new one further from the reference.
    new = METHANOL_REFERENCE + 0.1 * np.random.default_rng(5).normal(size=(6, 3))
    if cfg.env_neighbours:  # the slots must hold every atom within the cutoff (environment.py)
        assert environment.max_neighbours(np.stack([positions[0], new]), cfg.env_cutoff) <= 4
    for x in (positions[0].reshape(-1), new.reshape(-1)):
        rows, value, jac = rows_and_autodiff(model, jnp.asarray(x))
        assert rows.shape == (1 + cfg.dim, cfg.n_basis)
        np.testing.assert_allclose(rows[0], value, rtol=1e-12, atol=1e-14)
        scale = float(jnp.max(jnp.abs(jac)))
        assert scale > 0
        np.testing.assert_allclose(rows[1:], jac.T, rtol=1e-9, atol=1e-11 * scale)


PREFIT_VARIANTS = ["invdist-polynomial-mlp-sym", "atomic-polynomial-bounded", "atomic-body4-mlp"]


@pytest.mark.parametrize("variant", PREFIT_VARIANTS)
def test_the_prefit_residual_pass_equals_the_explicit_rows(methanol_data, variant):
    """explicit_prefit takes the block's posterior mean energy and gradient by one reverse-mode
    pass of phi(x) . theta: the same numbers as the block's value and gradient rows times theta."""
    from forcegp.gp.basis import explicit_rows
    from forcegp.training import stagewise

    positions, e, f = methanol_data
    model = build_model(METHANOL_NUMBERS, positions, e, f, **VARIANTS[variant])
    x = jnp.asarray(positions.reshape(len(positions), -1))
    theta = jnp.asarray(np.random.default_rng(3).normal(size=model.config.n_explicit))
    value, grad = stagewise._explicit_fitted(model, theta, x)
    rows = jax.vmap(lambda xi: explicit_rows(model.config, model.stats, model.hyper, xi))(x)
    t = np.asarray(rows @ theta)
    np.testing.assert_allclose(value, t[:, 0], rtol=1e-10)
    np.testing.assert_allclose(grad, t[:, 1:], rtol=0, atol=1e-10 * np.max(np.abs(t[:, 1:])))


# ------------------------------------------------------------------ predictions after a fit


def test_forces_are_minus_the_energy_gradient(small_problem, fitted_small):
    model = fitted_small
    x = np.asarray(small_problem.test_positions[0], dtype=np.float64).reshape(-1)
    energy, forces = jax.jit(lambda y: predict_mod.predict_one(model, y, with_std=False))(x)
    h = 1e-5
    shifts = h * np.eye(x.size)
    e = np.asarray(energies(model, jnp.asarray(np.concatenate([x + shifts, x - shifts]))))
    numeric = -(e[: x.size] - e[x.size :]) / (2 * h)
    np.testing.assert_allclose(np.asarray(forces).reshape(-1), numeric, rtol=1e-6, atol=1e-7)
    # The batch path agrees with predict_one.
    out = evaluation.predict(model, x.reshape(1, -1, 3), with_std=False)
    np.testing.assert_allclose(out["energy"][0], energy, rtol=1e-12)
    np.testing.assert_allclose(out["forces"][0], forces, rtol=1e-10, atol=1e-12)


FOLDED = ["invdist-polynomial-mlp-sym", "invdist-quadratic-mlp", "invdist-none-nomlp"]


@pytest.mark.parametrize("variant", FOLDED)
def test_folded_predictor_equals_the_whitened_posterior(variant, monkeypatch):
    """predict_mod.predictor moves the K_zz whitening onto the posterior once and regroups the
    explicit block's mean into dense arrays; its energies, forces and stds equal the textbook
    form phi(x) = whitened basis, E = phi . mean, Var = ||L_P^-1 phi||^2 + noise. Its covariance
    is kept as column blocks that skip the triangular factor's zeros: small blocks here, so
    that there are several, and the dropped parts must be exactly zero."""
    from synthetic import Problem

    pb = Problem(METHANOL_NUMBERS, METHANOL_REFERENCE, 10, seed=1, **VARIANTS[variant])
    model = posterior.fit(pb.model, pb.x, pb.y, pb.g)
    cfg, stats, hyper, post = model.config, model.stats, model.hyper, model.posterior
    monkeypatch.setattr(predict_mod, "COV_BLOCK", 5)
    blocks = predict_mod.cov_blocks(cfg.n_basis, cfg.n_inducing)
    assert len(blocks) >= 2 and blocks[-1][1] == cfg.n_basis
    full = predict_mod.predictor(model).cov  # with one block: the dense folded covariance
    monkeypatch.setattr(predict_mod, "COV_BLOCK", cfg.n_basis)
    (dense,) = predict_mod.predictor(model).cov
    monkeypatch.setattr(predict_mod, "COV_BLOCK", 5)
    for (lo, hi, rows), block in zip(blocks, full, strict=True):
        np.testing.assert_array_equal(block, dense[:rows, lo:hi])
        assert not np.any(np.asarray(dense[rows:, lo:hi]))
    if cfg.explicit == "polynomial":  # every kind of explicit term is exercised
        assert cfg.n_local > 0 and cfg.n_explicit_cubic > 0 and cfg.n_permutations > 1
    chol = soft_cholesky(cfg, hyper)
    sigma = float(stats.energy_scale)
    folded = eqx.filter_jit(predict_mod.predict_folded)
    for x in pb.test_positions:
        x = jnp.asarray(np.asarray(x, dtype=np.float64).reshape(-1))
        phi = basis_value(cfg, stats, hyper, chol, x)
        rows = basis_rows(cfg, stats, hyper, chol, x)
        var = jnp.sum((rows @ post.inv_chol.T) ** 2, axis=1) + basis.noise_vector(cfg, hyper)
        energy, forces, e_std, f_std = folded(predict_mod.predictor(model), x)
        reference = sigma * float(phi @ post.mean) + float(stats.energy_mean)
        assert float(energy) == pytest.approx(reference, rel=1e-12, abs=1e-12)
        f_ref = -sigma * (rows[1:] @ post.mean)
        scale = float(jnp.max(jnp.abs(f_ref)))
        np.testing.assert_allclose(np.ravel(forces), f_ref, rtol=1e-9, atol=1e-12 * scale)
        np.testing.assert_allclose(float(e_std), sigma * np.sqrt(var[0]), rtol=1e-9)
        np.testing.assert_allclose(np.ravel(f_std), sigma * np.sqrt(var[1:]), rtol=1e-9)
    # Without stds the predictor carries no K x K factor.
    assert predict_mod.predictor(model, with_std=False).cov is None


@pytest.mark.parametrize("with_misfit", [False, True])
def test_sketched_variances_follow_their_stated_distribution(with_misfit):
    """predictor(sketch=s) estimates each posterior variance from a Gaussian projection of the
    covariance factor: over draws, the ratio to the exact variance has mean 1 and variance 2/s
    (chi^2_s / s), and the exact variance exceeds the stated upper bound about SKETCH_MISS of
    the time. Energies and forces do not depend on the sketch. With an input-dependent noise
    (gp.misfit) the sketch estimates the posterior variance plus the misfit, and the stds match
    the exact ones in the mean."""
    import scipy.stats
    from synthetic import Problem

    from forcegp.gp.basis import raw_rows

    for dof in (30, 64, 128):
        exact_q = scipy.stats.chi2.ppf(predict_mod.SKETCH_MISS, dof) / dof
        assert predict_mod.chi2_lower_quantile(dof, predict_mod.SKETCH_MISS) == pytest.approx(
            exact_q, rel=0.01
        )
    pb = Problem(METHANOL_NUMBERS, METHANOL_REFERENCE, 10, seed=1,
                 **VARIANTS["invdist-polynomial-mlp-sym"])  # fmt: skip
    model = posterior.fit(pb.model, pb.x, pb.y, pb.g)
    if with_misfit:
        model = misfit.with_misfit(model, model.posterior, misfit.projection(model, 16), 30.0)
    cfg, s = model.config, 32
    assert s < cfg.n_basis
    rows = jnp.concatenate([raw_rows(cfg, model.stats, model.hyper, jnp.asarray(x.reshape(-1)))
                            for x in np.asarray(pb.test_positions)])  # fmt: skip
    fold = eqx.filter_jit(predict_mod.predictor)
    exact_pred = predict_mod.predictor(model)
    exact = np.asarray(predict_mod.covariance_sq_norms(exact_pred, rows))
    if with_misfit:
        extra = np.sum((np.asarray(rows) @ np.asarray(exact_pred.misfit)) ** 2, axis=1)
        assert np.median(extra / exact) > 0.1  # a misfit large enough to matter
        exact = exact + extra
        assert fold(model, True, s, 0).misfit is None  # carried by the sketch
    variances = eqx.filter_jit(predict_mod.posterior_variances)
    ratios, misses = [], 0
    for seed in range(200):
        estimate, upper = variances(fold(model, True, s, jnp.asarray(seed)), rows)  # one compile
        ratios.append(np.asarray(estimate) / exact)
        misses += int(np.sum(exact > np.asarray(upper)))
    ratios = np.stack(ratios)  # (draws, outputs): chi^2_s / s in every column
    assert abs(ratios.mean() - 1) < 0.03
    assert np.var(ratios, axis=0).mean() == pytest.approx(2 / s, rel=0.2)
    assert misses / ratios.size < 5 * predict_mod.SKETCH_MISS
    x = jnp.asarray(np.asarray(pb.test_positions[0]).reshape(-1))
    sketched = predict_mod.predict_folded(fold(model, True, s, 0), x, upper=True)
    exact_out = predict_mod.predict_folded(predict_mod.predictor(model), x, upper=True)
    assert float(sketched[0]) == pytest.approx(float(exact_out[0]), rel=1e-12)
    np.testing.assert_allclose(sketched[1], exact_out[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(exact_out[3], exact_out[5])  # exact: the bound is the std
    assert np.all(np.asarray(sketched[5]) >= np.asarray(sketched[3]))
    assert predict_mod.predictor(model, sketch=cfg.n_basis).sketch is None  # s >= K: exact


def test_predictions_fit_the_training_data(small_problem, fitted_small):
    """Sanity: the posterior mean reproduces the (noise-free, smooth) training targets closely."""
    pb = small_problem
    out = evaluation.predict(fitted_small, pb.positions[:4], with_std=False)
    f_rms = np.sqrt(np.mean(pb.forces[:4] ** 2))
    assert np.sqrt(np.mean((out["forces"] - pb.forces[:4]) ** 2)) < 0.5 * f_rms


def test_rotation_translation_invariance_and_net_force(small_problem, fitted_small):
    rng = np.random.default_rng(3)
    r = small_problem.test_positions[:2]
    rot = random_rotation(rng)
    moved = r @ rot.T + rng.normal(size=3) * 2.0
    a = evaluation.predict(fitted_small, r)
    b = evaluation.predict(fitted_small, moved)
    np.testing.assert_allclose(b["energy"], a["energy"], rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(b["forces"], a["forces"] @ rot.T, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(b["energy_std"], a["energy_std"], rtol=1e-7)
    scale = np.max(np.abs(a["forces"]))
    # No net force and no net torque (translation and rotation invariance of the energy).
    np.testing.assert_allclose(a["forces"].sum(axis=1), 0.0, atol=1e-9 * scale)
    torque = np.cross(r, a["forces"]).sum(axis=1)
    np.testing.assert_allclose(torque, 0.0, atol=1e-8 * scale)


# ------------------------------------------------------------------------- symmetrisation


def test_molecular_permutations_of_a_methyl_group():
    perms = symmetry.molecular_permutations(METHANOL_NUMBERS, METHANOL_REFERENCE.reshape(-1))
    assert perms.shape == (6, 6)
    np.testing.assert_array_equal(perms[0], np.arange(6))
    # Only the three methyl H (atoms 1, 2, 3) move: all 3! orderings, each once.
    np.testing.assert_array_equal(perms[:, [0, 4, 5]], np.tile([0, 4, 5], (6, 1)))
    assert {tuple(p[1:4]) for p in perms} == {
        (1, 2, 3),
        (1, 3, 2),
        (2, 1, 3),
        (2, 3, 1),
        (3, 1, 2),
        (3, 2, 1),
    }
    limited = symmetry.molecular_permutations(METHANOL_NUMBERS, METHANOL_REFERENCE.reshape(-1), limit=2)
    assert limited.shape == (2, 6)
    np.testing.assert_array_equal(limited[0], np.arange(6))


def test_molecular_permutations_of_ch2oh():
    from synthetic import SMALL_NUMBERS, SMALL_REFERENCE

    perms = symmetry.molecular_permutations(SMALL_NUMBERS, SMALL_REFERENCE.reshape(-1))
    np.testing.assert_array_equal(perms, [[0, 1, 2, 3, 4], [0, 2, 1, 3, 4]])


@pytest.mark.parametrize("kind", ["inverse-distance", "cartesian"])
def test_a_permuted_copy_reorders_the_descriptor(kind):
    """The symmetrised rows gather each copy's descriptor from the original's (no recomputation)."""
    perms = symmetry.molecular_permutations(METHANOL_NUMBERS, METHANOL_REFERENCE.reshape(-1))
    x = (METHANOL_REFERENCE + 0.1 * np.random.default_rng(0).normal(size=(6, 3))).reshape(-1)
    raw = np.asarray(descriptors.raw_descriptor(kind, jnp.asarray(x), 6))
    index = np.asarray(descriptors.permuted_index(kind, perms, 6))
    assert index.shape == (len(perms), raw.size)
    for perm, idx in zip(perms, index, strict=True):
        copy = descriptors.permute_coordinates(jnp.asarray(x), perm)
        np.testing.assert_array_equal(np.asarray(descriptors.raw_descriptor(kind, copy, 6)), raw[idx])
    assert len({tuple(i) for i in index}) == len(perms)  # each permutation reorders differently


def test_deep_kernel_tangents_equal_forward_mode():
    mlp = deep_kernel.DeepKernel(5, 3, 7, 2, key=jax.random.key(1))
    rng = np.random.default_rng(2)
    v, dv = jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.normal(size=(4, 5)))  # 4 tangent rows
    u, du = mlp.after_first_product(v, dv @ mlp.first_weight().T)
    np.testing.assert_allclose(u, mlp(v), rtol=1e-14)
    np.testing.assert_allclose(du, dv @ jax.jacfwd(mlp)(v).T, rtol=1e-12, atol=1e-14)


def test_inverse_distance_tangents_equal_the_dense_product():
    """The sparse first-layer tangents equal W @ (dv/dx of each permuted copy), dense."""
    perms = symmetry.molecular_permutations(METHANOL_NUMBERS, METHANOL_REFERENCE.reshape(-1))
    assert len(perms) > 1
    x = jnp.asarray((METHANOL_REFERENCE + 0.1 * np.random.default_rng(3).normal(size=(6, 3))).ravel())
    weight = jnp.asarray(np.random.default_rng(4).normal(size=(7, 15)))  # (width, P)
    sparse = descriptors.inverse_distance_tangents(x, 6, weight, jnp.asarray(perms))
    jac = jax.jacfwd(lambda y: descriptors.raw_descriptor("inverse-distance", y, 6))(x)  # (P, D)
    index = descriptors.permuted_index("inverse-distance", perms, 6)
    dense = jnp.einsum("wp,cpd->cdw", weight, jac[index])
    np.testing.assert_allclose(sparse, dense, rtol=1e-12, atol=1e-12)


def test_the_default_model_is_symmetrised(methanol_data):
    from forcegp.gp.config import Config
    from forcegp.training.initialise import initialize

    positions, e, f = methanol_data
    config = Config(n_atoms=6, n_inducing=8, n_features=3, width=8, depth=1, explicit_dim=4)
    model = initialize(config, METHANOL_NUMBERS, positions, e, f, key=jax.random.key(0))
    assert model.stats.permutations.shape == (6, 6)  # the methyl group's 3! orderings


def swap(positions, a, b):
    out = np.array(positions, copy=True)
    out[..., [a, b], :] = out[..., [b, a], :]
    return out


def test_symmetrised_model_is_invariant_under_methyl_permutations(methanol_data):
    positions, e, f = methanol_data
    sym = build_model(METHANOL_NUMBERS, positions, e, f, n_permutations=6)
    # The same model averaged over the identity alone: not symmetrised.
    plain = eqx.tree_at(lambda m: m.stats.permutations, sym, sym.stats.permutations[:1])
    r = positions[:2]
    xs = np.concatenate([r, swap(r, 1, 2), swap(r, 2, 3)]).reshape(6, -1)
    v = np.asarray(values(sym, jnp.asarray(xs)))
    np.testing.assert_allclose(v[2:4], v[:2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v[4:6], v[:2], rtol=1e-10, atol=1e-12)
    # The test has teeth: without symmetrisation the basis is not invariant.
    w = np.asarray(values(plain, jnp.asarray(xs)))
    assert not np.allclose(w[2:4], w[:2], rtol=1e-6)

    # Predictions of a fitted symmetrised model: the energy is invariant, forces permute.
    x = positions.reshape(len(positions), -1)
    y = (e - float(sym.stats.energy_mean)) / float(sym.stats.energy_scale)
    g = -f.reshape(len(f), -1) / float(sym.stats.energy_scale)
    fitted = posterior.fit(sym, x, y, g, chunk=10)
    out = evaluation.predict(fitted, np.concatenate([r, swap(r, 1, 2)]))
    np.testing.assert_allclose(out["energy"][2:], out["energy"][:2], rtol=1e-10)
    np.testing.assert_allclose(out["forces"][2:], swap(out["forces"][:2], 1, 2), atol=1e-9)
    np.testing.assert_allclose(out["energy_std"][2:], out["energy_std"][:2], rtol=1e-7)
    np.testing.assert_allclose(out["forces_std"][2:], swap(out["forces_std"][:2], 1, 2), rtol=1e-7)


# ------------------------------------------------------------------ budgeted explicit block


def test_budgeted_cubic_grows_with_data_within_budget_and_limits():
    """explicit_cubic=-1 ('auto'): the largest cubic block within the cost budget, the size
    limit and the number of observations; never more components than explicit_dim."""
    import dataclasses

    from forcegp.gp.config import Config
    from forcegp.training.budget import EXPLICIT_BUDGET, EXPLICIT_MAX, budgeted_cubic

    config = Config(n_atoms=9, n_local=252)  # rMD17 ethanol's shape
    chosen = {n: budgeted_cubic(config, n) for n in (20, 50, 200, 1000, 10_000, 100_000)}
    assert chosen[1000] == config.explicit_q == 26
    assert chosen[20] < chosen[50] < chosen[200] == 26  # limited by the observations
    assert chosen[100_000] < chosen[10_000] < 26  # limited by the cost budget
    assert chosen[20] == 0  # the pair and quadratic terms alone outnumber 20 x 28 observations
    for n, c in chosen.items():
        obs = n * (1 + config.dim)
        f = dataclasses.replace(config, explicit_cubic=c).n_explicit
        bigger = dataclasses.replace(config, explicit_cubic=c + 1).n_explicit
        # Only the cubic terms are budgeted: with none, the rest of the block may exceed it.
        assert c == 0 or (obs * f * f <= EXPLICIT_BUDGET and f <= min(obs, EXPLICIT_MAX))
        assert c == 26 or obs * bigger**2 > EXPLICIT_BUDGET or bigger > min(obs, EXPLICIT_MAX)


def test_local_terms_capped_shortest_first(methanol_data, monkeypatch):
    """Where the local terms would take the explicit block past EXPLICIT_MAX, initialize keeps
    as many as fit, those whose longer atom pair is shortest; the rest of the block is kept."""
    from forcegp.training import budget

    positions, e, f = methanol_data
    full = build_model(METHANOL_NUMBERS, positions, e, f, explicit_cubic=0)
    n_local = full.config.n_local
    rest = full.config.n_explicit - n_local
    assert n_local > 4  # methanol's shape has enough local terms to cap
    monkeypatch.setattr(budget, "EXPLICIT_MAX", rest + 3)
    capped = build_model(METHANOL_NUMBERS, positions, e, f, explicit_cubic=0)
    assert capped.config.n_local == 3 and capped.config.n_explicit == budget.EXPLICIT_MAX
    every = {tuple(p) for p in np.asarray(full.stats.local_pairs)}
    kept = {tuple(p) for p in np.asarray(capped.stats.local_pairs)}
    assert kept < every
    distance = 1.0 / np.asarray(full.stats.desc_mean)  # mean inverse distances of the sample
    longer = {p: max(distance[p[0]], distance[p[1]]) for p in every}
    assert max(longer[p] for p in kept) <= min(longer[p] for p in every - kept)
    monkeypatch.setattr(budget, "EXPLICIT_MAX", rest - 1)  # no room: no local terms, nothing else cut
    none = build_model(METHANOL_NUMBERS, positions, e, f, explicit_cubic=0)
    assert none.config.n_local == 0 and none.config.n_explicit == rest


def test_initialize_resolves_auto_cubic(methanol_data):
    positions, e, f = methanol_data
    model = build_model(METHANOL_NUMBERS, positions, e, f, explicit_cubic=-1)
    assert 0 <= model.config.explicit_cubic <= model.config.explicit_q
    assert model.config.n_explicit <= len(e) * (1 + model.config.dim)
    fixed = build_model(METHANOL_NUMBERS, positions, e, f, explicit_cubic=2)
    assert fixed.config.explicit_cubic == 2


def test_budgeted_width_follows_the_cost_of_a_training_structure(methanol_data):
    from forcegp.gp.config import Config
    from forcegp.training.budget import NARROW, WIDE, budgeted_width

    # rMD17: ethanol (12 copies, 28 rows) and naphthalene (4, 55) wide; benzene (12, 37) and
    # aspirin (6, 64) narrow.
    assert budgeted_width(Config(n_atoms=9), 12) == WIDE == 128
    assert budgeted_width(Config(n_atoms=18), 4) == WIDE
    assert budgeted_width(Config(n_atoms=12), 12) == NARROW == 64
    assert budgeted_width(Config(n_atoms=21), 6) == NARROW
    positions, e, f = methanol_data
    model = build_model(METHANOL_NUMBERS, positions, e, f, width=-1, n_permutations=6)
    assert model.config.width == WIDE  # 6 copies x 19 rows
    assert model.hyper.mlp.mlp.layers[0].weight.shape[0] == WIDE


@pytest.mark.parametrize("descriptor", ["inverse-distance", "atomic"])
def test_matched_prior_scale_gives_the_forces_their_variance(methanol_data, descriptor):
    """After match_prior_scale, DSoftKI's prior variance of a gradient component (rows of the
    first structures, computed here op by op) equals the mean square of the data's."""
    from synthetic import standardised

    from forcegp.training.initialise import match_prior_scale

    positions, e, f = methanol_data
    model = build_model(METHANOL_NUMBERS, positions, e, f, descriptor=descriptor)
    _, g = standardised(model, e, f)
    x = np.asarray(positions).reshape(len(positions), -1)
    matched = match_prior_scale(model, x, g, sample=8)
    cfg = dataclasses.replace(matched.config, explicit="none")
    chol = soft_cholesky(cfg, matched.hyper)
    rows = np.stack([np.asarray(basis_rows(cfg, matched.stats, matched.hyper, chol, jnp.asarray(xi)))
                     for xi in x[:8]])  # fmt: skip
    assert float(matched.hyper.scale) != pytest.approx(float(model.hyper.scale), rel=1e-3)
    np.testing.assert_allclose(np.mean(np.sum(rows[:, 1:] ** 2, axis=-1)), np.mean(g**2), rtol=1e-6)


def test_budgeted_epochs_follow_the_same_cost(methanol_data):
    from forcegp.training.budget import LONG, SHORT, budgeted_epochs

    positions, e, f = methanol_data
    few = build_model(METHANOL_NUMBERS, positions, e, f, n_permutations=6)  # 6 x 19 rows
    assert budgeted_epochs(few) == LONG == 60
    many = few.config.__class__(**{**few.config.to_dict(), "n_atoms": 40})  # 6 x 121 rows
    assert budgeted_epochs(type(few)(many, few.numbers, few.stats, few.hyper)) == SHORT == 40


def test_budgeted_epochs_are_fewer_beside_the_body_ordered_block(methanol_data):
    from forcegp.training.budget import LONG, RESIDUAL, budgeted_epochs

    positions, e, f = methanol_data
    body = build_model(METHANOL_NUMBERS, positions, e, f, descriptor="atomic", env_dim=6, **BODY4)
    assert budgeted_epochs(body) == RESIDUAL == 5
    alone = type(body)(dataclasses.replace(body.config, explicit="none"), body.numbers, body.stats,
                       body.hyper)  # fmt: skip
    assert budgeted_epochs(alone) == LONG  # DSoftKI alone: no exact block fits first


BODY4 = dict(env_radial=3, env_lmax=2, env_body4=3, env_body4_lmax=2, env_body3=9)


def test_bounded_pair_powers_stay_bounded_where_pairs_leave_the_training_range(methanol_data):
    """With pair_bound C the pair columns are scale_pair (C tanh(z/C))^k: they follow the
    unbounded powers near the training mean and stay below scale_pair C^k where the molecule is
    compressed far beyond any training structure, where the unbounded powers grow with z^k."""
    from forcegp.gp.explicit import _pair_powers, bounded_pair_distance

    z = jnp.array([-50.0, -1e-3, 0.0, 1e-3, 3.0, 50.0])
    w, dw = bounded_pair_distance(z, 2.0)
    np.testing.assert_allclose(w[1:4], z[1:4], rtol=1e-6)
    assert float(jnp.max(jnp.abs(w))) <= 2.0 and float(w[-1]) > 1.99 and float(w[4]) < 3.0
    np.testing.assert_allclose(dw, jax.vmap(jax.grad(lambda t: bounded_pair_distance(t, 2.0)[0]))(z))
    positions, e, f = methanol_data
    bound = 1.5
    models = {b: build_model(METHANOL_NUMBERS, positions, e, f, descriptor="atomic", env_dim=6,
                             pair_bound=b) for b in (0.0, bound)}  # fmt: skip
    n_pair = models[bound].config.n_explicit_pair
    assert n_pair == 3 * 15
    squeezed = jnp.asarray(0.6 * np.asarray(positions[0]).reshape(-1))
    for b, model in models.items():
        value, _ = _pair_powers(model.config, model.stats, model.hyper, squeezed, False)
        assert value.shape == (n_pair,)
        pairs = np.abs(np.asarray(value)) / float(model.hyper.scale_pair)
        limit = np.repeat([bound, bound**2, bound**3], 15)
        if b:
            assert np.all(pairs <= limit) and pairs.max() > 0.9 * bound**3
        else:
            assert pairs.max() > 10 * bound**3  # the unbounded powers of the same structure


@pytest.mark.parametrize("extra", [{}, BODY4], ids=["products", "body4"])
def test_an_atomic_model_is_invariant_without_enumerating_permutations(methanol_data, extra):
    """Without pair powers the atomic model is a sum over atoms: permuting equal atoms (any of
    the four H, not only graph automorphisms), rotating, reflecting and translating leave every
    basis function unchanged, with the power spectrum's products or the body-ordered invariants
    (even couplings only). (The pair powers are powers of particular atom pairs' inverse
    distances, invariant only under rotations and translations.)"""
    positions, e, f = methanol_data
    model = build_model(METHANOL_NUMBERS, positions, e, f, descriptor="atomic", env_dim=6,
                        pair_powers=0, **extra)  # fmt: skip
    assert model.config.n_permutations == 1 and model.config.n_species == 3
    x = METHANOL_REFERENCE + 0.1 * np.random.default_rng(2).normal(size=(6, 3))
    swapped = x[[0, 5, 2, 1, 4, 3]]  # methyl H 1 <-> hydroxyl H 5, H 3 <-> H 1
    moved = x @ random_rotation(np.random.default_rng(3)).T + 0.7
    mirrored = x * np.array([1.0, -1.0, 1.0])
    phi = values(model, jnp.asarray(np.stack([x, swapped, moved, mirrored]).reshape(4, -1)))
    np.testing.assert_allclose(phi[1], phi[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(phi[2], phi[0], rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(phi[3], phi[0], rtol=1e-10, atol=1e-11)
    if extra:  # the body-ordered block is there, and it moves with the geometry
        body = slice(model.config.n_basis - 3 * model.config.n_body, model.config.n_basis)
        assert model.config.n_body > 0 and float(jnp.max(jnp.abs(phi[0, body]))) > 0
        other = values(model, jnp.asarray(positions[:1].reshape(1, -1)))[0]
        size = float(jnp.max(jnp.abs(phi[0, body])))
        assert float(jnp.max(jnp.abs(other[body] - phi[0, body]))) > 1e-3 * size


def test_body_ordered_groups_fold_into_their_column_scales(methanol_data):
    """Each element's invariants of each body order are one evidence group; with_multipliers
    multiplies exactly those columns (through Stats.body_scale) and leaves the rest."""
    positions, e, f = methanol_data
    model = build_model(METHANOL_NUMBERS, positions, e, f, descriptor="atomic", env_dim=6, **BODY4)
    cfg = model.config
    groups = posterior.basis_groups(cfg)
    body = groups[cfg.n_basis - 3 * cfg.n_body :]
    assert sorted(set(body.tolist())) == list(range(posterior.BODY_GROUP, posterior.BODY_GROUP + 9))
    two, three, four = cfg.body_orders
    assert two == 9 and three == 3 * 45 and four > 0 and two + three + four == cfg.n_body
    assert np.sum(body == posterior.BODY_GROUP + 3 + 1) == three  # element 1, body order three
    mult = np.exp(np.random.default_rng(4).normal(size=posterior.BODY_GROUP + 9))
    new = posterior.with_multipliers(model, mult, float(model.hyper.noise_energy),
                                     float(model.hyper.noise_force))  # fmt: skip
    x = jnp.asarray(positions[:2].reshape(2, -1))
    before, after = np.asarray(values(model, x)), np.asarray(values(new, x))
    expected = np.broadcast_to(mult[groups], before.shape)  # DSoftKI: the amplitude's square root
    keep = np.abs(before) > 1e-12
    np.testing.assert_allclose(after[keep] / before[keep], expected[keep], rtol=1e-9)


def test_group_scaling_keeps_the_columns_relative_sizes_within_a_group(methanol_data):
    """body_scaling "column" gives every body-ordered column unit RMS over the training
    structures; "group" gives each (element, body order) group unit mean square over its columns
    and leaves their ratios as the invariants have them. The same invariants either way."""
    positions, e, f = methanol_data
    kwargs = dict(descriptor="atomic", env_dim=6, **BODY4)
    models = {s: build_model(METHANOL_NUMBERS, positions, e, f, body_scaling=s, **kwargs)
              for s in ("column", "group")}  # fmt: skip
    cfg = models["column"].config
    x = jnp.asarray(positions.reshape(len(positions), -1))
    body = slice(cfg.n_basis - 3 * cfg.n_body, cfg.n_basis)
    groups = posterior.basis_groups(cfg)[body]
    cols = {scaling: np.asarray(values(model, x))[:, body] for scaling, model in models.items()}
    live = np.any(cols["column"] != 0, axis=0)  # some channels' invariants vanish here
    assert live.sum() > 0.5 * len(live)
    column_rms = np.sqrt(np.mean(cols["column"] ** 2, axis=0))
    np.testing.assert_allclose(column_rms[live], 1.0, rtol=1e-8)
    group_ms = np.mean(cols["group"] ** 2, axis=0)
    for g in np.unique(groups):
        np.testing.assert_allclose(np.mean(group_ms[groups == g]), 1.0, rtol=1e-8)
        assert np.ptp(np.sqrt(group_ms[(groups == g) & live])) > 0.1
    ratio = cols["group"][:, live] / cols["column"][:, live]  # per column: the same invariants
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:1], ratio.shape), rtol=1e-8)


def _carbon_chain(n_atoms: int) -> np.ndarray:
    """A zigzag carbon chain (n_atoms, 3) Å with 1.5 Å bonds."""
    a = np.arange(n_atoms)
    return np.stack([1.25 * a, 0.85 * (a % 2), np.zeros(n_atoms)], axis=1)


def test_a_large_molecule_gets_local_slots_and_exact_rows():
    """Beyond environment.ALL_SLOTS_ATOMS atoms each atom takes its nearest atoms as slots, as
    many as the training data put within the cutoff plus a margin, and the observation rows
    (built per moved atom from the atoms' local blocks) still equal autodiff."""
    from synthetic import make_data

    n_atoms = environment.ALL_SLOTS_ATOMS + 6
    numbers = np.full(n_atoms, 6)
    positions, e, f = make_data(numbers, _carbon_chain(n_atoms), 6, seed=3)
    model = build_model(numbers, positions, e, f, descriptor="atomic", env_dim=4, pair_powers=0,
                        env_cutoff=3.0)  # fmt: skip
    needed = environment.max_neighbours(positions, 3.0)
    assert needed + 4 == model.config.env_neighbours < n_atoms - 1
    rows, value, jac = rows_and_autodiff(model, jnp.asarray(positions[1].reshape(-1)))
    np.testing.assert_allclose(rows[0], value, rtol=1e-12, atol=1e-14)
    scale = float(jnp.max(jnp.abs(jac)))
    np.testing.assert_allclose(rows[1:], jac.T, rtol=1e-9, atol=1e-11 * scale)


def test_too_few_neighbour_slots_are_refused(methanol_data):
    from forcegp.errors import InputError

    positions, e, f = methanol_data
    with pytest.raises(InputError, match="env_neighbours=2 is fewer than the 5 atoms"):
        build_model(METHANOL_NUMBERS, positions, e, f, descriptor="atomic", env_neighbours=2)


@pytest.mark.parametrize("name,extra", [("env_body4", {}), ("env_body3", {"env_body4": 2})])
def test_more_mixed_channels_than_channels_are_refused(methanol_data, name, extra):
    from forcegp.errors import InputError

    positions, e, f = methanol_data
    options = {"env_body4": 10, "env_body4_lmax": 2} | extra | {name: 10}
    with pytest.raises(InputError, match=f"`{name}`=10 mixed channels .* give 9; use at most 9"):
        build_model(METHANOL_NUMBERS, positions, e, f, descriptor="atomic", env_radial=3,
                    env_lmax=2, **options)  # fmt: skip


def test_body_order_three_on_every_channel_spans_every_channel_pair():
    """With as many mixed channels as channels, order three's products are those of the
    unmixed channels rotated: per l, the symmetric matrix B B^T they hold (off-diagonal entries
    counted twice) has the Frobenius norm of A A^T, for any orthogonal mixing; order four sits
    on the first n4 mixed channels only."""
    from forcegp.gp import body_order
    from forcegp.gp.config import body_size

    rng = np.random.default_rng(4)
    c, l_max, n4 = 5, 2, 2
    a = rng.normal(size=(c, (l_max + 1) ** 2))
    mixing = np.stack([np.linalg.qr(rng.normal(size=(c, c)))[0] for _ in range(l_max + 1)])
    f = np.asarray(body_order.atom_invariants(jnp.asarray(a), jnp.asarray(mixing), l_max, c, n4))
    assert f.shape == (body_size(c, c, n4, l_max),)
    pairs = c * (c + 1) // 2
    iu = np.triu_indices(c)
    for l in range(l_max + 1):
        three = f[c + l * pairs : c + (l + 1) * pairs]
        full = np.zeros((c, c))
        full[iu] = three
        full = full + np.triu(full, 1).T
        al = a[:, l * l : (l + 1) ** 2] / (2 * l + 1) ** 0.25
        np.testing.assert_allclose(np.linalg.norm(full), np.linalg.norm(al @ al.T), rtol=1e-12)
    # Order four is the same as with only the first n4 mixed channels given.
    g = body_order.atom_invariants(jnp.asarray(a), jnp.asarray(mixing[:, :n4]), l_max, n4, n4)
    n3_block = c + (l_max + 1) * pairs
    np.testing.assert_allclose(f[n3_block:], np.asarray(g)[c + (l_max + 1) * 3 :], rtol=1e-12)


def test_size_defaults_choose_the_atomic_descriptor_for_large_molecules():
    """Left to the user-level defaults (absent, "auto" or AUTO), a molecule of more than
    LARGE_MOLECULE_ATOMS atoms gets the atomic descriptor without pair powers, a smaller one
    the global descriptor with them; what the user sets is kept."""
    from forcegp.gp.config import AUTO, LARGE_MOLECULE_ATOMS, PAIR_POWERS
    from forcegp.training.budget import size_defaults

    small, large = LARGE_MOLECULE_ATOMS, LARGE_MOLECULE_ATOMS + 1
    assert size_defaults(small, {}) == {"descriptor": "inverse-distance", "pair_powers": PAIR_POWERS}
    assert size_defaults(large, {"descriptor": "auto", "pair_powers": AUTO}) == {
        "descriptor": "atomic", "pair_powers": 0}  # fmt: skip
    kept = {"descriptor": "inverse-distance", "pair_powers": 1, "width": 8}
    assert size_defaults(large, kept) == kept
    assert size_defaults(small, {"descriptor": "atomic"})["pair_powers"] == PAIR_POWERS


def test_pca_with_more_entries_than_samples_uses_the_gram_matrix():
    """With P > n the principal directions come from the n x n Gram matrix: the same
    directions (up to sign) and unit-variance components as from the P x P covariance."""
    from forcegp.training.initialise import pca_projection

    rng = np.random.default_rng(0)
    v = rng.normal(size=(30, 5)) @ rng.normal(size=(5, 80)) + 0.01 * rng.normal(size=(30, 80))
    v = (v - v.mean(0)) / v.std(0)
    wide = pca_projection(v, 4)
    evals, evecs = np.linalg.eigh(np.cov(v, rowvar=False))
    order = np.argsort(evals)[::-1][:4]
    np.testing.assert_allclose(np.abs(wide), np.abs(evecs[:, order] / np.sqrt(evals[order])), atol=1e-10)
    np.testing.assert_allclose(np.var(v @ wide, axis=0, ddof=1), 1.0, rtol=1e-10)
