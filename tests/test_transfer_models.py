"""Transfer learning in pipeline/: a pretrained core with new readouts, frozen or fine-tuned; new sessions.

Small synthetic multi-session data (``make_multi_session_datasets``: neurons of every session read the
same Gabor-energy features) and the project's own builder and trainer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data import static_loaders
from pipeline.data.synthetic import load_ground_truth, make_multi_session_datasets
from pipeline.models import data_info_from_loaders, stacked_core_full_gauss_readout
from pipeline.models.transfer import TransferError, TransferRecipe, add_sessions, core_state, transfer
from pipeline.training import standard_trainer

CONFIG = dict(
    hidden_channels=8,
    input_kern=7,
    hidden_kern=3,
    layers=2,
    gamma_input=1.0,
    gamma_readout=0.1,
    init_sigma=0.1,
    init_mu_range=0.3,
    grid_mean_predictor=None,
)
TRAINER = dict(device="cpu", max_iter=2, patience=1, lr_decay_steps=1, verbose=False, progress=False)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Three small sessions sharing a Gabor-energy feature basis."""
    return make_multi_session_datasets(
        tmp_path_factory.mktemp("multi"),
        n_sessions=3,
        n_neurons=[16, 12, 10],
        n_train=80,
        n_validation=24,
        n_test_images=4,
        n_repeats=2,
        image_shape=(18, 32),
    )


def _loaders(paths, seed=0):
    return static_loaders([str(p) for p in paths], batch_size=16, seed=seed)


def _core_tensors(model):
    return {k: v.detach().clone() for k, v in model.core.state_dict().items()}


def test_multi_session_sessions_share_features_but_not_positions(sessions):
    truths = [load_ground_truth(p) for p in sessions]
    assert {t["features"] for t in truths} == {"energy"}
    np.testing.assert_array_equal(truths[0]["filters"], truths[1]["filters"])
    np.testing.assert_array_equal(truths[0]["odd_filters"], truths[2]["odd_filters"])
    assert not np.allclose(truths[0]["rf_x"][:10], truths[1]["rf_x"][:10])
    assert [len(t["rf_x"]) for t in truths] == [16, 12, 10]


def test_frozen_core_keeps_weights_and_batchnorm_statistics(sessions):
    source = stacked_core_full_gauss_readout(_loaders(sessions[:2]), seed=1, **CONFIG)
    source_state = source.state_dict()
    target_loaders = _loaders(sessions[2:])
    target = stacked_core_full_gauss_readout(target_loaders, seed=2, **CONFIG)
    info = data_info_from_loaders(target_loaders, mean_activity=True)
    mean = {k: v["mean_activity"] for k, v in info.items()}
    transfer(target, source_state, TransferRecipe(freeze_core=True), mean_activity=mean)
    for key, value in target.core.state_dict().items():
        torch.testing.assert_close(value, source_state[f"core.{key}"])
    bias = target.readout["90003-1-1"].bias.detach()
    np.testing.assert_allclose(bias.numpy(), np.asarray(mean["90003-1-1"]), rtol=1e-6)
    readout_before = target.readout["90003-1-1"].features.detach().clone()
    target.train()
    assert not target.core.training and target.readout.training  # BN statistics stay
    standard_trainer(target, target_loaders, seed=0, **TRAINER)
    for key, value in target.core.state_dict().items():  # weights and running statistics
        torch.testing.assert_close(value, source_state[f"core.{key}"])
    assert not torch.equal(readout_before, target.readout["90003-1-1"].features.detach())
    assert float(target.regularizer("90003-1-1").detach()) == pytest.approx(
        float(target.readout.regularizer("90003-1-1").detach()), rel=1e-6
    )


def test_fine_tuned_core_has_its_own_learning_rate(sessions):
    source = stacked_core_full_gauss_readout(_loaders(sessions[:2]), seed=1, **CONFIG)
    target_loaders = _loaders(sessions[2:])
    target = stacked_core_full_gauss_readout(target_loaders, seed=2, **CONFIG)
    transfer(target, core_state(source.state_dict()), TransferRecipe(freeze_core=False, core_lr=1e-4))
    groups = target.parameter_groups(5e-3)
    assert [g["lr"] for g in groups] == [5e-3, 1e-4]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in target.core.parameters()}
    before = _core_tensors(target)
    standard_trainer(target, target_loaders, seed=0, **TRAINER)
    changed = [k for k, v in target.core.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the core is trained


def test_incompatible_core_is_refused_and_nothing_changes(sessions):
    source = stacked_core_full_gauss_readout(
        _loaders(sessions[:1]), seed=1, **{**CONFIG, "hidden_channels": 6}
    )
    target = stacked_core_full_gauss_readout(_loaders(sessions[2:]), seed=2, **CONFIG)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(TransferError, match=r"core.*source \(6,"):
        transfer(target, source.state_dict())
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key])
    assert not target.core_frozen


def test_recipe_checks_its_config():
    assert TransferRecipe.from_config({"freeze_core": False, "core_lr": 0.001}).core_lr == 0.001
    with pytest.raises(ValueError, match="core_lr"):
        TransferRecipe(freeze_core=True, core_lr=0.01)
    with pytest.raises(ValueError, match="must include 'core'"):
        TransferRecipe(copy=("readout",))
    with pytest.raises(ValueError, match="unknown key"):
        TransferRecipe.from_config({"freeze": True})


def test_copy_readout_of_a_shared_session(sessions):
    source = stacked_core_full_gauss_readout(_loaders(sessions[:2]), seed=1, **CONFIG)
    target = stacked_core_full_gauss_readout(_loaders(sessions[1:]), seed=2, **CONFIG)
    copied = transfer(target, source.state_dict(), TransferRecipe(copy=("core", "readout")))
    assert copied["readout"] == ["90002-1-1"]
    torch.testing.assert_close(target.readout["90002-1-1"].features, source.readout["90002-1-1"].features)
    fresh = stacked_core_full_gauss_readout(_loaders(sessions[1:]), seed=2, **CONFIG)
    for key, value in fresh.readout["90003-1-1"].state_dict().items():  # the new session: untouched
        torch.testing.assert_close(target.readout["90003-1-1"].state_dict()[key], value)
    assert not torch.equal(target.readout["90002-1-1"].mu, fresh.readout["90002-1-1"].mu)


def test_add_sessions_to_an_existing_model(sessions):
    loaders = _loaders(sessions[:2])
    model = stacked_core_full_gauss_readout(loaders, seed=1, shifter=True, **CONFIG).eval()
    images = torch.randn(3, 1, 18, 32)
    pupil = torch.randn(3, 2)
    before = model(images, data_key="90001-1-1", pupil_center=pupil).detach()
    new_info = data_info_from_loaders(_loaders(sessions[2:]), mean_activity=True)
    assert add_sessions(model, new_info) == ["90003-1-1"]
    assert model.data_keys == ["90001-1-1", "90002-1-1", "90003-1-1"]
    assert "90003-1-1" in model.shifter
    out = model(images, data_key="90003-1-1", pupil_center=pupil)
    assert out.shape == (3, 10)
    torch.testing.assert_close(model(images, data_key="90001-1-1", pupil_center=pupil), before)
    np.testing.assert_allclose(
        model.readout["90003-1-1"].bias.detach().numpy(), new_info["90003-1-1"]["mean_activity"], rtol=1e-6
    )
    with pytest.raises(ValueError, match="already has sessions"):
        add_sessions(model, new_info)
    # the extended model's state loads into a model built for all three sessions
    rebuilt = stacked_core_full_gauss_readout(_loaders(sessions), seed=3, shifter=True, **CONFIG)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
