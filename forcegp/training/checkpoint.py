"""Training checkpoints: the run's statistics, hyperparameters, optimiser state, epoch and PRNG
key, in the model-file format (forcegp.modelfile), so an interrupted run resumes bit-identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import numpy as np
import optax

from ..errors import ModelFileError, NumericalError
from ..files import json_safe
from ..gp.config import is_int
from ..gp.params import ForceGP, Hyper, all_finite
from ..modelfile import (
    CHECKPOINT_FORMAT,
    PAIR_SCALE_VERSION,
    base_header,
    check_config,
    checked_numbers,
    deserialise,
    file_error,
    library_versions,
    payload_of,
    read_parts,
    write_parts,
)
from .loop import TrainState


@dataclass(frozen=True)
class Checkpoint:
    """A training run's state after ``state.epoch`` completed epochs."""

    model: ForceGP  # the model with the checkpoint's statistics and hyperparameters
    state: TrainState
    key: jax.Array  # the run's training key
    header: dict


def save_checkpoint(
    path,
    model: ForceGP,
    train_state: TrainState,
    *,
    key: jax.Array,
    epoch: int,
    fingerprint: str,
    settings: dict,
) -> None:
    """Write the training state after ``epoch`` completed epochs, atomically.

    ``fingerprint`` identifies the training data and ``settings`` (JSON-able) the run's
    settings; :func:`load_checkpoint` refuses a checkpoint when either differs.
    """
    if not all_finite(train_state.hyper):
        raise NumericalError(f"refusing to write checkpoint {path}: non-finite hyperparameters")
    header = base_header(CHECKPOINT_FORMAT, model)
    header.update(
        {
            "epoch": int(epoch),
            "fingerprint": str(fingerprint),
            "settings": json_safe(settings),
            "key_impl": str(jax.random.key_impl(key)),
            "key_data": [int(v) for v in np.asarray(jax.random.key_data(key)).reshape(-1)],
            "history": list(train_state.history),
            "versions": library_versions(),
        }
    )
    write_parts(path, header, payload_of((model.stats, train_state.hyper, train_state.opt_state)))


def load_checkpoint(
    path,
    template_model: ForceGP,
    optimizer: optax.GradientTransformation,
    *,
    fingerprint: str | None = None,
    settings: dict | None = None,
) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` for the run ``template_model`` starts.

    ``template_model`` (an initialised model of this run) gives the shapes; ``optimizer`` the
    optimiser-state skeleton. The checkpoint must have the same config and molecule, and, when
    given, the same data ``fingerprint`` and ``settings``; otherwise ModelFileError.
    """
    header, payload = read_parts(path, CHECKPOINT_FORMAT)
    config = check_config(path, header.get("config"))
    numbers = checked_numbers(path, header, config)
    refuse = ModelFileError(
        f"checkpoint {path} was written for other data/settings; remove it or do not resume (`resume`)"
    )
    if config != template_model.config or numbers != tuple(template_model.numbers):
        raise refuse
    if config.pair_scaled and header.get("format_version") < PAIR_SCALE_VERSION:  # other hyperparameters
        raise ModelFileError(
            f"checkpoint {path} was written by another forcegp version; remove it or do not resume"
        )
    if fingerprint is not None and header.get("fingerprint") != fingerprint:
        raise refuse
    if settings is not None and header.get("settings") != json_safe(settings):
        raise refuse
    n_perm = header.get("n_permutations")
    if n_perm != template_model.n_copies:
        raise refuse
    epoch, history = header.get("epoch"), header.get("history")
    if not is_int(epoch) or epoch < 0 or not isinstance(history, list):
        raise file_error(path, "truncated or corrupted (bad epoch or history)")
    key = _key(path, header)
    hyper: Hyper = template_model.hyper
    like = (template_model.stats, hyper, optimizer.init(eqx.filter(hyper, eqx.is_array)))
    stats, hyper, opt_state = deserialise(path, payload, like)
    if not all_finite(hyper):
        raise file_error(path, "corrupted: non-finite hyperparameters")
    model = eqx.tree_at(lambda m: (m.stats, m.hyper), template_model, (stats, hyper))
    state = TrainState(hyper=hyper, opt_state=opt_state, epoch=epoch, history=history)
    return Checkpoint(model=model, state=state, key=key, header=header)


def _key(path, header: dict) -> jax.Array:
    impl, data = header.get("key_impl"), header.get("key_data")
    if not isinstance(impl, str) or not isinstance(data, list) or len(data) > 64:
        raise file_error(path, "truncated or corrupted (bad PRNG key)")
    if not all(is_int(v) and 0 <= v < 2**32 for v in data):
        raise file_error(path, "truncated or corrupted (bad PRNG key)")
    try:
        return jax.random.wrap_key_data(np.asarray(data, dtype=np.uint32), impl=impl)
    except Exception:
        raise file_error(path, f"unsupported PRNG key type {impl!r}") from None
