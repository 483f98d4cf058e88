"""Proof on ground truth: ensembles of trained models predict better, and their MEIs are the true filters.

The synthetic generator is an LN model (pipeline.data.synthetic): neuron n's response is a softplus
of ``<filter_n, image>`` with ``filter_n`` its Gabor feature at its RF position pooled by its Gaussian
(``linear_filters``). Under a fixed image norm the most exciting input of such a neuron is its filter,
so MEIs of trained models must correlate with the filters. Three seeds of a small Gaussian-readout
model are trained once for the module (about ten seconds on two cores); benchmarks/bench_mei.py
measures the same at a larger size, with timings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data import StaticDataset, load_ground_truth, make_synthetic_dataset, static_loaders
from pipeline.data.synthetic import linear_filters
from pipeline.mei import data_reference, optimize_meis
from pipeline.models import EnsembleEncoder, stacked_core_full_gauss_readout
from pipeline.scoring import score_model
from pipeline.training import standard_trainer

KEY = "90001-1-1"
IMAGE_SHAPE = (20, 36)
MODEL_CONFIG = dict(
    hidden_channels=8,
    layers=2,
    input_kern=7,
    hidden_kern=5,
    gamma_input=1.0,
    gamma_readout=0.005,
    init_mu_range=0.5,
    init_sigma=0.3,
    gauss_type="full",
    pad_input=False,
    grid_mean_predictor={"type": "cortex", "input_dimensions": 2, "hidden_layers": 0, "final_tanh": False},
)
TRAINER_CONFIG = dict(device="cpu", max_iter=20, lr_init=0.01, patience=4, lr_decay_steps=2, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = make_synthetic_dataset(
        tmp_path_factory.mktemp("mei") / f"static{KEY}-mei",
        n_neurons=24,
        n_train=500,
        n_validation=150,
        n_test_images=20,
        n_repeats=6,
        image_shape=IMAGE_SHAPE,
        seed=2,
    )
    loaders = static_loaders([str(path)], batch_size=32, seed=0, use_cache=False)
    members = []
    for seed in (0, 1, 2):
        model = stacked_core_full_gauss_readout(loaders, seed=seed, **MODEL_CONFIG)
        standard_trainer(model, loaders, seed=seed, **TRAINER_CONFIG)
        members.append(model.eval())
    return path, loaders, members


def test_linear_filters_reproduce_the_generators_rates(tmp_path) -> None:
    path = make_synthetic_dataset(
        tmp_path / "static1-1-1-lf", n_neurons=7, n_train=30, n_validation=5, n_test_images=3, n_repeats=2,
        image_shape=(16, 22), seed=4, noise="none", pool_sigma=1.5,
    )  # fmt: skip
    truth = load_ground_truth(path)
    filters = linear_filters(path)
    assert filters.shape == (7, 16, 22)
    images = (StaticDataset(path, use_cache=False).images.numpy()[:, 0].astype(np.float64) - 128) / 50
    pooled = images.reshape(len(images), -1) @ filters.reshape(7, -1).T
    z = (pooled - truth["pooled_mean"]) / truth["pooled_std"]
    rates = truth["rate_scale"] * np.logaddexp(0, truth["gains"] * z + truth["biases"])
    np.testing.assert_allclose(rates, truth["rates"], rtol=1e-8)
    # each filter peaks near its neuron's RF position (pixel units, align_corners=True)
    peak_y, peak_x = np.unravel_index(np.abs(filters).reshape(7, -1).argmax(axis=1), (16, 22))
    assert np.abs(peak_x - (truth["rf_x"] + 1) / 2 * 21).max() < 4
    assert np.abs(peak_y - (truth["rf_y"] + 1) / 2 * 15).max() < 4
    with pytest.raises(ValueError, match="pool_sigma"):
        linear_filters({k: v for k, v in truth.items() if k != "pool_sigma"})


@pytest.mark.slow
def test_the_ensemble_predicts_the_test_set_at_least_as_well_as_its_best_member(trained) -> None:
    _, loaders, members = trained
    ensemble = EnsembleEncoder(members)

    def test_correlation(model) -> float:
        return float(np.mean(score_model(model, {"test": loaders["test"]})["test"][KEY]["correlation"]))

    member_scores = [test_correlation(m) for m in members]
    assert min(member_scores) > 0.6  # every member learned the data
    assert test_correlation(ensemble) >= max(member_scores)


@pytest.mark.slow
def test_meis_of_well_predicted_neurons_match_the_true_filters(trained) -> None:
    path, loaders, members = trained
    ensemble = EnsembleEncoder(members)
    correlation = score_model(ensemble, {"test": loaders["test"]})["test"][KEY]["correlation"]
    good = np.flatnonzero(correlation > 0.5)
    assert len(good) >= 12
    truth = linear_filters(path)
    reference = data_reference(loaders["train"][KEY])
    assert reference.input_shape == (1, *IMAGE_SHAPE)
    result = optimize_meis(
        ensemble, KEY, good, reference.input_shape, seed=0, data_range=reference.pixel_range
    )
    r = np.array(
        [np.corrcoef(result.images[i, 0].ravel(), truth[n].ravel())[0, 1] for i, n in enumerate(good)]
    )
    assert np.median(np.abs(r)) >= 0.7
    assert (r > 0).mean() >= 0.9  # excitatory neurons: the MEI is the filter, not its negative
    # the MEI drives its neuron far more than the average image does
    assert (result.activations.numpy() > 2 * reference.mean_response[good]).all()
    assert torch.allclose(result.norms, torch.full_like(result.norms, 10.0), rtol=2e-3)
