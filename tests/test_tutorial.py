"""The readout tutorial, run as written on Sensorium-format zips, prints the notebook's lines exactly.

The expected lines are the printed outputs of neuralpredictors' ``notebooks/readouts_tutorial.ipynb``
(the displayed cell values included), in order; COMPAT.md §1 lists the same numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "readouts_tutorial.py"

NOTEBOOK_OUTPUT = [
    "FullFactorized2d (64 x 144 x 256 -> 8372) with bias, normalized",
    "Gaussian2d (64 x 144 x 256 -> 8372) with bias",
    "Sample batch shape: torch.Size([32, 1, 144, 256]) (batch size, in_channels, in_height, in_width)",
    "Core output shape: torch.Size([32, 64, 144, 256]) (batch_size, out_channels, out_height, out_width)",
    "Readout output shape: torch.Size([32, 8372]) (batch_size, n_neurons)",
    "Readout output shape: torch.Size([32, 8372]) (batch_size, n_neurons)",
    "Core parameters count: 0.040M",
    "Naive readout parameters count: 19.752B",
    "Parameters per neuron: 2.359M",
    "Total parameters in factorised readout for session 21067-10-18: 309.170M",
    "Parameters per neuron: 36929",
    "Total parameters in Gaussian readout for session 21067-10-18: 0.578M",
    "Parameters per neuron: 69",
]


@pytest.mark.slow
def test_readouts_tutorial_prints_the_notebooks_lines(tmp_path):
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", TMPDIR=str(tmp_path)
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", str(SCRIPT)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == NOTEBOOK_OUTPUT, result.stdout
    # the temporary data and the loaders' cache were removed with the temporary folder
    assert not any(tmp_path.iterdir())
