"""Differential tests: our builders against sensorium's ``stacked_core_full_gauss_readout`` itself.

Each builder gets its own project's loaders over the same synthetic sessions (with behaviour and
pupil centre) and the same seed and config; the two models must have the same state-dict entries in
the same order with *identical* values (the random draws happen in the same order), and the same
outputs in eval mode, in train mode (the readouts sample positions from the same generator state),
and the same regularizer. The factorized builder has no sensorium counterpart: its reference is the
same recipe (seed, core, one readout per session) built from neuralpredictors 0.3.0's modules.
Skipped when sensorium (shared/peers) is not available.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.data import make_synthetic_dataset, static_loaders
from pipeline.models import stacked_core_factorized_readout, stacked_core_full_gauss_readout
from tests.sensorium_peer import import_sensorium, peer_copy

SIZES = dict(n_train=24, n_validation=6, n_test_images=2, n_repeats=2, image_shape=(18, 22))
GRID = {"type": "cortex", "input_dimensions": 2, "hidden_layers": 1, "hidden_features": 6, "final_tanh": True}
SMALL_CORE = dict(hidden_channels=6, input_kern=5, hidden_kern=3, layers=3, gamma_input=2.0)
DATA_OPTIONS = {
    "images": {},
    "behaviour+eye channels": dict(
        include_behavior=True, include_eye_position=True, add_eye_pos_as_channels=True
    ),
    "behaviour channels + eye field": dict(include_behavior=True, include_eye_position=True),
}
CONFIGS = {
    "sensorium defaults": ("images", {}),
    "SOTA-like": (
        "images",
        dict(
            SMALL_CORE,
            pad_input=False,
            stack=-1,
            depth_separable=True,
            gamma_readout=0.0076,
            grid_mean_predictor=GRID,
            init_sigma=0.1,
            init_mu_range=0.3,
            core_bias=False,
        ),
    ),
    "sensorium+ (behaviour channels, MLP shifter, cortex grid)": (
        "behaviour channels + eye field",
        dict(
            SMALL_CORE, stack=-1, depth_separable=True, grid_mean_predictor=GRID, shifter=True, init_sigma=0.1
        ),
    ),
    "eye channels and an affine shifter": (
        "behaviour+eye channels",
        dict(
            SMALL_CORE, shifter=True, shifter_type="StaticAffine", gauss_type="uncorrelated", pad_input=True
        ),
    ),
    "isotropic, skip, all layers stacked": (
        "images",
        dict(
            SMALL_CORE,
            gauss_type="isotropic",
            skip=2,
            stack=None,
            pad_input=True,
            readout_bias=False,
            elu_offset=0.5,
        ),
    ),
    "linear core without batch norm": (
        "images",
        dict(SMALL_CORE, linear=True, batch_norm=False, final_nonlinearity=False, hidden_dilation=2),
    ),
    "shifter with 1 layer, no hidden padding": (
        "behaviour channels + eye field",
        dict(
            SMALL_CORE,
            shifter=True,
            shift_layers=1,
            hidden_padding=0,
            stack=-1,
            momentum=0.5,
            laplace_padding=2,
        ),
    ),
}


@pytest.fixture(scope="module")
def sensorium():
    return import_sensorium()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("peer-builders")
    ours = [
        make_synthetic_dataset(
            root / f"static9020{i}-1-1-synthetic", n_neurons=7 + 2 * i, seed=20 + i, **SIZES
        )
        for i in range(2)
    ]
    copies = tmp_path_factory.mktemp("peer-builder-copies")
    return [str(p) for p in ours], [peer_copy(p, copies) for p in ours]


def _loaders(sensorium, datasets, data: str):
    ours, theirs = datasets
    config = dict(batch_size=6, seed=3, cuda=False, **DATA_OPTIONS[data])
    return static_loaders(ours, **config), sensorium.datasets.static_loaders(theirs, **config)


def assert_same_model(
    ours: torch.nn.Module, peer: torch.nn.Module, batch, data_key: str, regularizer=None
) -> None:
    """Same entries, identical values, same outputs (eval and sampled train mode), same regularizer.

    ``regularizer(peer)`` gives the expected regularizer where the peer's own is a known defect.
    """
    mine, theirs = ours.state_dict(), peer.state_dict()
    assert list(mine) == list(theirs), "state-dict entries"
    for name, value in theirs.items():
        assert mine[name].shape == value.shape, name
        assert torch.equal(mine[name], value), f"{name}: initial values differ"
    kwargs = batch._asdict()
    images = kwargs.pop("images")
    ours.eval(), peer.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(images, data_key=data_key, **kwargs), peer(images, data_key=data_key, **kwargs)
        )
        ours.train(), peer.train()
        torch.manual_seed(5)
        sampled_ours = ours(images, data_key=data_key, **kwargs)
        torch.manual_seed(5)
        sampled_peer = peer(images, data_key=data_key, **kwargs)
    torch.testing.assert_close(sampled_ours, sampled_peer)
    expected = peer.regularizer(data_key=data_key) if regularizer is None else regularizer(peer)
    torch.testing.assert_close(ours.regularizer(data_key=data_key), expected)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_full_gauss_builder_gives_sensoriums_initial_model(sensorium, datasets, name):
    data, config = CONFIGS[name]
    ours_loaders, peer_loaders = _loaders(sensorium, datasets, data)
    ours = stacked_core_full_gauss_readout(ours_loaders, seed=11, **config)
    peer = sensorium.models.stacked_core_full_gauss_readout(peer_loaders, seed=11, **config)
    key = list(ours_loaders["validation"])[1]
    assert_same_model(ours, peer, next(iter(peer_loaders["validation"][key])), key)


# the core arguments (and defaults) that sensorium's builder passes to neuralpredictors' Stacked2dCore
SENSORIUM_CORE_DEFAULTS = dict(
    hidden_channels=32,
    input_kern=13,
    hidden_kern=3,
    layers=3,
    gamma_input=15.5,
    skip=0,
    final_nonlinearity=True,
    momentum=0.9,
    pad_input=False,
    batch_norm=True,
    hidden_dilation=1,
    laplace_padding=None,
    input_regularizer="LaplaceL2norm",
    stack=None,
    depth_separable=False,
    linear=False,
    attention_conv=False,
    hidden_padding=None,
    use_avg_reg=False,
    bias=True,
)


def _peer_factorized(peer_loaders, seed, **config):
    """The factorized builder's recipe from neuralpredictors parts, in sensorium's builder's order."""
    from neuralpredictors.layers.cores import Stacked2dCore
    from neuralpredictors.layers.encoders import FiringRateEncoder
    from neuralpredictors.layers.readouts import FullFactorized2d, MultiReadoutBase
    from neuralpredictors.utils import get_module_output
    from nnfabrik.utility.nn_helpers import get_dims_for_loader_dict, set_random_seed

    readout_args = {
        "bias": config.pop("readout_bias", True),
        "spatial_and_feature_reg_weight": config.pop("gamma_readout", 4),
        "init_noise": config.pop("init_noise", 1e-3),
        "normalize": config.pop("normalize", True),
        "constrain_pos": config.pop("constrain_pos", False),
        "positive_weights": config.pop("positive_weights", False),
    }
    elu_offset = config.pop("elu_offset", 0)
    core_args = dict(SENSORIUM_CORE_DEFAULTS)
    core_args.update(config)
    core_args["bias"] = core_args.pop("core_bias", core_args["bias"])
    train = peer_loaders["train"]
    shapes = get_dims_for_loader_dict(train)
    set_random_seed(seed)
    core = Stacked2dCore(input_channels=next(iter(shapes.values()))["images"][1], **core_args)
    readout = MultiReadoutBase(
        {k: get_module_output(core, v["images"])[1:] for k, v in shapes.items()},
        {k: v["responses"][1] for k, v in shapes.items()},
        base_readout=FullFactorized2d,
        **readout_args,
    )
    return FiringRateEncoder(core=core, readout=readout, elu_offset=elu_offset)


@pytest.mark.parametrize(
    "config",
    [
        {},
        dict(SMALL_CORE, stack=-1, depth_separable=True, gamma_readout=0.3, init_noise=0.01, core_bias=False),
        dict(
            SMALL_CORE,
            readout_bias=False,
            normalize=False,
            constrain_pos=True,
            gamma_hidden=0.1,
            elu_offset=1.0,
        ),
    ],
    ids=["defaults", "depth-separable", "unnormalised-positive"],
)
def test_factorized_builder_gives_the_recipes_initial_model(sensorium, datasets, config):
    ours_loaders, peer_loaders = _loaders(sensorium, datasets, "behaviour+eye channels")
    ours = stacked_core_factorized_readout(ours_loaders, seed=4, **config)
    peer = _peer_factorized(peer_loaders, 4, **dict(config))
    key = list(ours_loaders["validation"])[0]

    def documented_regularizer(model):
        """Core + Σ_n |mask_n|_1 |features_n|_1 x weight: neuralpredictors' FullFactorized2d.l1
        broadcasts (N, 1) x (N,) into (Σ_n |mask_n|_1)(Σ_n |features_n|_1) (README, Differences)."""
        readout = model.readout[key]
        masks = readout.normalized_spatial.reshape(readout.outdims, -1).abs().sum(1)
        features = readout.features.abs().sum(1)
        return model.core.regularizer() + (masks * features).sum() * readout.spatial_and_feature_reg_weight

    batch = next(iter(peer_loaders["validation"][key]))
    assert_same_model(ours, peer, batch, key, regularizer=documented_regularizer)
