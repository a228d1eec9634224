"""forcegp: Gaussian-process force fields with calibrated uncertainties (DSoftKI, JAX).

Importing forcegp changes no global JAX setting. Models are float64: call
``jax.config.update("jax_enable_x64", True)`` before using them (the ``forcegp`` command does).
"""

from __future__ import annotations

from importlib import metadata as _metadata

from .calculator import ForceGPCalculator
from .data import Dataset, read_dataset
from .errors import ForceGPError, InputError, ModelFileError, NumericalError, ResourceError
from .io import load_model, save_model
from .model import Config, ForceGP
from .train import TrainSettings
from .workflow import evaluate, predict_dataset, train_model

try:
    __version__ = _metadata.version("forcegp")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = [
    "Config",
    "Dataset",
    "ForceGP",
    "ForceGPCalculator",
    "ForceGPError",
    "InputError",
    "ModelFileError",
    "NumericalError",
    "ResourceError",
    "TrainSettings",
    "__version__",
    "evaluate",
    "load_model",
    "predict_dataset",
    "read_dataset",
    "save_model",
    "train_model",
]
