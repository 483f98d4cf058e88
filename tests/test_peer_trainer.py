"""Differential test: ``standard_trainer`` against sensorium's ``standard_trainer`` itself.

Each side runs its own whole stack — our loaders and trainer, sensorium's loaders and trainer — on
the same two synthetic sessions (behaviour channels, eye position for an MLP shifter, cortex grid
predictor), from the same initial weights and with the same seed and config, for one epoch. The
losses of every optimiser step and the validation correlation after the epoch must agree.

How both see the same batches in the same order: our train loader shuffles with its own
``torch.Generator`` (not the global one); sensorium's shuffles with the global generator, which the
Gaussian readouts' position sampling also draws from. So sensorium's train loaders are rebuilt over
the same datasets with (a) a sampler that lists the trials in the order our loader's generator gives
for its first epoch (computed from a copy of its state just before training) and (b) explicit
generators for every ``DataLoader`` (train and validation), so that iterating them draws nothing from
the global generator. Then, after each trainer seeds the global generator itself, the only draws from
it are the readouts' samples, in the same order on both sides. The losses are read where both
trainers hand them to ``backward()``. Skipped when sensorium (shared/peers) is not available.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.data import make_synthetic_dataset, static_loaders
from pipeline.models import stacked_core_full_gauss_readout
from pipeline.training import standard_trainer
from pipeline.training.loss_scale import loss_scale_trials
from tests.model_configs import TINY_SOTA_MODEL
from tests.sensorium_peer import import_sensorium, peer_copy, scheduler_without_verbose

SIZES = dict(n_train=40, n_validation=16, n_test_images=4, n_repeats=4, image_shape=(20, 28))
DATA = dict(batch_size=8, include_behavior=True, include_eye_position=True, cuda=False)
MODEL = {**TINY_SOTA_MODEL, "shifter": True}
TRAINER = dict(max_iter=1, lr_init=0.009, lr_decay_steps=4, avg_loss=False, device="cpu", restore_best=False)
SEED = 42


@pytest.fixture(scope="module")
def sensorium():
    return import_sensorium()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("peer-trainer")
    ours = [
        make_synthetic_dataset(
            root / f"static9030{i}-1-1-synthetic", n_neurons=15 + 5 * i, seed=30 + i, **SIZES
        )
        for i in range(2)
    ]
    copies = tmp_path_factory.mktemp("peer-trainer-copies")
    return [str(p) for p in ours], [peer_copy(p, copies) for p in ours]


class LossRecorder:
    """Records the value of every scalar tensor that ``backward()`` is called on (the trainers' losses)."""

    def __init__(self, monkeypatch):
        self.values: list[float] = []
        original = torch.Tensor.backward
        recorder = self

        def backward(tensor, *args, **kwargs):
            recorder.values.append(float(tensor.detach()))
            return original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "backward", backward)

    def take(self) -> list[float]:
        values, self.values = self.values, []
        return values


def _first_epoch_trials(loader) -> list[int]:
    """The trials our train loader yields in its next pass (from a copy of its generator's state)."""
    generator = torch.Generator()
    generator.set_state(loader.generator.get_state())
    order = torch.randperm(len(loader.dataset), generator=generator).numpy()
    return [int(t) for t in np.asarray(loader.dataset.trial_indices)[order]]


def _replay_loaders(peer_loaders: dict, ours: dict) -> dict:
    """sensorium's loaders, rebuilt to iterate our first-epoch order and to leave the global RNG alone."""
    rebuilt = {}
    for tier in ("train", "validation"):
        rebuilt[tier] = {}
        for key, loader in peer_loaders[tier].items():
            sampler = _first_epoch_trials(ours[tier][key]) if tier == "train" else loader.sampler
            rebuilt[tier][key] = DataLoader(
                loader.dataset, sampler=sampler, batch_size=loader.batch_size, generator=torch.Generator()
            )
    return rebuilt


def test_one_epoch_gives_sensoriums_losses_and_validation_correlation(sensorium, datasets, monkeypatch):
    our_paths, peer_paths = datasets
    peer_loaders = sensorium.datasets.static_loaders(peer_paths, **DATA)
    peer_model = sensorium.models.stacked_core_full_gauss_readout(peer_loaders, seed=SEED, **MODEL)
    ours = static_loaders(our_paths, seed=3, **DATA)
    model = stacked_core_full_gauss_readout(ours, seed=SEED, **MODEL)
    model.load_state_dict(peer_model.state_dict())  # the same initial weights (equal anyway)

    # the default loss scale counts the session's trials in all tiers, as the peer's len(dataset)
    for key, loader in ours["train"].items():
        assert loss_scale_trials(loader) == len(peer_loaders["train"][key].dataset) > len(loader.dataset)

    replay = _replay_loaders(peer_loaders, ours)
    recorder = LossRecorder(monkeypatch)
    with scheduler_without_verbose():
        peer_score, _, peer_state = sensorium.training.standard_trainer(
            peer_model, replay, seed=SEED, verbose=False, **TRAINER
        )
    peer_losses = recorder.take()
    score, output, state = standard_trainer(model, ours, seed=SEED, progress=False, **TRAINER)
    losses = recorder.take()

    steps = 2 * 5  # two sessions x 40 / 8 batches, one batch of each session per optimiser step pair
    assert len(losses) == len(peer_losses) == steps
    np.testing.assert_allclose(losses[:2], peer_losses[:2], rtol=1e-5)  # before any update
    np.testing.assert_allclose(losses, peer_losses, rtol=1e-4)
    assert output["train_loss"] == pytest.approx([np.mean(losses)], rel=1e-6)
    assert abs(score - peer_score) < 1e-4
    assert abs(score - output["initial_val_correlation"]) > 1e-3  # the epoch changed the model
    # the trained weights and BatchNorm statistics agree up to float32 drift (our CPU trainer runs
    # channels-last convolutions; a 1e-7 relative nudge of the initial weights moves the peer's own
    # layer-0 running mean by ~1e-3 after this epoch)
    for name, value in peer_state.items():
        scale = 1.0 + float(value.float().abs().max())
        assert float((state[name].float() - value.float()).abs().max()) < 1e-3 * scale, name


def test_train_tier_loss_scale_option(datasets):
    """loss_scale_trials="train" scales the Poisson loss by sqrt(n_train / B) instead of sqrt(n_all / B).

    Without regularizers and with a learning rate too small to move the weights, the two runs see
    the same batches and predictions, so their losses differ by exactly sqrt(n_all / n_train).
    """
    our_paths, _ = datasets
    config = dict(MODEL, gamma_input=0.0, gamma_readout=0.0, shifter=False)
    runs = {}
    for trials in ("all", "train"):
        loaders = static_loaders(our_paths, seed=3, **DATA)
        model = stacked_core_full_gauss_readout(loaders, seed=SEED, **config)
        _, output, _ = standard_trainer(
            model,
            loaders,
            seed=SEED,
            progress=False,
            loss_scale_trials=trials,
            **dict(TRAINER, lr_init=1e-12),
        )
        runs[trials] = output["train_loss"][0]
        n_all = [loader.dataset.session_trials for loader in loaders["train"].values()]
        n_train = [len(loader.dataset) for loader in loaders["train"].values()]
    assert n_all[0] / n_train[0] == pytest.approx(n_all[1] / n_train[1])
    assert runs["all"] / runs["train"] == pytest.approx(np.sqrt(n_all[0] / n_train[0]), rel=1e-5)
    with pytest.raises(ValueError, match="loss_scale_trials"):
        standard_trainer(model, loaders, seed=SEED, progress=False, loss_scale_trials="validation", **TRAINER)


def test_loss_scale_trials_of_other_loaders():
    """A DataLoader over a whole session with a subset sampler (sensorium's layout)."""
    from torch.utils.data import SubsetRandomSampler, TensorDataset

    loader = DataLoader(
        TensorDataset(torch.zeros(10, 1)), sampler=SubsetRandomSampler(range(4)), batch_size=2
    )
    assert loss_scale_trials(loader, "all") == 10 and loss_scale_trials(loader, "train") == 4
    plain = DataLoader(TensorDataset(torch.zeros(6, 1)), batch_size=2)
    assert loss_scale_trials(plain, "all") == loss_scale_trials(plain, "train") == 6
