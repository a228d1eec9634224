"""Noise-free sufficient statistics of the training data, streamed over chunks of structures
in O(K^2) memory and sharded over devices (docs/method.md §8).

    A_e = sum Phi_e^T Phi_e,  A_f = sum Phi_f^T Phi_f,  b_e = sum Phi_e^T y,  b_f = sum Phi_f^T g

Each device accumulates its own share of every chunk in its own K x K block; the blocks are summed
once at the end (one reduction).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .basis import basis_rows, soft_cholesky
from .params import ForceGP

#: The mesh axis the structures of a chunk or batch are sharded over.
AXIS = "batch"


def device_mesh(devices) -> Mesh:
    """A one-axis mesh over ``devices`` (a sequence of JAX devices)."""
    return Mesh(np.array(list(devices)), (AXIS,))


class Sufficient(eqx.Module):
    """Noise-free sufficient statistics of the training data for the finite-rank GP.

    With value rows (energy) and gradient rows (forces) kept apart, the posterior for any noise
    levels and output scale follows without another pass over the data:
    A = c^2 (a_e / beta_e^2 + a_f / beta_f^2), b = c (b_e / beta_e^2 + b_f / beta_f^2).
    """

    a_e: jax.Array  # (K, K) sum of value-row outer products
    a_f: jax.Array  # (K, K) sum of gradient-row outer products
    b_e: jax.Array  # (K,)
    b_f: jax.Array  # (K,)
    tt_e: jax.Array  # () sum of squared standardised energies
    tt_f: jax.Array  # () sum of squared standardised gradient components
    n_e: jax.Array  # () number of value rows
    n_f: jax.Array  # () number of gradient rows


#: Columns per block of gram's block-triangular product (and the fewest rows for which it
#: pays): 512-1024 measured alike, at about half the time of a^T a for K 2000-5000 and 1700-4000
#: rows (and slower than it for 64 rows) on a 2-core AMD EPYC.
GRAM_BLOCK = 512


def gram(a: jax.Array) -> jax.Array:
    """a^T a (K, K) of rows a (..., K) (all leading axes summed over), from the products of
    its upper block triangle only: with b blocks of GRAM_BLOCK columns that is (b + 1) / 2b of
    the flops of a^T a (0.55 at K = 5000), the lower blocks being the upper ones transposed.
    Every entry is the same dot product over the rows as in a^T a. Few rows (or columns): a^T a."""
    k = a.shape[-1]
    a = a.reshape(-1, k)
    n_blocks = -(-k // GRAM_BLOCK)
    if n_blocks < 2 or a.shape[0] < GRAM_BLOCK:
        return a.T @ a
    edges = [round(i * k / n_blocks) for i in range(n_blocks + 1)]
    parts = [a[:, lo:hi] for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    upper = {(i, j): parts[i].T @ parts[j] for i in range(n_blocks) for j in range(i, n_blocks)}
    rows = [
        jnp.concatenate([upper[(i, j)] if j >= i else upper[(j, i)].T for j in range(n_blocks)], axis=1)
        for i in range(n_blocks)
    ]
    return jnp.concatenate(rows, axis=0)


@eqx.filter_jit
def chunk_rows(model: ForceGP, chol_zz, x) -> jax.Array:
    """Basis rows (C, 1 + D, K) of a chunk of structures x (C, D). One compiled function for
    every pass over the data (the fit, the input-dependent noise): the rows' graph, the costly
    part to compile, is compiled once per chunk shape. ``model`` without its posterior."""
    return jax.vmap(lambda xi: basis_rows(model.config, model.stats, model.hyper, chol_zz, xi))(x)


def without_posterior(model: ForceGP) -> ForceGP:
    """The model as chunk_rows takes it (its rows do not depend on the posterior)."""
    return eqx.tree_at(lambda m: m.posterior, model, None, is_leaf=lambda v: v is None)


def _lead_products(a: jax.Array, lead: int | None) -> jax.Array:
    """gram(a) (K, K), or with ``lead`` its first lead rows, a[..., :lead]^T a (lead, K)."""
    if lead is None:
        return gram(a)
    a = a.reshape(-1, a.shape[-1])
    return a[:, :lead].T @ a


@functools.partial(jax.jit, static_argnums=4)
def _add_rows(acc: Sufficient, rows, t, mask, lead: int | None = None) -> Sufficient:
    """Add one chunk's rows (C, 1+D, K), t (C, 1+D), mask (C,); acc leaves carry a leading
    device axis. lead: accumulate only the first lead rows of a_e and a_f."""
    n_dev = acc.a_e.shape[0]
    c, r, k = rows.shape
    rows = rows.reshape(n_dev, c // n_dev, r, k) * mask.reshape(n_dev, c // n_dev, 1, 1)
    t = t.reshape(n_dev, c // n_dev, r) * mask.reshape(n_dev, c // n_dev, 1)
    ve, vf = rows[:, :, 0], rows[:, :, 1:]
    products = jax.vmap(lambda a: _lead_products(a, lead))
    return Sufficient(
        a_e=acc.a_e + products(ve),
        a_f=acc.a_f + products(vf),
        b_e=acc.b_e + jnp.einsum("dck,dc->dk", ve, t[:, :, 0]),
        b_f=acc.b_f + jnp.einsum("dcik,dci->dk", vf, t[:, :, 1:]),
        tt_e=acc.tt_e + jnp.sum(t[:, :, 0] ** 2, axis=1),
        tt_f=acc.tt_f + jnp.sum(t[:, :, 1:] ** 2, axis=(1, 2)),
        n_e=acc.n_e + jnp.sum(mask.reshape(n_dev, -1), axis=1),
        n_f=acc.n_f + (r - 1) * jnp.sum(mask.reshape(n_dev, -1), axis=1),
    )


def accumulate(
    model: ForceGP,
    x: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    *,
    chunk: int = 64,
    mesh: Mesh | None = None,
    progress: Callable[[int], None] | None = None,
    known: Sufficient | None = None,
) -> Sufficient:
    """Stream the sufficient statistics over structures x (n, D), y (n,), g (n, D) (standardised).

    known: the statistics of the model's last F columns (the explicit block) on the same data,
    already accumulated (training.stagewise.explicit_prefit's, at this model's scales); then
    only the products of the first K - F columns with all K are accumulated, (K - F) / K of
    the rows' products instead of about half of K x K, and known's blocks fill in the rest."""
    chol_zz = soft_cholesky(model.config, model.hyper)
    base = without_posterior(model)
    rows = lambda xc: chunk_rows(base, chol_zz, xc)  # noqa: E731
    k = model.config.n_basis
    if known is None:
        return accumulate_rows(rows, k, x, y, g, chunk=chunk, mesh=mesh, progress=progress)
    lead = k - known.a_e.shape[0]
    top = accumulate_rows(rows, k, x, y, g, chunk=chunk, mesh=mesh, progress=progress, lead=lead)
    return with_known_block(top, known)


def with_known_block(top: Sufficient, known: Sufficient) -> Sufficient:
    """The full statistics from ``top`` (a_e, a_f: the first L rows (L, K) of the K x K
    products; b, tt and n complete) and ``known`` (the last K - L columns' own products)."""
    lead = top.a_e.shape[0]

    def full(t, kn):
        kn = jax.device_put(kn, t.sharding)  # beside top's blocks (replicated over a mesh)
        return jnp.block([[t[:, :lead], t[:, lead:]], [t[:, lead:].T, kn]])

    return eqx.tree_at(lambda s: (s.a_e, s.a_f), top,
                       (full(top.a_e, known.a_e), full(top.a_f, known.a_f)))  # fmt: skip


def accumulate_rows(rows, k: int, x, y, g, *, chunk: int = 64, mesh: Mesh | None = None,
                    progress: Callable[[int], None] | None = None,
                    lead: int | None = None) -> Sufficient:  # fmt: skip
    """The sufficient statistics of the rows (C, 1 + D, k) that rows(x_chunk) gives, streamed
    over structures x (n, D), y (n,), g (n, D) (the full basis in accumulate; the explicit
    block alone in training.stagewise). lead: only the first ``lead`` rows (lead, k) of a_e
    and a_f (the products of the first lead columns with all k)."""
    m = k if lead is None else lead

    def zeros(n_dev):
        return Sufficient(
            jnp.zeros((n_dev, m, k)),
            jnp.zeros((n_dev, m, k)),
            jnp.zeros((n_dev, k)),
            jnp.zeros((n_dev, k)),
            *(jnp.zeros((n_dev,)) for _ in range(4)),
        )

    def step(acc, xc, tc, mc):
        return _add_rows(acc, rows(xc), tc, mc, lead)

    return stream(zeros, step, x, y, g, chunk=chunk, mesh=mesh, progress=progress)


def stream(zeros, step, x, y, g, *, chunk: int, mesh: Mesh | None, progress=None):
    """Sum ``step``'s additions over the structures in chunks, each chunk sharded over the mesh.

    zeros(n_dev): the accumulator, every leaf with a leading device axis; step(acc, x, t, mask)
    adds one chunk (x (C, D), t (C, 1+D) standardised energies and gradients, mask (C,) 0 for
    the padding of the last chunk). Returns the accumulator summed over devices (one reduction).
    """
    mesh = mesh or device_mesh(jax.devices()[:1])
    n_dev = mesh.devices.size
    chunk = max(n_dev, chunk - chunk % n_dev)
    dev_sharding = NamedSharding(mesh, P(AXIS))
    acc = jax.device_put(zeros(n_dev), dev_sharding)
    t_all = np.concatenate([y[:, None], g], axis=1)
    n = len(x)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        idx = np.arange(start, start + chunk) % n  # pad the last chunk with masked repeats
        mask = (np.arange(start, start + chunk) < stop).astype(np.float64)
        xc, tc, mc = (jax.device_put(a, dev_sharding) for a in (x[idx], t_all[idx], mask))
        acc = step(acc, xc, tc, mc)
        if progress is not None:
            progress(stop - start)
    # The one reduction over devices.
    return jax.tree_util.tree_map(lambda v: jnp.sum(v, axis=0), acc)
