"""Smoke tests of the accuracy benchmarks (rmd17.py, learning_curve.py, acac_calibration.py): their
--quick settings run end to end on the published data and write their tables. Skipped where the
data is absent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FORCEGP_PUBLISHED", ROOT.parent / "shared" / "data" / "published"))


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(not (DATA / "rmd17_ethanol_train_01.npz").exists(), reason="no rMD17 data")
def test_rmd17_quick_with_config_override(tmp_path):
    out = tmp_path / "r.jsonl"
    run(
        "rmd17.py", "--molecules", "ethanol", "--config", "explicit_cubic=2",
        "--settings", "batch_size=16", "--out", str(out),
    )  # fmt: skip
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["molecule"] == "ethanol" and row["n_test"] == 1000
    assert row["config"]["explicit_cubic"] == 2 and row["settings"]["batch_size"] == 16
    assert 0 < row["forces_mae_mev_per_ang"] < 5000
    table = (tmp_path / "r.md").read_text()
    assert table.startswith("| molecule |")
    # A non-default run is labelled with what it changed, so variants never average together.
    assert "| ethanol (explicit_cubic=2 batch_size=16 epochs=1) | 1 |" in table
    assert "| 8 / 2 / 1 |" in table  # the sizes the run used: width, cubic block, epochs


@pytest.mark.skipif(not (DATA / "rmd17_ethanol_train_01.npz").exists(), reason="no rMD17 data")
def test_learning_curve_quick(tmp_path):
    out = tmp_path / "lc.jsonl"
    stdout = run("learning_curve.py", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["n_train"] for r in rows] == [30, 60] and all(r["n_test"] == 1000 for r in rows)
    assert "| ethanol | 60 |" in stdout


@pytest.mark.skipif(not (DATA / "acac_train_300K.npz").exists(), reason="no acac data")
def test_acac_calibration_quick():
    stdout = run("acac_calibration.py", "--ratio-study")
    assert "| 600K |" in stdout and "| 300K |" in stdout
    summary = json.loads((ROOT / "benchmarks" / "results" / "tmp" / "acac_calibration.json").read_text())
    assert set(summary["tests"]) == {"300K", "600K"}
    # The ratio study rebuilds the trained posterior mean from its eigendecomposition (r = 1).
    rebuilt = float(re.search(r"its mean rebuilt to ([0-9.e+-]+)\)", stdout).group(1))
    assert rebuilt < 1e-6
    assert stdout.count("\n| ") >= 6 and "(input-dependent noise), a =" in stdout


def test_rmd17_table_only_keeps_one_model_per_molecule(tmp_path):
    """--table-only: when the default changes, rows of the old default (other splits) drop out
    instead of averaging with the new one; the newest row of each split counts."""

    def row(split, mae, width, epochs=40):
        return {
            "molecule": "uracil", "split": split, "variant": "default", "energy_mae_mev": 1.0,
            "forces_mae_mev_per_ang": mae, "forces_coverage_95": 0.95, "spearman_std_error": 0.7,
            "train_seconds": 100.0, "config": {"width": width, "n_local": 5},
            "settings": {"epochs": epochs},
        }  # fmt: skip

    rows = [row("01", 20.0, 64), row("02", 21.0, 64), row("01", 15.0, 128), row("01", 16.0, 128)]
    out = tmp_path / "r.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rmd17.py"), "--table-only", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "r.md").read_text()
    assert "| uracil | 1 | 1.0 | 16.0 | 0.950 |" in table
