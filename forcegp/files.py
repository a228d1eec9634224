"""Writing files safely: atomic replacement of outputs, extxyz frames, JSON-safe metadata.

Every output of forcegp goes through :func:`atomic_write`, so a failed or killed run never
leaves a half-written file or replaces an existing one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms


@contextlib.contextmanager
def atomic_write(path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    The caller writes the temporary file (any way it likes, by name). On leaving the block it
    is fsynced and os.replace'd onto ``path``; if the block raises, it is deleted and ``path``
    is untouched, so a reader never sees a partial file.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        mask = os.umask(0)  # mkstemp makes 0600 files; give the result the usual permissions
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename durable; not possible everywhere
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_extxyz_atomic(path, atoms_list: Sequence[Atoms]) -> None:
    """Write frames to an extxyz file atomically; calculator energy/forces are stored as the
    standard ``energy``/``forces`` fields, and atoms.info / atoms.arrays entries are kept."""
    with atomic_write(path) as tmp:
        ase.io.write(tmp, list(atoms_list), format="extxyz")


def json_safe(value):
    """Plain-JSON version of metadata: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("jax"):
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
