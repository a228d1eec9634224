"""The scripts in examples/ run as their docstrings say, on tiny settings (the figures are not
meaningful; that they train, write a model, run MD and print their tables is what is checked)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from forcegp.modelfile import load_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--inducing", "8", "--explicit-dim", "4", "--epochs", "1"]


def run(script: str, *args, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_train_then_md_examples(tmp_path):
    model = tmp_path / "ethanol.fgp"
    out = run(
        "train_ethanol.py", "-o", model, "--frames", 30, "--test-frames", 10, "--no-symmetrize",
        *TINY, cwd=tmp_path,
    )  # fmt: skip
    assert "forces MAE" in out and "95% coverage" in out
    gp, _ = load_model(model)
    assert gp.posterior is not None and gp.config.n_inducing == 8
    out = run("md_ethanol.py", model, "--steps", 4, "--every", 2, cwd=tmp_path)
    steps = [int(m.group(1)) for m in re.finditer(r"^\s+(\d+)\s+\d+\.\d", out, re.M)]
    assert steps == [0, 2, 4], out
    assert "4 steps in" in out


@pytest.mark.slow
def test_active_learning_example(tmp_path):
    out = run(
        "active_learning.py", "--initial", 10, "--rounds", 1, "--pick", 4, "--test", 5,
        "--valid", 5, "--batch-size", 4, "--md-runs", 1, "--md-steps", 10, "--interval", 2,
        "--reference", "emt", "--no-baseline", "--workdir", tmp_path / "md", *TINY,
        "--objective", "integrated", "--targets", "typical", "--config", "width=32",
        "--starts", "typical", "--misfit", "error", "--json", tmp_path / "rounds.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert "model M=" in out and " width=32," in out, out
    table = out[out.index("by round:") :]
    rows = re.findall(r"^\s+(\d)\s+(\d+)\s+[\d.]+", table, re.M)
    # Round 1 adds the picks (up to 4: as many as the MD run left candidate frames).
    assert [r[0] for r in rows] == ["0", "1"] and rows[0][1] == "10", out
    assert 10 < int(rows[1][1]) <= 14, out
    first = json.loads((tmp_path / "rounds.json").read_text())["rounds"][0]
    assert first["pick_mae"] > 0 and "gamma" in first, first  # round 0's model on its picks


def test_active_learning_refuses_a_test_set_of_another_molecule(tmp_path):
    """--test-geometries must hold the atoms of --geometries, in the same order: one line naming
    the file, before any labelling or training."""
    data = EXAMPLES.parent / "data"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "active_learning.py"), "--reference", "emt",
         "--geometries", str(data / "ethanol_test.extxyz"),
         "--test-geometries", str(data / "xtb" / "ala3_test.npz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "ala3_test.npz: atoms C12H22N4O4" in proc.stderr and "Traceback" not in proc.stderr
