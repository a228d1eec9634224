"""Model and checkpoint files: one JSON header line, then equinox-serialised leaves. Never pickle.

Layout of a file::

    {"format": "forcegp-model", "format_version": 1, ...}\\n     one line of UTF-8 JSON, <= 1 MiB
    <payload>                                                    eqx.tree_serialise_leaves bytes

The header says everything needed to build the skeleton the payload is loaded into (config,
atomic numbers, number of symmetry permutations), plus provenance (training data fingerprint,
settings, history, metrics, library versions) and the payload's size and SHA-256. Loading checks
every header field before allocating anything, so a corrupt or hostile file cannot make forcegp
allocate absurd arrays, and nothing in the file is ever executed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax
from ase import Atoms

from .data import atomic_write
from .descriptors import DESCRIPTORS
from .errors import ModelFileError, NumericalError
from .model import EXPLICIT_BLOCKS, Config, ForceGP, Hyper, template
from .train import TrainState, all_finite

MODEL_FORMAT = "forcegp-model"
CHECKPOINT_FORMAT = "forcegp-checkpoint"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
UNITS = {"energy": "eV", "length": "Ang", "forces": "eV/Ang"}

# Sanity limits on header values: far above any real model, low enough to refuse absurd shapes.
MAX_ATOMS = 1000
MAX_INDUCING = 100_000
MAX_FEATURES = 10_000
MAX_WIDTH = 100_000
MAX_DEPTH = 64
MAX_EXPLICIT_DIM = 2000
MAX_PERMUTATIONS = 100_000
MAX_LOCAL = 200_000
MAX_BYTES = 64 * 2**30  # largest model the shapes may describe


def forcegp_version() -> str:
    try:
        return importlib_metadata.version("forcegp")
    except importlib_metadata.PackageNotFoundError:
        return "0.1.0"


def library_versions() -> dict[str, str]:
    import ase

    return {
        "forcegp": forcegp_version(),
        "jax": jax.__version__,
        "equinox": importlib_metadata.version("equinox"),
        "optax": optax.__version__,
        "ase": ase.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def formula(numbers) -> str:
    """'C2H6O (atoms C C O H H H H H H)': the chemical formula and the atom order."""
    atoms = Atoms(numbers=[int(z) for z in numbers])
    return f"{atoms.get_chemical_formula()} (atoms {' '.join(atoms.get_chemical_symbols())})"


def check_numbers(model_numbers, numbers, what: str, data: str = "the data") -> None:
    """Raise ModelFileError unless ``numbers`` are the model's atoms in the model's order."""
    if numbers is None:
        return
    ours = np.asarray(model_numbers, dtype=np.int64)
    theirs = np.asarray(numbers, dtype=np.int64).reshape(-1)
    if ours.shape == theirs.shape and np.array_equal(ours, theirs):
        return
    hint = ""
    if ours.shape == theirs.shape and np.array_equal(np.sort(ours), np.sort(theirs)):
        hint = "; same atoms in another order: reorder the data to the model's order"
    raise ModelFileError(f"{what} was trained for {formula(ours)}, {data} has {formula(theirs)}{hint}")


def json_safe(value):
    """Plain-JSON version of metadata: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray) or isinstance(value, jax.Array):
        return json_safe(np.asarray(value).tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    return str(value)


# ----------------------------------------------------------------------------- writing


def _payload(tree) -> bytes:
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    return buffer.getvalue()


def _write(path, header: dict, payload: bytes) -> None:
    header = {
        **header,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_bytes": len(payload),
    }
    line = json.dumps(json_safe(header), allow_nan=False, separators=(",", ":")).encode("utf-8")
    if len(line) > MAX_HEADER_BYTES:
        raise ModelFileError(
            f"the header of {path} would be {len(line)} bytes, more than {MAX_HEADER_BYTES}; "
            "store less metadata (e.g. a shorter history)"
        )
    path = Path(path)
    if not path.parent.is_dir():
        raise ModelFileError(f"cannot write {path}: directory {path.parent} does not exist")
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as handle:
            handle.write(line + b"\n")
            handle.write(payload)
    except OSError as err:
        raise ModelFileError(f"cannot write {path}: {err.strerror or err}") from None


def _base_header(fmt: str, model: ForceGP) -> dict:
    return {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "forcegp_version": forcegp_version(),
        "config": model.config.to_dict(),
        "numbers": [int(z) for z in model.numbers],
        "n_permutations": model.n_copies,
        "units": dict(UNITS),
        "dtype": "float64",
    }


def _check_dtype(model: ForceGP, path) -> None:
    for leaf in jax.tree_util.tree_leaves(model):
        if eqx.is_inexact_array(leaf) and leaf.dtype != np.float64:
            raise NumericalError(
                f"refusing to write {path}: the model holds {leaf.dtype} arrays, forcegp model "
                'files are float64 (call jax.config.update("jax_enable_x64", True) first)'
            )


def save_model(path, model: ForceGP, *, metadata: dict) -> None:
    """Write ``model`` to ``path`` atomically (a reader never sees a partial file).

    ``metadata``: provenance stored in the header, usually ``{"training": {...}, "history":
    [...], "metrics": {...}}`` as returned by :func:`forcegp.workflow.train_model`. Keys that
    the format itself uses (format, config, numbers, ...) cannot be overridden.
    Raises NumericalError for a model with non-finite parameters (nothing is written).
    """
    if not all_finite(model):
        raise NumericalError(
            f"refusing to write {path}: the model has non-finite (NaN or inf) parameters"
        )
    _check_dtype(model, path)
    header = _base_header(MODEL_FORMAT, model)
    header["has_posterior"] = model.posterior is not None
    extra = {"training": {}, "history": [], "metrics": {}, **(metadata or {})}
    header.update({k: v for k, v in extra.items() if k not in header})
    header["versions"] = library_versions()
    _write(path, header, _payload(model))


# ----------------------------------------------------------------------------- reading


def _fail(path, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: {problem}")


def _read(path, expected_format: str) -> tuple[dict, bytes]:
    """Header (validated up to the format) and payload (size and checksum verified)."""
    path = Path(path)
    kind = "model" if expected_format == MODEL_FORMAT else "checkpoint"
    if not path.exists():
        raise ModelFileError(f"{kind} file {path} not found")
    if path.is_dir():
        raise ModelFileError(f"{kind} file {path} is a directory")
    try:
        with open(path, "rb") as handle:
            line = handle.readline(MAX_HEADER_BYTES + 1)
            if not line.endswith(b"\n"):
                if len(line) > MAX_HEADER_BYTES:
                    raise _fail(path, f"not a forcegp {kind} file (no header line)")
                raise _fail(path, f"not a forcegp {kind} file, or truncated (no header line)")
            try:
                header = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise _fail(path, f"not a forcegp {kind} file (unreadable header)") from None
            if not isinstance(header, dict):
                raise _fail(path, f"not a forcegp {kind} file (header is not a JSON object)")
            _check_format(path, header, expected_format)
            size = header.get("payload_bytes")
            digest = header.get("payload_sha256")
            if not is_int(size) or size < 0 or not isinstance(digest, str):
                raise _fail(path, "truncated or corrupted (bad payload_bytes/payload_sha256)")
            remaining = os.fstat(handle.fileno()).st_size - len(line)
            if remaining != size:
                raise _fail(
                    path, f"truncated or corrupted (payload {remaining} bytes, header says {size})"
                )
            payload = handle.read(size)
    except OSError as err:
        raise ModelFileError(f"cannot read {kind} file {path}: {err.strerror or err}") from None
    if hashlib.sha256(payload).hexdigest() != digest.lower():
        raise _fail(path, "truncated or corrupted (payload checksum mismatch)")
    return header, payload


def read_header(path, expected_format: str = MODEL_FORMAT) -> dict:
    """The header of a model (or checkpoint) file, its format checked, the payload verified."""
    return _read(path, expected_format)[0]


def _check_format(path, header: dict, expected: str) -> None:
    fmt = header.get("format")
    if fmt != expected:
        if fmt in (MODEL_FORMAT, CHECKPOINT_FORMAT):
            other = "a training checkpoint" if fmt == CHECKPOINT_FORMAT else "a model file"
            raise _fail(path, f"is {other}, not a {expected.removeprefix('forcegp-')} file")
        raise _fail(path, f"not a forcegp file (format {fmt!r}, expected {expected!r})")
    version = header.get("format_version")
    if not is_int(version) or version < 1:
        raise _fail(path, "truncated or corrupted (bad format_version)")
    if version > FORMAT_VERSION:
        made_by = header.get("forcegp_version", "?")
        raise _fail(
            path,
            f"made by a newer forcegp ({made_by}, file format version {version}; this forcegp "
            f"{forcegp_version()} reads version {FORMAT_VERSION}); upgrade forcegp",
        )
    if header.get("dtype") != "float64":
        raise _fail(path, f"unsupported dtype {header.get('dtype')!r} (forcegp files are float64)")
    if not jax.config.jax_enable_x64:
        raise _fail(
            path,
            "the model is float64 but JAX runs in float32; call "
            'jax.config.update("jax_enable_x64", True) before using forcegp, or use the '
            "forcegp command line, which does",
        )


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


INT_FIELDS = {
    "n_atoms": (2, MAX_ATOMS),
    "n_inducing": (1, MAX_INDUCING),
    "n_features": (0, MAX_FEATURES),
    "width": (1, MAX_WIDTH),
    "depth": (0, MAX_DEPTH),
    "explicit_dim": (0, MAX_EXPLICIT_DIM),
    "n_permutations": (1, MAX_PERMUTATIONS),
    "explicit_cubic": (0, MAX_EXPLICIT_DIM),
    "pair_powers": (0, 8),
    "n_local": (0, MAX_LOCAL),
}
CHOICE_FIELDS = {"descriptor": DESCRIPTORS, "explicit": EXPLICIT_BLOCKS}


def check_config(path, raw) -> Config:
    """A Config from a header's "config", every field checked against sane limits."""
    if not isinstance(raw, dict):
        raise _fail(path, "truncated or corrupted (config is not an object)")
    names = {f.name for f in dataclasses.fields(Config)}
    unknown, missing = set(raw) - names, names - set(raw)
    if unknown or missing:
        raise _fail(
            path,
            f"config fields {sorted(unknown) or sorted(missing)} do not match this forcegp "
            f"{forcegp_version()}; the file was made by another forcegp version",
        )
    for name, (low, high) in INT_FIELDS.items():
        value = raw[name]
        if not is_int(value) or not low <= value <= high:
            raise _fail(path, f"config {name}={value!r} is not an integer in [{low}, {high}]")
    for name, choices in CHOICE_FIELDS.items():
        if raw[name] not in choices:
            raise _fail(path, f"config {name}={raw[name]!r} is not one of {list(choices)}")
    cutoff = raw["local_cutoff"]
    if not isinstance(cutoff, (int, float)) or isinstance(cutoff, bool) or not 0 <= cutoff < 1e3:
        raise _fail(path, f"config local_cutoff={cutoff!r} is not a number in [0, 1000)")
    jitter = raw["jitter"]
    if not isinstance(jitter, (int, float)) or isinstance(jitter, bool) or not 0 <= jitter < 1:
        raise _fail(path, f"config jitter={jitter!r} is not a number in [0, 1)")
    config = Config(**raw)
    if model_bytes(config) > MAX_BYTES:
        raise _fail(
            path,
            f"config describes a model of {model_bytes(config) / 2**30:.0f} GiB "
            f"(K={config.n_basis} basis functions); refusing to allocate it",
        )
    return config


def model_bytes(config: Config) -> int:
    """Bytes of the model's largest arrays (float64), from the config alone."""
    k, m, p = config.n_basis, config.n_inducing, config.feature_size
    pd, q = config.descriptor_size, config.explicit_q
    mlp = (pd + config.width * max(config.depth - 1, 0) + config.feature_size) * config.width
    if config.n_features == 0:
        mlp = 0
    return 8 * (k * k + k + 2 * m * p + pd * (q + 2) + mlp)


def _check_numbers_field(path, header: dict, config: Config) -> tuple[int, ...]:
    numbers = header.get("numbers")
    if (
        not isinstance(numbers, list)
        or len(numbers) != config.n_atoms
        or not all(is_int(z) and 1 <= z <= 118 for z in numbers)
    ):
        raise _fail(path, "truncated or corrupted (bad atomic numbers)")
    return tuple(numbers)


def _skeleton(path, header: dict, *, with_posterior: bool) -> ForceGP:
    """The ShapeDtypeStruct tree the payload is loaded into, from a validated header."""
    config = check_config(path, header.get("config"))
    numbers = _check_numbers_field(path, header, config)
    n_perm = header.get("n_permutations")
    if not is_int(n_perm) or not 1 <= n_perm <= config.n_permutations:
        raise _fail(path, "truncated or corrupted (bad n_permutations)")
    skeleton = eqx.filter_eval_shape(lambda: template(config, numbers, with_posterior=with_posterior))
    # The symmetry search may find fewer permutations than the configured maximum.
    perms = jax.ShapeDtypeStruct((n_perm, config.n_atoms), skeleton.stats.permutations.dtype)
    return eqx.tree_at(lambda m: m.stats.permutations, skeleton, perms)


def _deserialise(path, payload: bytes, like):
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as err:  # any failure here means the payload does not fit its header
        raise _fail(path, f"truncated or corrupted ({type(err).__name__}: {err})") from None


def load_model(path, *, numbers=None) -> tuple[ForceGP, dict]:
    """Load a model file written by :func:`save_model`. Returns (model, header).

    ``numbers``: atomic numbers of the data the model will be used on; a model of another
    molecule (or atom order) is refused. Raises ModelFileError for anything wrong with the file.
    JAX must run in float64 (``jax.config.update("jax_enable_x64", True)``).
    """
    header, payload = _read(path, MODEL_FORMAT)
    has_posterior = header.get("has_posterior", True)
    if not isinstance(has_posterior, bool):
        raise _fail(path, "truncated or corrupted (bad has_posterior)")
    like = _skeleton(path, header, with_posterior=has_posterior)
    check_numbers(like.numbers, numbers, f"model {path}")
    model = _deserialise(path, payload, like)
    if not all_finite(model):
        raise _fail(path, "corrupted: the model has non-finite parameters")
    return model, header


# ----------------------------------------------------------------------------- checkpoints


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
    header = _base_header(CHECKPOINT_FORMAT, model)
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
    _write(path, header, _payload((model.stats, train_state.hyper, train_state.opt_state)))


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
    header, payload = _read(path, CHECKPOINT_FORMAT)
    config = check_config(path, header.get("config"))
    numbers = _check_numbers_field(path, header, config)
    refuse = ModelFileError(
        f"checkpoint {path} was written for other data/settings; remove it or drop --resume"
    )
    if config != template_model.config or numbers != tuple(template_model.numbers):
        raise refuse
    if fingerprint is not None and header.get("fingerprint") != fingerprint:
        raise refuse
    if settings is not None and header.get("settings") != json_safe(settings):
        raise refuse
    n_perm = header.get("n_permutations")
    if n_perm != template_model.n_copies:
        raise refuse
    epoch, history = header.get("epoch"), header.get("history")
    if not is_int(epoch) or epoch < 0 or not isinstance(history, list):
        raise _fail(path, "truncated or corrupted (bad epoch or history)")
    key = _key(path, header)
    hyper: Hyper = template_model.hyper
    like = (template_model.stats, hyper, optimizer.init(eqx.filter(hyper, eqx.is_array)))
    stats, hyper, opt_state = _deserialise(path, payload, like)
    if not all_finite(hyper):
        raise _fail(path, "corrupted: non-finite hyperparameters")
    model = eqx.tree_at(lambda m: (m.stats, m.hyper), template_model, (stats, hyper))
    state = TrainState(hyper=hyper, opt_state=opt_state, epoch=epoch, history=history)
    return Checkpoint(model=model, state=state, key=key, header=header)


def _key(path, header: dict) -> jax.Array:
    impl, data = header.get("key_impl"), header.get("key_data")
    if not isinstance(impl, str) or not isinstance(data, list) or len(data) > 64:
        raise _fail(path, "truncated or corrupted (bad PRNG key)")
    if not all(is_int(v) and 0 <= v < 2**32 for v in data):
        raise _fail(path, "truncated or corrupted (bad PRNG key)")
    try:
        return jax.random.wrap_key_data(np.asarray(data, dtype=np.uint32), impl=impl)
    except Exception:
        raise _fail(path, f"unsupported PRNG key type {impl!r}") from None
