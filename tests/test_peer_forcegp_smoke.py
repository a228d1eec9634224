"""Smoke test of benchmarks/peer_forcegp.py: a tiny forcegp run (20 structures of the shipped
ethanol data, a tiny model, one epoch) appended to a peers file that already holds a row, and the
markdown table of both rows written beside it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = "--inducing 16 --features 4 --width 8 --depth 1 --explicit-dim 4 --epochs 1"


@pytest.mark.slow
def test_peer_forcegp_tiny_run_appends_a_row_and_tables_all(tmp_path):
    out = tmp_path / "peers.jsonl"
    earlier = {"code": "apax", "name": "smoke", "n_train": 20, "forces_mae_mev_per_ang": 99.0,
               "epochs": 1, "model": {"settings": "template"}}  # fmt: skip
    out.write_text(json.dumps(earlier) + "\n")
    cmd = [sys.executable, ROOT / "benchmarks" / "peer_forcegp.py"]
    cmd += ["--train", ROOT / "data" / "ethanol_train.extxyz", "--n-train", "20"]
    cmd += ["--test", ROOT / "data" / "ethanol_test.extxyz", "--n-test", "10", "--md-steps", "5"]
    cmd += ["--name", "smoke", "--out", out, "--flags", TINY]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["code"] for r in rows] == ["apax", "forcegp"]
    row = rows[-1]
    assert row["name"] == "smoke" and row["n_train"] == 20 and row["n_test"] == 10
    assert row["settings"] == "forcegp train defaults " + TINY
    for key in ("energy_mae_mev", "forces_mae_mev_per_ang", "train_seconds", "md_step_ms",
                "md_step_ms_with_std"):  # fmt: skip
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["train_peak_rss_bytes"] > 0 and row["git_commit"]

    table = (tmp_path / "peers.md").read_text()
    lines = [ln for ln in table.splitlines() if ln.startswith("| smoke |")]
    assert [ln.split(" | ")[1] for ln in lines] == ["apax", "forcegp"]
    assert "| 99 |" in lines[0] and "1 epochs, template" in lines[0]
    assert not list(tmp_path.glob("*.tmp"))
