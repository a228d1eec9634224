"""The ForceGP module and its parts: fixed training statistics, trainable hyperparameters and the
posterior of the basis weights (docs/method.md §2).

Positive hyperparameters are stored raw and exposed through softplus with a floor. Everything
here is an equinox pytree; shapes come from the static :class:`~forcegp.gp.config.Config`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .config import LENGTHSCALE_FLOOR, NOISE_FLOOR, SCALE_FLOOR, T_FLOOR, Config
from .deep_kernel import DeepKernel
from .environment import element_index


def softplus_inv(y: float) -> float:
    """Inverse of softplus, exact and overflow-free (softplus(y) = y to float64 beyond 40)."""
    y = float(y)
    return y if y > 40.0 else float(np.log(np.expm1(y)))


class Stats(eqx.Module):
    """Fixed statistics from the training split (not trained)."""

    desc_mean: jax.Array  # (P,)
    desc_std: jax.Array  # (P,)
    projection: jax.Array  # (P, q) PCA directions scaled to unit variance
    energy_mean: jax.Array  # () eV
    energy_scale: jax.Array  # () eV
    permutations: jax.Array  # (n_perm, n_atoms) int
    local_pairs: jax.Array  # (n_local, 2) int: descriptor entries multiplied in local products
    # "atomic" descriptor only: each element's projection (S, spectrum, env_dim) of the power
    # spectrum, and each atom's element index (static: it groups the atoms at trace time).
    env_projection: jax.Array | None = None
    # "atomic" with pair powers: mean and std (N(N-1)/2,) of the inverse distances.
    pair_mean: jax.Array | None = None
    pair_std: jax.Array | None = None
    # "atomic" with env_body4: the channel mixing (env_body4_lmax + 1, body_mixed, channels) of
    # the body-ordered invariants and each of their block's columns' scale (S * n_body,).
    env_mixing: jax.Array | None = None
    body_scale: jax.Array | None = None
    elements: tuple[int, ...] = eqx.field(static=True, default=())


class Hyper(eqx.Module):
    """Trainable parameters; positive ones stored raw and exposed through softplus."""

    mlp: DeepKernel | None
    z: jax.Array  # (M, p)
    raw_temperature: jax.Array  # (M, p)
    raw_lengthscale: jax.Array  # (p,)
    raw_scale: jax.Array  # () output scale of K_zz
    raw_scale_linear: jax.Array  # () explicit block, linear terms
    raw_scale_quadratic: jax.Array  # () explicit block, product terms
    raw_noise_energy: jax.Array  # () std of energy noise, standardised units
    raw_noise_force: jax.Array  # () std of gradient-component noise, standardised units
    # () the global pair powers beside an "atomic" model (Config.pair_scaled); None otherwise.
    raw_scale_pair: jax.Array | None = None

    @property
    def temperature(self):
        return T_FLOOR + jax.nn.softplus(self.raw_temperature)

    @property
    def lengthscale(self):
        return LENGTHSCALE_FLOOR + jax.nn.softplus(self.raw_lengthscale)

    @property
    def scale(self):
        return SCALE_FLOOR + jax.nn.softplus(self.raw_scale)

    @property
    def scale_linear(self):
        return SCALE_FLOOR + jax.nn.softplus(self.raw_scale_linear)

    @property
    def scale_quadratic(self):
        return SCALE_FLOOR + jax.nn.softplus(self.raw_scale_quadratic)

    @property
    def scale_pair(self):
        return SCALE_FLOOR + jax.nn.softplus(self.raw_scale_pair)

    @property
    def noise_energy(self):
        return NOISE_FLOOR + jax.nn.softplus(self.raw_noise_energy)

    @property
    def noise_force(self):
        return NOISE_FLOOR + jax.nn.softplus(self.raw_noise_force)


class Posterior(eqx.Module):
    """theta's posterior N(mean, P^-1): mean (K,), inv_chol = chol(P)^-1 (K, K) lower.

    misfit (K, s) or None: the input-dependent part of the noise (gp.misfit): an output with
    basis row phi has noise variance lam + ||phi misfit||^2 (lam: noise_vector), in the fit that
    gave this posterior and in every prediction. None: the noise is lam alone.
    """

    mean: jax.Array
    inv_chol: jax.Array
    misfit: jax.Array | None = None


class ForceGP(eqx.Module):
    config: Config = eqx.field(static=True)
    numbers: tuple[int, ...] = eqx.field(static=True)
    stats: Stats
    hyper: Hyper
    posterior: Posterior | None = None

    @property
    def n_atoms(self) -> int:
        return self.config.n_atoms

    @property
    def n_copies(self) -> int:
        """Permuted copies every row averages over (1 when the model is not symmetrised)."""
        return int(self.stats.permutations.shape[0])


def template(
    config: Config, numbers, *, with_posterior: bool = True, misfit_columns: int = 0
) -> ForceGP:
    """A model of the right shapes filled with zeros: the skeleton model files are loaded into
    (``misfit_columns``: the columns of Posterior.misfit, 0 for none)."""
    m, p, q, pd = config.n_inducing, config.feature_size, config.explicit_q, config.descriptor_size
    k = config.n_basis
    z = jnp.zeros
    mlp = None
    if config.n_features > 0:
        mlp = DeepKernel(pd, config.n_features, config.width, config.depth, key=jax.random.key(0))
    pair = z(()) if config.pair_scaled else None
    hyper = Hyper(mlp, z((m, p)), z((m, p)), z((p,)), z(()), z(()), z(()), z(()), z(()), pair)
    stats = Stats(
        z((pd,)),
        z((pd,)),
        z((pd, q)),
        z(()),
        z(()),
        jnp.zeros((config.n_permutations, config.n_atoms), dtype=jnp.int32),
        jnp.zeros((config.n_local, 2), dtype=jnp.int32),
        **atomic_stats(config, numbers),
    )
    misfit = z((k, misfit_columns)) if misfit_columns else None
    post = Posterior(z((k,)), z((k, k)), misfit) if with_posterior else None
    return ForceGP(config, tuple(int(a) for a in numbers), stats, hyper, post)


def atomic_stats(config: Config, numbers, projection=None, pairs=None, body=None) -> dict:
    """The Stats fields of the "atomic" descriptor (none for the others): ``projection``, the
    inverse distances' (mean, std) ``pairs`` (with pair powers only) and the body-ordered
    invariants' (mixing, column scales) ``body`` (with env_body4 only), or zero ones of their
    shapes, and the element index of each atom of ``numbers``."""
    if config.descriptor != "atomic":
        return {}
    if projection is None:
        projection = jnp.zeros((config.n_species, config.spectrum_size, config.env_dim))
    out = {
        "env_projection": jnp.asarray(projection),
        "elements": tuple(int(e) for e in element_index(numbers)),
    }
    if config.n_explicit_pair:
        n_pairs = config.n_atoms * (config.n_atoms - 1) // 2
        mean, std = pairs if pairs is not None else (jnp.zeros(n_pairs), jnp.zeros(n_pairs))
        out.update(pair_mean=jnp.asarray(mean), pair_std=jnp.asarray(std))
    if config.env_body4:
        channels = config.n_species * config.env_radial
        shapes = (
            (config.env_body4_lmax + 1, config.body_mixed, channels),
            (config.n_species * config.n_body,),
        )
        mixing, scale = body if body is not None else tuple(jnp.zeros(s) for s in shapes)
        out.update(env_mixing=jnp.asarray(mixing), body_scale=jnp.asarray(scale))
    return out


def strong_types(tree):
    """``tree`` with every array leaf a strongly typed JAX array of the same dtype and shape.

    Leaves made from Python floats (jnp.asarray(0.05)) are weakly typed, and weak-typedness is
    part of what a jitted function is compiled for: the training step returns strongly typed
    leaves, so feeding it weak ones would compile it a second time on its second call.
    """
    return jax.tree_util.tree_map(
        lambda v: jnp.asarray(v, dtype=v.dtype) if eqx.is_array(v) else v, tree
    )


def with_hyper(model: ForceGP, hyper: Hyper) -> ForceGP:
    return eqx.tree_at(lambda m: m.hyper, model, hyper)


def all_finite(tree) -> bool:
    leaves = [v for v in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(v)]
    return all(bool(jnp.all(jnp.isfinite(v))) for v in leaves)
