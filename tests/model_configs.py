"""Model configurations shared by several test modules."""

from __future__ import annotations

#: every part of sensorium's SOTA configuration (depth-separable core, full Gaussian readout with a
#: cortex grid predictor, sensorium's regularizer strengths) at a size that trains in seconds
TINY_SOTA_MODEL = dict(
    hidden_channels=8,
    input_kern=7,
    hidden_kern=3,
    layers=3,
    gamma_input=6.3831,
    gamma_readout=0.0076,
    depth_separable=True,
    stack=-1,
    grid_mean_predictor={
        "type": "cortex",
        "input_dimensions": 2,
        "hidden_layers": 1,
        "hidden_features": 8,
        "final_tanh": True,
    },
    init_sigma=0.1,
    init_mu_range=0.3,
    core_bias=False,
)
