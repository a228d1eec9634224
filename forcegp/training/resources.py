"""All memory and device planning, before any large allocation (docs/method.md §8).

The posterior fit, the explicit prefit and predictions with stds stream chunks of structures
whose size is chosen from an estimate of their memory (structure_bytes, fit_memory_bytes); the
training step's memory comes from XLA's own plan of the compiled step (step_plan_bytes) with a
measured margin. Whatever cannot fit is refused with a ResourceError that names the setting to
change, before the expensive work starts.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..errors import ResourceError
from ..gp.params import ForceGP
from ..gp.statistics import AXIS, device_mesh
from .loop import batch_size, copies_per_step, put_batch, step_inputs, step_key, train_step
from .settings import TrainSettings

BYTES = 8  # float64


#: Share of the machine's available memory a chunk may plan for when no max_memory is given.
AVAILABLE_SHARE = 0.7


def structure_bytes(config, n_copies: int = 1) -> int:
    """Bytes one structure's observation rows take while they are computed: the rows themselves
    (1 + D, K) with two temporaries of their size, and the feature map's intermediates per
    permuted copy. On inverse distances with a deep kernel (features.PairJacobian) those are the
    tangent rows (D, width) through the MLP's layers, the pair gradients and N x N pair
    matrices, and for the explicit block the PCA tangents (D, q) and the scattered pair terms;
    otherwise the dense descriptor Jacobian (P, D), the pair powers' product-rule terms of that
    shape and (n_local, D) for the local products. Atomic environments: atom_bytes. Each
    counted as if materialised (XLA fuses some): an upper estimate."""
    d, k, p, n = config.dim, config.n_basis, config.descriptor_size, config.n_atoms
    if config.descriptor == "atomic":
        return BYTES * (3 * (1 + d) * k) + n * atom_bytes(config)
    pairs = config.descriptor == "inverse-distance"
    n_local = config.n_local if config.explicit == "polynomial" else 0
    if pairs and config.n_features > 0:
        per_copy = d * 4 * max(config.width, 128) + 9 * n * n
    else:
        per_copy = d * 4 * p
    if config.explicit != "none":
        per_copy += d * 2 * config.explicit_q
        per_copy += 8 * (p + 2 * n_local) if pairs else d * 2 * n_local
    return BYTES * (3 * (1 + d) * k + n_copies * per_copy)


def atom_bytes(config) -> int:
    """One atom's share of an atomic structure's intermediates (features.AtomJacobian): its
    3(k+1) local tangent rows through the MLP and against the M interpolation weights, its
    local blocks (k+1, 3, P) and their per-moved-atom gathers, its neighbour terms and
    dq/d(density), and with env_body4 its body-ordered invariants' blocks (k+1, 3, F), their
    scatter and the forward-mode tangents' largest coupling tensors."""
    slots = (
        config.n_atoms if config.env_neighbours <= 0 else min(config.env_neighbours + 1, config.n_atoms)
    )
    local = 3 * slots
    lm = (config.env_lmax + 1) ** 2
    terms = local * (4 * max(config.width, 128) + config.n_inducing + 4 * config.descriptor_size)
    if config.explicit != "none":
        terms += 3 * config.explicit_q * (config.explicit_q + local)
    density = (
        slots * config.env_radial * lm * 4
        + config.env_dim * config.n_species * config.env_radial * lm * 2
    )
    if config.body_block:
        f, n4 = config.n_body, config.env_body4
        n3 = config.body3_channels
        density += local * (3 * f + config.n_species * config.env_radial * lm + 2 * n4**3 + n3 * n3)
        density += config.n_species * 3 * f
    return BYTES * (terms + density)


def fit_memory_bytes(config, chunk: int, n_devices: int = 1, n_copies: int = 1) -> int:
    """Peak bytes of the streamed fit: a chunk's rows with their intermediates, and the K x K
    blocks (per device one and a chunk's addition, statistics.gram's blocks; the sum and two for
    the solve)."""
    k = config.n_basis
    return chunk * structure_bytes(config, n_copies) + BYTES * (2 * n_devices + 3) * k * k


def misfit_pass_bytes(config, chunk: int, n_devices: int, n_gammas: int, n_copies: int = 1) -> int:
    """Peak bytes of a pass of the input-dependent noise (gp.misfit.systems) for n_gammas
    candidates: a chunk's rows, and per candidate a K x K block per device, as many for a
    chunk's additions, as many for statistics.gram's blocks, and their sum; two for a solve."""
    k = config.n_basis
    blocks = (3 * n_devices + 1) * n_gammas + 2
    return chunk * structure_bytes(config, n_copies) + BYTES * blocks * k * k


def misfit_pass_plan(
    model: ForceGP, chunk: int, n_devices: int, n_gammas: int, max_memory: float | None
) -> tuple[int, int]:
    """(candidates per pass, structures per chunk) of the input-dependent noise within
    max_memory (or the memory available, as memory_limit); (0, chunk) where not even one
    candidate fits. Each pass computes every structure's rows again, so the plan takes the
    fewest passes, then the largest chunk: the fit's ``chunk`` or a smaller one (halved, a
    multiple of n_devices), whose rows leave room for a candidate's K x K blocks."""
    limit, _ = memory_limit(max_memory, n_devices)
    if limit is None:
        return n_gammas, chunk

    def most(c: int) -> int:
        def need(g: int) -> int:
            return misfit_pass_bytes(model.config, c, n_devices, g, model.n_copies)

        return max((g for g in range(1, n_gammas + 1) if need(g) <= limit), default=0)

    plans = [(g, c) for c in halved_chunks(chunk, n_devices) if (g := most(c))]
    if not plans:
        return 0, chunk
    return min(plans, key=lambda plan: (-(-n_gammas // plan[0]), -plan[1]))


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def device_memory_bytes(devices) -> int | None:
    """Free memory of the least free of ``devices`` by JAX's allocator statistics (bytes_limit -
    bytes_in_use: XLA's GPU allocator reserves most of the GPU at start-up, so the GPU's own
    figures would say little); None for CPU devices, which share the host's memory, or where a
    device gives no statistics."""
    free = []
    for device in devices:
        if device.platform == "cpu":
            return None
        try:
            stats = device.memory_stats()
        except Exception:  # a backend or plugin without allocator statistics
            return None
        if not stats or "bytes_limit" not in stats:
            return None
        free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    return min(free) if free else None


def memory_limit(max_memory: float | None, n_devices: int = 1) -> tuple[float | None, str]:
    """Bytes a planned computation on the first ``n_devices`` devices may use, and how to name
    that limit in an error: max_memory if given; else on accelerators
    AVAILABLE_SHARE of their free memory (the least free one's times n_devices: each holds its
    share of the chunk or batch), on CPU of the memory the machine has available now; (None,
    ...) where neither is known (no check)."""
    if max_memory is not None:
        return float(max_memory), "`max_memory`"
    devices = jax.devices()[:n_devices]
    free = device_memory_bytes(devices)
    if free is not None:
        what = f"the free memory of {len(devices)} {devices[0].platform.upper()} device(s)"
        return AVAILABLE_SHARE * len(devices) * free, what
    available = available_memory_bytes()
    if available is None:
        return None, "the memory this machine has available"
    return AVAILABLE_SHARE * available, "the memory this machine has available"


def halved_chunks(chunk: int, n_devices: int):
    """``chunk``, then halved (rounded down to a multiple of n_devices) down to n_devices: the
    chunk sizes a memory plan tries, largest first."""
    yield chunk
    while chunk > n_devices:
        chunk = max(n_devices, (chunk // 2) - (chunk // 2) % n_devices)
        yield chunk


def choose_chunk(
    config, max_memory: float | None, n_devices: int = 1, default: int = 64, *, n_copies: int = 1
) -> int:
    """Largest chunk of structures (a multiple of n_devices, at most ``default``) whose rows and
    K x K blocks fit in max_memory, or without it in AVAILABLE_SHARE of the memory available
    now (memory_limit: the devices' own on accelerators, the machine's on CPU). Raises
    ResourceError, before anything is allocated, where even the smallest chunk does not fit."""
    largest = max(n_devices, default - default % n_devices)
    limit, what = memory_limit(max_memory, n_devices)
    if limit is None:
        return largest
    for chunk in halved_chunks(largest, n_devices):
        if fit_memory_bytes(config, chunk, n_devices, n_copies) <= limit:
            break
    need = fit_memory_bytes(config, chunk, n_devices, n_copies)
    if need > limit:
        sizes = config.basis_parts()
        parts = " + ".join(f"{k} (`{name}`)" for name, k in sizes)
        names = ", ".join(f"`{name}`" for name, _ in sizes)
        raise ResourceError(
            f"the posterior fit needs about {need / 2**30:.2f} GiB even in chunks of {chunk} "
            f"structures (K={config.n_basis} basis functions, {n_copies} permuted copies of "
            f"{config.descriptor_size} descriptor entries), more than {what} "
            f"({limit / 2**30:.2f} GiB); K = {parts}: lower {names} or `n_permutations`, or "
            "raise `max_memory`"
        )
    return chunk


def chunk_for(
    model: ForceGP, max_memory: float | None = None, n_devices: int = 1, default: int = 64
) -> int:
    """choose_chunk for a built model: its basis and the number of permuted copies it has."""
    return choose_chunk(model.config, max_memory, n_devices, default, n_copies=model.n_copies)


def make_mesh(n_devices: int | None = None) -> Mesh:
    """The mesh of the first ``n_devices`` devices (all of them for None); ResourceError where
    JAX sees fewer."""
    devices = jax.devices()
    if n_devices is not None:
        if n_devices > len(devices):
            raise ResourceError(
                f"`devices` {n_devices} asked for, but JAX sees only {len(devices)} "
                f"({devices[0].platform}); lower `devices`"
            )
        devices = devices[:n_devices]
    return device_mesh(devices)


#: What the steps of run() took beyond XLA's plan of them (step_plan_bytes), measured with
#: `python benchmarks/scaling.py --sections step` (9-56 atoms, batches 32 and 128): the peak
#: resident set rose by 1.04-1.36x the plan, 15-40 MB more (the allocator and XLA's runtime).
#: step_memory_bytes plans for this much over it.
STEP_MEMORY_FACTOR = 1.2
STEP_MEMORY_EXTRA = 32 * 2**20


def step_memory_bytes(
    model: ForceGP, x: np.ndarray, y: np.ndarray, g: np.ndarray, settings: TrainSettings, *,
    mesh: Mesh | None = None,
) -> int | None:  # fmt: skip
    """Bytes to plan for one training step: step_plan_bytes with the measured margin
    (STEP_MEMORY_FACTOR, STEP_MEMORY_EXTRA); None where the backend gives no figures."""
    return with_step_margin(step_plan_bytes(model, x, y, g, settings, mesh=mesh))


def with_step_margin(plan: int | None) -> int | None:
    """A step's planned bytes (step_plan_bytes) with the measured margin."""
    return None if plan is None else int(STEP_MEMORY_FACTOR * plan + STEP_MEMORY_EXTRA)


def step_plan_bytes(
    model: ForceGP, x: np.ndarray, y: np.ndarray, g: np.ndarray, settings: TrainSettings, *,
    mesh: Mesh | None = None,
) -> int | None:  # fmt: skip
    """Bytes one training step on (x, y, g) needs by the compiled step itself: its arguments,
    outputs and temporaries as XLA's buffer assignment plans them, summed over the devices of
    ``mesh``. Nothing runs; the compilation is the one run() then uses (same shapes, types and
    settings), so planning costs no second compile. None where the backend gives no figures."""
    n = len(x)
    n_dev = 1 if mesh is None else mesh.devices.size
    batch = batch_size(settings, n, n_dev)
    _, hyper, opt_state, model_rest = step_inputs(model, settings, n, None)
    sharding = NamedSharding(mesh, P(AXIS)) if mesh is not None else None
    xb, yb, gb = put_batch(sharding, x[:batch], y[:batch], g[:batch])
    key = step_key(jax.random.key(0), 0, 0) if settings.train_permutations > 0 else None
    try:
        lowered = train_step.lower(hyper, opt_state, model_rest, xb, yb, gb, settings, n, key)
        stats = lowered.compile().compiled.memory_analysis()
    except (AttributeError, NotImplementedError):  # a backend without memory statistics
        return None
    if stats is None:
        return None
    per_device = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )
    return int(per_device) * n_dev


def check_step_memory(
    model: ForceGP, x, y, g, settings: TrainSettings, *, mesh=None, max_memory: float | None = None
) -> int | None:
    """ResourceError, before any training, where one training step would need more than
    max_memory (or the share of available memory the fit may plan for): the batch's feature
    rows grow with the batch, the permuted copies and the molecule, and an out-of-memory kill
    mid-training would lose the run. Returns the step's planned bytes (None: no figures)."""
    need = step_memory_bytes(model, x, y, g, settings, mesh=mesh)
    n_dev = 1 if mesh is None else mesh.devices.size
    limit, what = memory_limit(max_memory, n_dev)
    if need is None or limit is None or need <= limit:
        return need
    batch = batch_size(settings, len(x), n_dev)
    fits = int(batch * limit / need) // n_dev * n_dev
    hint = f"about {fits} would fit" if fits >= 1 else "even 1 would not fit"
    copies = copies_per_step(settings, model.n_copies)
    raise ResourceError(
        f"a training step needs about {need / 2**30:.2f} GiB ({batch} structures per step, "
        f"{copies} permuted copies, M={model.config.n_inducing} interpolation points), more than "
        f"{what} ({limit / 2**30:.2f} GiB); lower `batch_size` ({hint}), `train_permutations` "
        "or `n_inducing`, or raise `max_memory`"
    )


def room_beside_step(step_bytes: int | None, held_bytes: int, max_memory: float | None,
                     n_devices: int = 1) -> bool:  # fmt: skip
    """Whether ``held_bytes`` kept through training still leave room for a training step
    (step_bytes, check_step_memory's plan) within max_memory or the memory available now."""
    limit, _ = memory_limit(max_memory, n_devices)
    return limit is None or (step_bytes or 0) + held_bytes <= limit


def memory_bytes(model: ForceGP, n_candidates: int) -> int:
    """Bytes held by the candidates' whitened rows: n_candidates (1+D) K float64 numbers."""
    return BYTES * n_candidates * (1 + model.config.dim) * model.config.n_basis
