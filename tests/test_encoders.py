"""FiringRateEncoder, shifters, modulators and the small helpers in pipeline.utils."""

from __future__ import annotations

import random
from collections import namedtuple

import numpy as np
import pytest
import torch

from pipeline.models.cores import Stacked2dCore
from pipeline.models.encoders import FiringRateEncoder
from pipeline.models.modulators import MLPModulator
from pipeline.models.readouts import FullGaussian2d, MultiReadoutBase
from pipeline.models.shifters import MLPShifter, StaticAffine2dShifter
from pipeline.utils import get_dims_for_loader_dict, get_module_output, resolve_device, set_seed

KEYS = ("s1-1-1", "s2-2-2")
NEURONS = {"s1-1-1": 6, "s2-2-2": 4}
IMAGE = (1, 12, 16)


def make_model(shifter: bool = False, modulator: bool = False, elu_offset: float = 0.0) -> FiringRateEncoder:
    """A tiny two-session model: 2-layer core, FullGaussian2d readouts."""
    torch.manual_seed(0)
    core = Stacked2dCore(
        input_channels=1, hidden_channels=4, input_kern=5, hidden_kern=3, layers=2, gamma_input=1.0
    )
    in_shape = get_module_output(core, (1, *IMAGE))[1:]
    readout = MultiReadoutBase(
        {k: in_shape for k in KEYS},
        NEURONS,
        base_readout=FullGaussian2d,
        bias=True,
        init_mu_range=0.3,
        init_sigma=0.1,
        feature_reg_weight=0.5,
    )
    return FiringRateEncoder(
        core,
        readout,
        shifter=MLPShifter(KEYS, hidden_channels_shifter=3, shift_layers=2, gamma_shifter=0.1)
        if shifter
        else None,
        modulator=MLPModulator(NEURONS, input_channels=3, hidden_channels=5, gamma_modulator=0.2)
        if modulator
        else None,
        elu_offset=elu_offset,
    )


def images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *IMAGE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ encoder
@pytest.mark.parametrize("elu_offset", [0.0, -3.0])
def test_output_is_strictly_positive_with_one_column_per_neuron(elu_offset: float) -> None:
    model = make_model(elu_offset=elu_offset).eval()
    for key in KEYS:
        out = model(images(), data_key=key)
        assert out.shape == (3, NEURONS[key])
        assert (out > 0).all()
    # the output non-linearity is elu(readout + offset) + 1
    x = images()
    drive = model.readout(model.core(x), data_key=KEYS[0])
    expected = torch.nn.functional.elu(drive + elu_offset) + 1
    torch.testing.assert_close(model(x, data_key=KEYS[0]), expected)


def test_data_key_is_required_with_several_sessions_and_must_exist() -> None:
    model = make_model().eval()
    with pytest.raises(ValueError, match="data_key is required"):
        model(images())
    with pytest.raises(KeyError, match="unknown data_key 'nope'"):
        model(images(), data_key="nope")


def test_whole_batches_can_be_passed_and_unknown_keywords_are_ignored() -> None:
    model = make_model().eval()
    Batch = namedtuple("Batch", ["images", "responses"])
    batch = Batch(images(), torch.rand(3, NEURONS[KEYS[0]]))
    expected = model(batch.images, data_key=KEYS[0])
    got = model(*batch, data_key=KEYS[0], **batch._asdict(), something_else=1)
    torch.testing.assert_close(got, expected)


def test_initialized_shifter_gives_zero_shift_and_then_changes_the_output() -> None:
    model = make_model(shifter=True).eval()
    plain = make_model(shifter=False).eval()
    x, pupil = images(), torch.randn(3, 2)
    model.shifter.initialize()
    # the zero-initialised last layer gives shift 0: identical to the model without a shifter
    torch.testing.assert_close(model(x, data_key=KEYS[0], pupil_center=pupil), plain(x, data_key=KEYS[0]))
    with torch.no_grad():
        model.shifter[KEYS[0]].linear_layers[-1].bias.fill_(0.3)
        model.shifter[KEYS[0]].linear_layers[-1].weight.normal_()
    shifted = model(x, data_key=KEYS[0], pupil_center=pupil)
    assert (shifted - plain(x, data_key=KEYS[0])).abs().max() > 1e-4
    # and the shift depends on the eye position
    assert (model(x, data_key=KEYS[0], pupil_center=pupil + 1.0) - shifted).abs().max() > 1e-4


def test_missing_pupil_center_with_a_shifter_is_a_clear_error() -> None:
    model = make_model(shifter=True)
    with pytest.raises(ValueError, match="pupil_center"):
        model(images(), data_key=KEYS[0])


def test_modulator_scales_the_drive_by_a_positive_behaviour_gain() -> None:
    model = make_model(modulator=True).eval()
    plain = make_model().eval()
    x, behavior = images(), torch.randn(3, 3)
    torch.testing.assert_close(model(x, data_key=KEYS[1], behavior=behavior), plain(x, data_key=KEYS[1]))
    with torch.no_grad():
        model.modulator[KEYS[1]].linear.weight.normal_()
    gain = model.modulator[KEYS[1]].gain(behavior)
    assert gain.shape == (3, NEURONS[KEYS[1]]) and (gain > 0).all()
    drive = model.readout(model.core(x), data_key=KEYS[1])
    expected = torch.nn.functional.elu(drive * gain) + 1
    torch.testing.assert_close(model(x, data_key=KEYS[1], behavior=behavior), expected)
    with pytest.raises(ValueError, match="behavior"):
        model(x, data_key=KEYS[1])


def test_detach_core_stops_gradients_into_the_core_only() -> None:
    model = make_model().train()
    model(images(), data_key=KEYS[0], detach_core=True).sum().backward()
    assert all(p.grad is None for p in model.core.parameters())
    readout_grads = [p.grad for p in model.readout[KEYS[0]].parameters() if p.grad is not None]
    assert readout_grads and any(g.abs().sum() > 0 for g in readout_grads)
    model.zero_grad()
    model(images(), data_key=KEYS[0]).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.core.parameters())


def test_regularizer_is_core_plus_readout_plus_shifter_plus_modulator() -> None:
    model = make_model(shifter=True, modulator=True)
    with torch.no_grad():  # non-zero shifter / modulator weights so that their terms count
        model.shifter[KEYS[0]].linear_layers[-1].weight.fill_(0.5)
        model.modulator[KEYS[0]].linear.weight.fill_(0.25)
    expected = (
        model.core.regularizer()
        + model.readout.regularizer(data_key=KEYS[0])
        + 0.1 * sum(layer.weight.pow(2).sum() for layer in model.shifter[KEYS[0]].linear_layers)
        + 0.2 * model.modulator[KEYS[0]].linear.weight.abs().sum()
    )
    reg = model.regularizer(data_key=KEYS[0])
    assert reg.dim() == 0
    torch.testing.assert_close(reg, expected)
    assert model.core.regularizer() > 0 and model.readout.regularizer(data_key=KEYS[0]) > 0
    # detach_core keeps the value but sends no gradient into the core
    reg = model.regularizer(data_key=KEYS[0], detach_core=True)
    torch.testing.assert_close(reg, expected)
    reg.backward()
    assert all(p.grad is None for p in model.core.parameters())


def test_regularizer_without_data_key_sums_the_sessions_and_counts_the_core_once() -> None:
    model = make_model(shifter=True)
    total = model.regularizer()
    per_session = [model.regularizer(data_key=k) - model.core.regularizer() for k in KEYS]
    torch.testing.assert_close(total, model.core.regularizer() + sum(per_session))


def test_encoder_with_a_single_readout_module() -> None:
    core = Stacked2dCore(
        input_channels=1, hidden_channels=2, input_kern=3, hidden_kern=3, layers=1, gamma_input=1.0
    )
    readout = FullGaussian2d(get_module_output(core, (1, *IMAGE))[1:], 3, bias=True, feature_reg_weight=2.0)
    model = FiringRateEncoder(core, readout).eval()
    assert model(images()).shape == (3, 3)
    torch.testing.assert_close(model.regularizer(), core.regularizer() + readout.regularizer())


def test_encoder_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match="core must be a torch.nn.Module"):
        FiringRateEncoder("core", torch.nn.Identity())


# ------------------------------------------------------------------------------------ shifters
def test_mlp_shifter_layout_and_errors() -> None:
    shifter = MLPShifter(["a", "b"], input_channels=2, hidden_channels_shifter=5, shift_layers=3)
    assert [n for n in shifter.state_dict() if n.startswith("a.")] == [
        "a.mlp.0.weight",
        "a.mlp.0.bias",
        "a.mlp.2.weight",
        "a.mlp.2.bias",
        "a.mlp.4.weight",
        "a.mlp.4.bias",
    ]
    assert shifter["a"](torch.randn(4, 2)).abs().sum() > 0  # PyTorch's default init, as the peer
    shifter.initialize()
    assert torch.equal(shifter["a"](torch.randn(4, 2)), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="expects 2 input features but got 3"):
        shifter["a"](torch.randn(4, 2), trial_idx=torch.arange(4))
    with pytest.raises(TypeError, match="single string"):
        MLPShifter("ab")
    with pytest.raises(ValueError, match="data_key is required"):
        shifter.regularizer()


def test_initialize_resets_a_trained_shifter() -> None:
    shifter = MLPShifter(["a"], shift_layers=2)
    with torch.no_grad():
        for p in shifter.parameters():
            p.fill_(0.7)
    assert shifter["a"](torch.ones(1, 2)).abs().sum() > 0
    shifter.initialize()
    assert shifter["a"](torch.ones(1, 2)).abs().sum() == 0


def test_static_affine_shifter_output_and_regularizer() -> None:
    shifter = StaticAffine2dShifter(["a"], gamma_shifter=2.0)
    with torch.no_grad():
        shifter["a"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        shifter["a"].bias.zero_()
    pupil = torch.tensor([[0.5, 0.25]])
    torch.testing.assert_close(shifter["a"](pupil), torch.tanh(torch.tensor([[0.5, -0.25]])))
    torch.testing.assert_close(shifter.regularizer("a"), torch.tensor(2.0 * 0.5))


def test_modulator_validates_shapes() -> None:
    modulator = MLPModulator({"a": 3}, input_channels=3)
    with pytest.raises(ValueError, match=r"behavior must have shape \(batch, 3\)"):
        modulator["a"](torch.ones(2, 3), behavior=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3\)"):
        modulator["a"](torch.ones(2, 4), behavior=torch.ones(2, 3))


# ------------------------------------------------------------------------------------ utils
def test_set_seed_accepts_numpy_integers_like_ints_and_rejects_others() -> None:
    draws = []
    for seed in (7, np.int64(7)):
        assert type(set_seed(seed)) is int
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
    for bad in (7.0, "7", True, None):
        with pytest.raises(TypeError, match="seed must be an integer"):
            set_seed(bad)
    with pytest.raises(ValueError, match="non-negative"):
        set_seed(-1)


def test_get_dims_for_loader_dict_reads_namedtuple_and_dict_batches() -> None:
    Batch = namedtuple("Batch", ["images", "responses", "pupil_center"])
    named = [Batch(torch.zeros(4, 1, 5, 6), torch.zeros(4, 3), torch.zeros(4, 2))]
    as_dict = [{"images": torch.zeros(2, 2, 5, 6), "responses": torch.zeros(2, 9)}]
    dims = get_dims_for_loader_dict({"train": {"a": named, "b": as_dict}})
    assert dims == {
        "a": {"images": (4, 1, 5, 6), "responses": (4, 3), "pupil_center": (4, 2)},
        "b": {"images": (2, 2, 5, 6), "responses": (2, 9)},
    }
    with pytest.raises(ValueError, match="yields no batches"):
        get_dims_for_loader_dict({"a": []})


def test_get_module_output_keeps_train_mode_and_batch_norm_statistics() -> None:
    core = Stacked2dCore(
        input_channels=1, hidden_channels=3, input_kern=5, hidden_kern=3, layers=2, pad_input=False
    )
    core.train()
    before = {k: v.clone() for k, v in core.state_dict().items()}
    assert get_module_output(core, (2, 1, 20, 30)) == (2, 6, 16, 26)  # stack=None: both layers
    assert core.training
    assert all(torch.equal(before[k], v) for k, v in core.state_dict().items())


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(TypeError):
        resolve_device(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
