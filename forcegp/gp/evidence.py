"""Exact full-data marginal likelihood over a few scales and the noise levels, in LAPACK
(docs/method.md §9).

With the noise-free sufficient statistics (statistics.Sufficient) of all training data, the exact
negative log marginal likelihood for column multipliers m (one per group of basis columns) and
noise levels s_e, s_f is, with alpha = 1 / s^2, C = alpha_e a_e + alpha_f a_f,

    P = I + M C M,   b = M (alpha_e b_e + alpha_f b_f),   beta = P^-1 b
    2 n NLL = alpha_e tt_e + alpha_f tt_f - b^T beta + log|P| + n_e log s_e^2 + n_f log s_f^2
              + n log 2 pi

and its gradient is closed form (d/d log m_g = sum_{j in g} (1 - P^-1_jj - beta_j^2); the noise
derivatives need tr(P^-1 M a M)). One evaluation is a K x K Cholesky factorisation and inverse.
These few-parameter searches run in scipy's LAPACK (scipy comes with ASE): XLA's CPU Cholesky
and its gradient are several times slower at K in the thousands.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.optimize

from .config import NOISE_FLOOR
from .statistics import Sufficient

#: The search stops when an iteration improves the log evidence of the whole training set by
#: less than this many nats (0: scipy's default, a relative 2.2e-9 of the NLL per observation).
TOL_NATS = 0.01


class Statistics:
    """float64 numpy copies of statistics.Sufficient's fields."""

    def __init__(self, suff):
        self.a_e = np.asarray(suff.a_e, dtype=np.float64)
        self.a_f = np.asarray(suff.a_f, dtype=np.float64)
        self.b_e = np.asarray(suff.b_e, dtype=np.float64)
        self.b_f = np.asarray(suff.b_f, dtype=np.float64)
        self.tt_e = float(suff.tt_e)
        self.tt_f = float(suff.tt_f)
        self.n_e = float(suff.n_e)
        self.n_f = float(suff.n_f)
        self._energy_factor = None

    def energy_factor(self) -> np.ndarray:
        """U (r x K) with U^T U = a_e, r its numerical rank (at most the number of structures):
        LAPACK's pivoted Cholesky factorisation, once."""
        if self._energy_factor is None:
            c, piv, rank, _ = scipy.linalg.lapack.dpstrf(self.a_e, lower=0)
            u = np.zeros((rank, len(self.a_e)))
            u[:, piv - 1] = np.triu(c[:rank])
            self._energy_factor = u
        return self._energy_factor


def nll_and_grad(params: np.ndarray, st: Statistics, groups: np.ndarray):
    """NLL per observation and its gradient in params = (log m_1..log m_G, log s_e, log s_f).

    Returns (inf, zeros) where P is not numerically positive definite. One Cholesky
    factorisation and one inverse from it (LAPACK potri); everything else is a few passes over
    K x K arrays, in place where possible (K is in the thousands).
    """
    return _evaluate(params, st, groups, False)[:2]


def nll_and_curvature(params: np.ndarray, st: Statistics, groups: np.ndarray):
    """nll_and_grad's value and gradient, and the Fisher information and the Hessian of the
    same parameters, per observation ((G + 2) x (G + 2) each); None for both where P is not
    positive definite.

    For a Gaussian with covariance C, y^T C^-1 y / 2 + log|C| / 2 has the Hessian
    F + alpha^T dC_a C^-1 dC_b alpha - tr(C^-1 dC_a C^-1 dC_b) + (tr(C^-1 dC_ab)
    - alpha^T dC_ab alpha) / 2, F = tr(C^-1 dC_a C^-1 dC_b) / 2 its Fisher information and
    alpha = C^-1 y. In the K-dimensional weight space, with S = P^-1, X_e = M a_e M and
    a_e = U^T U (Statistics.energy_factor), every entry is a sum over S, S o S, Y = U M S and
    a few products of S with vectors (docs/method.md §9): one r x K x K product beside the
    evaluation.
    """
    return _evaluate(params, st, groups, True)


def _evaluate(params: np.ndarray, st: Statistics, groups: np.ndarray, second: bool):
    n_groups = len(params) - 2
    m = np.exp(params[:n_groups])[groups]
    s_e, s_f = np.exp(params[-2:])
    al_e, al_f = s_e**-2, s_f**-2
    p = al_e * st.a_e
    p += al_f * st.a_f
    p *= m[:, None]
    p *= m[None, :]
    p[np.diag_indices_from(p)] += 1.0
    b_e, b_f = m * st.b_e, m * st.b_f
    b = al_e * b_e + al_f * b_f
    try:
        chol = scipy.linalg.cholesky(p, lower=True, overwrite_a=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return np.inf, np.zeros_like(params), None, None
    beta = scipy.linalg.cho_solve((chol, True), b, check_finite=False)
    logdet = 2.0 * np.sum(np.log(np.diag(chol)))
    # P^-1 in the lower triangle; the upper one keeps the cleaned factor's zeros.
    inv, info = scipy.linalg.lapack.dpotri(chol, lower=1, overwrite_c=1)
    if info != 0:
        return np.inf, np.zeros_like(params), None, None
    diag_inv = np.diag(inv).copy()
    mb = m * beta
    a_mb = (st.a_e @ mb, st.a_f @ mb)  # a_x M beta, for the gradient and the curvature
    curvature = (None, None)
    if second:
        curvature = _curvature(inv, diag_inv, m, beta, a_mb, (al_e, al_f), st, groups, n_groups)
    n = st.n_e + st.n_f
    value = (
        al_e * st.tt_e
        + al_f * st.tt_f
        - b @ beta
        + logdet
        + st.n_e * np.log(s_e**2)
        + st.n_f * np.log(s_f**2)
        + n * np.log(2 * np.pi)
    ) / (2 * n)
    grad = np.empty_like(params)
    per_column = 1.0 - diag_inv - beta**2
    grad[:n_groups] = np.bincount(groups, weights=per_column, minlength=n_groups) / n
    # alpha_x tr(P^-1 M a_x M) for x = e, f. For the energy term, with P^-1 held as its lower
    # triangle T: tr(P^-1 X) = 2 <T, X> - <diag T, diag X> for symmetric X. The force term
    # follows from alpha_e M a_e M + alpha_f M a_f M = P - I: the two sum to K - tr(P^-1).
    inv *= m[:, None]
    inv *= m[None, :]
    tr_e = 2.0 * np.vdot(inv, st.a_e) - np.sum(diag_inv * m * m * np.diag(st.a_e))
    traces = (al_e * tr_e, len(m) - np.sum(diag_inv) - al_e * tr_e)
    # d/d log alpha of 2 n NLL: alpha tt - 2 beta^T b_x alpha + alpha beta^T M a_x M beta
    # + alpha tr(P^-1 M a_x M) - n_x; and d log alpha = -2 d log s.
    for i, (al, a_x, bx, tt, nx) in enumerate(
        ((al_e, a_mb[0], b_e, st.tt_e, st.n_e), (al_f, a_mb[1], b_f, st.tt_f, st.n_f))
    ):
        d_log_alpha = al * tt - 2 * al * (beta @ bx) + al * (mb @ a_x) + traces[i] - nx
        grad[n_groups + i] = -2.0 * d_log_alpha / (2 * n)
    return float(value), grad, *curvature


def _mirror_lower(a: np.ndarray, chunk: int) -> np.ndarray:
    """a with its lower triangle copied to the upper one, in place, block by block (no K x K
    temporary)."""
    for start in range(0, len(a), chunk):
        end = start + chunk
        a[start:end, end:] = a[end:, start:end].T
        block = a[start:end, start:end]
        upper = np.triu_indices(len(block), 1)
        block[upper] = block.T[upper]
    return a


def _curvature(lower, diag_s, m, beta, a_mb, alphas, st, groups, n_groups, chunk=512):
    """The Fisher information and the Hessian per observation of (log m_1..log m_G, log s_e,
    log s_f) from S = P^-1 (its lower triangle in ``lower``, which is filled and cleared
    again in place), beta = S b and a_mb = (a_e M beta, a_f M beta); docs/method.md §9
    derives each entry."""
    k, (al_e, al_f) = len(m), alphas
    s = _mirror_lower(lower, chunk)  # S itself, in place; the upper triangle is cleared again below
    um = st.energy_factor() * m
    y = um @ s  # U M S
    d_sxs = np.einsum("ij,ij->j", y, y)  # diag(S X_e S)
    t_sx = np.vdot(um, y)  # tr(S X_e)
    t_s2x = np.vdot(y, y)  # tr(S^2 X_e)
    t_sx2 = np.sum((y @ um.T) ** 2)  # tr((S X_e)^2)
    # Block sums of S o S (group by group) and diag(S^2), row chunk by row chunk.
    ind = np.zeros((n_groups, k))
    ind[groups, np.arange(k)] = 1.0
    blocks, d_s2 = np.zeros((n_groups, n_groups)), np.empty(k)
    for start in range(0, k, chunk):
        sq = s[start : start + chunk] ** 2
        d_s2[start : start + chunk] = sq.sum(axis=1)
        blocks += ind[:, start : start + chunk] @ (sq @ ind.T)
    # The Hessian's terms in beta: E_g beta, S E_g beta (g = 1..G), S w_x with w_x = M b_x - X_x beta
    # (M Phi_x^T times the residual r_x of observations x), and |r_x|^2.
    mb = m * beta
    split = ind.T * beta[:, None]
    w = [m * (st.b_e - a_mb[0]), m * (st.b_f - a_mb[1])]
    r2 = [tt - 2.0 * mb @ bx + mb @ a_x for tt, bx, a_x in
          ((st.tt_e, st.b_e, a_mb[0]), (st.tt_f, st.b_f, a_mb[1]))]  # fmt: skip
    s_split, s_w = s @ split, s @ np.stack(w, axis=1)
    for start in range(0, k, chunk):  # back to potri's lower triangle, for the gradient
        s[start : start + chunk, start + chunk :] = 0.0
        block = s[start : start + chunk, start : start + chunk]
        block[np.triu_indices(len(block), 1)] = 0.0
    size = ind.sum(axis=1)
    on_diag = ind @ diag_s
    f = np.zeros((n_groups + 2, n_groups + 2))
    # (I - S)^2 summed over the two groups' columns
    f[:n_groups, :n_groups] = 2.0 * (blocks + np.diag(size - 2.0 * on_diag))
    f[:n_groups, n_groups] = 2.0 * al_e * (ind @ d_sxs)
    f[:n_groups, n_groups + 1] = 2.0 * (ind @ (diag_s - d_s2 - al_e * d_sxs))
    tr_s, tr_s2 = np.sum(diag_s), np.sum(d_s2)
    f[n_groups, n_groups] = 2.0 * (st.n_e - 2.0 * al_e * t_sx + al_e**2 * t_sx2)
    tr_b = k - tr_s - al_e * t_sx  # B = alpha_f S X_f = I - S - alpha_e S X_e
    tr_b2 = k - 2.0 * tr_s + tr_s2 - 2.0 * al_e * (t_sx - t_s2x) + al_e**2 * t_sx2
    f[n_groups + 1, n_groups + 1] = 2.0 * (st.n_f - 2.0 * tr_b + tr_b2)
    f[n_groups, n_groups + 1] = 2.0 * al_e * (t_sx - t_s2x - al_e * t_sx2)
    f = np.triu(f) + np.triu(f, 1).T
    h = -f
    q_split = split - s_split  # (I - S) E_g beta
    h[:n_groups, :n_groups] += 4.0 * split.T @ q_split + np.diag(
        2.0 * (size - on_diag) - 2.0 * (ind @ beta**2)
    )
    al = np.array([al_e, al_f])
    cross = 4.0 * split.T @ s_w * al  # 4 alpha_x (E_g beta)^T S w_x
    h[:n_groups, n_groups:] += cross
    h[n_groups:, :n_groups] += cross.T
    h[n_groups:, n_groups:] -= 4.0 * np.outer(al, al) * (np.stack(w) @ s_w)
    traces = (2.0 * (st.n_e - al_e * t_sx), 2.0 * (st.n_f - tr_b))  # tr(C^-1 dC_xx) / 2
    for i in range(2):
        h[n_groups + i, n_groups + i] += traces[i] + 2.0 * al[i] * r2[i]
    n = st.n_e + st.n_f
    return f / n, h / n


def maximise(
    suff,
    groups: np.ndarray,
    noise_e: float,
    noise_f: float,
    *,
    search_groups=None,
    restart: bool = True,
    method: str = "lbfgs",
    max_iter: int = 40,
) -> tuple[np.ndarray, float, float]:
    """Column-group multipliers and noise levels of the exact maximum marginal likelihood.

    groups: (K,) group index of every basis column (0..G-1). search_groups: the groups whose
    multipliers are searched (default: all); the others stay at 1. Searches from multipliers 1
    with the given noise levels and, with ``restart``, again with noise levels NOISE_RESTART
    times smaller, and keeps the better optimum: a block whose columns start small against the
    noise has a vanishing gradient (1 - P^-1_jj - beta_j^2 -> 0), so from a large noise the
    search can stop on the plateau where the noise explains what that block would
    (docs/method.md §9); a start already near the optimum needs no restart. Noise
    levels stay above twice the model's floor. method: "lbfgs" (scipy's L-BFGS-B on the value
    and gradient) or "newton" (Newton's method on the exact Hessian with Levenberg-Marquardt
    damping, _newton: one r x K x K product more per evaluation, several times fewer
    evaluations where the scales are many). Returns (multipliers (G,), noise_e, noise_f); the
    start if no search improves on it.
    """
    if method not in ("lbfgs", "newton"):
        raise ValueError(f"unknown evidence search {method!r}")
    st = Statistics(suff)
    groups = np.asarray(groups, dtype=np.int64)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    free = np.arange(n_groups) if search_groups is None else np.asarray(search_groups, dtype=np.int64)
    floor = np.log(2 * NOISE_FLOOR)
    bounds = [(-20.0, 20.0)] * len(free) + [(floor, 10.0)] * 2

    def full(params):  # every group's log multiplier (0 where not searched) and the noise levels
        out = np.zeros(n_groups + 2)
        out[free] = params[: len(free)]
        out[-2:] = params[-2:]
        return out

    searched_params = np.concatenate([free, [n_groups, n_groups + 1]])

    def objective(params):
        value, grad = nll_and_grad(full(params), st, groups)
        return value, grad[searched_params]

    def curved(params):
        value, grad, *second = nll_and_curvature(full(params), st, groups)
        if second[0] is not None:
            second = [v[np.ix_(searched_params, searched_params)] for v in second]
        return value, grad[searched_params], *second

    def start_at(divide):
        lo = 2.5 * NOISE_FLOOR
        noise = [max(noise_e / divide, lo), max(noise_f / divide, lo)]
        return np.concatenate([np.zeros(len(free)), np.log(noise)])

    start = start_at(1.0)
    at_start = curved(start) if method == "newton" else objective(start)
    start_value, start_grad = at_start[:2]
    best, best_value = start, start_value
    searched = []
    for divide in (1.0, NOISE_RESTART) if restart else (1.0,):
        first = start_at(divide)
        if any(np.array_equal(first, s) for s in searched):
            continue  # the same start (noise levels at the floor, or no restart): the same search
        searched.append(first)
        if method == "newton":
            known = at_start if np.array_equal(first, start) else None
            x, value = _newton(curved, st, first, bounds, max_iter, known)
        else:
            x, value = _search(objective, st, first, bounds, max_iter, start_value, start_grad, start)
        if np.isfinite(value) and value < best_value:
            best, best_value = x, value
    best = full(best)
    return np.exp(best[:n_groups]), float(np.exp(best[-2])), float(np.exp(best[-1]))


#: The second start of maximise divides both noise levels by this.
NOISE_RESTART = 10.0


def _search(evaluate, st, first, bounds, max_iter, start_value, start_grad, start):
    """One L-BFGS-B search of evaluate (params -> (NLL per observation, gradient)) from
    ``first``; returns (params, NLL per observation)."""

    def objective(params):  # the evaluation at the start is done once
        if np.array_equal(params, start):
            return start_value, start_grad.copy()
        return evaluate(params)

    options = {"maxiter": max_iter}
    if TOL_NATS > 0:
        # L-BFGS-B stops when (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ftol, f the NLL per
        # observation: a change of the total NLL of about TOL_NATS.
        n_obs = st.n_e + st.n_f
        options["ftol"] = TOL_NATS / (n_obs * max(abs(start_value), 1.0))
    res = scipy.optimize.minimize(
        objective, first, jac=True, method="L-BFGS-B", bounds=bounds, options=options
    )
    return res.x, float(res.fun)


#: Newton's method: the first and smallest damping, and the largest change of one log-parameter
#: in a step.
NEWTON_DAMPING = 0.01
NEWTON_STEP = 2.0


def saddle_free(g: np.ndarray, h: np.ndarray, info: np.ndarray):
    """The damped saddle-free Newton step as a function of the damping lam: d = -(|H| + lam
    diag(F))^-1 g, |H| the Hessian h with the signs of its negative eigenvalues flipped in the
    units of diag(F) (info's diagonal). H alone points uphill along a direction of negative
    curvature; |H| follows it downhill as far as a positive curvature of the same size would.
    One eigendecomposition serves every lam."""
    unit = np.sqrt(np.diag(info))
    curv, vec = np.linalg.eigh(h / unit[:, None] / unit[None, :])
    along = vec.T @ (g / unit)
    return lambda lam: -(vec @ (along / (np.abs(curv) + lam))) / unit


def _newton(evaluate, st, first, bounds, max_iter, known=None, direction=saddle_free,
            lam_floor=NEWTON_DAMPING):  # fmt: skip
    """Newton's method on evaluate (params -> (NLL per observation, gradient, Fisher
    information, Hessian)) from ``first`` (known: evaluate(first), if done). Each step is
    direction(g, H, F)(lam) (saddle_free: d = -(|H| + lam diag(F))^-1 g), with
    Levenberg-Marquardt damping lam that grows eightfold while the step does not lower the NLL
    and shrinks fourfold, to no less than lam_floor, after a step that does; d is clipped to
    NEWTON_STEP per parameter. A parameter at a bound that the gradient pushes out, or with no
    information, is held. Stops when an accepted step, or the Newton prediction of the rest,
    gains less than TOL_NATS of total log evidence, or after max_iter steps. Returns (params,
    NLL per observation)."""
    lo, hi = np.array(bounds).T
    n_obs = st.n_e + st.n_f
    x = np.clip(first, lo, hi)
    value, grad, info, hess = known if known is not None and np.array_equal(x, first) else evaluate(x)
    if info is None:
        return x, value
    lam = NEWTON_DAMPING
    for _ in range(max_iter):
        held = ((x <= lo) & (grad > 0)) | ((x >= hi) & (grad < 0)) | (np.diag(info) <= 0)
        act = np.flatnonzero(~held)
        if len(act) == 0:
            break
        g, h = grad[act], hess[np.ix_(act, act)]
        try:  # the rest that Newton's method predicts, where the Hessian is positive definite
            rest = 0.5 * g @ scipy.linalg.cho_solve(scipy.linalg.cho_factor(h), g) * n_obs
            if rest < TOL_NATS:
                break
        except np.linalg.LinAlgError:
            pass
        steps = direction(g, h, info[np.ix_(act, act)])
        while lam <= 1e8:
            step = steps(lam)
            trial = x.copy()
            trial[act] = np.clip(x[act] + np.clip(step, -NEWTON_STEP, NEWTON_STEP), lo[act], hi[act])
            t_value, t_grad, t_info, t_hess = evaluate(trial)
            if t_info is not None and t_value < value:
                break
            lam *= 8.0
        else:
            break
        gain = (value - t_value) * n_obs
        x, value, grad, info, hess = trial, t_value, t_grad, t_info, t_hess
        lam = max(lam / 4.0, lam_floor)
        if gain < TOL_NATS:
            break
    return x, float(value)


def system(suff: Sufficient, scale, noise_e, noise_f):
    """P = I + c^2 (A_e/be^2 + A_f/bf^2) and b = c (b_e/be^2 + b_f/bf^2)."""
    a = scale**2 * (suff.a_e / noise_e**2 + suff.a_f / noise_f**2)
    b = scale * (suff.b_e / noise_e**2 + suff.b_f / noise_f**2)
    return jnp.eye(a.shape[0], dtype=a.dtype) + 0.5 * (a + a.T), b


def exact_nll(suff: Sufficient, scale, noise_e, noise_f) -> jax.Array:
    """Exact negative log marginal likelihood of ALL accumulated data, per observation."""
    p, b = system(suff, scale, noise_e, noise_f)
    chol = jnp.linalg.cholesky(p)
    proj = jax.scipy.linalg.solve_triangular(chol, b, lower=True)
    quad = suff.tt_e / noise_e**2 + suff.tt_f / noise_f**2 - proj @ proj
    logdet = (
        2 * jnp.sum(jnp.log(jnp.diag(chol)))
        + suff.n_e * jnp.log(noise_e**2)
        + suff.n_f * jnp.log(noise_f**2)
    )
    n = suff.n_e + suff.n_f
    return 0.5 * (quad + logdet + n * jnp.log(2 * jnp.pi)) / n
