"""The ForceGP model: a finite-rank GP with derivative observations.

    f(x) = phi(x)^T theta,   theta ~ N(0, I)

phi(x) (K,) concatenates whitened blocks of basis functions:
  * the DSoftKI block, L^T w(u(x)) with L = chol(K_zz) (design note sections 2-4);
  * optionally an exact explicit-feature block with learned scales. "polynomial" (default): for
    every descriptor entry v_a (a standardised inverse distance) the powers v_a, v_a^2, v_a^3
    (pair terms: a per-pair potential), products v_a v_b of pairs that share an atom and are
    both shorter than a cutoff (local three-body terms), and products of degree 2 and 3 of the
    leading PCA components of v (global collective terms). "quadratic": linear and product
    terms of the PCA components alone.
Optionally the whole map is averaged over the atom permutations of the molecular graph
(methyl rotations, ring flips): f_sym(x) = mean_pi f(pi x), again a GP of the same form.

Observation rows for one structure are the value row phi(x)^T and the D gradient rows
d phi / d x, computed with the closed-form interpolation Jacobian. Energies are standardised,
y = (E - mu) / sigma, gradients g = -F / sigma (same sigma).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import descriptors, interpolation, kernels

T_FLOOR = 5e-5
LENGTHSCALE_FLOOR = 1e-2
NOISE_FLOOR = 1e-4
SCALE_FLOOR = 1e-6
EXPLICIT_BLOCKS = ("polynomial", "quadratic", "none")
#: Config fields that init.initialize chooses from the training data when they are AUTO (and
#: TrainSettings.epochs, which workflow.train_model resolves from the initialised model).
AUTO = -1
AUTO_FIELDS = ("width", "explicit_cubic")


@dataclass(frozen=True)
class Config:
    """Shape- and dtype-determining settings (static; stored in the model file header)."""

    n_atoms: int
    descriptor: str = "inverse-distance"
    n_inducing: int = 256
    n_features: int = 16  # p; 0 disables the deep-kernel MLP (u = standardised descriptor)
    width: int = -1  # deep-kernel MLP width; -1: init.budgeted_width chooses it (64 or 128)
    depth: int = 2
    explicit: str = "polynomial"  # "polynomial", "quadratic" or "none"
    explicit_dim: int = 26  # PCA components of the descriptor in the global product terms
    # Leading PCA components in the cubic terms ("polynomial"); -1: init.budgeted_cubic chooses
    # it from the number of training structures and atoms.
    explicit_cubic: int = -1
    pair_powers: int = 3  # powers of each descriptor entry ("polynomial")
    local_cutoff: float = 4.0  # Å; pairs in local products are typically shorter ("polynomial")
    n_local: int = 0  # local product terms; set by init.initialize from the training geometries
    # Atom permutations (graph automorphisms) the model is averaged over, at most; 1 = none.
    n_permutations: int = 24
    jitter: float = 1e-6

    @property
    def dim(self) -> int:
        return 3 * self.n_atoms

    @property
    def descriptor_size(self) -> int:
        return descriptors.descriptor_size(self.descriptor, self.n_atoms)

    @property
    def feature_size(self) -> int:
        return self.n_features if self.n_features > 0 else self.descriptor_size

    @property
    def n_explicit(self) -> int:
        if self.explicit == "none":
            return 0
        q = self.explicit_q
        if self.explicit == "quadratic":
            return q + q * (q + 1) // 2
        return self.n_explicit_pair + self.n_local + q * (q + 1) // 2 + self.n_explicit_cubic

    @property
    def n_explicit_pair(self) -> int:
        return self.pair_powers * self.descriptor_size if self.explicit == "polynomial" else 0

    @property
    def n_explicit_cubic(self) -> int:
        c = min(max(self.explicit_cubic, 0), self.explicit_q) if self.explicit == "polynomial" else 0
        return c * (c + 1) * (c + 2) // 6

    @property
    def explicit_q(self) -> int:
        return min(self.explicit_dim, self.descriptor_size)

    @property
    def n_basis(self) -> int:
        return self.n_inducing + self.n_explicit

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


class Hyper(eqx.Module):
    """Trainable parameters; positive ones stored raw and exposed through softplus."""

    mlp: descriptors.DeepKernel | None
    z: jax.Array  # (M, p)
    raw_temperature: jax.Array  # (M, p)
    raw_lengthscale: jax.Array  # (p,)
    raw_scale: jax.Array  # () output scale of K_zz
    raw_scale_linear: jax.Array  # () explicit block, linear terms
    raw_scale_quadratic: jax.Array  # () explicit block, product terms
    raw_noise_energy: jax.Array  # () std of energy noise, standardised units
    raw_noise_force: jax.Array  # () std of gradient-component noise, standardised units

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
    def noise_energy(self):
        return NOISE_FLOOR + jax.nn.softplus(self.raw_noise_energy)

    @property
    def noise_force(self):
        return NOISE_FLOOR + jax.nn.softplus(self.raw_noise_force)


class Posterior(eqx.Module):
    """theta's posterior N(mean, P^-1): mean (K,), inv_chol = chol(P)^-1 (K, K) lower."""

    mean: jax.Array
    inv_chol: jax.Array


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


# ----------------------------------------------------------------------------- feature map


def descriptor(config: Config, stats: Stats, x: jax.Array) -> jax.Array:
    """Standardised invariant descriptor (P,) of one structure x (D,)."""
    raw = descriptors.raw_descriptor(config.descriptor, x, config.n_atoms)
    return (raw - stats.desc_mean) / stats.desc_std


def features(config: Config, stats: Stats, hyper: Hyper, x: jax.Array) -> jax.Array:
    """u(x) (p,): the deep-kernel features the interpolation acts on."""
    v = descriptor(config, stats, x)
    return hyper.mlp(v) if hyper.mlp is not None else v


def soft_cholesky(config: Config, hyper: Hyper) -> jax.Array:
    k = kernels.gram(hyper.z, hyper.lengthscale, hyper.scale)
    return kernels.jittered_cholesky(k, config.jitter)


def _cubic_index(c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index triples i <= j <= k < c of the cubic terms."""
    idx = np.array([(i, j, k) for i in range(c) for j in range(i, c) for k in range(j, c)])
    idx = idx.reshape(-1, 3).astype(np.int32)
    return idx[:, 0], idx[:, 1], idx[:, 2]


class _DenseJacobian:
    """dv/dx (C, P, D) of the copies, materialised (the Cartesian descriptor, or no MLP)."""

    def __init__(self, dv_dx: jax.Array):
        self.dv_dx = dv_dx

    def combine(self, coef: jax.Array, cols: jax.Array | None = None) -> jax.Array:
        """Copy mean of sum_s coef[c, t, s] * (row cols[t, s] of dv_c/dx): (T, D). cols None:
        row t itself (S = 1)."""
        rows = self.dv_dx[:, :, None] if cols is None else self.dv_dx[:, cols]  # (C, T, S, D)
        return jnp.einsum("cts,ctsd->td", coef, rows) / coef.shape[0]

    def project(self, weight: jax.Array) -> jax.Array:
        """Tangent rows (C, D, q) of v_c @ weight for weight (P, q)."""
        return jnp.einsum("cpd,pq->cdq", self.dv_dx, weight)


class _PairJacobian:
    """dv/dx of the inverse-distance copies without forming it: each row has six nonzero
    entries (descriptors.inverse_distance_pairs), so the explicit block's product-rule terms
    are scatters of pair gradients, O(C T) instead of O(C T D), and projections go through the
    N x N pair matrix (descriptors.inverse_distance_tangents), O(N^2) per copy and column."""

    def __init__(self, config: Config, stats: Stats, x: jax.Array):
        self.x, self.n_atoms, self.std = x, config.n_atoms, stats.desc_std
        if config.n_permutations > 1:
            self.perms = stats.permutations
        else:
            self.perms = jnp.arange(config.n_atoms)[None]
        # Pair atoms and gradients of the standardised copies (unused ones are dropped under jit).
        self.first, self.second, grad = descriptors.inverse_distance_pairs(x, self.n_atoms, self.perms)
        self.grad = grad / self.std[None, :, None]

    def combine(self, coef: jax.Array, cols: jax.Array | None = None) -> jax.Array:
        """As _DenseJacobian.combine."""
        if cols is None:
            cols = jnp.arange(coef.shape[1])[:, None]
        g = coef[..., None] * self.grad[:, cols]  # (C, T, S, 3)
        term = jnp.broadcast_to(jnp.arange(coef.shape[1])[None, :, None], coef.shape)
        out = jnp.zeros((coef.shape[1], self.n_atoms, 3), g.dtype)
        out = out.at[term, self.first[:, cols]].add(g).at[term, self.second[:, cols]].add(-g)
        return out.reshape(coef.shape[1], 3 * self.n_atoms) / coef.shape[0]

    def project(self, weight: jax.Array) -> jax.Array:
        """As _DenseJacobian.project."""
        w = (weight / self.std[:, None]).T
        return descriptors.inverse_distance_tangents(self.x, self.n_atoms, w, self.perms)


def _explicit_terms(config, stats, hyper, v, jac=None):
    """Values (F,) of the explicit block averaged over the copies v (C, P) of a structure and,
    given the copies' Jacobian jac (_DenseJacobian or _PairJacobian), their gradients (F, D);
    (values, None) without it (the energy path, differentiated by autodiff).

    Every term is a product of at most three factors, so its gradient is written out (product
    rule) as a combination of rows of dv/dx: no autodiff through the feature map. The mean over
    copies is taken inside each product-rule term, so no (F, D) array is made per copy.
    """
    n = v.shape[0]
    q = config.explicit_q
    with_grad = jac is not None
    a = v @ stats.projection  # (C, q)
    da = jac.project(stats.projection) if with_grad else None  # (C, D, q)
    values, grads = [], []

    def add(scale, value, grad):
        values.append(scale * jnp.mean(value, axis=0))
        if with_grad:
            grads.append(scale * grad())

    if config.explicit == "quadratic":
        add(hyper.scale_linear, a, lambda: jnp.mean(da, axis=0).T)
    else:
        for k in range(1, config.pair_powers + 1):
            add(hyper.scale_linear, v**k, lambda k=k: jac.combine((k * v ** (k - 1))[..., None]))
        la, lb = stats.local_pairs[:, 0], stats.local_pairs[:, 1]
        add(
            hyper.scale_quadratic,
            v[:, la] * v[:, lb],
            lambda: jac.combine(jnp.stack([v[:, lb], v[:, la]], axis=-1), jnp.stack([la, lb], axis=-1)),
        )
    # Products of PCA components: the copy means of a_i da_j and a_i a_j da_k for all index
    # tuples are matrix products over the copy axis, gathered afterwards.
    iu, ju = np.triu_indices(q)

    def quadratic_grad():
        g2 = jnp.einsum("ci,cdj->ijd", a, da) / n  # (q, q, D)
        return g2[iu, ju] + g2[ju, iu]

    add(hyper.scale_quadratic, a[:, iu] * a[:, ju], quadratic_grad)
    if config.n_explicit_cubic:
        c3 = min(config.explicit_cubic, q)
        i, j, k = _cubic_index(c3)

        def cubic_grad():
            aa = (a[:, :c3, None] * a[:, None, :c3]).reshape(n, c3 * c3)
            g3 = (jnp.einsum("ct,cdk->tkd", aa, da[..., :c3]) / n).reshape(c3, c3, c3, -1)
            return g3[j, k, i] + g3[i, k, j] + g3[i, j, k]

        add(hyper.scale_quadratic, a[:, i] * a[:, j] * a[:, k], cubic_grad)
    value = jnp.concatenate(values)
    return value, (jnp.concatenate(grads, axis=0) if with_grad else None)


def _explicit_rows(config, stats, hyper, v, jac) -> jax.Array:
    """Value and gradient rows (1+D, F) of the explicit block, averaged over the copies v (C, P)."""
    value, grad = _explicit_terms(config, stats, hyper, v, jac)
    return jnp.concatenate([value[None], grad.T], axis=0)


def _copies_and_jacobian(config: Config, stats: Stats, x: jax.Array, *, dense: bool):
    """The copies v (C, P) and their Jacobian: _PairJacobian for inverse distances unless
    ``dense`` asks for dv/dx itself (the DSoftKI block without an MLP)."""
    pairs = config.descriptor == "inverse-distance"
    v, dv_dx = _copies(config, stats, x, jacobian=dense or not pairs)
    return v, (_DenseJacobian(dv_dx) if dv_dx is not None else _PairJacobian(config, stats, x))


def _copies(config: Config, stats: Stats, x: jax.Array, *, jacobian: bool):
    """Standardised descriptors v (n_copies, P) of x and of its permuted copies (one copy when the
    model is not symmetrised) and, with ``jacobian``, dv/dx (n_copies, P, D).

    An atom permutation only reorders the raw descriptor (descriptors.permuted_index), so the
    descriptor and its Jacobian are computed once and gathered per copy. The chain rule through
    the gather takes the gradient of f(copy) with respect to x itself: nothing is scattered back.
    """

    def raw_of(y):
        return descriptors.raw_descriptor(config.descriptor, y, config.n_atoms)

    raw = raw_of(x)
    draw = jax.jacfwd(raw_of)(x) if jacobian else None
    if config.n_permutations > 1:
        idx = descriptors.permuted_index(config.descriptor, stats.permutations, config.n_atoms)
        raw, draw = raw[idx], (draw[idx] if jacobian else None)
    else:
        raw, draw = raw[None], (draw[None] if jacobian else None)
    v = (raw - stats.desc_mean) / stats.desc_std
    return v, (draw / stats.desc_std[:, None] if jacobian else None)


def _soft_rows(hyper: Hyper, v: jax.Array, tangents: jax.Array) -> jax.Array:
    """Unwhitened DSoftKI rows (1+D, M): interpolation weights and their gradients, averaged over
    the copies v (n, P). tangents: the rows (n, D, width) of the deep kernel's first product
    W v, or without an MLP those (n, D, P) of dv/dx."""

    def one(vc, tc):
        if hyper.mlp is not None:
            u, du = hyper.mlp.after_first_product(vc, tc)  # (du/dx)^T (D, p), forward mode
        else:
            u, du = vc, tc
        w, dw_du = interpolation.weights_and_jacobian(u, hyper.z, hyper.temperature)
        return w, du, dw_du

    # Tangents as rows (n, D, .): the MLP's layer products then need no transposes.
    w, du, dw_du = jax.vmap(one)(v, tangents)  # (n, M), (n, D, p), (n, M, p)
    n = v.shape[0]
    grad = jnp.einsum("cdp,cmp->dm", du, dw_du) / n  # one contraction over copies and features
    return jnp.concatenate([jnp.mean(w, axis=0)[None], grad], axis=0)


def raw_rows(config: Config, stats: Stats, hyper: Hyper, x: jax.Array) -> jax.Array:
    """basis_rows before whitening: the interpolation weights themselves in the first M columns.

    On inverse distances dv/dx (P x 3N per copy, six nonzero entries a row) is not formed: the
    deep kernel's tangents start from the sparse pair Jacobian (O(N^2) per copy and feature)
    and the explicit block's terms are scatters of pair gradients (_PairJacobian). Without an
    MLP, the DSoftKI block needs dv/dx itself."""
    v, jac = _copies_and_jacobian(config, stats, x, dense=hyper.mlp is None)
    if hyper.mlp is not None:
        tangents = jac.project(hyper.mlp.first_weight().T)  # (C, D, width) of W v
        rows = _soft_rows(hyper, v, tangents)
    else:
        rows = _soft_rows(hyper, v, jnp.swapaxes(jac.dv_dx, 1, 2))
    if config.explicit != "none":
        rows = jnp.concatenate([rows, _explicit_rows(config, stats, hyper, v, jac)], axis=1)
    return rows


def whiten(config: Config, chol_zz, rows: jax.Array) -> jax.Array:
    """Whiten the DSoftKI columns (the first M) of rows (..., K) by L = chol(K_zz)."""
    m = config.n_inducing
    soft = rows[..., :m] @ chol_zz
    return soft if config.explicit == "none" else jnp.concatenate([soft, rows[..., m:]], axis=-1)


def basis_rows(config: Config, stats: Stats, hyper: Hyper, chol_zz, x: jax.Array) -> jax.Array:
    """Value and gradient rows (1+D, K) of phi at one structure x (D,), symmetrised if configured.

    The symmetrised rows are the mean over permutations of the unwhitened rows, whitened once
    (whitening is linear, and it is the largest per-permutation cost otherwise).
    """
    return whiten(config, chol_zz, raw_rows(config, stats, hyper, x))


def raw_value(config: Config, stats: Stats, hyper: Hyper, x: jax.Array) -> jax.Array:
    """basis_value before whitening (K,): the interpolation weights in the first M entries."""
    v, _ = _copies(config, stats, x, jacobian=False)

    def soft_one(vc):
        u = hyper.mlp(vc) if hyper.mlp is not None else vc
        return interpolation.weights(u, hyper.z, hyper.temperature)

    value = jnp.mean(jax.vmap(soft_one)(v), axis=0)
    if config.explicit != "none":
        value = jnp.concatenate([value, _explicit_terms(config, stats, hyper, v)[0]])
    return value


def basis_value(config: Config, stats: Stats, hyper: Hyper, chol_zz, x: jax.Array) -> jax.Array:
    """phi(x) (K,) alone: the energy path, differentiated by autodiff for forces."""
    return whiten(config, chol_zz, raw_value(config, stats, hyper, x))


def noise_vector(config: Config, hyper: Hyper) -> jax.Array:
    """Noise variances (1+D,) for one structure's value and gradient rows."""
    d = config.dim
    return jnp.concatenate([hyper.noise_energy[None] ** 2, jnp.full((d,), hyper.noise_force**2)])


def template(config: Config, numbers, *, with_posterior: bool = True) -> ForceGP:
    """A model of the right shapes filled with zeros: the skeleton model files are loaded into."""
    m, p, q, pd = config.n_inducing, config.feature_size, config.explicit_q, config.descriptor_size
    k = config.n_basis
    z = jnp.zeros
    mlp = None
    if config.n_features > 0:
        mlp = descriptors.DeepKernel(
            pd, config.n_features, config.width, config.depth, key=jax.random.key(0)
        )
    hyper = Hyper(mlp, z((m, p)), z((m, p)), z((p,)), z(()), z(()), z(()), z(()), z(()))
    stats = Stats(
        z((pd,)),
        z((pd,)),
        z((pd, q)),
        z(()),
        z(()),
        jnp.zeros((config.n_permutations, config.n_atoms), dtype=jnp.int32),
        jnp.zeros((config.n_local, 2), dtype=jnp.int32),
    )
    post = Posterior(z((k,)), z((k, k))) if with_posterior else None
    return ForceGP(config, tuple(int(a) for a in numbers), stats, hyper, post)


def explicit_rows(config: Config, stats: Stats, hyper: Hyper, x: jax.Array) -> jax.Array:
    """Rows (1+D, F) of the explicit block alone at one structure (symmetrised if configured)."""
    return _explicit_rows(config, stats, hyper, *_copies_and_jacobian(config, stats, x, dense=False))
