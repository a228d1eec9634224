"""Hyperparameter optimisation: a pure jitted Adam step on the batch marginal likelihood and a thin
Python loop over epochs with per-epoch PRNG keys, so an interrupted run resumes bit-identically
(docs/method.md §6)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..gp.likelihood import batch_loss
from ..gp.params import ForceGP, Hyper, strong_types
from ..gp.statistics import AXIS
from .settings import TrainSettings


@dataclass
class TrainState:
    hyper: Hyper
    opt_state: optax.OptState
    epoch: int  # epochs completed
    history: list[dict] = field(default_factory=list)


def _labels(hyper: Hyper):
    """'mlp' for the deep-kernel weights, 'gp' for everything else (own learning rates)."""
    labels = jax.tree_util.tree_map(lambda _: "gp", hyper)
    if hyper.mlp is not None:
        labels = eqx.tree_at(lambda h: h.mlp, labels, jax.tree_util.tree_map(lambda _: "mlp", hyper.mlp))
    return labels


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // min(batch_size, n))


def optimizer(settings: TrainSettings, hyper: Hyper, n_train: int) -> optax.GradientTransformation:
    total = settings.epochs * steps_per_epoch(n_train, settings.batch_size)

    def schedule(lr):
        return optax.cosine_decay_schedule(lr, max(total, 1), alpha=settings.final_lr_fraction)

    inner = optax.chain(
        optax.clip_by_global_norm(settings.clip),
        optax.multi_transform(
            {"gp": optax.adam(schedule(settings.lr)), "mlp": optax.adam(schedule(settings.lr_mlp))},
            _labels(hyper),
        ),
    )
    # Non-finite losses or gradients (e.g. a failed Cholesky) skip the step; counted in the state.
    return optax.apply_if_finite(inner, max_consecutive_errors=1_000_000)


def skipped_steps(opt_state) -> int:
    return int(opt_state.total_notfinite)


def copies_per_step(settings: TrainSettings, n_copies: int) -> int:
    """Permuted copies a training step averages over: settings.train_permutations of the
    model's n_copies (all of them when that is 0 or not fewer)."""
    k = settings.train_permutations
    return n_copies if k <= 0 else min(k, n_copies)


def _permutation_subset(model_rest: ForceGP, settings: TrainSettings, key: jax.Array) -> ForceGP:
    """model_rest averaging over copies_per_step of its permutations, drawn without
    replacement with ``key`` (unchanged where that is all of them)."""
    perms = model_rest.stats.permutations
    k = copies_per_step(settings, perms.shape[0])
    if k == perms.shape[0]:
        return model_rest
    pick = jax.random.choice(key, perms.shape[0], (k,), replace=False)
    return eqx.tree_at(lambda m: m.stats.permutations, model_rest, perms[pick])


def step_key(key: jax.Array, epoch: int, step: int) -> jax.Array:
    return jax.random.fold_in(epoch_key(key, epoch), step + 1)


@eqx.filter_jit
def train_step(hyper, opt_state, model_rest, x, y, g, settings: TrainSettings, n_train: int, key=None):
    """One Adam step on a batch. Module level, with the optimiser rebuilt from the static
    (hashable) settings, so the compiled step is reused across runs, resumes and continuations
    of the same shapes and settings. model_rest: the model with hyper=None. ``key`` draws the
    step's permutation subset (settings.train_permutations); None uses all permutations."""
    opt = optimizer(settings, hyper, n_train)
    if key is not None:
        model_rest = _permutation_subset(model_rest, settings, key)
    rows_dtype = jnp.dtype(settings.precision)
    loss, grads = eqx.filter_value_and_grad(batch_loss)(hyper, model_rest, x, y, g, rows_dtype)
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(hyper, eqx.is_array))
    return strong_types(eqx.apply_updates(hyper, updates)), strong_types(opt_state), loss


def epoch_key(key: jax.Array, epoch: int) -> jax.Array:
    return jax.random.fold_in(key, epoch)


def batch_size(settings: TrainSettings, n: int, n_devices: int = 1) -> int:
    """Structures per step: settings.batch_size, at most n, a multiple of n_devices."""
    batch = min(settings.batch_size, n)
    return max(n_devices, batch - batch % n_devices)


def step_inputs(model: ForceGP, settings: TrainSettings, n: int, state: TrainState | None):
    """(state, hyper, opt_state, model_rest) as the step takes them: strongly typed, so that a
    fresh, a resumed and a planned (step_memory_bytes) run share one compilation."""
    if state is None:
        opt = optimizer(settings, model.hyper, n)
        state = TrainState(model.hyper, opt.init(eqx.filter(model.hyper, eqx.is_array)), 0, [])
    model_rest = strong_types(eqx.tree_at(lambda m: m.hyper, model, replace_fn=lambda _: None))
    return state, strong_types(state.hyper), strong_types(state.opt_state), model_rest


def put_batch(sharding: NamedSharding | None, *arrays):
    if sharding is None:
        return arrays
    return tuple(jax.device_put(a, sharding) for a in arrays)


def run(
    model: ForceGP,
    x: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    settings: TrainSettings,
    *,
    key: jax.Array,
    state: TrainState | None = None,
    mesh: Mesh | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Optimise model.hyper on standardised data. Resumes from ``state`` if given."""
    n = len(x)
    n_dev = 1 if mesh is None else mesh.devices.size
    batch = batch_size(settings, n, n_dev)
    state, hyper, opt_state, model_rest = step_inputs(model, settings, n, state)
    sharding = NamedSharding(mesh, P(AXIS)) if mesh is not None else None
    # Permutation subsets need a key per step; without them none is made (nor traced).
    subsets = settings.train_permutations > 0
    for epoch in range(state.epoch, settings.epochs):
        order = np.asarray(jax.random.permutation(epoch_key(key, epoch), n))
        losses = []
        for s in range(steps_per_epoch(n, batch)):
            idx = order[s * batch : (s + 1) * batch]
            xb, yb, gb = put_batch(sharding, x[idx], y[idx], g[idx])
            hyper, opt_state, loss = train_step(
                hyper, opt_state, model_rest, xb, yb, gb, settings, n,
                step_key(key, epoch, s) if subsets else None,
            )  # fmt: skip
            losses.append(loss)
            if on_step is not None:
                on_step(s, float(loss))
        finite = [float(v) for v in losses if np.isfinite(float(v))]
        record = {
            "epoch": epoch + 1,
            "loss": float(np.mean(finite)) if finite else float("nan"),
            "skipped_steps": skipped_steps(opt_state),
            "noise_energy": float(hyper.noise_energy),
            "noise_force": float(hyper.noise_force),
        }
        state = TrainState(hyper, opt_state, epoch + 1, [*state.history, record])
        if on_epoch is not None:
            on_epoch(state)
    return state
