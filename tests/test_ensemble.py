"""EnsembleEncoder: the mean of its members, called like one encoder, refusing members of other data."""

from __future__ import annotations

import pytest
import torch

from pipeline.contracts import UnknownDataKeyError
from pipeline.models import EnsembleEncoder, stacked_core_full_gauss_readout
from pipeline.models.ensemble import session_neurons
from pipeline.scoring import score_model

SHAPE = [1, 12, 16]


def data_info(neurons: dict[str, int]) -> dict:
    return {
        key: {
            "n_neurons": n,
            "input_shape": SHAPE,
            "input_channels": 1,
            "cortex_coordinates": None,
            "mean_activity": None,
        }
        for key, n in neurons.items()
    }


def tiny_model(seed: int, neurons: dict[str, int] | None = None, **extra):
    info = data_info(neurons or {"1-1-1": 5, "2-2-2": 3})
    return stacked_core_full_gauss_readout(
        data_info=info, seed=seed, hidden_channels=4, layers=1, input_kern=5, init_mu_range=0.3, **extra
    ).eval()


def test_the_output_is_the_mean_of_the_members_for_every_session() -> None:
    members = [tiny_model(seed) for seed in (1, 2, 3)]
    ensemble = EnsembleEncoder(members).eval()
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    for key, n in (("1-1-1", 5), ("2-2-2", 3)):
        expected = torch.stack([m(x, data_key=key) for m in members]).mean(0)
        out = ensemble(x, data_key=key)
        assert out.shape == (4, n)
        torch.testing.assert_close(out, expected)
        # the members differ, so the mean is not any one of them
        assert not torch.allclose(out, members[0](x, data_key=key))
    assert ensemble.data_keys == ["1-1-1", "2-2-2"]
    assert session_neurons(ensemble) == {"1-1-1": 5, "2-2-2": 3}


def test_keyword_inputs_reach_every_member() -> None:
    # members with a shifter need pupil_center: an ensemble that dropped it would raise or ignore it
    members = [tiny_model(seed, shifter=True) for seed in (1, 2)]
    for member in members:  # a non-zero shift, so the eye position changes the output
        for p in member.shifter.parameters():
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(3))
    ensemble = EnsembleEncoder(members).eval()
    x = torch.randn(2, *SHAPE)
    eyes = torch.tensor([[2.0, -1.0], [-2.0, 1.5]])
    expected = torch.stack([m(x, data_key="1-1-1", pupil_center=eyes) for m in members]).mean(0)
    torch.testing.assert_close(ensemble(x, data_key="1-1-1", pupil_center=eyes), expected)
    assert not torch.allclose(ensemble(x, data_key="1-1-1", pupil_center=eyes * 0), expected)


def test_members_of_different_data_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="same sessions, same neurons") as info:
        EnsembleEncoder([tiny_model(1), tiny_model(2, {"1-1-1": 5, "2-2-2": 4})])
    assert "2-2-2: 4 neurons" in str(info.value)
    with pytest.raises(ValueError, match="same sessions"):
        EnsembleEncoder([tiny_model(1), tiny_model(2, {"1-1-1": 5})])
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleEncoder([])
    with pytest.raises(TypeError, match=r"\[model\]"):
        EnsembleEncoder(tiny_model(1))
    with pytest.raises(TypeError, match="member 1"):
        EnsembleEncoder([tiny_model(1), "model.pt"])


def test_an_unknown_session_names_the_known_ones() -> None:
    ensemble = EnsembleEncoder([tiny_model(1), tiny_model(2)])
    with pytest.raises(UnknownDataKeyError, match="1-1-1"):
        ensemble(torch.randn(1, *SHAPE), data_key="9-9-9")
    with pytest.raises(ValueError, match="data_key is required"):
        ensemble(torch.randn(1, *SHAPE))


def test_an_ensemble_is_scored_like_one_model() -> None:
    members = [tiny_model(seed, {"1-1-1": 5}) for seed in (1, 2)]
    ensemble = EnsembleEncoder(members).train()  # score_model puts it in eval mode and restores it
    g = torch.Generator().manual_seed(1)
    images = torch.randn(40, *SHAPE, generator=g)
    with torch.no_grad():
        responses = torch.poisson(members[0].eval()(images, data_key="1-1-1"), generator=g)
    batches = [(images[i : i + 10], responses[i : i + 10]) for i in range(0, 40, 10)]
    scores = score_model(ensemble, {"test": {"1-1-1": batches}})["test"]["1-1-1"]
    assert scores["correlation"].shape == (5,)
    assert ensemble.training
    with torch.no_grad():
        prediction = ensemble.eval()(images, data_key="1-1-1")
    expected = torch.stack(
        [torch.corrcoef(torch.stack([responses[:, n], prediction[:, n]]))[0, 1] for n in range(5)]
    )
    torch.testing.assert_close(
        torch.as_tensor(scores["correlation"], dtype=torch.float32), expected, atol=1e-5, rtol=0
    )
