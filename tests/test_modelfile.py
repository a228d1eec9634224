"""Model and checkpoint files: round trips, and every way a file can be wrong fails clearly."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forcegp import modelfile
from forcegp.data import read_dataset
from forcegp.errors import InputError, ModelFileError, NumericalError
from forcegp.gp import posterior
from forcegp.gp.config import (
    AUTO,
    AUTO_FIELDS,
    INT_FIELDS,
    MAX_PAIR_POWERS,
    Config,
    ConfigError,
    validate,
)
from forcegp.gp.params import ForceGP
from forcegp.training import checkpoint, evaluation
from forcegp.training.initialise import initialize, standardise_targets
from forcegp.training.loop import TrainState, optimizer, run
from forcegp.training.pipeline import make_config
from forcegp.training.settings import TrainSettings

DATA = Path(__file__).resolve().parent.parent / "data" / "ethanol_train.extxyz"
METADATA = {
    "training": {"fingerprint": "abc", "n_structures": 12, "sources": ["x"], "settings": {}},
    "history": [{"epoch": 1, "loss": 1.5}],
    "metrics": {"validation": {"energy_mae": float("nan")}},
}


@pytest.fixture(scope="module")
def problem():
    """A tiny ethanol model: 12 frames, initialised, posterior fitted (no training needed)."""
    data = read_dataset(DATA, index="0:12")
    config = Config(
        n_atoms=9, n_inducing=8, n_features=4, width=8, depth=1, explicit_dim=4, n_permutations=1
    )
    model = initialize(
        config, data.numbers, data.positions, data.energies, data.forces, key=jax.random.key(0)
    )
    y, g = standardise_targets(
        data.energies, data.forces, float(model.stats.energy_mean), float(model.stats.energy_scale)
    )
    x = data.positions.reshape(12, -1)
    return data, posterior.fit(model, x, y, g), (x, y, g)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, problem):
    path = tmp_path_factory.mktemp("io") / "model.fgp"
    modelfile.save_model(path, problem[1], metadata=METADATA)
    return path


def arrays(tree):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(tree) if eqx.is_array(v)]


def split(path):
    raw = Path(path).read_bytes()
    line, payload = raw.split(b"\n", 1)
    return json.loads(line), payload


def rewrite(path, header, payload, *, fix_checksum=True):
    if fix_checksum:
        import hashlib

        header = {**header, "payload_sha256": hashlib.sha256(payload).hexdigest()}
        header["payload_bytes"] = len(payload)
    Path(path).write_bytes(json.dumps(header).encode() + b"\n" + payload)


def test_round_trip_gives_identical_predictions(problem, saved):
    data, model, _ = problem
    loaded, header = modelfile.load_model(saved, numbers=data.numbers)
    assert loaded.config == model.config and loaded.numbers == model.numbers
    for a, b in zip(arrays(loaded), arrays(model), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    a = evaluation.predict(model, data.positions[:3])
    b = evaluation.predict(loaded, data.positions[:3])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert header["format"] == "forcegp-model" and header["format_version"] == modelfile.FORMAT_VERSION
    assert header["units"] == {"energy": "eV", "length": "Ang", "forces": "eV/Ang"}
    assert header["dtype"] == "float64" and header["numbers"] == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    assert header["training"]["fingerprint"] == "abc" and header["history"][0]["loss"] == 1.5
    assert header["metrics"]["validation"]["energy_mae"] is None  # NaN stored as null
    assert set(header["versions"]) >= {"jax", "equinox", "optax", "ase", "numpy", "python"}
    assert header["config"] == model.config.to_dict()


def test_the_file_is_a_json_line_and_leaves_never_pickle(saved):
    header, payload = split(saved)
    assert header["payload_bytes"] == len(payload)
    assert b"pickle" not in payload and not payload.startswith(b"\x80")


def test_truncated_file(tmp_path, saved):
    raw = saved.read_bytes()
    for n in (len(raw) - 7, len(raw.split(b"\n")[0]) + 1, 40, 0):
        bad = tmp_path / f"cut{n}.fgp"
        bad.write_bytes(raw[:n])
        with pytest.raises(ModelFileError, match=f"{bad}.*(truncated|not a forcegp)"):
            modelfile.load_model(bad)


def test_corrupted_payload_byte(tmp_path, saved):
    raw = bytearray(saved.read_bytes())
    raw[-20] ^= 0x01
    bad = tmp_path / "flip.fgp"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="truncated or corrupted.*checksum"):
        modelfile.load_model(bad)


def test_payload_that_does_not_match_a_consistent_header(tmp_path, saved):
    header, payload = split(saved)
    bad = tmp_path / "short.fgp"
    rewrite(bad, header, payload[:-100])  # checksum and size agree, content is short
    with pytest.raises(ModelFileError, match="truncated or corrupted"):
        modelfile.load_model(bad)


def test_newer_format_version(tmp_path, saved):
    header, payload = split(saved)
    bad = tmp_path / "new.fgp"
    rewrite(bad, {**header, "format_version": modelfile.FORMAT_VERSION + 1}, payload)
    with pytest.raises(ModelFileError, match="made by a newer forcegp"):
        modelfile.load_model(bad)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"n_inducing": 10**9}, "n_inducing"),
        ({"n_inducing": 90_000, "explicit_dim": 2000, "n_atoms": 1000}, "refusing to allocate"),
        ({"n_atoms": -3}, "n_atoms"),
        ({"n_features": 2.5}, "n_features"),
        ({"n_inducing": True}, "n_inducing"),
        ({"descriptor": "os.system"}, "descriptor"),
        ({"jitter": "1e-6"}, "jitter"),
        ({"surprise": 1}, "do not match"),
    ],
)
def test_absurd_config_is_refused_before_allocation(tmp_path, saved, change, match):
    header, payload = split(saved)
    bad = tmp_path / "absurd.fgp"
    rewrite(bad, {**header, "config": {**header["config"], **change}}, payload)
    with pytest.raises(ModelFileError, match=match):
        modelfile.load_model(bad)


@pytest.mark.parametrize(
    "change",
    [{"numbers": [6] * 8}, {"numbers": [0] * 9}, {"n_permutations": 5}, {"dtype": "float32"},
     {"misfit_columns": -1}, {"misfit_columns": 3}, {"misfit_columns": "8"}],
)  # fmt: skip
def test_other_bad_header_fields(tmp_path, saved, change):
    header, payload = split(saved)
    bad = tmp_path / "bad.fgp"
    rewrite(bad, {**header, **change}, payload)
    with pytest.raises(ModelFileError):
        modelfile.load_model(bad)


def test_a_model_with_input_dependent_noise_round_trips(tmp_path, problem):
    """Posterior.misfit (gp.misfit) is saved and loaded; files without one load with None."""
    from forcegp.gp import misfit

    data, model, (x, y, g) = problem
    proj = misfit.projection(model, columns=8)
    p, b = misfit.systems(model, proj, (10.0,), x, y, g)
    noisy = misfit.with_misfit(model, posterior.solve_system(p[0], b[0]), proj, 10.0)
    path = tmp_path / "misfit.fgp"
    modelfile.save_model(path, noisy, metadata=METADATA)
    loaded, header = modelfile.load_model(path)
    assert header["misfit_columns"] == 8 and loaded.posterior.misfit.shape == (model.config.n_basis, 8)
    a = evaluation.predict(noisy, data.positions[:3])
    for key, value in evaluation.predict(loaded, data.positions[:3]).items():
        np.testing.assert_array_equal(value, a[key])
    # The noise really is input-dependent: the stds differ from the constant-noise model's.
    assert np.all(a["forces_std"] > evaluation.predict(model, data.positions[:3])["forces_std"])
    # A file of the previous format version has no such field.
    plain = tmp_path / "plain.fgp"
    modelfile.save_model(plain, model, metadata=METADATA)
    header, payload = split(plain)
    del header["misfit_columns"]
    rewrite(plain, {**header, "format_version": 2}, payload)
    assert modelfile.load_model(plain)[0].posterior.misfit is None


def test_not_a_model_file(tmp_path):
    for content in (b"hello\n", b"[1, 2]\n", b'{"format": "zip"}\n', b"\x00" * 100):
        bad = tmp_path / "junk.fgp"
        bad.write_bytes(content)
        with pytest.raises(ModelFileError, match="not a forcegp"):
            modelfile.load_model(bad)
    huge = tmp_path / "huge.fgp"
    huge.write_bytes(b"{" + b" " * (modelfile.MAX_HEADER_BYTES + 10))
    with pytest.raises(ModelFileError, match="no header line"):
        modelfile.load_model(huge)
    with pytest.raises(ModelFileError, match="not found"):
        modelfile.load_model(tmp_path / "missing.fgp")


def test_wrong_molecule(saved):
    with pytest.raises(ModelFileError, match=r"was trained for C2H6O \(atoms C C O H"):
        modelfile.load_model(saved, numbers=[8, 1, 1])
    with pytest.raises(ModelFileError, match="another order"):
        modelfile.load_model(saved, numbers=[1, 1, 1, 1, 1, 1, 8, 6, 6])


def test_float64_model_under_float32_fails_loudly(saved):
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ModelFileError, match="float64.*jax_enable_x64"):
            modelfile.load_model(saved)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_non_finite_parameters_are_refused_and_nothing_is_written(tmp_path, problem):
    model = problem[1]
    bad = eqx.tree_at(lambda m: m.hyper.z, model, model.hyper.z.at[0, 0].set(jnp.nan))
    path = tmp_path / "nan.fgp"
    with pytest.raises(NumericalError, match="non-finite"):
        modelfile.save_model(path, bad, metadata={})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, problem, monkeypatch):
    path = tmp_path / "model.fgp"
    path.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ModelFileError, match="No space left"):
        modelfile.save_model(path, problem[1], metadata={})
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.fgp"]
    with pytest.raises(ModelFileError, match="does not exist"):
        modelfile.save_model(tmp_path / "nowhere" / "m.fgp", problem[1], metadata={})


def test_fewer_permutations_than_configured_round_trip(tmp_path, problem):
    """The symmetry search finds 12 permutations of ethanol for a configured maximum of 24."""
    data = problem[0]
    config = Config(n_atoms=9, n_inducing=4, n_features=0, explicit="none", n_permutations=24)
    model = initialize(
        config, data.numbers, data.positions, data.energies, data.forces, key=jax.random.key(1)
    )
    n_perm = model.stats.permutations.shape[0]
    assert 1 < n_perm < 24
    path = tmp_path / "sym.fgp"
    modelfile.save_model(path, model, metadata={})
    loaded, header = modelfile.load_model(path)
    assert header["n_permutations"] == n_perm and header["has_posterior"] is False
    assert loaded.config == model.config and loaded.posterior is None
    for a, b in zip(arrays(loaded), arrays(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip_and_validation(tmp_path, problem):
    data, model, (x, y, g) = problem
    settings = TrainSettings(epochs=1, batch_size=6)
    key = jax.random.key(7)
    state = run(model, x, y, g, settings, key=key)
    opt = optimizer(settings, model.hyper, len(x))
    path = tmp_path / "run.ckpt"
    run_settings = {**settings.to_dict(), "seed": 7}
    checkpoint.save_checkpoint(
        path, model, state, key=key, epoch=state.epoch, fingerprint="fp", settings=run_settings
    )
    ckpt = checkpoint.load_checkpoint(path, model, opt, fingerprint="fp", settings=run_settings)
    assert ckpt.state.epoch == 1 and ckpt.state.history == state.history
    np.testing.assert_array_equal(jax.random.key_data(ckpt.key), jax.random.key_data(key))
    for a, b in zip(arrays((ckpt.state.hyper, ckpt.state.opt_state)),
                    arrays((state.hyper, state.opt_state)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ModelFileError, match=r"other data/settings; remove it or do not resume"):
        checkpoint.load_checkpoint(path, model, opt, fingerprint="other", settings=run_settings)
    with pytest.raises(ModelFileError, match="other data/settings"):
        checkpoint.load_checkpoint(
            path, model, opt, fingerprint="fp", settings={**run_settings, "seed": 1}
        )
    wider = Config(**{**model.config.to_dict(), "width": 9})
    other = ForceGP(wider, model.numbers, model.stats, model.hyper, model.posterior)
    with pytest.raises(ModelFileError, match="other data/settings"):
        checkpoint.load_checkpoint(path, other, opt)
    # A checkpoint is not a model, and a model is not a checkpoint.
    with pytest.raises(ModelFileError, match="is a training checkpoint"):
        modelfile.load_model(path)
    model_path = tmp_path / "m.fgp"
    modelfile.save_model(model_path, model, metadata={})
    with pytest.raises(ModelFileError, match="is a model file"):
        checkpoint.load_checkpoint(model_path, model, opt)


@pytest.mark.parametrize("pair_powers", range(MAX_PAIR_POWERS + 1))
def test_every_pair_powers_the_api_accepts_round_trips(tmp_path, problem, pair_powers):
    """The API and model files share one validator: every value training accepts, a model file
    can hold and give back."""
    data = problem[0]
    config = make_config(9, {"n_inducing": 4, "n_features": 0, "explicit_dim": 2, "explicit_cubic": 0,
                             "pair_powers": pair_powers, "n_permutations": 1})  # fmt: skip
    model = initialize(config, data.numbers, data.positions, data.energies, data.forces,
                       key=jax.random.key(2))  # fmt: skip
    path = tmp_path / "powers.fgp"
    modelfile.save_model(path, model, metadata=METADATA)
    loaded, _ = modelfile.load_model(path)
    assert loaded.config == model.config and loaded.config.pair_powers == pair_powers
    for a, b in zip(arrays(loaded), arrays(model), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="pair_powers"):
        make_config(9, {"pair_powers": MAX_PAIR_POWERS + 1})


def test_api_and_files_accept_the_same_values():
    """At the edges of every integer field, user options and model files agree."""
    base = Config(n_atoms=9, width=8, explicit_cubic=2).to_dict()
    for name, (low, high) in INT_FIELDS.items():
        for value in (low - 1, low, high, high + 1):
            if name in AUTO_FIELDS and value == AUTO:
                continue  # "auto" is resolved by initialisation before any file is written
            values = {**base, name: value}
            api = file = True
            try:
                validate(values, resolved=False)
            except ConfigError:
                api = False
            try:
                validate(values, resolved=True)
            except ConfigError as err:
                file = "refusing to allocate" in str(err)  # size, not range: files alone check it
            assert api == file, (name, value)


def assert_round_trip(path, model, data):
    """Save and load ``model``: the same config and arrays, identical predictions with stds;
    returns the loaded model."""
    modelfile.save_model(path, model, metadata=METADATA)
    loaded, _ = modelfile.load_model(path, numbers=data.numbers)
    assert loaded.config == model.config
    for a, b in zip(arrays(loaded), arrays(model), strict=True):
        np.testing.assert_array_equal(a, b)
    before = evaluation.predict(model, data.positions[:3])
    after = evaluation.predict(loaded, data.positions[:3])
    for key in ("energy", "forces", "energy_std", "forces_std"):
        np.testing.assert_array_equal(after[key], before[key])
    return loaded


def test_a_body_ordered_model_round_trips_with_identical_predictions(tmp_path, problem):
    """The body-ordered invariants' channel mixing and column scales travel through the file."""
    data = problem[0]
    config = make_config(9, {"descriptor": "atomic", "n_inducing": 6, "n_features": 3, "width": 8,
                             "depth": 1, "env_dim": 4, "env_radial": 3, "env_lmax": 2,
                             "env_body4": 2, "env_body4_lmax": 2})  # fmt: skip
    model = initialize(config, data.numbers, data.positions, data.energies, data.forces,
                       key=jax.random.key(3))  # fmt: skip
    model = posterior.fit(model, *problem[2])
    assert model.stats.env_mixing.shape == (3, 2, 9)
    assert model.stats.body_scale.shape == (3 * model.config.n_body,)
    assert bool(jnp.all(model.stats.body_scale > 0))
    assert_round_trip(tmp_path / "body.fgp", model, data)


def test_an_atomic_model_round_trips_with_identical_predictions(tmp_path, problem):
    """The atomic descriptor's projections and element map travel through the file; a file of
    another atom order is refused as for any model."""
    data = problem[0]
    config = make_config(9, {"descriptor": "atomic", "n_inducing": 6, "n_features": 3, "width": 8,
                             "depth": 1, "env_dim": 4})  # fmt: skip
    model = initialize(config, data.numbers, data.positions, data.energies, data.forces,
                       key=jax.random.key(3))  # fmt: skip
    model = posterior.fit(model, *problem[2])
    assert model.config.n_species == 3 and model.stats.env_projection.shape[0] == 3
    path = tmp_path / "atomic.fgp"
    loaded = assert_round_trip(path, model, data)
    assert loaded.stats.elements == (1, 1, 2, 0, 0, 0, 0, 0, 0)
    # A file from before the env_products setting took products of all env_dim components (and
    # had no body-ordered invariants, unbounded pair powers and column-by-column invariant scales).
    header, payload = split(path)
    added = ("env_products", "env_body4", "env_body4_lmax", "env_body3", "pair_bound",
             "body_scaling")  # fmt: skip
    rewrite(path, {**header, "config": {k: v for k, v in header["config"].items()
                                        if k not in added}}, payload)  # fmt: skip
    loaded, _ = modelfile.load_model(path, numbers=data.numbers)
    assert model.config.body_scaling == "group"
    assert loaded.config == dataclasses.replace(
        model.config, env_products=model.config.env_dim, body_scaling="column"
    )
    assert loaded.config.n_basis == model.config.n_basis
    for a, b in zip(arrays(loaded), arrays(model), strict=True):
        np.testing.assert_array_equal(a, b)
    # The pair powers have their own prior scale; a file of the format before it (no such
    # leaf; the pair powers scaled as the linear terms) loads with the linear terms' scale.
    assert model.config.pair_scaled and model.hyper.raw_scale_pair is not None
    h = model.hyper
    assert float(h.scale_pair) != float(h.scale_linear)
    old = eqx.tree_at(lambda m: m.hyper.raw_scale_pair, model, None, is_leaf=lambda v: v is None)
    header, _ = split(path)
    rewrite(path, {**header, "format_version": 1}, modelfile.payload_of(old))
    loaded, _ = modelfile.load_model(path, numbers=data.numbers)
    assert loaded.hyper.raw_scale_pair is not None
    np.testing.assert_array_equal(loaded.hyper.raw_scale_pair, h.raw_scale_linear)
    same = eqx.tree_at(lambda m: m.hyper.raw_scale_pair, model, h.raw_scale_linear)
    for a, b in zip(arrays(loaded), arrays(same), strict=True):
        np.testing.assert_array_equal(a, b)
    # A checkpoint of that format cannot resume such a model (its optimiser state lacks the scale).
    settings = TrainSettings(epochs=1, batch_size=6)
    opt = optimizer(settings, model.hyper, 12)
    state = TrainState(model.hyper, opt.init(eqx.filter(model.hyper, eqx.is_array)), 0, [])
    ckpt = tmp_path / "atomic.ckpt"
    checkpoint.save_checkpoint(ckpt, model, state, key=jax.random.key(1), epoch=0, fingerprint="fp",
                               settings={})  # fmt: skip
    assert checkpoint.load_checkpoint(ckpt, model, opt).state.epoch == 0
    header, payload = split(ckpt)
    rewrite(ckpt, {**header, "format_version": 1}, payload)
    with pytest.raises(ModelFileError, match="written by another forcegp version"):
        checkpoint.load_checkpoint(ckpt, model, opt)
