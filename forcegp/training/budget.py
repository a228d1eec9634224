"""Size rules chosen from the data and the molecule ("auto" settings): the cubic block, the
deep-kernel width and the training epochs, each from one cost measure (docs/method.md §3-§4)."""

from __future__ import annotations

import dataclasses

from ..gp.config import AUTO, AUTO_DESCRIPTOR, LARGE_MOLECULE_ATOMS, PAIR_POWERS, Config
from ..gp.params import ForceGP

#: Cost budget of the explicit block, observations x F^2 (the F x F accumulation of the prefit and
#: of the posterior fit): rMD17 aspirin's block at 1000 structures (F = 3224), whose fit
#: is a sixth of its training time. Measured in benchmarks/results/rmd17_variants.jsonl: the
#: cubic block's size is the largest accuracy lever on the small molecules.
EXPLICIT_BUDGET = 6.7e11
#: At most this many explicit functions where the data-chosen parts can keep it (the cubic terms,
#: budgeted_cubic, and the local terms, local_pairs): the block's F x F eigendecompositions (F^3)
#: do not shrink with the data; rMD17 ethanol's cubic-26 block (F = 3987) adds about 2.5
#: minutes. The pair powers (pair_powers x N(N-1)/2) and the quadratic PCA terms are the user's
#: settings and are kept: beyond about 50 atoms they alone exceed it.
EXPLICIT_MAX = 4000


def budgeted_cubic(config: Config, n_train: int) -> int:
    """Leading PCA components in the cubic terms ("auto"): the largest c <= explicit_dim whose
    explicit block of F functions keeps n_train * (1 + 3N) * F^2 within EXPLICIT_BUDGET, F within
    EXPLICIT_MAX and at most the number of observations (beyond that the block costs more than
    the data hold)."""
    obs = n_train * (1 + config.dim)
    best = 0
    for c in range(config.explicit_q + 1):
        f = dataclasses.replace(config, explicit_cubic=c).n_explicit
        if obs * f * f > EXPLICIT_BUDGET or f > min(obs, EXPLICIT_MAX):
            break
        best = c
    return best


#: Deep-kernel width ("auto"): WIDE where a training structure costs at most WIDE_COST tangent
#: rows through the MLP (permutation copies x (1 + 3N)), NARROW elsewhere. Each training step
#: pushes every copy's 1 + 3N tangents through the MLP, so its cost grows with width x that
#: product. The wider kernel is more accurate on the small rMD17 molecules (docs/ablation.md)
#: for more epoch time, which the molecules with many copies or atoms (benzene, toluene,
#: aspirin, paracetamol, azobenzene: 384-732 rows) cannot spend within the training budget.
NARROW, WIDE, WIDE_COST = 64, 128, 350


def few_tangent_rows(config: Config, n_permutations: int) -> bool:
    """A training structure costs at most WIDE_COST tangent rows (copies x (1 + 3N), its atoms
    being copies of an "atomic" model): the one cost measure behind the width and epochs rules."""
    return n_permutations * config.n_descriptor_copies * (1 + config.dim) <= WIDE_COST


def budgeted_width(config: Config, n_permutations: int) -> int:
    return WIDE if few_tangent_rows(config, n_permutations) else NARROW


#: Training epochs ("auto"): LONG for the molecules whose structures cost at most WIDE_COST
#: tangent rows per step (the same measure as the width), SHORT elsewhere. The deep kernel is
#: still improving at 40 epochs (docs/ablation.md); the molecules with many copies or atoms
#: cannot spend 60 within the training budget. With the body-ordered block (env_body4) the
#: exact block fits nearly all the data before DSoftKI trains on its residual: RESIDUAL
#: epochs gave rMD17 ethanol and aspirin the errors of 20 (11.69 against 11.74, 33.33 against
#: 33.38 meV/Å; 20 gave ethanol those of 60) in a quarter of the epochs' time
#: (benchmarks/stages.py, docs/ablation.md).
SHORT, LONG, RESIDUAL = 40, 60, 5


def budgeted_epochs(model: ForceGP) -> int:
    if model.config.body_block:
        return RESIDUAL
    return LONG if few_tangent_rows(model.config, model.n_copies) else SHORT


def size_defaults(n_atoms: int, options: dict) -> dict:
    """User options with the size-dependent defaults filled in: descriptor "auto" (or absent)
    is "inverse-distance" up to LARGE_MOLECULE_ATOMS atoms and "atomic" beyond (its cost grows
    with atoms times neighbours, the global descriptor's with atom pairs); pair_powers AUTO (or
    absent) is PAIR_POWERS up to that size and 0 beyond (pair_powers x N(N-1)/2 terms: 4620 at
    56 atoms, 213,759 at 378). Body-ordered invariants (env_body4 > 0) are atom-centred:
    "auto" is "atomic" with them at any size."""
    out = dict(options)
    large = n_atoms > LARGE_MOLECULE_ATOMS
    if out.get("descriptor", AUTO_DESCRIPTOR) == AUTO_DESCRIPTOR:
        atomic = large or out.get("env_body4", 0) > 0
        out["descriptor"] = "atomic" if atomic else "inverse-distance"
    if out.get("pair_powers", AUTO) == AUTO:
        out["pair_powers"] = 0 if large else PAIR_POWERS
    return out
