"""A Sensorium+ checkpoint made by sensorium's own builder loads into ours with strict=True.

Sensorium+ (``notebooks/model_tutorial/1b_model_training_sensorium+.ipynb``): session 27204-5-13 with
7538 neurons, dataset ``include_behavior=True, include_eye_position=True, scale=.25`` (behaviour as
3 image channels → a 4-channel core; the eye position feeds an MLP shifter), the SOTA model config
with ``shifter=True``. The session here is synthetic with 72 x 128 images (18 x 32 after the
notebook's ``scale=.25``) to stay small; every shape that matters for the checkpoint is the real one.
Skipped when sensorium (shared/peers) is not available.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.builder import get_data, get_model
from pipeline.data import make_synthetic_dataset
from tests.sensorium_peer import import_sensorium, peer_copy, require_skimage

SESSION = "static27204-5-13-GrayImageNet-94c6ff995dac583098847cfecd43e7b6"
KEY = "27204-5-13"
N_NEURONS = 7538

# the notebook's configurations, verbatim (paths aside)
DATASET_CONFIG = {
    "normalize": True,
    "include_behavior": True,
    "include_eye_position": True,
    "batch_size": 128,
    "scale": 0.25,
}
MODEL_CONFIG = {
    "pad_input": False,
    "stack": -1,
    "layers": 4,
    "input_kern": 9,
    "gamma_input": 6.3831,
    "gamma_readout": 0.0076,
    "hidden_kern": 7,
    "hidden_channels": 64,
    "depth_separable": True,
    "grid_mean_predictor": {
        "type": "cortex",
        "input_dimensions": 2,
        "hidden_layers": 1,
        "hidden_features": 30,
        "final_tanh": True,
    },
    "init_sigma": 0.1,
    "init_mu_range": 0.3,
    "gauss_type": "full",
    "shifter": True,
}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path = make_synthetic_dataset(
        tmp_path_factory.mktemp("sensorium-plus") / SESSION,
        n_neurons=N_NEURONS,
        n_train=16,
        n_validation=8,
        n_test_images=2,
        n_repeats=2,
        image_shape=(72, 128),
        seed=7,
    )
    return path, peer_copy(path, tmp_path_factory.mktemp("sensorium-plus-peer"))


def _trained_like(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's state with every float tensor perturbed, as training would leave it (non-zero
    shifter output, moved positions, non-trivial BatchNorm statistics)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        if value.is_floating_point() and "laplace" not in name:
            noise = torch.randn(value.shape, generator=generator)
            value = value.abs() + 0.5 if name.endswith("running_var") else value + 0.03 * noise
        state[name] = value.clone()
    return state


def test_sensorium_plus_checkpoint_loads_strictly_and_predicts_the_same(session, tmp_path):
    require_skimage()
    sensorium = import_sensorium()
    ours_path, peer_path = session

    peer_loaders = sensorium.datasets.static_loaders(paths=[peer_path], cuda=False, **DATASET_CONFIG)
    peer_model = sensorium.models.stacked_core_full_gauss_readout(peer_loaders, seed=42, **MODEL_CONFIG)
    peer_model.load_state_dict(_trained_like(peer_model, seed=1))
    checkpoint = tmp_path / "sensorium_p_sota_model.pth"
    torch.save(peer_model.state_dict(), checkpoint)

    loaders = get_data("sensorium.datasets.static_loaders", {"paths": [str(ours_path)], **DATASET_CONFIG})
    model = get_model(
        "sensorium.models.stacked_core_full_gauss_readout", MODEL_CONFIG, dataloaders=loaders, seed=0
    )
    assert tuple(model.core.features.layer0.conv.weight.shape) == (64, 1 + 3, 9, 9)
    assert model.readout[KEY].outdims == N_NEURONS and KEY in model.shifter
    model.load_state_dict(torch.load(checkpoint, weights_only=True), strict=True)

    peer_model.eval(), model.eval()
    peer_batch = next(iter(peer_loaders["validation"][KEY]))
    batch = next(iter(loaders["validation"][KEY]))
    assert batch.images.shape == peer_batch.images.shape == (8, 4, 18, 32)
    with torch.no_grad():
        expected = peer_model(peer_batch.images, data_key=KEY, pupil_center=peer_batch.pupil_center)
        # the same inputs through our model, then our loaders' own batch end to end
        same_inputs = model(peer_batch.images, data_key=KEY, pupil_center=peer_batch.pupil_center)
        end_to_end = model(
            batch.images, data_key=KEY, pupil_center=batch.pupil_center, behavior=batch.behavior
        )
        # the shifter matters: with the eye position moved, the prediction moves
        moved = model(batch.images, data_key=KEY, pupil_center=batch.pupil_center + 1.0)
    assert expected.shape == (8, N_NEURONS) and 0.5 < float(expected.mean()) < 5
    assert (same_inputs - expected).abs().max() < 1e-5
    assert (end_to_end - expected).abs().max() < 1e-5
    assert (moved - end_to_end).abs().max() > 1e-3
