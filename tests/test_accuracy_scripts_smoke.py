"""Smoke tests of the accuracy benchmarks (rmd17.py, learning_curve.py, acac_calibration.py): their
--quick settings run end to end on the published data and write their tables. Skipped where the
data is absent."""

from __future__ import annotations

import json
import os
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


@pytest.mark.skipif(not (DATA / "rmd17_ethanol_train_01.npz").exists(), reason="no rMD17 data")
def test_learning_curve_quick(tmp_path):
    out = tmp_path / "lc.jsonl"
    stdout = run("learning_curve.py", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["n_train"] for r in rows] == [30, 60] and all(r["n_test"] == 1000 for r in rows)
    assert "| ethanol | 60 |" in stdout


@pytest.mark.skipif(not (DATA / "acac_train_300K.npz").exists(), reason="no acac data")
def test_acac_calibration_quick():
    stdout = run("acac_calibration.py")
    assert "| 600K |" in stdout and "| 300K |" in stdout
    summary = json.loads((ROOT / "benchmarks" / "results" / "tmp" / "acac_calibration.json").read_text())
    assert set(summary["tests"]) == {"300K", "600K"}
