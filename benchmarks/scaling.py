"""Linear cost: time per epoch, posterior-fit time and peak memory of forcegp against the number of
structures and the molecule's size; the fit against its matrix-multiply bound; --max-memory.

    python benchmarks/scaling.py                    # all sections (about 1.5 h on 2 shared cores)
    python benchmarks/scaling.py --sections n --no-warm-pass  # 5,000-40,000 aspirin: 80 min idle
    python benchmarks/scaling.py --sections n --sizes 1000 2000 4000
    python benchmarks/scaling.py --quick            # smoke test (tiny model)

Sections (--sections, default all four):

n        aspirin (21 atoms), n structures (default 5,000 10,000 20,000 40,000): one training epoch
         (the 2nd of forcegp.train_model with epochs=2: compilation happens in the 1st, and the
         compilations within the 2nd are counted), the posterior fit inside train_model
         (streamed accumulation with its compilation, exact-likelihood refinement of scale and
         noise, K x K solve), a second pass of statistics.accumulate after a one-chunk warm-up
         (the O(n) part; compilations counted; skipped with --no-warm-pass, which halves the
         time), the per-block evidence refinement (LAPACK) and solve again (the n-independent
         part; with --no-warm-pass on one chunk's statistics), the GEMM bound
         n (1+3N) K^2 / rate with the float64 rate of X^T X measured in the same process on one
         chunk's rows, and the subprocess's peak RSS. Data: rMD17 aspirin train_01..05 and
         test_01..05, exact duplicates removed (9,633 distinct structures). Beyond that the
         structures are TILED: further copies with N(0, 0.005 Å) noise on every coordinate and
         the labels of the original (timing only).
atoms    molecule size at fixed n (--atoms-n, default 1000), the same measurements: ethanol (9),
         aspirin (21), azobenzene (24) with their rMD17 labels; Ac-Ala3-NHMe (42; MD22's first 98
         geometries tiled with 0.02 Å noise) and a random 56-atom C/H chain, both with SYNTHETIC
         labels from a harmonic pair potential (they exist only to time the code).
memory   posterior.fit alone (untrained model, aspirin, --atoms-n structures) with chunks chosen
         by resources.choose_chunk under each --max-memory limit (GiB; 0: none): the chunk, the
         library's estimate fit_memory_bytes, and how far the fit raised the process's peak RSS
         above its resident set before the fit (the estimate leaves out XLA's own compilation
         memory). A limit the fit cannot meet must be refused with ResourceError up front.

step     one training step (the DSoftKI model train_model trains, default settings) of
         ethanol, aspirin and the 56-atom chain at batch sizes 32 and 128: the memory XLA plans
         for the compiled step (train.step_memory_bytes, which train_model checks against
         --max-memory before training) against how far three steps raise the peak RSS.

Every measurement runs in its own subprocess (--worker), so each peak RSS is its own. Models use
forcegp's defaults (Config(), TrainSettings() except epochs=2) or the --config options, e.g.
--config explicit=none for the DSoftKI block alone (K = n_inducing whatever the molecule);
--quick uses a tiny model and skips the atoms section (its rows use the same worker as n).
Results: benchmarks/results/scaling.json and scaling.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
SIZES = (5000, 10000, 20000, 40000)
MOLECULES = ("ethanol", "aspirin", "azobenzene", "ala3-synthetic", "chain56-synthetic")
#: Larger systems for the atomic descriptor: m Ac-Ala3-NHMe molecules side by side, one system.
CLUSTERS = {"ala3x2-synthetic": 2, "ala3x4-synthetic": 4, "ala3x9-synthetic": 9}
CLUSTER_GAP = 3.0  # Å between the copies' bounding boxes
MAX_MEMORY_GIB = (0.0, 0.05, 0.01)  # 0: no limit
SECTIONS = ("n", "atoms", "memory", "step")
STEP_MOLECULES = ("ethanol", "aspirin", "chain56-synthetic")
BATCHES = (32, 128)
QUICK_CONFIG = {  # K about 260 for aspirin
    "n_inducing": 16, "n_features": 4, "width": 8, "depth": 1, "explicit_dim": 4,
    "pair_powers": 1, "local_cutoff": 1.2,
}  # fmt: skip
TILE_NOISE = 0.005  # Å, on tiled copies of aspirin structures
ALA3_NOISE = 0.02  # Å, on tiled copies of the 98 Ac-Ala3-NHMe geometries
CHAIN_NOISE = 0.05  # Å, on the synthetic chain's structures


# ----------------------------------------------------------------------------- data


def harmonic_labels(positions: np.ndarray, reference: np.ndarray):
    """Synthetic energies (eV) and forces (eV/Å): E = sum_{i<j} (r_ij - r0_ij)^2 / (2 r0_ij^2)."""
    i, j = np.triu_indices(positions.shape[1], 1)
    r0 = np.linalg.norm(reference[i] - reference[j], axis=-1)
    diff = positions[:, i] - positions[:, j]  # (n, pairs, 3)
    r = np.linalg.norm(diff, axis=-1)
    energies = 0.5 * np.sum((r - r0) ** 2 / r0**2, axis=1)
    pair_force = -((r - r0) / (r0**2 * r))[..., None] * diff  # on atom i, from pair (i, j)
    forces = np.zeros_like(positions)
    np.add.at(forces, (slice(None), i), pair_force)
    np.add.at(forces, (slice(None), j), -pair_force)
    return energies, forces


def random_chain(n_atoms: int, seed: int = 0):
    """Self-avoiding chain: 1.5 Å bonds, 110° angles, every third atom an H. (numbers, positions)."""
    rng = np.random.default_rng(seed)
    pos = [np.zeros(3), np.array([1.5, 0.0, 0.0])]
    bend = np.deg2rad(180 - 110)
    for _ in range(1000 * n_atoms):
        if len(pos) == n_atoms:
            numbers = np.array([1 if k % 3 == 2 else 6 for k in range(n_atoms)])
            return numbers, np.array(pos)
        prev = (pos[-1] - pos[-2]) / 1.5
        v = rng.standard_normal(3)
        v -= v.dot(prev) * prev
        cand = pos[-1] + 1.5 * (np.cos(bend) * prev + np.sin(bend) * v / np.linalg.norm(v))
        if all(np.linalg.norm(cand - p) > 2.0 for p in pos[:-1]):
            pos.append(cand)
    raise RuntimeError(f"could not grow a self-avoiding {n_atoms}-atom chain")


def aspirin(n: int, rng):
    """n aspirin structures: distinct rMD17 ones first, then noisy tiled copies. (Dataset, text)."""
    from forcegp import Dataset, read_dataset
    from forcegp.data import concatenate

    parts = []
    for part in ("train", "test"):
        for split in ("01", "02", "03", "04", "05"):
            parts.append(read_dataset(common.rmd17_path("aspirin", part, split), energy_unit="kcal/mol"))
            data = concatenate(parts)
            _, first = np.unique(data.positions.reshape(data.n_frames, -1), axis=0, return_index=True)
            if len(first) >= n:
                return data.subset(np.sort(first)[:n]), f"rMD17 aspirin, {n} distinct structures"
    pool = data.subset(np.sort(first))
    m = pool.n_frames
    idx = np.arange(n) % m
    pos = pool.positions[idx] + TILE_NOISE * rng.standard_normal((n, *pool.positions.shape[1:]))
    pos[:m] = pool.positions
    data = Dataset(pool.numbers, pos, pool.energies[idx], pool.forces[idx], ("tiled",))
    return data, f"rMD17 aspirin, {m} distinct + {n - m} tiled copies (±{TILE_NOISE} Å noise)"


def ala3_cluster(m: int, n: int, rng):
    """n structures of m Ac-Ala3-NHMe molecules on a grid, CLUSTER_GAP Å between their bounding
    boxes, each molecule an MD22 geometry (picked at random per structure) with ALA3_NOISE Å
    noise, and SYNTHETIC harmonic labels (timing only). (Dataset, description)."""
    from forcegp import Dataset

    with np.load(common.DATA / "md22_Ac-Ala3-NHMe_first98_positions_only.npz") as f:
        numbers, frames = np.asarray(f["z"]), np.asarray(f["R"], dtype=np.float64)
    frames = frames - frames.mean(axis=1, keepdims=True)
    step = np.ptp(frames, axis=1).max(0) + CLUSTER_GAP
    side = int(np.ceil(m ** (1 / 3)))
    grid = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:m])
    shift = grid * step  # (m, 3)
    picks = rng.integers(0, len(frames), size=(n, m))
    noise = ALA3_NOISE * rng.standard_normal((n, m, *frames.shape[1:]))
    pos = frames[picks] + shift[None, :, None] + noise
    pos = pos.reshape(n, -1, 3)
    ref = (frames[0][None] + shift[:, None]).reshape(-1, 3)
    desc = f"{m} x MD22 Ac-Ala3-NHMe ({m * len(numbers)} atoms, ±{ALA3_NOISE} Å), SYNTHETIC labels"
    return Dataset(np.tile(numbers, m), pos, *harmonic_labels(pos, ref), ("synthetic",)), desc


def make_dataset(name: str, n: int):
    """(Dataset, description) of n structures of ``name`` (see the module docstring)."""
    from forcegp import Dataset, read_dataset

    rng = np.random.default_rng(0)
    if name == "aspirin":
        return aspirin(n, rng)
    if name in ("ethanol", "azobenzene"):
        data = read_dataset(common.rmd17_path(name, "train"), energy_unit="kcal/mol")
        return data.subset(np.arange(n)), f"rMD17 {name} train_01"
    if name == "ala3-synthetic":
        with np.load(common.DATA / "md22_Ac-Ala3-NHMe_first98_positions_only.npz") as f:
            numbers, frames = np.asarray(f["z"]), np.asarray(f["R"], dtype=np.float64)
        pos = frames[np.arange(n) % len(frames)] + ALA3_NOISE * rng.standard_normal(
            (n, *frames.shape[1:])
        )
        desc = f"MD22 Ac-Ala3-NHMe, 98 geometries tiled (±{ALA3_NOISE} Å), SYNTHETIC labels"
        return Dataset(numbers, pos, *harmonic_labels(pos, frames[0]), ("synthetic",)), desc
    if name in CLUSTERS:
        return ala3_cluster(CLUSTERS[name], n, rng)
    if name == "chain56-synthetic":
        numbers, ref = random_chain(56)
        pos = ref + CHAIN_NOISE * rng.standard_normal((n, 56, 3))
        desc = f"SYNTHETIC 56-atom C/H chain (±{CHAIN_NOISE} Å), SYNTHETIC labels"
        return Dataset(numbers, pos, *harmonic_labels(pos, ref), ("synthetic",)), desc
    raise ValueError(f"unknown dataset {name!r}")


def standardised(model, data):
    """x (n, 3N) Å, and the energies and forces standardised as train_model does."""
    from forcegp.training.initialise import standardise_targets

    stats = model.stats
    y, g = standardise_targets(
        data.energies, data.forces, float(stats.energy_mean), float(stats.energy_scale)
    )
    return np.asarray(data.positions, dtype=np.float64).reshape(data.n_frames, -1), y, g


# ----------------------------------------------------------------------------- workers


def worker_train(spec: dict) -> dict:
    """train_model with epochs=2; epoch time, fit time, a warm accumulate pass, refine + solve, GEMM."""
    common.enable_x64()
    import equinox as eqx
    import jax

    from forcegp import TrainSettings, train_model
    from forcegp.gp import posterior, statistics
    from forcegp.training import resources
    from forcegp.training.loop import steps_per_epoch

    data, desc = make_dataset(spec["name"], spec["n"])
    settings = dataclasses.replace(TrainSettings(), epochs=2)
    epochs: list[tuple[float, int]] = []  # (seconds, compilations so far) at the end of each epoch

    def progress(event, info):
        if event == "epoch":
            epochs.append((info["seconds"], len(compiled)))

    t0 = time.perf_counter()
    with common.count_compilations() as compiled:
        model, meta = train_model(
            data,
            settings=settings,
            seed=0,
            valid=data.subset(np.arange(min(32, data.n_frames))),  # its metrics are not used
            config_kwargs=spec["config"],
            progress=progress,
        )
    train_model_s = time.perf_counter() - t0

    config = model.config
    k, rows = config.n_basis, 1 + config.dim
    chunk = resources.chunk_for(model)  # the chunk train_model's fit used
    bare = eqx.tree_at(lambda m: m.posterior, model, None)
    x, y, g = standardised(bare, data)
    # Warm-up on one chunk: the fitted model's hyperparameters are new arrays (weakly typed), so
    # the first call compiles again.
    suff = statistics.accumulate(bare, x[:chunk], y[:chunk], g[:chunk], chunk=chunk)
    accumulate_s, recompiled = None, []
    if spec.get("warm_pass", True):
        with common.count_compilations() as recompiled:
            t0 = time.perf_counter()
            suff = jax.block_until_ready(statistics.accumulate(bare, x, y, g, chunk=chunk))
            accumulate_s = time.perf_counter() - t0
    # else refine + solve run on the one chunk's statistics: their cost does not depend on n.
    with common.count_compilations() as refine_compiled:
        t0 = time.perf_counter()
        refit, scaled = posterior.refined(suff, bare)
        h = refit.hyper
        jax.block_until_ready(posterior.solve(scaled, h.noise_energy, h.noise_force).mean)
        refine_solve_s = time.perf_counter() - t0

    gemm = common.gemm_rate(chunk * rows, k)
    bound = gemm["seconds"] * data.n_frames / chunk  # n (1+3N) K^2 at the measured rate
    return {
        "dataset": desc,
        "n": data.n_frames,
        "n_atoms": data.n_atoms,
        "K": k,
        "env_neighbours": config.env_neighbours if config.descriptor == "atomic" else None,
        "permuted_copies": model.n_copies,
        "rows_per_structure": rows,
        "chunk": chunk,
        "config": config.to_dict(),
        "steps_per_epoch": steps_per_epoch(data.n_frames, settings.batch_size),
        "epoch_s": epochs[1][0] - epochs[0][0],
        "compilations_in_epoch_2": epochs[1][1] - epochs[0][1],
        "train_model_s": train_model_s,
        "fit_in_train_model_s": meta["training"]["fit_seconds"],
        "accumulate_warm_s": accumulate_s,
        "compiled_in_warm_accumulate": recompiled,
        "refine_solve_s": refine_solve_s,
        "compilations_in_refine_solve": len(refine_compiled),
        "gemm": gemm,
        "gemm_bound_s": bound,
        "accumulate_over_bound": None if accumulate_s is None else accumulate_s / bound,
        "fit_over_bound": meta["training"]["fit_seconds"] / bound,
        "data_bytes": data.positions.nbytes + data.forces.nbytes + data.energies.nbytes,
        "peak_rss_self_bytes": common.peak_rss_self(),
    }


def untrained(spec: dict):
    """(data, description, model): spec's dataset and an initialised, untrained model of it
    (x64 switched on)."""
    common.enable_x64()
    import jax

    from forcegp.training.initialise import initialize
    from forcegp.training.pipeline import make_config

    data, desc = make_dataset(spec["name"], spec["n"])
    model = initialize(
        make_config(data.n_atoms, spec["config"]),
        data.numbers, data.positions, data.energies, data.forces, key=jax.random.key(0),
    )  # fmt: skip
    return data, desc, model


def worker_memory(spec: dict) -> dict:
    """posterior.fit alone with choose_chunk(max_memory): chunk, estimate, rise of the peak RSS."""
    import jax

    from forcegp import ResourceError
    from forcegp.gp import posterior
    from forcegp.training import resources

    data, desc, model = untrained(spec)
    config = model.config  # the explicit block's local terms are known after initialize
    out = {"dataset": desc, "n": data.n_frames, "K": config.n_basis, "max_memory": spec["max_memory"]}
    try:
        chunk = resources.chunk_for(model, spec["max_memory"])
    except ResourceError as err:
        return out | {"refused": str(err)}
    x, y, g = standardised(model, data)
    rss_before = common.current_rss_self()
    t0 = time.perf_counter()
    jax.block_until_ready(posterior.fit(model, x, y, g, chunk=chunk).posterior.mean)
    return out | {
        "chunk": chunk,
        "estimate_bytes": resources.fit_memory_bytes(config, chunk, 1, model.n_copies),
        "fit_s": time.perf_counter() - t0,
        "rss_before_fit_bytes": rss_before,
        "fit_raised_peak_bytes": common.peak_rss_self() - rss_before,
    }


def worker_step(spec: dict) -> dict:
    """One training step's planned memory (train.step_plan_bytes, XLA's plan of the compiled
    step, and step_memory_bytes, with the margin train_model plans for) against how far three
    steps raise the peak RSS above the resident set after compiling."""
    import jax

    from forcegp import TrainSettings
    from forcegp.training import loop, resources
    from forcegp.training.stagewise import soft_only

    data, desc, model = untrained(spec)
    model = soft_only(model)  # what train_model trains (the explicit block is fitted exactly)
    x, y, g = standardised(model, data)
    settings = dataclasses.replace(TrainSettings(), epochs=1, batch_size=spec["batch"])
    t0 = time.perf_counter()
    plan = resources.step_plan_bytes(model, x, y, g, settings)
    plan_s = time.perf_counter() - t0
    planned = resources.with_step_margin(plan)
    rss_before = common.reset_peak_rss_self()  # the compilation's own peak is not the step's
    t0 = time.perf_counter()
    state = loop.run(model, x, y, g, settings, key=jax.random.key(1))  # 3 steps
    jax.block_until_ready(state.hyper)
    return {
        "dataset": desc,
        "n_atoms": data.n_atoms,
        "batch": settings.batch_size,
        "permuted_copies": model.n_copies,
        "M": model.config.n_inducing,
        "plan_bytes": plan,
        "planned_with_margin_bytes": planned,
        "plan_and_compile_s": plan_s,
        "three_steps_s": time.perf_counter() - t0,
        "rss_before_steps_bytes": rss_before,
        "steps_raised_peak_bytes": common.peak_rss_self() - rss_before,
    }


WORKERS = {"train": worker_train, "memory": worker_memory, "step": worker_step}


# ----------------------------------------------------------------------------- driver


def measure(spec: dict, timeout) -> dict:
    r = common.run_worker(SCRIPT, spec, timeout=timeout)
    r["peak_rss_gib"] = r["subprocess_peak_rss_bytes"] / common.GiB
    for key in (
        "estimate_bytes", "fit_raised_peak_bytes", "rss_before_fit_bytes", "plan_bytes",
        "planned_with_margin_bytes",
        "steps_raised_peak_bytes", "rss_before_steps_bytes",
    ):  # fmt: skip
        if key in r:
            r[key.replace("_bytes", "_gib")] = r[key] / common.GiB
    if "gemm" in r:
        r["gemm_gflops"] = r["gemm"]["gflops"]
        r["epoch_per_1k_s"] = 1000 * r["epoch_s"] / r["n"]
    print(json.dumps({k: v for k, v in r.items() if k != "config"}), flush=True)
    return r


def run_sections(args) -> dict:
    config = (QUICK_CONFIG if args.quick else {}) | args.config or None
    results: dict = {"n": [], "atoms": [], "memory": [], "step": []}
    train = {"kind": "train", "config": config, "warm_pass": not args.no_warm_pass}
    if "n" in args.sections:
        for n in args.sizes:
            spec = train | {"name": "aspirin", "n": n}
            results["n"].append(measure(spec, args.timeout))
    if "atoms" in args.sections:
        for name in args.molecules:
            spec = train | {"name": name, "n": args.atoms_n}
            results["atoms"].append(measure(spec, args.timeout))
    if "memory" in args.sections:
        for gib in args.max_memory:
            limit = gib * common.GiB if gib > 0 else None
            spec = {"kind": "memory", "name": "aspirin", "n": args.atoms_n, "config": config}
            r = measure(spec | {"max_memory": limit}, args.timeout)
            results["memory"].append(r | {"max_memory_gib": gib if limit else None})
    if "step" in args.sections:
        for name in args.step_molecules:
            for batch in args.batches:
                spec = {"kind": "step", "name": name, "n": 3 * batch, "batch": batch}
                results["step"].append(measure(spec | {"config": config}, args.timeout))
    return results


N_COLUMNS = [
    ("n", "n"),
    ("epoch_s", "epoch (s)"),
    ("epoch_per_1k_s", "epoch per 1000 (s)"),
    ("fit_in_train_model_s", "fit in train_model (s)"),
    ("accumulate_warm_s", "accumulate, warm (s)"),
    ("gemm_bound_s", "GEMM bound (s)"),
    ("accumulate_over_bound", "accumulate / bound"),
    ("fit_over_bound", "fit / bound"),
    ("refine_solve_s", "refine + solve (s)"),
    ("gemm_gflops", "GEMM GFLOP/s"),
    ("peak_rss_gib", "peak RSS (GiB)"),
    ("dataset", "data"),
]
ATOM_COLUMNS = [
    ("n_atoms", "atoms"),
    ("rows_per_structure", "rows 1+3N"),
    ("permuted_copies", "copies"),
    ("K", "K"),
    ("env_neighbours", "slots (0: all)"),
] + N_COLUMNS
MEMORY_COLUMNS = [
    ("max_memory_gib", "--max-memory (GiB)"),
    ("chunk", "chunk"),
    ("estimate_gib", "estimate (GiB)"),
    ("rss_before_fit_gib", "RSS before fit (GiB)"),
    ("fit_raised_peak_gib", "fit raised peak by (GiB)"),
    ("peak_rss_gib", "process peak (GiB)"),
    ("fit_s", "fit (s)"),
    ("refused", "refused"),
]

STEP_COLUMNS = [
    ("dataset", "data"),
    ("n_atoms", "atoms"),
    ("permuted_copies", "copies"),
    ("M", "M"),
    ("batch", "batch"),
    ("plan_gib", "XLA plan (GiB)"),
    ("planned_with_margin_gib", "with margin (GiB)"),
    ("steps_raised_peak_gib", "steps raised peak by (GiB)"),
    ("rss_before_steps_gib", "RSS before steps (GiB)"),
    ("plan_and_compile_s", "plan + compile (s)"),
    ("three_steps_s", "3 steps (s)"),
]


def section(title: str, rows: list[dict], columns) -> list[str]:
    if not rows:
        return []
    lines = [f"## {title}", "", common.md_table(rows, columns), ""]
    failed = [f"- {r.get('dataset', '?')}: {r['error'][-300:]}" for r in rows if "error" in r]
    recompiled = [
        f"- {r['dataset']}: {r['compilations_in_epoch_2']} in epoch 2, "
        f"{r['compiled_in_warm_accumulate']} in the warm accumulate"
        for r in rows
        if r.get("compilations_in_epoch_2") or r.get("compiled_in_warm_accumulate")
    ]
    if failed:
        lines += ["Failed runs:", *failed, ""]
    if recompiled:
        lines += ["Compiled during a timed part (the times above include it):", *recompiled, ""]
    return lines


def markdown(results: dict, info: dict, quick: bool, options: dict) -> str:
    parts = ["# forcegp scaling benchmark", "", common.machine_markdown(info), ""]
    if options:
        parts += [f"Model options (--config): {options}", ""]
    if quick:
        parts += ["**--quick: tiny model (smoke test), numbers are not meaningful.**", ""]
    parts += section(
        "Cost against the number of structures (aspirin, 21 atoms)", results["n"], N_COLUMNS
    )
    parts += section("Cost against molecule size", results["atoms"], ATOM_COLUMNS)
    parts += section(
        "Memory: posterior.fit with choose_chunk(--max-memory), aspirin",
        results["memory"],
        MEMORY_COLUMNS,
    )
    parts += section(
        "Memory: one training step, planned (train.step_plan_bytes, step_memory_bytes) and measured",
        results["step"],
        STEP_COLUMNS,
    )
    parts += [
        "epoch: the 2nd epoch of train_model. fit in train_model: accumulation with its "
        "compilation + exact-likelihood refinement + solve. accumulate, warm: the same streamed "
        "pass again (O(n); blank with --no-warm-pass); GEMM bound: n (1+3N) K^2 at the float64 "
        "X^T X rate measured in the same process. fit / bound: the whole fit in train_model "
        "over that bound (an upper bound on accumulate / bound). refine + solve: the "
        "n-independent rest of the fit (per-block exact-evidence refinement in LAPACK, K x K "
        "solve; with --no-warm-pass on one chunk's statistics). Peak RSS: whole subprocess "
        "(os.wait4). Step memory: the DSoftKI model train_model trains (default float32 rows), "
        "the XLA plan is the buffer assignment of the compiled step (arguments + outputs + "
        "temporaries); with margin: 1.2 x plan + 32 MiB, what train_model checks against "
        "--max-memory before the prefit; "
        "measured: the peak RSS over three steps above the resident set after compilation "
        "(the peak reset through /proc/self/clear_refs)."
    ]
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(p)
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument(
        "--step-molecules", nargs="+", default=None, choices=MOLECULES,
        help=f"molecules of the step section {STEP_MOLECULES}",
    )  # fmt: skip
    p.add_argument(
        "--batches", nargs="+", type=int, default=None, help=f"batch sizes of the step section {BATCHES}"
    )
    p.add_argument("--sizes", nargs="+", type=int, default=None, help=f"aspirin n {SIZES}")
    p.add_argument(
        "--molecules", nargs="+", default=None, choices=[*MOLECULES, *CLUSTERS],
        help=f"the atoms section's systems {MOLECULES}; larger: {tuple(CLUSTERS)}",
    )  # fmt: skip
    p.add_argument(
        "--atoms-n",
        type=int,
        default=None,
        help="n of the atoms and memory sections (1000, at most 1000)",
    )
    p.add_argument(
        "--max-memory", nargs="+", type=float, default=None, help=f"GiB, 0 for none {MAX_MEMORY_GIB}"
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds per subprocess")
    p.add_argument(
        "--no-warm-pass",
        action="store_true",
        help="skip the second accumulation (halves the time of large n; fit / bound then "
        "stands for accumulate / bound, with compilation, refinement and solve included)",
    )
    p.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="model options instead of the defaults, e.g. explicit=none (the DSoftKI block alone)",
    )
    p.add_argument("--name", default="scaling", help="results file name (scaling)")
    args = p.parse_args(argv)
    args.config = common.config_options(args.config)
    if args.worker:
        spec = json.loads(args.worker)
        common.emit_result(WORKERS[spec["kind"]](spec))
        return 0
    if args.quick:  # one row of n and one of memory; the atoms rows use the same worker as n
        common.use_quick_compile_cache()
        args.sections = [s for s in args.sections if s != "atoms"]
    args.sizes = args.sizes or ([64] if args.quick else list(SIZES))
    args.molecules = args.molecules or list(MOLECULES)
    args.atoms_n = args.atoms_n or (64 if args.quick else 1000)
    args.max_memory = args.max_memory or ([0.01] if args.quick else list(MAX_MEMORY_GIB))
    args.step_molecules = args.step_molecules or (["ethanol"] if args.quick else list(STEP_MOLECULES))
    args.batches = args.batches or ([8] if args.quick else list(BATCHES))
    info = common.machine_info()
    started = time.perf_counter()
    results = run_sections(args)
    info["load_average_end"] = common.load_average()
    total = time.perf_counter() - started
    payload = {"benchmark": "scaling", "argv": sys.argv[1:] if argv is None else list(argv)}
    payload |= {"quick": args.quick, "machine": info, "total_seconds": total, "results": results}
    md = markdown(results, info, args.quick, args.config)
    md += f"\n\nTotal {total:.0f} s; load average at the end {info['load_average_end']}.\n"
    print(md)
    common.write_results(args.name, payload, md, common.results_dir(args))
    return 1 if any("error" in r for rows in results.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
