"""Config: every shape- and dtype-determining setting of a model, and its one validator.

Pure Python (no JAX): the command line reads the defaults from here without importing JAX.
:func:`validate` is the single check of a configuration, used by the Python API (user options),
the command line and model-file loading, so whatever the API accepts a model file can hold.
The sizes follow docs/method.md §3-§5.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

#: Floors of the softplus-parameterised hyperparameters (gp/params.py).
T_FLOOR = 5e-5
LENGTHSCALE_FLOOR = 1e-2
NOISE_FLOOR = 1e-4
SCALE_FLOOR = 1e-6

DESCRIPTORS = ("inverse-distance", "atomic", "cartesian")
EXPLICIT_BLOCKS = ("polynomial", "quadratic", "none")
#: How the body-ordered invariants' columns are put on one footing before the prior scales
#: (training.initialise.body_statistics): each group (element, body order) by its RMS over the
#: group, keeping the columns' relative sizes within it, or each column by its own RMS.
BODY_SCALINGS = ("group", "column")

#: Columns of the random projection behind a monitored force std (forcegp md --max-force-std):
#: the std is estimated (gp.predict.posterior_variances, docs/method.md §11) and its upper
#: bound checked.
MONITOR_STD_SKETCH = 128

#: Config fields that training.initialise chooses from the training data when they are AUTO (and
#: TrainSettings.epochs, which training.pipeline resolves from the initialised model).
AUTO = -1
AUTO_FIELDS = ("width", "explicit_cubic")

#: Beyond this many atoms a molecule is "large": the user-level defaults (descriptor "auto",
#: pair_powers AUTO; training.budget.size_defaults) choose the atomic descriptor without the
#: global pair powers, whose N(N-1)/2 terms each would pass the explicit block's budget, and an
#: atomic model's atoms take their nearest atoms as neighbour slots (gp.environment).
LARGE_MOLECULE_ATOMS = 64
#: Pair powers of a Config, and of the user-level default up to LARGE_MOLECULE_ATOMS atoms.
PAIR_POWERS = 3
#: The descriptor a user may ask for: one of DESCRIPTORS, or "auto" (by the molecule's size).
AUTO_DESCRIPTOR = "auto"

# Sanity limits: far above any real model, low enough to refuse absurd shapes from a file.
MAX_ATOMS = 10_000
MAX_INDUCING = 100_000
MAX_FEATURES = 10_000
MAX_WIDTH = 100_000
MAX_DEPTH = 64
MAX_EXPLICIT_DIM = 2000
MAX_PAIR_POWERS = 8
MAX_PERMUTATIONS = 100_000
MAX_LOCAL = 200_000
MAX_SPECIES = 118
MAX_RADIAL = 32
MAX_LMAX = 8
MAX_BODY_CHANNELS = 64
MAX_BYTES = 64 * 2**30  # largest model the shapes may describe

#: (lowest, highest) of every integer field; AUTO_FIELDS may also be AUTO before initialisation.
INT_FIELDS = {
    "n_atoms": (2, MAX_ATOMS),
    "n_inducing": (1, MAX_INDUCING),
    "n_features": (0, MAX_FEATURES),
    "width": (1, MAX_WIDTH),
    "depth": (1, MAX_DEPTH),
    "explicit_dim": (1, MAX_EXPLICIT_DIM),
    "n_permutations": (1, MAX_PERMUTATIONS),
    "explicit_cubic": (0, MAX_EXPLICIT_DIM),
    "pair_powers": (0, MAX_PAIR_POWERS),
    "n_local": (0, MAX_LOCAL),
    "n_species": (0, MAX_SPECIES),
    "env_radial": (2, MAX_RADIAL),
    "env_lmax": (0, MAX_LMAX),
    "env_dim": (1, MAX_EXPLICIT_DIM),
    "env_products": (1, MAX_EXPLICIT_DIM),
    "env_neighbours": (0, MAX_ATOMS),
    "env_body4": (0, MAX_BODY_CHANNELS),
    "env_body3": (0, MAX_BODY_CHANNELS),
    "env_body4_lmax": (0, MAX_LMAX),
}
CHOICE_FIELDS = {
    "descriptor": DESCRIPTORS,
    "explicit": EXPLICIT_BLOCKS,
    "body_scaling": BODY_SCALINGS,
}
#: (lowest, highest-exclusive) of every real field.
FLOAT_FIELDS = {
    "local_cutoff": (0.0, 1e3),
    "jitter": (0.0, 1.0),
    "env_cutoff": (1.0, 50.0),
    "pair_bound": (0.0, 1e3),
}


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the field and the allowed range.
    Callers turn it into an InputError (user options) or a ModelFileError (a file)."""


def body_l_triples(l_max: int) -> tuple[tuple[int, int, int], ...]:
    """(l1 <= l2 <= l3) <= l_max with the triangle rule and an even sum: the angular couplings
    of the body-order-four invariants (gp.body_order)."""
    return tuple(
        (l1, l2, l3)
        for l1 in range(l_max + 1)
        for l2 in range(l1, l_max + 1)
        for l3 in range(l2, min(l1 + l2, l_max) + 1)
        if (l1 + l2 + l3) % 2 == 0
    )


def body_sizes(n_channels: int, n_three: int, n_four: int, l_max: int) -> tuple[int, int, int]:
    """Invariants per atom of gp.body_order of body order two (n_channels), three (the pairs
    of the first n_three mixed channels per l) and four (the distinct triples of the first
    n_four per coupling)."""
    n = n_four
    pairs = n * (n + 1) // 2
    four = 0
    for l1, l2, l3 in body_l_triples(l_max):
        if l1 == l2 == l3:
            four += n * (n + 1) * (n + 2) // 6
        elif l1 == l2 or l2 == l3:
            four += pairs * n
        else:
            four += n**3
    return n_channels, (l_max + 1) * n_three * (n_three + 1) // 2, four


def body_size(n_channels: int, n_three: int, n_four: int, l_max: int) -> int:
    """Invariants per atom of gp.body_order, all body orders (body_sizes)."""
    return sum(body_sizes(n_channels, n_three, n_four, l_max))


def descriptor_size(config: Config) -> int:
    """Entries P of one descriptor copy: of the structure, or of one atom ("atomic": its
    projected environment and its element's one-hot code)."""
    kind, n_atoms = config.descriptor, config.n_atoms
    if kind == "inverse-distance":
        return n_atoms * (n_atoms - 1) // 2
    if kind == "cartesian":
        return 3 * n_atoms
    if kind == "atomic":
        return config.env_dim + config.n_species
    raise ConfigError(f"unknown descriptor {kind!r}; use one of {', '.join(DESCRIPTORS)}")


@dataclass(frozen=True)
class Config:
    """Shape- and dtype-determining settings (static; stored in the model file header)."""

    n_atoms: int
    descriptor: str = "inverse-distance"
    n_inducing: int = 256
    n_features: int = 16  # p; 0 disables the deep-kernel MLP (u = standardised descriptor)
    width: int = AUTO  # deep-kernel MLP width; AUTO: training.budget.budgeted_width (64 or 128)
    depth: int = 2
    explicit: str = "polynomial"  # "polynomial", "quadratic" or "none"
    explicit_dim: int = 26  # PCA components of the descriptor in the global product terms
    # Leading PCA components in the cubic terms ("polynomial"); AUTO: training.budget chooses
    # it from the number of training structures and atoms.
    explicit_cubic: int = AUTO
    pair_powers: int = PAIR_POWERS  # powers of each descriptor entry ("atomic": of inverse distances)
    # "atomic": the pair powers are of C tanh(z / C) for each pair's standardised inverse distance
    # z, bounded by C where a pair leaves its training range (docs/method.md §14); 0: of z itself.
    pair_bound: float = 0.0
    local_cutoff: float = 4.0  # Å; pairs in local products are typically shorter ("polynomial")
    n_local: int = 0  # local product terms; set by training.initialise from the geometries
    # Atom permutations (graph automorphisms) the model is averaged over, at most; 1 = none.
    n_permutations: int = 24
    jitter: float = 1e-6
    # "atomic" descriptor (docs/method.md §14): each atom's environment within env_cutoff (Å),
    # env_radial radial functions per neighbour element, harmonics up to env_lmax, the power
    # spectrum projected on env_dim directions per element, of which the leading env_products
    # enter the explicit block's products; env_neighbours slots per atom (0: every other atom).
    # n_species is set by training.initialise from the molecule.
    n_species: int = 0
    env_cutoff: float = 5.0
    env_radial: int = 8
    env_lmax: int = 4
    env_dim: int = 48
    env_products: int = 48
    env_neighbours: int = 0
    # Body-ordered invariants (docs/method.md §16): with env_body4 > 0 mixed channels per l, the
    # explicit block's per-element products are replaced by the atom sums of invariants of
    # body order two to four (gp.body_order), couplings up to env_body4_lmax.
    env_body4: int = 0
    env_body4_lmax: int = 3
    # Mixed channels of body order three (0: env_body4's; the channels' count: all of them).
    env_body3: int = 0
    body_scaling: str = "group"  # one of BODY_SCALINGS

    @property
    def dim(self) -> int:
        return 3 * self.n_atoms

    @property
    def descriptor_size(self) -> int:
        return descriptor_size(self)

    @property
    def n_descriptor_copies(self) -> int:
        """Descriptor copies a structure's rows average over besides permutations: its atoms
        ("atomic"), else 1."""
        return self.n_atoms if self.descriptor == "atomic" else 1

    @property
    def spectrum_size(self) -> int:
        """Entries of one atom's unprojected power spectrum ("atomic"), else 0."""
        if self.descriptor != "atomic":
            return 0
        c = self.n_species * self.env_radial
        return (self.env_lmax + 1) * c * (c + 1) // 2

    @property
    def feature_size(self) -> int:
        return self.n_features if self.n_features > 0 else self.descriptor_size

    @property
    def n_explicit(self) -> int:
        if self.explicit == "none":
            return 0
        q = self.explicit_q
        if self.descriptor == "atomic":  # pair powers, then per element linear and products
            per_element = self.n_body if self.env_body4 else q * (q + 1) // 2
            return self.n_explicit_pair + self.n_species * (self.env_dim + per_element)
        if self.explicit == "quadratic":
            return q + q * (q + 1) // 2
        return self.n_explicit_pair + self.n_local + q * (q + 1) // 2 + self.n_explicit_cubic

    @property
    def body_block(self) -> bool:
        """The explicit block carries the body-ordered invariants (env_body4 > 0, explicit on)."""
        return bool(self.env_body4) and self.explicit != "none"

    @property
    def n_body(self) -> int:
        """Body-ordered invariants per atom (and per element in the block) with env_body4."""
        return sum(self.body_orders)

    @property
    def body3_channels(self) -> int:
        """Mixed channels of body order three with env_body4: env_body3, else env_body4's."""
        return self.env_body3 or self.env_body4

    @property
    def body_mixed(self) -> int:
        """Rows of each l's channel mixing with env_body4: the more of orders three and four
        (both take the leading ones)."""
        return max(self.body3_channels, self.env_body4) if self.env_body4 > 0 else 0

    @property
    def body_orders(self) -> tuple[int, int, int]:
        """Invariants per atom of body order two, three and four with env_body4 (gp.body_order;
        each element's block holds them in this order), else (0, 0, 0)."""
        if self.env_body4 <= 0:
            return (0, 0, 0)
        channels = self.n_species * self.env_radial
        return body_sizes(channels, self.body3_channels, self.env_body4, self.env_body4_lmax)

    @property
    def n_explicit_linear(self) -> int:
        """The explicit block's columns that scale_linear scales: the leading ones, after the pair
        powers of an "atomic" model (which scale_pair scales); the rest are products."""
        if self.explicit == "none":
            return 0
        if self.descriptor == "atomic":
            return self.n_species * self.env_dim
        return self.n_explicit_pair if self.explicit == "polynomial" else self.explicit_q

    @property
    def pair_scaled(self) -> bool:
        """Whether the explicit block leads with global pair powers of their own prior scale
        (an "atomic" model with pair powers; a global model's pair powers are its linear terms)."""
        return self.descriptor == "atomic" and self.n_explicit_pair > 0

    @property
    def n_explicit_pair(self) -> int:
        if self.explicit != "polynomial":
            return 0
        if self.descriptor == "atomic":  # powers of the structure's inverse distances
            return self.pair_powers * self.n_atoms * (self.n_atoms - 1) // 2
        return self.pair_powers * self.descriptor_size

    @property
    def n_explicit_cubic(self) -> int:
        c = min(max(self.explicit_cubic, 0), self.explicit_q) if self.explicit == "polynomial" else 0
        if self.descriptor == "atomic":
            c = 0
        return c * (c + 1) * (c + 2) // 6

    @property
    def explicit_q(self) -> int:
        if self.descriptor == "atomic":  # the leading environment components are in the products
            return min(self.env_products, self.env_dim)
        return min(self.explicit_dim, self.descriptor_size)

    @property
    def n_basis(self) -> int:
        return self.n_inducing + self.n_explicit

    def basis_parts(self) -> list[tuple[str, int]]:
        """(the setting that sizes it, basis functions) for each part of K, largest first."""
        pair = self.n_explicit_pair
        name = "explicit_dim"
        if self.descriptor == "atomic":
            name = "env_body4" if self.env_body4 else "env_dim"
        rest = (name, self.n_explicit - pair)
        parts = [("n_inducing", self.n_inducing), ("pair_powers", pair), rest]
        return sorted((p for p in parts if p[1] > 0), key=lambda p: -p[1])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(Config))


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def model_bytes(config: Config) -> int:
    """Bytes of the model's largest arrays (float64), from the config alone."""
    k, m, p = config.n_basis, config.n_inducing, config.feature_size
    pd, q = config.descriptor_size, config.explicit_q
    mlp = (pd + config.width * max(config.depth - 1, 0) + config.feature_size) * config.width
    if config.n_features == 0:
        mlp = 0
    env = config.n_species * config.spectrum_size * config.env_dim
    env += (config.env_body4_lmax + 1) * config.body_mixed * config.n_species * config.env_radial
    return 8 * (k * k + k + 2 * m * p + pd * (q + 2) + mlp + env)


def check_body_channels(config: Config) -> None:
    """ConfigError where env_body4 or env_body3 asks for more mixed channels than the
    molecule's elements times env_radial give (the mixing would leave some zero)."""
    channels = config.n_species * config.env_radial
    for name in ("env_body4", "env_body3"):
        if getattr(config, name) > channels:
            raise ConfigError(
                f"`{name}`={getattr(config, name)} mixed channels asked for, but this molecule's "
                f"{config.n_species} elements x `env_radial`={config.env_radial} give {channels}; "
                f"use at most {channels}"
            )


def validate(values: dict, *, resolved: bool) -> Config:
    """A Config from ``values`` (every field but those left at their defaults), each checked.

    resolved: the fields of AUTO_FIELDS must be chosen already (a model file); otherwise they
    may still be AUTO (user options, before initialisation). Raises ConfigError naming the
    field, its value and what is allowed.
    """
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ConfigError(f"unknown model option(s) {sorted(unknown)}; known: {sorted(FIELDS)}")
    if "n_atoms" not in values:
        raise ConfigError("n_atoms is missing")
    config = Config(**values)
    for name, (low, high) in INT_FIELDS.items():
        value = getattr(config, name)
        auto = not resolved and name in AUTO_FIELDS and value == AUTO
        if not (is_int(value) and (low <= value <= high or auto)):
            also = f" or {AUTO} (auto)" if name in AUTO_FIELDS and not resolved else ""
            raise ConfigError(f"`{name}`={value!r} is not an integer in [{low}, {high}]{also}")
    for name, choices in CHOICE_FIELDS.items():
        if getattr(config, name) not in choices:
            raise ConfigError(f"`{name}`={getattr(config, name)!r} is not one of {list(choices)}")
    for name, (low, high) in FLOAT_FIELDS.items():
        value = getattr(config, name)
        if not (_is_real(value) and low <= value < high):
            raise ConfigError(f"`{name}`={value!r} is not a number in [{low:g}, {high:g})")
    if config.env_body4 and config.descriptor != "atomic":
        raise ConfigError(
            f"`env_body4`={config.env_body4}: body-ordered invariants need `descriptor`='atomic'"
        )
    if config.pair_bound and config.descriptor != "atomic":
        raise ConfigError(
            f"`pair_bound`={config.pair_bound:g}: bounded pair powers need `descriptor`='atomic'"
        )
    if config.env_body3 and not config.env_body4:
        raise ConfigError(
            f"`env_body3`={config.env_body3}: body order three's channels need `env_body4` > 0"
        )
    if config.env_body4 and config.env_body4_lmax > config.env_lmax:
        raise ConfigError(
            f"`env_body4_lmax`={config.env_body4_lmax} is above `env_lmax`={config.env_lmax}, the "
            "highest l of the density"
        )
    if resolved:
        check_body_channels(config)
    if resolved and config.descriptor == "atomic" and config.n_species < 1:
        raise ConfigError("n_species=0: an atomic-descriptor model needs its elements")
    if resolved and model_bytes(config) > MAX_BYTES:
        raise ConfigError(
            f"the settings describe a model of {model_bytes(config) / 2**30:.0f} GiB "
            f"(K={config.n_basis} basis functions); refusing to allocate it"
        )
    return config
