"""The optimiser loop: the loss decreases, non-finite steps are skipped, runs are deterministic."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forcegp.gp import params
from forcegp.gp.likelihood import batch_loss
from forcegp.training import loop
from forcegp.training import settings as settings_mod

SETTINGS = settings_mod.TrainSettings(epochs=3, batch_size=4, lr=2e-2, lr_mlp=1e-2)
full_loss = eqx.filter_jit(batch_loss)


def leaves(tree):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(v)]


@pytest.fixture(scope="module")
def trained(small_problem):
    pb = small_problem
    return loop.run(pb.model, pb.x, pb.y, pb.g, SETTINGS, key=jax.random.key(1))


def test_training_decreases_the_loss(small_problem, trained):
    pb = small_problem
    data = (jnp.asarray(pb.x), jnp.asarray(pb.y), jnp.asarray(pb.g))
    before = float(full_loss(pb.model.hyper, pb.model, *data))
    after = float(full_loss(trained.hyper, pb.model, *data))
    assert np.isfinite(before) and np.isfinite(after)
    assert after < before - 0.01 * abs(before)
    history = trained.history
    assert [r["epoch"] for r in history] == [1, 2, 3] and trained.epoch == 3
    assert all(r["skipped_steps"] == 0 for r in history)
    assert history[-1]["loss"] < history[0]["loss"]


def test_same_key_gives_identical_hyperparameters(small_problem, trained):
    pb = small_problem
    again = loop.run(pb.model, pb.x, pb.y, pb.g, SETTINGS, key=jax.random.key(1))
    for a, b in zip(leaves(again.hyper), leaves(trained.hyper), strict=True):
        np.testing.assert_array_equal(a, b)
    assert again.history == trained.history


def test_non_finite_step_is_skipped(small_problem):
    """A NaN energy poisons exactly one batch per epoch: those steps are skipped."""
    pb = small_problem
    y = np.array(pb.y, copy=True)
    y[5] = np.nan
    # Same settings as the other runs, so the compiled step is shared (persistent cache).
    state = loop.run(pb.model, pb.x, y, pb.g, SETTINGS, key=jax.random.key(1))
    assert [r["skipped_steps"] for r in state.history] == [1, 2, 3]
    assert loop.skipped_steps(state.opt_state) == 3
    assert params.all_finite(state.hyper)
    assert all(np.isfinite(r["loss"]) for r in state.history)
    # The other steps were applied.
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(leaves(state.hyper), leaves(pb.model.hyper), strict=True)
    ]
    assert all(changed)


def count_calls(monkeypatch, module, name) -> list:
    """Record each call of module.name; called inside a jitted function, once per trace."""
    calls, original = [], getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_step_compiles_once_per_shapes_and_settings(small_problem, monkeypatch, tmp_path):
    """One trace of the step: not again on its second call (the step returns leaves of the types
    it was given), nor for a second run or one resumed from a checkpoint (module-level step)."""
    from forcegp.training.checkpoint import load_checkpoint, save_checkpoint

    pb = small_problem
    traces = count_calls(monkeypatch, loop, "batch_loss")
    settings = settings_mod.TrainSettings(epochs=2, batch_size=5, lr=2e-2)  # shapes of no other test
    after_one = []
    key = jax.random.key(2)
    first = loop.run(
        pb.model, pb.x, pb.y, pb.g, settings, key=key,
        on_epoch=lambda s: after_one.append(s) if s.epoch == 1 else None,
    )  # fmt: skip
    assert len(traces) == 1  # 4 steps, initial hyperparameters partly weakly typed
    again = loop.run(pb.model, pb.x, pb.y, pb.g, settings, key=key)
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, pb.model, after_one[0], key=key, epoch=1, fingerprint="f", settings={"s": 1})
    saved = load_checkpoint(path, pb.model, loop.optimizer(settings, pb.model.hyper, 12))
    resumed = loop.run(saved.model, pb.x, pb.y, pb.g, settings, key=key, state=saved.state)
    assert len(traces) == 1
    for a, b, c in zip(leaves(first.hyper), leaves(again.hyper), leaves(resumed.hyper), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_training_steps_average_over_a_random_subset_of_permutations(methanol_data):
    """train_permutations=k: each step's model keeps k distinct permutations of its own, drawn
    by the step key (same key, same subset); the loss is that of the subset model."""
    from synthetic import METHANOL_NUMBERS, build_model

    positions, e, f = methanol_data
    model = build_model(METHANOL_NUMBERS, positions, e, f, n_permutations=6)
    perms = np.asarray(model.stats.permutations)
    assert perms.shape[0] == 6
    settings = settings_mod.TrainSettings(train_permutations=2)
    seen = set()
    for step in range(8):
        key = loop.step_key(jax.random.key(3), 0, step)
        sub = np.asarray(loop._permutation_subset(model, settings, key).stats.permutations)
        again = np.asarray(loop._permutation_subset(model, settings, key).stats.permutations)
        np.testing.assert_array_equal(sub, again)
        rows = {tuple(r) for r in sub}
        assert len(rows) == 2 and rows <= {tuple(r) for r in perms}
        seen |= rows
    assert len(seen) > 2  # different steps draw different subsets
    # 0 (all) or k >= the count leaves the model as it is.
    for k in (0, 6, 9):
        same = loop._permutation_subset(model, settings_mod.TrainSettings(train_permutations=k), key)
        assert same is model
