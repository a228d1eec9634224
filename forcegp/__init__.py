"""forcegp: Gaussian-process force fields with calibrated uncertainties (DSoftKI, JAX).

Importing forcegp changes no global JAX setting and imports nothing heavy: the public names below
are loaded on first use. Models are float64: library callers switch JAX to float64
(``jax.config.update("jax_enable_x64", True)``) before training or loading a model;
:class:`ForceGPCalculator` needs no such switch (it works in a scoped float64 context).
"""

from __future__ import annotations

from importlib import import_module
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("forcegp")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    "Config": "forcegp.gp.config",
    "ForceGP": "forcegp.gp.params",
    "ForceGPCalculator": "forcegp.calculator",
    "Dataset": "forcegp.data",
    "read_dataset": "forcegp.data",
    "ForceGPError": "forcegp.errors",
    "InputError": "forcegp.errors",
    "ModelFileError": "forcegp.errors",
    "NumericalError": "forcegp.errors",
    "ResourceError": "forcegp.errors",
    "load_model": "forcegp.modelfile",
    "save_model": "forcegp.modelfile",
    "TrainSettings": "forcegp.training.settings",
    "train_model": "forcegp.training.pipeline",
    "evaluate": "forcegp.training.evaluation",
    "predict": "forcegp.training.evaluation",
    "predict_dataset": "forcegp.training.evaluation",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'forcegp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
