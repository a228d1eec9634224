"""Smoke test of benchmarks/peer_apax.py: a tiny apax run (20 structures, 1 epoch) end to end, with
the apax virtual environment's Python, appending to a results file that already holds a row.

Skips where .venv-apax (see benchmarks/peer_apax.py) or the rMD17 files are missing, as in CI's
fresh clone. About 35 s on 2 cores.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402

APAX_PYTHON = ROOT / ".venv-apax" / "bin" / "python"
TRAIN = common.rmd17_path("ethanol", "train")
TEST = common.rmd17_path("ethanol", "test")


@pytest.mark.slow
@pytest.mark.skipif(not APAX_PYTHON.exists(), reason=f"{APAX_PYTHON} not found (apax's own venv)")
@pytest.mark.skipif(not (TRAIN.exists() and TEST.exists()), reason="no rMD17 ethanol data")
def test_peer_apax_tiny_run_appends_a_row(tmp_path):
    out = tmp_path / "results" / "peers.jsonl"
    out.parent.mkdir()
    out.write_text(json.dumps({"code": "earlier"}) + "\n")
    cmd = [APAX_PYTHON, ROOT / "benchmarks" / "peer_apax.py", "--train", TRAIN, "--test", TEST]
    cmd += ["--n-train", "20", "--n-test", "10", "--epochs", "1", "--md-steps", "5"]
    cmd += ["--name", "smoke", "--out", out, "--workdir", tmp_path / "work"]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["code"] for r in rows] == ["earlier", "apax"]
    row = rows[-1]
    assert row["name"] == "smoke" and row["n_train"] == 20 and row["n_valid"] == 1
    assert row["n_test"] == 10 and row["epochs_run"] == 1
    for key in ("energy_mae_mev", "forces_mae_mev_per_ang", "train_seconds", "md_step_ms"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["train_peak_rss_bytes"] > 0 and row["versions"]["apax"]
    assert row["model"]["name"] == "gmnn" and row["model"]["n_params"] > 0
    assert not list(out.parent.glob("*.tmp"))
