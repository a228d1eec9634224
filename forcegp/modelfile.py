"""Model files (and the format training checkpoints share): one JSON header line, then
equinox-serialised leaves. Never pickle.

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

import hashlib
import io
import json
import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from .data import check_numbers
from .errors import ModelFileError, NumericalError
from .files import atomic_write, json_safe
from .gp.config import FIELDS, Config, ConfigError, is_int, validate
from .gp.params import ForceGP, all_finite, template

MODEL_FORMAT = "forcegp-model"
CHECKPOINT_FORMAT = "forcegp-checkpoint"
FORMAT_VERSION = 3
#: Version 1 files have no pair-power prior scale (Hyper.raw_scale_pair): an "atomic" model's
#: pair powers shared scale_linear then, so loading gives them that value.
PAIR_SCALE_VERSION = 2
#: Config fields newer than some files, with the value that reproduces those files' models:
#: an "atomic" model took the products of all env_dim environment components and had no
#: body-ordered invariants, and its pair powers were of the unbounded standardised distances;
#: a body-ordered model's columns were scaled one by one.
ADDED_FIELDS = {
    "pair_bound": lambda raw: 0.0,
    "env_products": lambda raw: raw.get("env_dim"),
    "env_body4": lambda raw: 0,
    "env_body4_lmax": lambda raw: 3,
    "env_body3": lambda raw: 0,
    "body_scaling": lambda raw: "column",
}
MAX_HEADER_BYTES = 1 << 20
#: Most columns a model file's input-dependent noise may have (gp.misfit.COLUMNS is the default).
MAX_MISFIT_COLUMNS = 4096
UNITS = {"energy": "eV", "length": "Ang", "forces": "eV/Ang"}


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
        "optax": importlib_metadata.version("optax"),
        "ase": ase.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------- writing


def payload_of(tree) -> bytes:
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    return buffer.getvalue()


def write_parts(path, header: dict, payload: bytes) -> None:
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


def base_header(fmt: str, model: ForceGP) -> dict:
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


def misfit_columns(model: ForceGP) -> int:
    """Columns of the posterior's input-dependent noise (gp.misfit); 0 without one."""
    post = model.posterior
    return 0 if post is None or post.misfit is None else int(post.misfit.shape[1])


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
    [...], "metrics": {...}}`` as returned by :func:`forcegp.training.pipeline.train_model`. Keys that
    the format itself uses (format, config, numbers, ...) cannot be overridden.
    Raises NumericalError for a model with non-finite parameters (nothing is written).
    """
    if not all_finite(model):
        raise NumericalError(
            f"refusing to write {path}: the model has non-finite (NaN or inf) parameters"
        )
    _check_dtype(model, path)
    header = base_header(MODEL_FORMAT, model)
    header["has_posterior"] = model.posterior is not None
    header["misfit_columns"] = misfit_columns(model)
    extra = {"training": {}, "history": [], "metrics": {}, **(metadata or {})}
    header.update({k: v for k, v in extra.items() if k not in header})
    header["versions"] = library_versions()
    write_parts(path, header, payload_of(model))


# ----------------------------------------------------------------------------- reading


def file_error(path, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: {problem}")


def read_parts(path, expected_format: str) -> tuple[dict, bytes]:
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
                    raise file_error(path, f"not a forcegp {kind} file (no header line)")
                raise file_error(path, f"not a forcegp {kind} file, or truncated (no header line)")
            try:
                header = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise file_error(path, f"not a forcegp {kind} file (unreadable header)") from None
            if not isinstance(header, dict):
                raise file_error(path, f"not a forcegp {kind} file (header is not a JSON object)")
            _check_format(path, header, expected_format)
            size = header.get("payload_bytes")
            digest = header.get("payload_sha256")
            if not is_int(size) or size < 0 or not isinstance(digest, str):
                raise file_error(path, "truncated or corrupted (bad payload_bytes/payload_sha256)")
            remaining = os.fstat(handle.fileno()).st_size - len(line)
            if remaining != size:
                raise file_error(
                    path, f"truncated or corrupted (payload {remaining} bytes, header says {size})"
                )
            payload = handle.read(size)
    except OSError as err:
        raise ModelFileError(f"cannot read {kind} file {path}: {err.strerror or err}") from None
    if hashlib.sha256(payload).hexdigest() != digest.lower():
        raise file_error(path, "truncated or corrupted (payload checksum mismatch)")
    return header, payload


def read_header(path, expected_format: str = MODEL_FORMAT) -> dict:
    """The header of a model (or checkpoint) file, its format checked, the payload verified."""
    return read_parts(path, expected_format)[0]


def _check_format(path, header: dict, expected: str) -> None:
    fmt = header.get("format")
    if fmt != expected:
        if fmt in (MODEL_FORMAT, CHECKPOINT_FORMAT):
            other = "a training checkpoint" if fmt == CHECKPOINT_FORMAT else "a model file"
            raise file_error(path, f"is {other}, not a {expected.removeprefix('forcegp-')} file")
        raise file_error(path, f"not a forcegp file (format {fmt!r}, expected {expected!r})")
    version = header.get("format_version")
    if not is_int(version) or version < 1:
        raise file_error(path, "truncated or corrupted (bad format_version)")
    if version > FORMAT_VERSION:
        made_by = header.get("forcegp_version", "?")
        raise file_error(
            path,
            f"made by a newer forcegp ({made_by}, file format version {version}; this forcegp "
            f"{forcegp_version()} reads version {FORMAT_VERSION}); upgrade forcegp",
        )
    if header.get("dtype") != "float64":
        raise file_error(path, f"unsupported dtype {header.get('dtype')!r} (forcegp files are float64)")
    if not jax.config.jax_enable_x64:
        raise file_error(
            path,
            "the model is float64 but JAX runs in float32; call "
            'jax.config.update("jax_enable_x64", True) before using forcegp, or use the '
            "forcegp command line, which does",
        )


def check_config(path, raw) -> Config:
    """A Config from a header's "config", every field checked by the one validator
    (gp.config.validate) that user options pass too."""
    if not isinstance(raw, dict):
        raise file_error(path, "truncated or corrupted (config is not an object)")
    raw = {**{k: fill(raw) for k, fill in ADDED_FIELDS.items() if k not in raw}, **raw}
    unknown, missing = set(raw) - set(FIELDS), set(FIELDS) - set(raw)
    if unknown or missing:
        raise file_error(
            path,
            f"config fields {sorted(unknown) or sorted(missing)} do not match this forcegp "
            f"{forcegp_version()}; the file was made by another forcegp version",
        )
    try:
        return validate(raw, resolved=True)
    except ConfigError as err:  # the file's fields, not the command line's flags: no backquotes
        raise file_error(path, f"config: {str(err).replace('`', '')}") from None


def checked_numbers(path, header: dict, config: Config) -> tuple[int, ...]:
    numbers = header.get("numbers")
    if (
        not isinstance(numbers, list)
        or len(numbers) != config.n_atoms
        or not all(is_int(z) and 1 <= z <= 118 for z in numbers)
    ):
        raise file_error(path, "truncated or corrupted (bad atomic numbers)")
    return tuple(numbers)


def _skeleton(path, header: dict, *, with_posterior: bool) -> ForceGP:
    """The ShapeDtypeStruct tree the payload is loaded into, from a validated header."""
    config = check_config(path, header.get("config"))
    numbers = checked_numbers(path, header, config)
    n_perm = header.get("n_permutations")
    if not is_int(n_perm) or not 1 <= n_perm <= config.n_permutations:
        raise file_error(path, "truncated or corrupted (bad n_permutations)")
    # Files before format version 3 have no input-dependent noise.
    columns = header.get("misfit_columns", 0)
    if not is_int(columns) or not 0 <= columns <= MAX_MISFIT_COLUMNS or (columns and not with_posterior):
        raise file_error(path, "truncated or corrupted (bad misfit_columns)")
    skeleton = eqx.filter_eval_shape(
        lambda: template(config, numbers, with_posterior=with_posterior, misfit_columns=columns)
    )
    if header.get("format_version") < PAIR_SCALE_VERSION:
        skeleton = eqx.tree_at(
            lambda m: m.hyper.raw_scale_pair, skeleton, None, is_leaf=lambda v: v is None
        )
    # The symmetry search may find fewer permutations than the configured maximum.
    perms = jax.ShapeDtypeStruct((n_perm, config.n_atoms), skeleton.stats.permutations.dtype)
    return eqx.tree_at(lambda m: m.stats.permutations, skeleton, perms)


def deserialise(path, payload: bytes, like):
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as err:  # any failure here means the payload does not fit its header
        raise file_error(path, f"truncated or corrupted ({type(err).__name__}: {err})") from None


def load_model(path, *, numbers=None) -> tuple[ForceGP, dict]:
    """Load a model file written by :func:`save_model`. Returns (model, header).

    ``numbers``: atomic numbers of the data the model will be used on; a model of another
    molecule (or atom order) is refused. Raises ModelFileError for anything wrong with the file.
    JAX must run in float64 (``jax.config.update("jax_enable_x64", True)``).
    """
    header, payload = read_parts(path, MODEL_FORMAT)
    has_posterior = header.get("has_posterior", True)
    if not isinstance(has_posterior, bool):
        raise file_error(path, "truncated or corrupted (bad has_posterior)")
    like = _skeleton(path, header, with_posterior=has_posterior)
    check_numbers(like.numbers, numbers, f"model {path}")
    model = deserialise(path, payload, like)
    if model.config.pair_scaled and model.hyper.raw_scale_pair is None:
        model = eqx.tree_at(
            lambda m: m.hyper.raw_scale_pair,
            model,
            model.hyper.raw_scale_linear,
            is_leaf=lambda v: v is None,
        )
    if not all_finite(model):
        raise file_error(path, "corrupted: the model has non-finite parameters")
    return model, header
