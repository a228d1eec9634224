"""train_model / evaluate / predict_dataset on a small slice of the rMD17 ethanol example data."""

from __future__ import annotations

from pathlib import Path

import ase.io
import equinox as eqx
import jax
import numpy as np
import pytest

from forcegp import calibration
from forcegp.data import read_dataset
from forcegp.errors import InputError, ModelFileError, ResourceError
from forcegp.files import write_extxyz_atomic
from forcegp.gp import evidence, misfit
from forcegp.modelfile import read_header
from forcegp.training import evaluation, loop, pipeline, resources
from forcegp.training import settings as settings_mod
from forcegp.training.initialise import initialize
from forcegp.training.settings import TrainSettings

DATA = Path(__file__).resolve().parent.parent / "data" / "ethanol_train.extxyz"
TINY = {
    "n_inducing": 8,
    "n_features": 4,
    "width": 8,
    "depth": 1,
    "explicit_dim": 4,
    "n_permutations": 1,
}


@pytest.fixture(scope="module")
def ethanol():
    return read_dataset(DATA, index="0:30")


def train(data, tmp_path=None, *, epochs=2, resume=False, progress=None, **kw):
    kw.setdefault("settings", TrainSettings(epochs=epochs, batch_size=8))
    kw.setdefault("config_kwargs", TINY)
    checkpoint = None if tmp_path is None else tmp_path / "run.ckpt"
    return pipeline.train_model(
        data,
        seed=0,
        valid_fraction=0.2,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        **kw,
    )


def leaves(model):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(model) if eqx.is_array(v)]


@pytest.fixture(scope="module")
def trained(ethanol):
    events = []
    model, meta = train(ethanol, progress=lambda event, info: events.append((event, info)))
    return model, meta, events


def test_train_and_evaluate(ethanol, trained):
    model, meta, events = trained
    assert model.posterior is not None
    assert meta["training"]["n_structures"] == 24 and meta["training"]["n_valid"] == 6
    assert meta["training"]["settings"]["seed"] == 0
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    assert [e for e, _ in events].count("epoch") == 2
    assert events[-1][0] == "evaluate"
    metrics = evaluation.evaluate(model, ethanol.subset(np.arange(10)), per_frame=True)
    assert metrics["n_frames"] == 10
    for key in ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse"):
        assert np.isfinite(metrics[key]) and metrics[key] > 0
    assert metrics["energy_rmse"] >= metrics["energy_mae"]
    for key in ("energy_coverage_95", "forces_coverage_95"):
        assert 0.0 <= metrics[key] <= 1.0
    assert -1.0 <= metrics["forces_std_error_spearman"] <= 1.0
    assert metrics["per_frame"]["energy_error"].shape == (10,)
    # Validation metrics were computed on the held-out frames, with the calibrated stds: the
    # prediction made for the calibration, its stds scaled by kappa, gives what evaluating the
    # calibrated model gives.
    assert meta["metrics"]["validation"]["n_frames"] == 6
    assert meta["training"]["calibration"]["kappa"] != 1.0
    valid = ethanol.split(0.2, seed=0)[1]
    again = evaluation.evaluate(model, valid)
    for key, value in meta["metrics"]["validation"].items():
        assert_close(value, again[key], key)


def test_the_input_dependent_noise_is_chosen_on_the_validation_data(ethanol, trained):
    """gamma is the candidate (or 0) with the lowest held-out NLL; the saved model holds the
    misfit of that gamma (or none for 0), and its NLL on the validation data is that value."""
    model, meta, events = trained
    cal = meta["training"]["calibration"]
    nll = cal["misfit_valid_nll"]
    assert set(nll) == {"0", *(f"{g:g}" for g in misfit.GRID)}
    assert f"{cal['misfit_gamma']:g}" == min(nll, key=nll.get)
    assert (model.posterior.misfit is None) == (cal["misfit_gamma"] == 0.0)
    # Calibration multiplies every std by one factor, which held_out_nll profiles out.
    valid = ethanol.split(0.2, seed=0)[1]
    again = evaluation.held_out_nll(evaluation.predict(model, valid.positions), valid)
    assert again == pytest.approx(min(nll.values()), abs=2e-5)
    assert ("message", {"text": "fitting the input-dependent noise"}) in events


def test_the_input_dependent_noise_can_be_off_and_is_skipped_without_memory(ethanol, monkeypatch):
    model, meta = train(ethanol, epochs=1, settings=TrainSettings(epochs=1, misfit_noise=False))
    assert model.posterior.misfit is None and meta["training"]["calibration"]["misfit_gamma"] == 0.0
    monkeypatch.setattr(pipeline, "misfit_pass_plan", lambda *a: (0, 8))
    events = []
    model, meta = train(ethanol, epochs=1, progress=lambda e, i: events.append(i.get("text")))
    assert model.posterior.misfit is None
    assert meta["training"]["calibration"]["misfit_skipped"] == "memory"
    assert any(t and "skipped" in t for t in events)
    from forcegp.cli import display

    summary = display.model_summary(model, meta)
    assert summary["hyperparameters"]["misfit_skipped"] == "memory"
    assert "its pass was skipped, too little memory" in display.format_summary("m.fgp", summary)


def test_misfit_candidates_per_pass_follow_the_memory(ethanol, trained):
    """As many candidates per pass as fit beside the fit's chunk of rows; where fewer passes
    (or any pass at all) need a smaller chunk, the largest such chunk."""
    model = trained[0]

    def need(chunk, gammas):
        return resources.misfit_pass_bytes(model.config, chunk, 1, gammas, model.n_copies)

    plan = resources.misfit_pass_plan
    assert plan(model, 8, 1, 4, 1e15) == (4, 8)
    assert plan(model, 8, 1, 4, need(8, 2)) == (2, 8)
    # A candidate fits only beside a smaller chunk: the largest that leaves room for it.
    assert need(8, 1) > need(4, 1)
    assert plan(model, 8, 1, 4, need(8, 1) - 1) == (1, 4)
    assert plan(model, 8, 1, 4, need(1, 1) - 1) == (0, 8)
    # Fewer passes beside a smaller chunk rather than four beside the fit's 8: the largest
    # chunk that takes the most candidates.
    limit = need(2, 2)
    assert need(8, 1) < limit < min(need(4, 2), need(1, 3))  # (this model's sizes)
    assert plan(model, 8, 1, 4, limit) == (2, 2)
    # Chunks stay multiples of the devices.
    assert plan(model, 8, 2, 4, 1e15) == (4, 8)
    six = resources.misfit_pass_bytes(model.config, 6, 2, 1, model.n_copies)
    assert plan(model, 8, 2, 1, six) == (1, 4)


def assert_close(a, b, what: str) -> None:
    """Numbers, lists and dicts (the binned calibration) equal to 1e-9 relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_close(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{what}[{i}]")
    else:
        np.testing.assert_allclose(a, b, rtol=1e-9, err_msg=what)


def test_evaluate_needs_labels_and_the_same_molecule(ethanol, trained):
    model = trained[0]
    unlabelled = type(ethanol)(ethanol.numbers, ethanol.positions[:3], None, None)
    with pytest.raises(InputError, match="no energies and forces"):
        evaluation.evaluate(model, unlabelled)
    swapped = type(ethanol)(
        ethanol.numbers[::-1], ethanol.positions[:3], ethanol.energies[:3], ethanol.forces[:3]
    )
    with pytest.raises(ModelFileError, match="trained for C2H6O.*another order"):
        evaluation.evaluate(model, swapped)


def test_predict_dataset_survives_extxyz(tmp_path, ethanol, trained):
    model = trained[0]
    data = ethanol.subset(np.arange(3))
    images = evaluation.predict_dataset(model, data)
    path = tmp_path / "pred.extxyz"
    write_extxyz_atomic(path, images)
    back = ase.io.read(path, ":")
    assert len(back) == 3
    for a, b in zip(images, back, strict=True):
        # extxyz stores arrays with 8 decimals and info values in full.
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-8)
        assert b.info["energy_std"] == pytest.approx(a.info["energy_std"], rel=1e-10)
        assert b.info["energy_std"] > 0
        np.testing.assert_allclose(b.arrays["forces_std"], a.arrays["forces_std"], atol=1e-8)
        np.testing.assert_allclose(b.arrays["forcegp_forces"], a.get_forces(), atol=1e-8)
        assert "ref_energy" in b.info and "ref_forces" in b.arrays


def record_calls(monkeypatch, module, name: str, calls: list) -> None:
    """Append ``name`` to ``calls`` on each call of module.name: once per trace when jitted."""
    original = getattr(module, name)

    def recording(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)


def test_resume_after_interruption_gives_the_same_model(tmp_path, ethanol, monkeypatch):
    full, full_meta = train(ethanol, epochs=3)

    real_save = pipeline.save_checkpoint

    def save_then_interrupt(*args, epoch, **kwargs):
        real_save(*args, epoch=epoch, **kwargs)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "save_checkpoint", save_then_interrupt)
    with pytest.raises(pipeline.TrainingInterrupted) as info:
        train(ethanol, tmp_path, epochs=3)
    assert info.value.exit_code == 130
    message = str(info.value)
    assert "interrupted after epoch 1" in message and "`resume`" in message
    assert str(tmp_path / "run.ckpt") in message
    assert read_header(tmp_path / "run.ckpt", "forcegp-checkpoint")["epoch"] == 1
    monkeypatch.undo()

    # Nothing to compile again: the same shapes and settings as the uninterrupted run.
    traces = []
    record_calls(monkeypatch, evidence, "exact_nll", traces)
    record_calls(monkeypatch, loop, "batch_loss", traces)
    messages = []
    resumed, meta = train(
        ethanol,
        tmp_path,
        epochs=3,
        resume=True,
        progress=lambda e, i: messages.append(i.get("text")) if e == "message" else None,
    )
    assert any("resuming" in str(m) and "epoch 1" in str(m) for m in messages)
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert meta["history"] == full_meta["history"]
    for a, b in zip(leaves(resumed), leaves(full), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical
    assert traces == []


def test_interruption_before_any_checkpoint(tmp_path, ethanol, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run", interrupt)
    with pytest.raises(pipeline.TrainingInterrupted, match="no epoch had completed"):
        train(ethanol, tmp_path)
    assert not (tmp_path / "run.ckpt").exists()


def test_resume_with_other_data_or_settings_is_refused(tmp_path, ethanol, monkeypatch):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    # A checkpoint of epoch 1, then a stop from the progress callback.
    def progress(event, info):
        if event == "epoch":
            stop()

    with pytest.raises(pipeline.TrainingInterrupted, match="after epoch 1"):
        train(ethanol, tmp_path, epochs=2, progress=progress)
    other = read_dataset(DATA, index="30:60")
    with pytest.raises(ModelFileError, match=r"other data/settings; remove it or do not resume"):
        train(other, tmp_path, epochs=2, resume=True)
    with pytest.raises(ModelFileError, match="other data/settings"):
        train(ethanol, tmp_path, resume=True, settings=TrainSettings(epochs=2, lr=1e-3))
    assert (tmp_path / "run.ckpt").exists()


def test_bad_training_input(ethanol):
    with pytest.raises(InputError, match=r"data \(.*ethanol_train.extxyz\) has 1 frame.*at least 2"):
        train(ethanol.subset([0]), valid=ethanol.subset([1]))
    with pytest.raises(InputError, match="unknown model option"):
        pipeline.make_config(9, {"n_inducng": 8})
    with pytest.raises(InputError, match="n_inducing"):
        pipeline.make_config(9, {"n_inducing": 0})
    with pytest.raises(InputError, match="epochs"):
        settings_mod.check_settings(TrainSettings(epochs=0))
    with pytest.raises(InputError, match="epochs"):
        settings_mod.check_settings(TrainSettings(epochs=-2))
    settings_mod.check_settings(TrainSettings(epochs=-1))  # auto
    for bad in ({"epochs": True}, {"batch_size": True}):
        with pytest.raises(InputError, match="must be an integer"):
            settings_mod.check_settings(TrainSettings(**bad))
    with pytest.raises(InputError, match="n_permutations"):
        pipeline.make_config(9, {"n_permutations": True})
    with pytest.raises(InputError, match="precision must be one of float32, float64"):
        settings_mod.check_settings(TrainSettings(precision="float16"))
    unlabelled = type(ethanol)(ethanol.numbers, ethanol.positions[:5], None, None)
    with pytest.raises(InputError, match="no energies and forces"):
        train(unlabelled)
    other = type(ethanol)(ethanol.numbers[::-1], ethanol.positions[:3], ethanol.energies[:3],
                          ethanol.forces[:3])  # fmt: skip
    with pytest.raises(InputError, match="validation data has"):
        train(ethanol, valid=other)


def test_training_step_memory_is_planned_before_training(ethanol):
    """The training step's memory comes from its compiled plan (XLA's buffer assignment) and
    grows with the batch; a cap the step cannot meet is refused before anything is trained,
    with the batch size named, even where the posterior fit's chunks would fit under it."""
    config = {**TINY, "explicit": "none", "n_inducing": 64}
    model = initialize(
        pipeline.make_config(ethanol.n_atoms, config), ethanol.numbers, ethanol.positions,
        ethanol.energies, ethanol.forces, key=jax.random.key(0),
    )  # fmt: skip
    x, y, g = pipeline.standardised(model, ethanol)
    need = {
        b: resources.step_memory_bytes(model, x, y, g, TrainSettings(epochs=1, batch_size=b))
        for b in (4, 24)
    }
    assert 0 < need[4] < need[24]
    cap = (need[4] + need[24]) / 2
    assert resources.fit_memory_bytes(model.config, 1) < cap  # the fit alone would go ahead
    events = []
    with pytest.raises(ResourceError, match=r"training step needs .*`batch_size` \(about \d+ would"):
        train(
            ethanol, config_kwargs=config, max_memory=cap, progress=lambda e, i: events.append(e),
            settings=TrainSettings(epochs=1, batch_size=24),
        )  # fmt: skip
    assert events == []  # refused before the explicit prefit and the first step
    fitted, meta = train(
        ethanol, config_kwargs=config, max_memory=cap, settings=TrainSettings(epochs=1, batch_size=4)
    )
    assert meta["history"] and np.isfinite(meta["history"][-1]["loss"])


def test_rank_and_spearman():
    np.testing.assert_allclose(calibration.rank([3.0, 1.0, 2.0, 2.0]), [4.0, 1.0, 2.5, 2.5])
    assert calibration.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert calibration.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    # Pearson correlation of the ranks, written out.
    ra, rb = calibration.rank(a), calibration.rank(b)
    assert calibration.spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)
    assert np.isnan(calibration.spearman([1.0], [2.0]))
    assert np.isnan(calibration.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_the_fit_reuses_the_explicit_block_statistics_of_the_prefit(ethanol, monkeypatch):
    """The explicit x explicit block of the fit's statistics is the prefit's, rescaled by its
    evidence multipliers: DSoftKI's training leaves the explicit scales alone, so the fit
    accumulates only the DSoftKI columns' products and gets the statistics a full
    accumulation gives; with other explicit scales the prefit's are not used."""
    from forcegp.gp import posterior, statistics

    run = pipeline.prepare(ethanol, None, 0.2, TINY, TrainSettings(epochs=2, batch_size=8), 0,
                           None, None)  # fmt: skip
    model, y_res, g_res, explicit = pipeline.prefit(run, lambda *_: None)
    model, _, _ = pipeline.train_soft(run, model, y_res, g_res, None, False, lambda *_: None)
    known = explicit.for_model(model)
    assert known is not None
    full = statistics.accumulate(model, run.x, run.y, run.g, chunk=7)
    reused = statistics.accumulate(model, run.x, run.y, run.g, chunk=7, known=known)
    m = model.config.n_inducing
    for name in ("a_e", "a_f"):
        a, b = np.asarray(getattr(full, name)), np.asarray(getattr(reused, name))
        np.testing.assert_allclose(a[m:, m:], np.asarray(getattr(known, name)), rtol=1e-9,
                                   atol=1e-12 * np.abs(a).max())  # fmt: skip
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12 * np.abs(a).max())
    for name in ("b_e", "b_f", "tt_e", "tt_f", "n_e", "n_f"):
        np.testing.assert_allclose(np.asarray(getattr(reused, name)), np.asarray(getattr(full, name)))
    # Other explicit scales: a full accumulation.
    other = eqx.tree_at(lambda mo: mo.hyper.raw_scale_linear, model, model.hyper.raw_scale_linear + 1)
    assert explicit.for_model(other) is None
    # train_model hands them to the fit; its model is the one a full accumulation gives.
    seen = []

    def recorded(*args, **kwargs):
        seen.append(kwargs.get("known"))
        return statistics.accumulate(*args, **kwargs)

    monkeypatch.setattr(posterior, "accumulate", recorded)
    reused_model, _ = train(ethanol)
    assert len(seen) == 1 and seen[0] is not None
    monkeypatch.setattr(type(explicit), "for_model", lambda self, mo: None)
    full_model, _ = train(ethanol)
    assert seen[-1] is None
    np.testing.assert_allclose(np.asarray(reused_model.posterior.mean),
                               np.asarray(full_model.posterior.mean), rtol=1e-6, atol=1e-9)  # fmt: skip


def test_explicit_statistics_are_kept_only_beside_room_for_a_training_step():
    """room_beside_step: the held statistics and a training step within the memory cap."""
    assert resources.room_beside_step(600, 300, 1000)
    assert not resources.room_beside_step(800, 300, 1000)
    assert resources.room_beside_step(None, 300, 1000)
    assert not resources.room_beside_step(None, 1300, 1000)
