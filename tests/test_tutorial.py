"""The readouts tutorial runs and prints the numbers of the neuralpredictors tutorial (COMPAT §1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "readouts_tutorial.py"


def test_readouts_tutorial_prints_the_reference_numbers():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-W", "error", str(SCRIPT)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    expected_lines = [
        "Stacked2dCore parameters: 0.040M",
        "core output for images (32, 1, 144, 256): (32, 64, 144, 256)",
        "FullFactorized2d (64 x 144 x 256 -> 8372) with bias, normalized",
        "parameters: 309.170M, per neuron: 36929",
        "Gaussian2d (64 x 144 x 256 -> 8372) with bias",
        "parameters: 0.578M, per neuron: 69",
        "full FullGaussian2d (64 x 144 x 256 -> 8372) with bias: 594412 parameters",
        "uncorrelated FullGaussian2d (64 x 144 x 256 -> 8372) with bias: 577668 parameters",
        "isotropic FullGaussian2d (64 x 144 x 256 -> 8372) with bias: 569296 parameters",
        "parameters: 19.752B, per neuron: 2.359M",
    ]
    for line in expected_lines:
        assert line in out, f"missing {line!r} in the tutorial output:\n{out}"
    for name in ("FullFactorized2d", "Gaussian2d", "FullGaussian2d", "PointPooled2d"):
        assert f"{name}: output (4, 100), out_idx=[0, 5, 7] -> (4, 3), shift changes the output: True" in out
    assert "multi-readout, data_key='session-b': output (4, 20)" in out
