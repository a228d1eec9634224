"""Training settings (pure Python, no JAX: the command line reads the defaults from here) and
their one validator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..gp.config import AUTO, is_int

#: Precisions of the training step's feature rows (TrainSettings.precision).
PRECISIONS = ("float32", "float64")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = AUTO  # AUTO: training.budget.budgeted_epochs chooses from the model (20, 40 or 60)
    batch_size: int = 32
    lr: float = 5e-3
    lr_mlp: float = 1e-3
    clip: float = 1.0
    final_lr_fraction: float = 0.05
    # Permutation copies each training step averages over, drawn at random per step from the
    # model's permutations (0 = all of them). The posterior fit and predictions always use all.
    train_permutations: int = 0
    # Precision of the training step's feature rows (deep kernel, interpolation weights and
    # their gradients): "float32" or "float64". K_zz's Cholesky factor and the whitening, the
    # batch likelihood itself, the optimiser, the checkpoints, the posterior fit and
    # predictions are float64 either way.
    precision: str = "float32"
    # After the fit, an input-dependent noise (gp.misfit) where it makes the validation data
    # more likely; False: the constant noise levels alone.
    misfit_noise: bool = True

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def check_settings(settings: TrainSettings) -> None:
    epochs = settings.epochs
    if not is_int(epochs) or (epochs < 1 and epochs != AUTO):
        raise InputError(f"epochs must be an integer >= 1 or {AUTO} (auto), got {epochs!r}")
    if not is_int(settings.batch_size) or settings.batch_size < 1:
        raise InputError(f"batch size must be an integer >= 1, got {settings.batch_size!r}")
    k = settings.train_permutations
    if not is_int(k) or k < 0:
        raise InputError(f"train_permutations must be an integer >= 0 (0: all), got {k!r}")
    if settings.precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {settings.precision!r}")
    if not isinstance(settings.misfit_noise, bool):
        raise InputError(f"misfit_noise must be True or False, got {settings.misfit_noise!r}")
    for name in ("lr", "lr_mlp", "clip"):
        value = getattr(settings, name)
        if not np.isfinite(value) or value <= 0:
            raise InputError(f"{name} must be a positive number, got {value!r}")
