"""Test session setup: float64 JAX (as the CLI does) and a persistent compilation cache.

The library never switches x64 on by itself; the CLI does it first thing and so do the tests,
here, before any test module creates an array. The on-disk compilation cache only saves time:
the tiny models of the tests spend most of their time in XLA compilation, and the cache is keyed
by the compiled program, so stale entries are never used. Set FORCEGP_TEST_JAX_CACHE=0 to
switch it off (for the `forcegp` processes the tests start, too).
"""

import os
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

if os.environ.get("FORCEGP_TEST_JAX_CACHE", "1") != "0":
    _cache = os.path.join(tempfile.gettempdir(), f"forcegp-test-jax-cache-{os.getuid()}")
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # `forcegp` processes that tests start keep theirs beside it (a bounded cache of its own
    # layout), not in the user's ~/.cache.
    os.environ.setdefault("FORCEGP_COMPILE_CACHE", _cache + "-cli")
else:
    os.environ.setdefault("FORCEGP_COMPILE_CACHE", "0")


# --------------------------------------------------------------------------------------------
# Shared fixtures (tiny synthetic problems from tests/synthetic.py).

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's in-memory compiled programs after each test module: one long pytest process
    otherwise keeps every program of every tiny model it ever compiled (a later module recompiles
    what it needs, from the on-disk cache where there is one)."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="session")
def small_problem():
    """CH2-OH fragment: 12 training structures, an untrained tiny model, 3 test structures."""
    from synthetic import SMALL_NUMBERS, SMALL_REFERENCE, Problem

    return Problem(SMALL_NUMBERS, SMALL_REFERENCE, 12, seed=0)


@pytest.fixture(scope="session")
def fitted_small(small_problem):
    """small_problem's model with its posterior fitted (untrained hyperparameters)."""
    from forcegp.gp import posterior

    pb = small_problem
    return posterior.fit(pb.model, pb.x, pb.y, pb.g)


@pytest.fixture(scope="session")
def methanol_data():
    """(positions, energies, forces) of 10 methanol structures with a symmetric methyl group."""
    from synthetic import METHANOL_NUMBERS, METHANOL_REFERENCE, make_data

    return make_data(METHANOL_NUMBERS, METHANOL_REFERENCE, 10, seed=1)
