"""Body-ordered atomic invariants (the construction of linear ACE) as an exact Bayesian linear
model, against the atomic explicit block of the same harness.

    python benchmarks/body_order.py                                  # ethanol, 500 structures
    python benchmarks/body_order.py --orders 2 3 --n 1000
    python benchmarks/body_order.py --quick                          # smoke test

Each atom's neighbour density A[c, lm] = sum_b R_n(r_ab) Y_lm(r_ab) (channels c = neighbour
element x radial index; forcegp.gp.environment's radial functions and e3nn's harmonics, within
the cutoff) gives invariants of body order
  2: A[c, 00]                                                    (one neighbour)
  3: sum_m A[c, lm] A[c', lm] / sqrt(2l+1), c <= c'               (two neighbours, unnormalised)
  4: sum_m1m2m3 C(l1 l2 l3; m1 m2 m3) A[c1, l1m1] A[c2, l2m2] A[c3, l3m3], l1+l2+l3 even,
     on the first --radial4 radial functions and l <= --lmax4      (three neighbours);
     with --mix4 k, on k channels per l instead: the leading principal directions of A's
     channels at that l over the training atoms (a mixing of channels is equivariant, so the
     contraction stays invariant)
summed over the atoms of each element: an energy linear in them is extensive, smooth and
invariant to rotations, reflections and permutations of equal atoms. The model is
E = features . w with w ~ N(0, diag(m_g^2)), one multiplier per body order and centre element,
chosen with both noise levels by the library's exact evidence search on the first --n
structures of rMD17 train_01 (energies and forces); its exact posterior mean is tested on the
1000 structures of test_01. Results: benchmarks/results/body_order.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import combinations_with_replacement, product
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

KCAL = common.KCAL_MOL


def l_triples(l_max: int) -> list[tuple[int, int, int]]:
    """(l1 <= l2 <= l3) with the triangle rule and an even sum (reflection-invariant)."""
    out = []
    for l1, l2, l3 in combinations_with_replacement(range(l_max + 1), 3):
        if l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0:
            out.append((l1, l2, l3))
    return out


def channel_triples(n: int, ls: tuple[int, int, int]) -> np.ndarray:
    """Channel index triples (c1, c2, c3) that give distinct invariants for the l's: where two
    l's are equal the contraction is symmetric in their channels (the sum is even)."""
    l1, l2, l3 = ls
    out = []
    for c in product(range(n), repeat=3):
        if l1 == l2 and c[0] > c[1]:
            continue
        if l2 == l3 and c[1] > c[2]:
            continue
        out.append(c)
    return np.asarray(out, dtype=np.int64)


class Basis:
    """The feature map of one molecule: static shapes and index tables."""

    def __init__(self, numbers, orders, *, radial, lmax, radial4, lmax4, cutoff, mix4=0):
        self.numbers = np.asarray(numbers)
        self.elements = sorted(set(self.numbers.tolist()))
        self.element = np.asarray([self.elements.index(z) for z in self.numbers])
        self.n_species = len(self.elements)
        self.orders, self.radial, self.lmax = tuple(orders), radial, lmax
        self.radial4, self.lmax4, self.cutoff = radial4, lmax4, cutoff
        self.n_channels = self.n_species * radial
        self.iu = np.triu_indices(self.n_channels)
        # body order 4 on the channels (element, n < radial4)
        self.ch4 = np.asarray([s * radial + n for s in range(self.n_species) for n in range(radial4)])
        # with mix4 > 0: per l, a (mix4, C) mixing of all channels (set_mixing), else ch4
        self.mix4, self.mixing = mix4, None
        n4 = mix4 if mix4 else len(self.ch4)
        self.triples = [(ls, channel_triples(n4, ls)) for ls in l_triples(lmax4)]
        sizes = {2: self.n_channels, 3: (lmax + 1) * len(self.iu[0]),
                 4: sum(len(c) for _, c in self.triples)}  # fmt: skip
        self.per_atom = [sizes[o] for o in self.orders]
        # one group per (centre element, body order)
        self.groups = np.concatenate([np.full(size, e * len(self.orders) + i)
                                      for e in range(self.n_species)
                                      for i, size in enumerate(self.per_atom)])  # fmt: skip
        self.size = len(self.groups)

    def density(self, local, species):
        """A (C, L) of one atom from its own position and its neighbours' (k+1, 3) and the
        neighbours' elements (k,): the density of forcegp.gp.environment, to l <= max(lmax,
        lmax4)."""
        from types import SimpleNamespace

        from forcegp.gp.environment import _density

        env = SimpleNamespace(n_species=self.n_species, n_radial=self.radial,
                              l_max=max(self.lmax, self.lmax4), cutoff=self.cutoff)  # fmt: skip
        return _density(local, species, env, None, jacobian=False)[0]

    def local(self, x):
        """Every atom's position and then every other atom's (N, N, 3) (environment.slots), and
        the others' elements (N, N-1)."""
        import jax.numpy as jnp

        from forcegp.gp.environment import slots

        n = len(self.numbers)
        idx = slots(x, self.element, n - 1)
        return x.reshape(n, 3)[idx], jnp.asarray(self.element)[idx[:, 1:]]

    def set_mixing(self, xs) -> None:
        """Per l <= lmax4, the leading mix4 principal directions (mix4, C) of the channels of A
        at that l over the atoms of structures xs (n, 3N), all m together."""
        import jax
        import jax.numpy as jnp

        dens = jax.jit(jax.vmap(lambda x: jax.vmap(self.density)(*self.local(x))))
        a = np.asarray(dens(jnp.asarray(xs)))  # (n, N, C, L)
        self.mixing = []
        for l in range(self.lmax4 + 1):
            al = a[..., l * l : (l + 1) * (l + 1)].transpose(0, 1, 3, 2).reshape(-1, self.n_channels)
            _, _, vt = np.linalg.svd(al, full_matrices=False)
            self.mixing.append(vt[: self.mix4])

    def atom(self, local, species):
        """Invariants of one atom from its own and its neighbours' positions (k+1, 3) and the
        neighbours' elements (k,)."""
        import e3nn_jax as e3nn
        import jax.numpy as jnp

        a = self.density(local, species)
        parts = []
        if 2 in self.orders:
            parts.append(a[:, 0])
        if 3 in self.orders:
            for l in range(self.lmax + 1):
                al = a[:, l * l : (l + 1) * (l + 1)]
                parts.append((al @ al.T)[self.iu] / np.sqrt(2 * l + 1))
        if 4 in self.orders:
            if self.mix4:
                blocks = [jnp.asarray(w) @ a[:, l * l : (l + 1) * (l + 1)]
                          for l, w in enumerate(self.mixing)]  # fmt: skip
            else:
                blocks = [a[self.ch4, l * l : (l + 1) * (l + 1)] for l in range(self.lmax4 + 1)]
            for (l1, l2, l3), c in self.triples:
                cg = jnp.asarray(e3nn.clebsch_gordan(l1, l2, l3))
                blk = [blocks[l] for l in (l1, l2, l3)]
                t = jnp.einsum("ai,bj,ck,ijk->abc", *blk, cg)
                parts.append(t[c[:, 0], c[:, 1], c[:, 2]])
        return jnp.concatenate(parts)

    def structure(self, x):
        """Feature vector (F,) of one structure x (3N,): per element, the sum over its atoms."""
        import jax

        per_atom = jax.vmap(self.atom)(*self.local(x))  # (N, per atom)
        onehot = jax.nn.one_hot(self.element, self.n_species, dtype=x.dtype)
        return (onehot.T @ per_atom).reshape(-1)


def statistics(basis: Basis, x, y, g, chunk: int = 25):
    """forcegp.gp.statistics.Sufficient of the value and gradient rows over all structures."""
    import jax
    import jax.numpy as jnp

    from forcegp.gp.statistics import Sufficient

    rows = jax.jit(jax.vmap(lambda xi: (basis.structure(xi), jax.jacfwd(basis.structure)(xi))))
    k = basis.size
    a_e, a_f, b_e, b_f = np.zeros((k, k)), np.zeros((k, k)), np.zeros(k), np.zeros(k)
    for start in range(0, len(x), chunk):
        idx = np.arange(start, min(start + chunk, len(x)))
        val, jac = (np.asarray(v) for v in rows(jnp.asarray(x[idx])))
        a_e += val.T @ val
        b_e += val.T @ y[idx]
        j = jac.transpose(1, 0, 2).reshape(k, -1)  # (F, C * D)
        a_f += j @ j.T
        b_f += j @ g[idx].reshape(-1)
    return Sufficient(*(jnp.asarray(v) for v in (a_e, a_f, b_e, b_f, y @ y, np.sum(g * g),
                                                  float(len(y)), float(g.size))))  # fmt: skip


def predict(basis: Basis, w, x, chunk: int = 50):
    import jax
    import jax.numpy as jnp

    def one(xi):
        energy, grad = jax.value_and_grad(lambda v: basis.structure(v) @ w)(xi)
        return energy, grad

    f = jax.jit(jax.vmap(one))
    out = [f(jnp.asarray(x[s : s + chunk])) for s in range(0, len(x), chunk)]
    energy = np.concatenate([np.asarray(e) for e, _ in out])
    return energy, np.concatenate([np.asarray(g) for _, g in out])


def check_invariance(basis: Basis, x0: np.ndarray) -> float:
    """Largest relative change of the features under a random rotation, reflection and
    permutation of equal atoms (0 up to rounding for an invariant basis)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    r = x0.reshape(-1, 3) @ q.T * np.array([1, 1, -1])
    perm = np.arange(len(basis.numbers))
    for z in basis.elements:
        idx = np.flatnonzero(basis.numbers == z)
        perm[idx] = rng.permutation(idx)
    a = np.asarray(basis.structure(jnp.asarray(x0)))
    b = np.asarray(basis.structure(jnp.asarray(r[perm].reshape(-1))))
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def run(molecule: str, n: int, orders, settings: dict, quick: bool) -> dict:
    from forcegp.gp import evidence, posterior
    from forcegp.training import initialise

    tr = np.load(common.rmd17_path(molecule, "train"))
    te = np.load(common.rmd17_path(molecule, "test"))
    r, e, f = tr["coords"][:n], tr["energies"][:n] * KCAL, tr["forces"][:n] * KCAL
    n_test = 100 if quick else len(te["coords"])
    basis = Basis(tr["nuclear_charges"], orders, **settings)
    if basis.mix4:
        basis.set_mixing(r[:200].reshape(min(n, 200), -1))
    invariance = check_invariance(basis, r[0].reshape(-1))
    mean, scale, _ = initialise.energy_statistics(e, f)
    y, g = initialise.standardise_targets(e, f, mean, scale)
    t0 = time.perf_counter()
    raw = statistics(basis, r.reshape(n, -1), y, g)
    accumulate_s = time.perf_counter() - t0
    # Columns on a common footing: each scaled by the RMS of its values over the structures,
    # so that the multipliers start near the data's scale.
    inv = 1.0 / (np.sqrt(np.diag(np.asarray(raw.a_e)) / n) + 1e-12)
    suff = posterior.scaled_statistics(raw, inv)
    t0 = time.perf_counter()
    mult, ne, nf = evidence.maximise(suff, basis.groups, 0.1, 0.1)
    search_s = time.perf_counter() - t0
    # The exact posterior of the weights of the columns scaled by inv and the multipliers.
    m = inv * np.asarray(mult)[basis.groups]
    w = m * np.asarray(posterior.solve(posterior.scaled_statistics(raw, m), ne, nf).mean)
    energy, grad = predict(basis, w, te["coords"][:n_test].reshape(n_test, -1))
    f_pred = -grad.reshape(n_test, -1, 3) * scale
    e_pred = energy * scale + mean
    params = np.log(np.concatenate([mult, [ne, nf]]))
    return {
        "molecule": molecule, "n": n, "orders": " ".join(map(str, orders)), "K": basis.size,
        "settings": " ".join(f"{k}={v}" for k, v in settings.items()),
        "invariance": invariance, "accumulate_s": accumulate_s, "search_s": search_s,
        "nll_per_obs": float(evidence.nll_and_grad(params, evidence.Statistics(suff), basis.groups)[0]),
        "multipliers": " ".join(f"{v:.3g}" for v in mult), "noise_force": nf, "n_test": n_test,
        "forces_mae_mev": 1000 * float(np.mean(np.abs(f_pred - te["forces"][:n_test] * KCAL))),
        "energy_mae_mev": 1000 * float(np.mean(np.abs(e_pred - te["energies"][:n_test] * KCAL))),
    }  # fmt: skip


COLUMNS = [("molecule", "molecule"), ("n", "structures"), ("orders", "body orders"),
           ("settings", "settings"), ("K", "K"), ("accumulate_s", "statistics (s)"),
           ("search_s", "search (s)"), ("nll_per_obs", "NLL per observation"),
           ("noise_force", "force noise (std. units)"), ("forces_mae_mev", "test F MAE (meV/Å)"),
           ("energy_mae_mev", "test E MAE (meV)"), ("invariance", "invariance error")]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["ethanol"])
    ap.add_argument("--n", type=int, default=500, help="training structures (first of train_01)")
    ap.add_argument("--orders", nargs="+", type=int, default=[2, 3, 4], choices=[2, 3, 4])
    ap.add_argument("--radial", type=int, default=8, help="radial functions (body orders 2, 3)")
    ap.add_argument("--lmax", type=int, default=4, help="largest l of body order 3")
    ap.add_argument("--radial4", type=int, default=3, help="radial functions of body order 4")
    ap.add_argument("--lmax4", type=int, default=2, help="largest l of body order 4")
    ap.add_argument(
        "--mix4",
        type=int,
        default=0,
        help="body order 4 on this many principal channel mixings per l (0: off)",
    )
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--name", default="body_order")
    common.add_common_args(ap)
    args = ap.parse_args()
    common.enable_x64()
    settings = {"radial": args.radial, "lmax": args.lmax, "radial4": args.radial4,
                "lmax4": args.lmax4, "cutoff": args.cutoff, "mix4": args.mix4}  # fmt: skip
    if args.quick:
        settings.update(radial=3, lmax=2, radial4=2, lmax4=1)
    n = 60 if args.quick else args.n
    machine = common.machine_info()
    rows = []
    for molecule in args.molecules:
        rows.append(run(molecule, n, args.orders, settings, args.quick))
        print(rows[-1], flush=True)
    intro = ("Body-ordered atomic invariants summed per element, an exact Bayesian linear "
             "model with one prior multiplier per centre element and body order (exact "
             "evidence).")  # fmt: skip
    common.write_table(args.name, args, machine, "Body-ordered invariants", intro, rows, COLUMNS)


if __name__ == "__main__":
    main()
