"""Smoke tests of the benchmark scripts (benchmarks/): each script's --quick setting runs, as a user
would run it, and writes its results into a temporary folder; the helpers they share measure what
they claim.

--quick uses tiny models and the persistent compilation cache of conftest.py, so after the first
run on a machine the whole file takes about a minute on 2 busy cores. The rMD17 files come from
$FORCEGP_PUBLISHED or ../shared/data/published; the tests that need them skip without them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import common  # noqa: E402

needs_data = pytest.mark.skipif(
    not (common.DATA / "rmd17_aspirin_train_01.npz").exists(),
    reason=f"rMD17 data not found in {common.DATA} (set FORCEGP_PUBLISHED)",
)


def run_script(name: str, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, BENCH / f"{name}.py", "--quick", "--out", out, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH.parent, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (out / f"{name}.md").read_text().startswith("# ")
    payload = json.loads((out / f"{name}.json").read_text())
    assert payload["quick"] is True and payload["machine"]["jax"]
    return payload


def test_md_table_and_fmt():
    table = common.md_table([{"a": 1, "b": 0.12345}, {"a": 2}], [("a", "A"), ("b", "B")])
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1 | 0.123 |", "| 2 | – |"]
    assert [common.fmt(v) for v in (None, True, 1234.5, 22.578, 0.0)] == [
        "–",
        "yes",
        "1234",
        "22.58",
        "0",
    ]


def test_run_measured_reports_the_childs_peak_rss_and_kills_on_timeout():
    code = "import numpy as np; a = np.ones(40 * 2**20 // 8); print(a.sum())"
    res = common.run_measured([sys.executable, "-c", code], echo=False)
    assert res["rc"] == 0 and res["peak_rss_bytes"] > 40 * 2**20  # the 40 MiB array, resident
    stuck = common.run_measured(
        [sys.executable, "-c", "import time; time.sleep(30)"], echo=False, timeout=1
    )
    assert stuck["timed_out"] and stuck["rc"] is None and stuck["wall_s"] < 10


def test_count_compilations_sees_new_programs_only():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda v: jnp.sin(v) * 3.0)
    a, b = jnp.ones(7), jnp.zeros(7)
    with common.count_compilations() as first:
        f(a)
    with common.count_compilations() as again:
        f(b)
    assert len(first) == 1 and again == []


def test_harmonic_labels_are_minus_the_energy_gradient():
    import scaling

    numbers, ref = scaling.random_chain(12)
    pos = ref + 0.05 * np.random.default_rng(0).standard_normal((2, 12, 3))
    energy, forces = scaling.harmonic_labels(pos, ref)
    step = np.zeros_like(pos)
    step[:, 5, 1] = 1e-6
    fd = (
        scaling.harmonic_labels(pos - step, ref)[0] - scaling.harmonic_labels(pos + step, ref)[0]
    ) / 2e-6
    np.testing.assert_allclose(forces[:, 5, 1], fd, rtol=1e-6, atol=1e-9)
    assert np.all(energy > 0) and np.abs(forces.sum(axis=1)).max() < 1e-12


@needs_data
def test_scaling_datasets():
    import scaling

    sizes = {
        "ethanol": 9,
        "aspirin": 21,
        "azobenzene": 24,
        "ala3-synthetic": 42,
        "chain56-synthetic": 56,
    }
    assert set(sizes) == set(scaling.MOLECULES)
    for name, n_atoms in sizes.items():
        data, desc = scaling.make_dataset(name, 5)
        assert (data.n_frames, data.n_atoms) == (5, n_atoms), desc
        assert np.all(np.isfinite(data.forces)) and np.all(np.isfinite(data.energies))


@needs_data
def test_body_compile_quick(tmp_path):
    rows = run_script("body_compile", tmp_path)["rows"]
    assert [r["form"] for r in rows] == ["library (one vmap)", "one vmap per element"]
    assert all(r["compile_cpu_s"] > 0 and r["run_wall_s"] > 0 for r in rows)


@needs_data
def test_body_order_quick(tmp_path):
    """The body-ordered invariants are invariant (rotation, reflection, permutation of equal
    atoms), with and without channel mixing, and the linear model is searched and tested."""
    (row,) = run_script("body_order", tmp_path, "--mix4", "2")["rows"]
    assert row["invariance"] < 1e-12 and "mix4=2" in row["settings"]
    assert row["K"] > 0 and np.isfinite(row["forces_mae_mev"]) and row["forces_mae_mev"] > 0


@pytest.mark.slow
def test_compile_cache_quick(tmp_path):
    """The shipped data/ethanol_*.extxyz, no rMD17 files needed."""
    (row,) = run_script("compile_cache", tmp_path, "--cases", "default")["rows"]
    assert row["same_test_errors"] and row["cache_mib"] > 0
    assert all(row[f"{key}_s"] > 0 for key in ("train_cold", "train_warm", "test_off", "test_warm"))


@pytest.mark.slow
@needs_data
def test_md_speed_quick(tmp_path):
    r = run_script("md_speed", tmp_path)["result"]
    assert r["no_recompilation"], r["compiled_during_timing"]
    assert (
        r["energy_forces"]["calls"] == 20 and r["md"]["step_ms"] > 0 and r["md_with_std"]["step_ms"] > 0
    )
    (sketch,) = r["sketched"]  # std_sketch 32 of a tiny model
    assert sketch["sketch"] == 32 and 0.5 < sketch["ratio_median"] < 2
    assert sketch["max_std_upper_over_exact_max"] >= sketch["max_std_upper_over_exact_min"] > 0


@pytest.mark.slow
@needs_data
def test_uncertainty_quick(tmp_path):
    """acac, trained at 300 K and tested at 300 K and 600 K, through the CLI: one row per test
    set, each with the calibration report."""
    rows = run_script("uncertainty", tmp_path, "--cases", "acac")["rows"]
    assert [r["test_set"] for r in rows] == ["MD 300 K", "MD 600 K"]
    for r in rows:
        assert "error" not in r, r
        assert 0 <= r["forces_coverage_68"] <= r["forces_coverage_95"] <= 1
        assert r["forces_zms"] > 0 and np.isfinite(r["forces_nll"])
        assert r["train_command"].startswith("forcegp train ") and "--json" in r["test_command"]


@needs_data
def test_sym_cost_quick(tmp_path):
    rows = run_script("sym_cost", tmp_path)["rows"]
    assert [r["molecule"] for r in rows] == ["ethanol", "ethanol"]
    assert [r["n_permutations"] for r in rows] == [1, 12]  # ethanol's graph: CH3 x CH2
    keys = ("step_ms", "rows_fwd_ms", "rows_grad_ms", "rows64_ms", "predict_ms")
    assert all(r[k] > 0 for r in rows for k in keys)


@pytest.mark.slow
@needs_data
def test_scaling_quick(tmp_path):
    res = run_script("scaling", tmp_path)["results"]
    (row,) = res["n"]
    assert row["epoch_s"] > 0 and row["accumulate_warm_s"] > 0 and row["gemm_bound_s"] > 0
    assert row["compilations_in_epoch_2"] == 0 and row["compiled_in_warm_accumulate"] == []
    (mem,) = res["memory"]
    # The limit took effect: a smaller chunk, and an estimate within it.
    assert mem["chunk"] < 64 and mem["estimate_bytes"] <= mem["max_memory_gib"] * common.GiB
    (step,) = res["step"]  # the compiled step's plan, then three steps of it
    assert step["plan_bytes"] > 0 and step["three_steps_s"] > 0 and step["batch"] == 8


@pytest.mark.slow
@needs_data
def test_evidence_tolerance_quick(tmp_path):
    rows = run_script(
        "evidence_tolerance", tmp_path, "--molecules", "ethanol", "--tolerances", "0", "1000"
    )["rows"]
    tight, loose = rows
    assert tight["evaluations"] > loose["evaluations"] >= 1 and tight["nll_total_above_best"] == 0
    assert loose["nll_total_above_best"] > 0 and tight["forces_mae_mev"] > 0


@needs_data
def test_fit_search_quick(tmp_path):
    """Each search fits the same trained model: the one-start searches run one search (L-BFGS
    or Newton's method), the others two; every fit is tested; the prefit's search before
    them is counted."""
    rows = run_script("fit_search", tmp_path)["rows"]
    assert [r["search"] for r in rows] == ["all groups", "DSoftKI + noise", "DSoftKI + noise, one start",
                                           "DSoftKI + noise, one start, Newton"]  # fmt: skip
    assert len({r["K"] for r in rows}) == 1 and len({r["before_fit_s"] for r in rows}) == 1
    assert rows[0]["prefit_evaluations"] > 0 and rows[0]["prefit_search_s"] > 0
    assert [len(r["evaluations"].split(" + ")) for r in rows] == [2, 2, 1, 1]
    assert all(np.isfinite(r["forces_mae_mev"]) and r["forces_mae_mev"] > 0 for r in rows)
    # holding the explicit block's scales changes where the search ends
    assert rows[0]["nll_per_obs"] != rows[1]["nll_per_obs"]
    # Newton's method ends no worse than L-BFGS on the same search
    n_obs = 60 * 0.95 * (1 + 27)
    assert rows[3]["nll_per_obs"] <= rows[2]["nll_per_obs"] + 0.05 / n_obs


@needs_data
def test_evidence_starts_quick(tmp_path):
    """The searches run on one set of statistics; the second start never ends worse, and
    Newton's method from one start ends within 0.05 nats of L-BFGS from two."""
    rows = run_script("evidence_starts", tmp_path, "--searches", "one", "two", "newton-one",
                      "newton-fisher")["rows"]  # fmt: skip
    one, two, newton, fisher = rows
    assert one["starts"].startswith("L-BFGS, one") and two["starts"] == "L-BFGS, two"
    assert newton["starts"] == "Newton, one"
    assert one["K"] == two["K"] and two["nll_per_obs"] <= one["nll_per_obs"] + 1e-9
    assert newton["nll_per_obs"] <= two["nll_per_obs"] + 0.05 / (60 * 28)  # 0.05 nats in all
    # one search from one start, two from two, each with its evaluations counted
    assert len(one["evaluations"].split(" + ")) == 1 and len(two["evaluations"].split(" + ")) == 2
    assert all(int(c) > 0 for c in two["evaluations"].split(" + ")) and int(newton["evaluations"]) > 0
    assert fisher["starts"] == "Newton, one, Fisher-scoring fallback" and int(fisher["evaluations"]) > 0
    assert np.isfinite(two["forces_mae_mev"]) and two["forces_mae_mev"] > 0


@needs_data
def test_stages_quick(tmp_path):
    """Three models of one run on the same test structures: the explicit block alone, both
    blocks, the final model; each a real fit (errors differ), the final one with its gamma."""
    rows = run_script("stages", tmp_path)["rows"]
    assert [r["stage"] for r in rows] == ["explicit", "joint", "final"]
    assert len({r["n_test"] for r in rows}) == 1 and len({r["n_train"] for r in rows}) == 1
    assert all(np.isfinite(r["forces_mae_mev_per_ang"]) for r in rows)
    assert all(r["forces_mae_mev_per_ang"] > 0 for r in rows)
    assert rows[0]["forces_mae_mev_per_ang"] != rows[1]["forces_mae_mev_per_ang"]
    assert "misfit_gamma" in rows[2] and (tmp_path / "stages.jsonl").exists()


@needs_data
def test_env_sweep_quick(tmp_path):
    """One row per variant, each with its own basis size, searched and tested."""
    rows = run_script("env_sweep", tmp_path, "--variants", "", "env_lmax=1")["rows"]
    base, small = rows
    assert base["variant"] == "(base)" and small["variant"] == "env_lmax=1"
    assert base["K"] == small["K"] and base["starts"] == "L-BFGS, two"
    assert all(np.isfinite(r["forces_mae_mev"]) and r["forces_mae_mev"] > 0 for r in rows)
    assert base["forces_mae_mev"] != small["forces_mae_mev"]


@pytest.mark.slow
@needs_data
def test_vs_sgdml_quick_only_forcegp_keeps_the_stored_sgdml_rows(tmp_path):
    """sGDML first (skipped and recorded as such without .venv-sgdml), then forcegp alone."""
    first = run_script("vs_sgdml", tmp_path, "--only", "sgdml")
    (before,) = first["rows"]
    assert "forcegp" not in before and ("sgdml" in before or before["sgdml_skipped"])
    second = run_script("vs_sgdml", tmp_path, "--only", "forcegp")
    (after,) = second["rows"]
    assert after["n"] == 20 and after["forcegp"]["forces_mae_meV_A"] > 0
    assert after["forcegp"]["md_traces"] == 1
    for key in ("sgdml", "sgdml_skipped"):
        assert after.get(key) == before.get(key)
