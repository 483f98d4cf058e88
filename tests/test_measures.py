"""Measures against hand-computed values, their edge cases, and the model-over-loaders helpers."""

from __future__ import annotations

import math
import warnings
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import measures as M
from tests.test_trainer import ToyDataset, ToyLoader

# --------------------------------------------------------------------------------------------------
# corr


def test_corr_matches_pearson_per_neuron_and_is_scale_free():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 3))
    b = a + rng.normal(size=(30, 3))
    expected = [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(3)]
    np.testing.assert_allclose(M.corr(a, b, axis=0), expected, rtol=1e-12)
    np.testing.assert_allclose(M.corr(a.T, b.T, axis=1), expected, rtol=1e-12)
    # population statistics: no (n-1)/n shrinkage, so a perfect linear relation gives exactly ±1
    assert M.corr([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0, abs=1e-15)
    assert M.corr([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0, abs=1e-15)
    # hand value: x = (1,2,3), y = (1,2,4): cov = 3/3 = 1, var_x = 2/3, var_y = 14/9
    assert M.corr([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]) == pytest.approx(1 / math.sqrt(2 / 3 * 14 / 9), rel=1e-12)


def test_corr_of_a_constant_neuron_is_zero_without_warnings():
    a = np.array([[0.1, 1.0], [0.1, 2.0], [0.1, 4.0]])
    b = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = M.corr(a, b, axis=0)
    assert result[0] == 0.0
    assert result[1] > 0.9


def test_corr_nan_policies():
    a = np.array([[1.0], [2.0], [np.nan], [4.0], [5.0]])
    b = np.array([[2.0], [1.0], [7.0], [5.0], [4.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(M.corr(a, b)[0])
        omitted = M.corr(a, b, nan_policy="omit")[0]
    assert omitted == pytest.approx(np.corrcoef([1, 2, 4, 5], [2, 1, 5, 4])[0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        M.corr(a, b, nan_policy="raise")
    with pytest.raises(ValueError, match="nan_policy"):
        M.corr(a, b, nan_policy="ignore")
    with pytest.raises(ValueError, match="same shape"):
        M.corr(a, b[:4])


# --------------------------------------------------------------------------------------------------
# Poisson loss


def test_poisson_loss_hand_values():
    targets = np.array([[1.0, 0.0], [2.0, 3.0]])
    outputs = np.array([[2.0, 1.0], [1.0, 0.5]])
    per_entry = np.array([[2 - math.log(2), 1.0], [1.0, 0.5 - 3 * math.log(0.5)]])
    assert M.poisson_loss(targets, outputs) == pytest.approx(per_entry.sum())
    assert M.poisson_loss(targets, outputs, avg=True) == pytest.approx(per_entry.mean())
    np.testing.assert_allclose(M.poisson_loss(targets, outputs, per_neuron=True), per_entry.sum(0))
    np.testing.assert_allclose(M.poisson_loss(targets, outputs, per_neuron=True, avg=True), per_entry.mean(0))
    with pytest.raises(ValueError, match="same shape"):
        M.poisson_loss(targets, outputs[:1])
    with pytest.raises(ValueError, match="positive"):
        M.poisson_loss(targets, -outputs)


# --------------------------------------------------------------------------------------------------
# repeat-based measures; one neuron, images [1, 3] and [7, 9] (2 repeats each):
#   all trials 1,3,7,9: mean 5, Var_total (ddof 1) = (16+4+4+16)/3 = 40/3
#   per-image variances (ddof 1) 2 and 2 → Var_noise = 2 → FEV = (40/3 − 2)/(40/3) = 0.85

TWO_IMAGES = [np.array([[1.0], [3.0]]), np.array([[7.0], [9.0]])]


def test_fev_hand_value_and_array_input():
    np.testing.assert_allclose(M.fev(TWO_IMAGES), [0.85])
    np.testing.assert_allclose(M.fev(np.stack(TWO_IMAGES)), [0.85])


def test_fev_with_unequal_repeat_counts():
    # trials 1,3,7,8,9: mean 5.6, squared deviations sum 47.2 → Var_total = 11.8; noise = (2 + 1)/2
    repeated = [np.array([[1.0], [3.0]]), np.array([[7.0], [8.0], [9.0]])]
    np.testing.assert_allclose(M.fev(repeated), [(11.8 - 1.5) / 11.8])


def test_fev_needs_repeats_and_drops_single_repeat_images():
    with pytest.raises(ValueError, match="repeats"):
        M.fev([np.array([[1.0]]), np.array([[2.0]])])
    # a single-repeat image is left out of both variances
    np.testing.assert_allclose(M.fev([*TWO_IMAGES, np.array([[100.0]])]), [0.85])
    with pytest.raises(ValueError, match="neurons"):
        M.fev([np.zeros((2, 1)), np.zeros((2, 2))])
    with pytest.raises(ValueError, match="empty"):
        M.fev([])


def test_fev_of_a_constant_neuron_is_zero():
    repeated = [np.array([[1.0, 5.0], [3.0, 5.0]]), np.array([[7.0, 5.0], [9.0, 5.0]])]
    np.testing.assert_allclose(M.fev(repeated), [0.85, 0.0])


def test_feve_hand_value_threshold_and_prediction_layouts():
    # predictions = per-image means 2 and 8: MSE = 1 → FEVE = 1 − (1 − 2)/(40/3 − 2) = 1 + 3/34
    expected = 1 + 3 / 34
    per_image = np.array([[2.0], [8.0]])
    np.testing.assert_allclose(M.feve(TWO_IMAGES, per_image), [expected])
    broadcast = [np.full((2, 1), 2.0), np.full((2, 1), 8.0)]
    fev_values, feve_values = M.feve(TWO_IMAGES, broadcast, return_fev=True)
    np.testing.assert_allclose(fev_values, [0.85])
    np.testing.assert_allclose(feve_values, [expected])
    # a second neuron that is pure noise (FEV < 0.15) is excluded with NaN, unless threshold=None
    # (second neuron: images [0, 4] and [3, 7] → Var_total = 25/3, Var_noise = 8, FEV = 0.04)
    noisy = [np.array([[1.0, 0.0], [3.0, 4.0]]), np.array([[7.0, 3.0], [9.0, 7.0]])]
    predictions = np.array([[2.0, 2.0], [8.0, 2.0]])
    np.testing.assert_allclose(M.fev(noisy), [0.85, 0.04])
    result = M.feve(noisy, predictions)
    assert result[0] == pytest.approx(expected) and np.isnan(result[1])
    assert np.isfinite(M.feve(noisy, predictions, threshold=None)[1])
    assert np.isnan(M.feve(noisy, predictions, threshold=0.9)[0])
    with pytest.raises(ValueError, match="images"):
        M.feve(TWO_IMAGES, per_image[:1])


def test_jackknife_oracle_hand_value():
    # with two repeats the leave-one-out mean is the other trial: trials (1,3,7,9) vs (3,1,9,7)
    expected = np.corrcoef([1, 3, 7, 9], [3, 1, 9, 7])[0, 1]
    np.testing.assert_allclose(M.oracle_corr_jackknife(TWO_IMAGES), [expected])
    # three repeats: trial 7 ↔ mean(8, 9), 8 ↔ mean(7, 9), 9 ↔ mean(7, 8); single-repeat images dropped
    repeated = [np.array([[1.0], [3.0]]), np.array([[7.0], [8.0], [9.0]]), np.array([[50.0]])]
    expected = np.corrcoef([1, 3, 7, 8, 9], [3, 1, 8.5, 8, 7.5])[0, 1]
    np.testing.assert_allclose(M.oracle_corr_jackknife(repeated), [expected])
    with pytest.raises(ValueError, match="repeats"):
        M.oracle_corr_jackknife([np.ones((1, 3))])


def test_conservative_oracle_hand_value():
    # per-image means 2, 8 → Var_mean (ddof 0) = 9; per-image variances (ddof 0) 1, 1 → Var_noise = 1
    np.testing.assert_allclose(M.oracle_corr_conservative(TWO_IMAGES), [9 / math.sqrt(9 * 10)])
    constant = [np.array([[1.0], [3.0]]), np.array([[1.0], [3.0]])]
    np.testing.assert_allclose(M.oracle_corr_conservative(constant), [0.0])


def test_fraction_oracle_is_the_slope_through_the_origin():
    assert M.fraction_oracle([0.5, 0.4], [1.0, 0.8]) == pytest.approx(0.5)
    # slope = Σ o·t / Σ o² = (0.5·1 + 0.6·0.5) / (1 + 0.25)
    assert M.fraction_oracle([0.5, 0.6, np.nan], [1.0, 0.5, 0.9]) == pytest.approx(0.8 / 1.25)
    with pytest.raises(ValueError, match="undefined"):
        M.fraction_oracle([0.1], [0.0])
    with pytest.raises(ValueError, match="one oracle per neuron"):
        M.fraction_oracle([0.1, 0.2], [0.5])


def test_repeat_measures_match_the_peer_library():
    """Same numbers as neuralpredictors 0.3.0's np_functions (where the peer is well defined)."""
    try:
        from tests.peer import import_neuralpredictors

        peer = import_neuralpredictors().measures.np_functions
    except ImportError:
        pytest.skip("neuralpredictors is not installed")
    rng = np.random.default_rng(3)
    signal = rng.gamma(2.0, size=(8, 1, 5))
    repeated = signal + rng.gamma(1.0, size=(8, 4, 5))  # 8 images × 4 repeats × 5 neurons
    predictions = signal + 0.1 * rng.normal(size=(8, 1, 5))
    broadcast = [np.broadcast_to(p, r.shape) for p, r in zip(predictions, repeated)]
    peer_fev, peer_feve = peer.fev(list(repeated), broadcast, return_exp_var=True)
    ours_fev, ours_feve = M.feve(repeated, broadcast, threshold=None, return_fev=True)
    np.testing.assert_allclose(ours_fev, peer_fev, rtol=1e-10)
    np.testing.assert_allclose(ours_feve, peer_feve, rtol=1e-10)
    np.testing.assert_allclose(M.fev(repeated), peer.explainable_var(repeated, eps=0), rtol=1e-10)
    np.testing.assert_allclose(
        M.oracle_corr_jackknife(repeated), peer.oracle_corr_jackknife(repeated), atol=1e-7
    )
    np.testing.assert_allclose(
        M.oracle_corr_conservative(repeated), peer.oracle_corr_conservative(repeated), rtol=1e-10
    )


def test_corr_to_average_uses_the_mean_over_repeats():
    repeated = [np.array([[1.0], [3.0]]), np.array([[7.0], [9.0]]), np.array([[4.0], [4.0], [4.0]])]
    # means 2, 8, 4 against predictions 1, 3, 2
    expected = np.corrcoef([2, 8, 4], [1, 3, 2])[0, 1]
    np.testing.assert_allclose(
        M.corr_to_average(repeated, [np.array([1.0]), np.array([3.0]), np.array([2.0])]), [expected]
    )
    np.testing.assert_allclose(M.corr_to_average(repeated, np.array([[1.0], [3.0], [2.0]])), [expected])


def test_split_by_image_groups_trials():
    values = np.arange(5)[:, None] * 1.0
    groups = M.split_by_image(values, np.array([3, 1, 3, 2, 1]))
    assert [g.ravel().tolist() for g in groups] == [[1.0, 4.0], [3.0], [0.0, 2.0]]
    with pytest.raises(ValueError, match="one entry per trial"):
        M.split_by_image(values, np.array([1, 2]))


# --------------------------------------------------------------------------------------------------
# model over loaders

EyeBatch = namedtuple("EyeBatch", ["images", "responses", "pupil_center"])


class Echo(nn.Module):
    """Predicts its input image's pixels (plus the pupil centre's first entry when given) as responses."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, images, data_key=None, pupil_center=None, **kwargs):
        self.seen.append(
            (data_key, self.training, torch.is_inference_mode_enabled(), pupil_center is not None)
        )
        out = images.flatten(1) * self.scale
        if pupil_center is not None:
            out = out + pupil_center[:, :1]
        return out


def repeated_loader(seed: int = 0, n_images: int = 6, n_repeats: int = 3, n_neurons: int = 4):
    """Test-tier-like loader: image i is shown n_repeats times; responses = image + noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n_images, 1, 1, n_neurons)).astype(np.float32) + 3
    image_ids = np.repeat(np.arange(n_images), n_repeats)
    images = signal[image_ids]
    responses = images.reshape(len(image_ids), -1) + 0.5 * rng.normal(
        size=(len(image_ids), n_neurons)
    ).astype(np.float32)
    dataset = ToyDataset(torch.from_numpy(images), torch.from_numpy(responses), image_ids=image_ids)
    return ToyLoader(dataset, batch_size=5), images.reshape(len(image_ids), -1), responses, image_ids


def test_model_predictions_returns_arrays_in_eval_and_restores_training():
    loader, images, responses, _ = repeated_loader()
    model = Echo()
    model.train()
    targets, outputs = M.model_predictions(model, loader, "s", device="cpu")
    np.testing.assert_allclose(targets, responses)
    np.testing.assert_allclose(outputs, images)
    assert model.training
    assert all(key == "s" and not training and inference for key, training, inference, _ in model.seen)


def test_model_predictions_passes_extra_batch_fields_as_keywords():
    images = torch.zeros(4, 1, 1, 2)
    batch = EyeBatch(images, torch.zeros(4, 2), torch.full((4, 2), 5.0))
    model = Echo()
    _, outputs = M.model_predictions(model, [batch], "s")
    np.testing.assert_allclose(outputs, 5.0)
    assert model.seen[0][3]


def test_get_correlations_per_session_and_tier_selection():
    loader_a, images_a, responses_a, _ = repeated_loader(seed=0)
    loader_b, images_b, responses_b, _ = repeated_loader(seed=1, n_neurons=3)
    tiers = {"test": {"a": loader_a, "b": loader_b}}
    model = Echo()
    per_session = M.get_correlations(model, tiers, tier="test", as_dict=True)
    np.testing.assert_allclose(per_session["a"], M.corr(responses_a, images_a))
    np.testing.assert_allclose(per_session["b"], M.corr(responses_b, images_b))
    flat = M.get_correlations(model, tiers["test"])
    assert flat.shape == (7,)
    assert M.get_correlations(model, tiers["test"], per_neuron=False) == pytest.approx(flat.mean())
    means = M.get_correlations(model, tiers["test"], as_dict=True, per_neuron=False)
    assert means["b"] == pytest.approx(per_session["b"].mean())
    with pytest.raises(ValueError, match="tier="):
        M.get_correlations(model, tiers)
    with pytest.raises(ValueError, match="'validation'"):
        M.get_correlations(model, tiers, tier="validation")


def test_repeat_measures_over_loaders_match_the_array_functions():
    loader, images, responses, image_ids = repeated_loader()
    model = Echo()
    targets = M.split_by_image(responses, image_ids)
    outputs = M.split_by_image(images, image_ids)
    loaders = {"a": loader}
    np.testing.assert_allclose(M.get_signal_correlations(model, loaders), M.corr_to_average(targets, outputs))
    np.testing.assert_allclose(
        M.get_feve(model, loaders, threshold=None), M.feve(targets, outputs, threshold=None), rtol=1e-6
    )
    np.testing.assert_allclose(M.get_explainable_var(loaders), M.fev(targets), rtol=1e-6)
    np.testing.assert_allclose(M.get_oracles(loaders), M.oracle_corr_jackknife(targets), rtol=1e-6)
    np.testing.assert_allclose(
        M.get_oracles(loaders, conservative=True), M.oracle_corr_conservative(targets), rtol=1e-6
    )
    expected = M.fraction_oracle(M.corr(responses, images), M.oracle_corr_jackknife(targets))
    assert M.get_fraction_oracles(model, loaders) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(
        M.get_poisson_loss(model, loaders), M.poisson_loss(responses, images, per_neuron=True), rtol=1e-6
    )


def test_repeat_measures_use_by_image_when_the_loader_has_it():
    loader, images, responses, image_ids = repeated_loader()

    class ByImage(ToyLoader):
        def by_image(self):
            for i in np.unique(image_ids):
                idx = torch.from_numpy(np.flatnonzero(image_ids == i))
                yield self.dataset.images[idx], self.dataset.responses[idx]

    by_image = ByImage(loader.dataset, batch_size=5)
    del by_image.dataset.trial_info  # only by_image() can find the repeats now
    expected = M.corr_to_average(M.split_by_image(responses, image_ids), M.split_by_image(images, image_ids))
    np.testing.assert_allclose(M.get_signal_correlations(Echo(), {"a": by_image}), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="repeats of an image"):
        M.get_signal_correlations(Echo(), {"a": ToyLoader(by_image.dataset, 5)})


def test_score_model_gives_every_neuron_score_per_tier_and_none_without_repeats():
    from pipeline.contracts import NEURON_SCORE_NAMES
    from pipeline.scoring import score_model

    loader, images, responses, image_ids = repeated_loader()
    single = ToyLoader(ToyDataset(torch.from_numpy(images[:, None, None, :]), torch.from_numpy(responses)), 5)
    scores = score_model(Echo(), {"test": {"a": loader}, "train": {"a": single}})
    targets, outputs = M.split_by_image(responses, image_ids), M.split_by_image(images, image_ids)
    test = scores["test"]["a"]
    assert tuple(test) == NEURON_SCORE_NAMES
    np.testing.assert_allclose(test["correlation"], M.corr(responses, images), rtol=1e-6)
    np.testing.assert_allclose(test["correlation_to_average"], M.corr_to_average(targets, outputs), rtol=1e-6)
    fev, feve = M.feve(targets, outputs, return_fev=True)
    np.testing.assert_allclose(test["fev"], fev, rtol=1e-6)
    np.testing.assert_allclose(test["feve"], feve, rtol=1e-5)
    np.testing.assert_allclose(test["oracle"], M.oracle_corr_jackknife(targets), rtol=1e-6)
    assert all(value.dtype == np.float64 and value.shape == (4,) for value in test.values())
    train = scores["train"]["a"]  # no trial_info, so no repeats: only the correlation
    assert train["correlation"].shape == (4,)
    assert all(train[name] is None for name in NEURON_SCORE_NAMES if name != "correlation")
    with pytest.raises(TypeError, match="dataloaders\\['test'\\]"):
        score_model(Echo(), {"test": loader})


def test_the_package_re_exports_every_array_and_evaluation_name():
    from pipeline.measures import arrays, evaluation

    assert set(M.__all__) == set(arrays.__all__) | set(evaluation.__all__)
    for name in M.__all__:
        module = arrays if name in arrays.__all__ else evaluation
        assert getattr(M, name) is getattr(module, name), name
