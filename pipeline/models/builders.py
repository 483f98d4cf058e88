"""Model builders (nnfabrik ``model_fn``s): config dict + data → a ready :class:`FiringRateEncoder`.

``stacked_core_full_gauss_readout`` keeps the argument names and defaults of sensorium's builder
of the same name, so stored Sinz-lab configs work unchanged, and with the same seed it gives the same
initial weights (the random draws happen in the same order; readout biases start at 0, as there).
Both builders take either the data loaders (sessions, neuron counts, image shape and cortex
coordinates are read from them) or ``data_info`` — the same facts as plain JSON-able Python from
:func:`data_info_from_loaders` — so a stored model can be rebuilt and its checkpoint loaded without
the data.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config_types import NonNegativeFloat, NonNegativeInt, PositiveInt
from pipeline.contracts import split_batch, train_loaders
from pipeline.models.cores import Stacked2dCore
from pipeline.models.encoders import FiringRateEncoder
from pipeline.models.readouts import MultipleFullFactorized2d, MultipleFullGaussian2d
from pipeline.models.shifters import MLPShifter, StaticAffine2dShifter
from pipeline.utils import get_module_output, set_seed

__all__ = [
    "SENSORIUM_SOTA_MODEL_CONFIG",
    "data_info_from_loaders",
    "stacked_core_full_gauss_readout",
    "stacked_core_factorized_readout",
]

# The Sensorium 2022 SOTA configuration: the model config of the Sensorium 2022 notebooks for
# :func:`stacked_core_full_gauss_readout`, plus ``core_bias=False`` as in their checkpoints.
# Treat it as read-only; pass ``dict(SENSORIUM_SOTA_MODEL_CONFIG, key=value)`` to change a value.
SENSORIUM_SOTA_MODEL_CONFIG: dict[str, Any] = dict(
    pad_input=False,
    stack=-1,
    layers=4,
    input_kern=9,
    gamma_input=6.3831,
    gamma_readout=0.0076,
    hidden_kern=7,
    hidden_channels=64,
    depth_separable=True,
    grid_mean_predictor={
        "type": "cortex",
        "input_dimensions": 2,
        "hidden_layers": 1,
        "hidden_features": 30,
        "final_tanh": True,
    },
    init_sigma=0.1,
    init_mu_range=0.3,
    gauss_type="full",
    shifter=False,
    core_bias=False,
)

_DATA_INFO_FIELDS = ("n_neurons", "input_shape", "input_channels", "cortex_coordinates", "mean_activity")

# the builders' arguments handed to Stacked2dCore under the same name (``core_bias`` goes in as ``bias``)
_CORE_ARGUMENTS = (
    "hidden_channels",
    "input_kern",
    "hidden_kern",
    "layers",
    "gamma_input",
    "gamma_hidden",
    "skip",
    "final_nonlinearity",
    "momentum",
    "pad_input",
    "batch_norm",
    "hidden_dilation",
    "laplace_padding",
    "input_regularizer",
    "stack",
    "depth_separable",
    "linear",
    "attention_conv",
    "hidden_padding",
    "use_avg_reg",
)


# --------------------------------------------------------------------------------------- data info
def _mean_activity(loader: Any) -> list[float]:
    """Per-neuron mean response over one pass of ``loader`` (float64 accumulation)."""
    total, count = None, 0
    with torch.no_grad():
        for batch in loader:
            responses = torch.as_tensor(split_batch(batch).targets).detach().to("cpu", torch.float64)
            total = responses.sum(0) if total is None else total + responses.sum(0)
            count += responses.shape[0]
    if not count:
        raise ValueError("the training loader yields no batches, so the mean activity cannot be computed")
    return (total / count).tolist()


def data_info_from_loaders(dataloaders: Mapping[str, Any], mean_activity: bool = False) -> dict[str, dict]:
    """Per-session facts a builder needs, as plain JSON-able Python (no tensors, no numpy).

    Args:
        dataloaders: ``{data_key: loader}`` or ``{tier: {data_key: loader}}`` (the ``"train"`` tier
            is used). A batch is read with :func:`pipeline.contracts.split_batch`: a namedtuple whose
            first two fields, or a dict whose ``images``/``responses`` keys, are the images
            ``(B, C, H, W)`` and the responses ``(B, N)``; ``loader.dataset.neurons.cell_motor_coordinates``
            ``(N, 3)`` is read when present.
        mean_activity: also compute each neuron's mean response over one pass of the loader (for
            inspection; the builders start readout biases at 0, as sensorium's does).

    Returns:
        ``{data_key: {"n_neurons": N, "input_shape": [C, H, W], "input_channels": C,
        "cortex_coordinates": N x 3 list or None, "mean_activity": length-N list or None}}``.
    """
    info: dict[str, dict] = {}
    for data_key, loader in train_loaders(dataloaders).items():
        try:
            batch = next(iter(loader))
        except StopIteration:
            raise ValueError(f"the loader of session {data_key!r} yields no batches") from None
        images, responses, _ = split_batch(batch)
        if images.dim() != 4:
            raise ValueError(f"session {data_key!r}: images must be (B, C, H, W), got {tuple(images.shape)}")
        if responses.dim() != 2:
            raise ValueError(f"session {data_key!r}: responses must be (B, N), got {tuple(responses.shape)}")
        neurons = getattr(getattr(loader, "dataset", None), "neurons", None)
        coordinates = getattr(neurons, "cell_motor_coordinates", None)
        if coordinates is not None:
            coordinates = np.asarray(coordinates, dtype=np.float64)
            if coordinates.ndim != 2 or coordinates.shape[0] != responses.shape[1]:
                raise ValueError(
                    f"session {data_key!r}: cell_motor_coordinates has shape {coordinates.shape}, "
                    f"expected ({responses.shape[1]}, 3)"
                )
            coordinates = coordinates.tolist()
        info[data_key] = {
            "n_neurons": int(responses.shape[1]),
            "input_shape": [int(s) for s in images.shape[1:]],
            "input_channels": int(images.shape[1]),
            "cortex_coordinates": coordinates,
            "mean_activity": _mean_activity(loader) if mean_activity else None,
        }
    return info


def _check_data_info(data_info: Mapping[str, Any]) -> dict[str, dict]:
    """Validate a data_info dict; return it with input shapes as tuples."""
    if not isinstance(data_info, Mapping) or not data_info:
        raise TypeError(f"data_info must be a non-empty dict {{data_key: {{...}}}}, got {data_info!r:.200}")
    checked = {}
    for key, entry in data_info.items():
        if not isinstance(entry, Mapping):
            raise TypeError(f"data_info[{key!r}] must be a dict, got {type(entry).__name__}")
        missing = [f for f in ("n_neurons", "input_shape") if f not in entry]
        if missing:
            raise ValueError(f"data_info[{key!r}] lacks {missing}; expected fields {list(_DATA_INFO_FIELDS)}")
        shape = tuple(int(s) for s in entry["input_shape"])
        if len(shape) != 3:
            raise ValueError(
                f"data_info[{key!r}]['input_shape'] must be [C, H, W], got {entry['input_shape']}"
            )
        if "input_channels" in entry and int(entry["input_channels"]) != shape[0]:
            raise ValueError(
                f"data_info[{key!r}]: input_channels={entry['input_channels']} contradicts input_shape {list(shape)}"
            )
        n = int(entry["n_neurons"])
        if n < 1:
            raise ValueError(f"data_info[{key!r}]['n_neurons'] must be positive, got {n}")
        mean = entry.get("mean_activity")
        if mean is not None and len(mean) != n:
            raise ValueError(f"data_info[{key!r}]['mean_activity'] has {len(mean)} entries, expected {n}")
        coords = entry.get("cortex_coordinates")
        if coords is not None and len(coords) != n:
            raise ValueError(f"data_info[{key!r}]['cortex_coordinates'] has {len(coords)} rows, expected {n}")
        checked[key] = {**entry, "n_neurons": n, "input_shape": shape}
    channels = {entry["input_shape"][0] for entry in checked.values()}
    if len(channels) != 1:
        raise ValueError(
            f"all sessions share one core, so they need the same number of input channels; got {sorted(channels)}"
        )
    return checked


def _resolve_data_info(dataloaders: Mapping[str, Any] | None, data_info: Mapping[str, Any] | None) -> dict:
    """data_info when given (it wins, so a stored model is rebuilt exactly), else read from the loaders."""
    if data_info is not None:
        return _check_data_info(data_info)
    if dataloaders is None:
        raise ValueError(
            "pass either dataloaders (a dict of loaders per session) or data_info "
            "(from data_info_from_loaders); both are missing"
        )
    return _check_data_info(data_info_from_loaders(dataloaders))


# --------------------------------------------------------------------------------------- pieces
def _grid_mean_predictor(
    grid_mean_predictor: Mapping[str, Any] | None, info: Mapping[str, dict]
) -> tuple[dict | None, str | None, dict[str, np.ndarray] | None]:
    """Split a sensorium grid_mean_predictor config into (kwargs, type, source grids per session).

    ``{"type": "cortex", "input_dimensions": 2, "hidden_layers": 1, "hidden_features": 30,
    "final_tanh": True}`` → the network kwargs, ``"cortex"``, and each session's first
    ``input_dimensions`` cortex coordinates (``(N, d)`` float arrays; the readout centres them and
    scales them to max |.| = 1).
    """
    if grid_mean_predictor is None:
        return None, None, None
    if not isinstance(grid_mean_predictor, Mapping):
        raise TypeError(f"grid_mean_predictor must be a dict or None, got {grid_mean_predictor!r}")
    config = copy.deepcopy(dict(grid_mean_predictor))
    kind = config.pop("type", None)
    if kind != "cortex":
        raise ValueError(f"grid_mean_predictor type must be 'cortex', got {kind!r}")
    input_dimensions = int(config.pop("input_dimensions", 2))
    allowed = {"hidden_layers", "hidden_features", "final_tanh"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise TypeError(
            f"grid_mean_predictor got unknown keys {unknown}; allowed: type, input_dimensions, {sorted(allowed)}"
        )
    source_grids = {}
    for key, entry in info.items():
        coords = entry.get("cortex_coordinates")
        if coords is None:
            raise ValueError(
                f"grid_mean_predictor type 'cortex' needs the neurons' cortex coordinates, but session {key!r} "
                "has none (dataset.neurons.cell_motor_coordinates / data_info['cortex_coordinates'])"
            )
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] < input_dimensions:
            raise ValueError(
                f"session {key!r}: cortex coordinates of shape {coords.shape} have fewer than "
                f"input_dimensions={input_dimensions} columns"
            )
        source_grids[key] = coords[:, :input_dimensions]
    return config, kind, source_grids


def _shared_match_ids(
    shared_match_ids: Mapping[str, Any] | None,
    dataloaders: Mapping[str, Any] | None,
    info: Mapping[str, dict],
) -> dict[str, np.ndarray]:
    """Match ids per session for feature/grid sharing: given, or ``dataset.neurons.multi_match_id``."""
    if shared_match_ids is None:
        shared_match_ids = {}
        loaders = train_loaders(dataloaders) if dataloaders is not None else {}
        for key, entry in info.items():
            ids = entry.get("multi_match_id")
            if ids is None and key in loaders:
                ids = getattr(getattr(loaders[key].dataset, "neurons", None), "multi_match_id", None)
            if ids is None:
                raise ValueError(
                    f"share_features/share_grid need match ids: pass shared_match_ids={{data_key: ids}} or use "
                    f"datasets with neurons.multi_match_id (session {key!r} has none)"
                )
            shared_match_ids[key] = ids
    missing = [key for key in info if key not in shared_match_ids]
    if missing:
        raise ValueError(f"shared_match_ids lacks sessions {missing}")
    result = {}
    for key, entry in info.items():
        ids = np.asarray(shared_match_ids[key])
        if ids.shape != (entry["n_neurons"],):
            raise ValueError(
                f"shared_match_ids[{key!r}] has shape {ids.shape}, expected ({entry['n_neurons']},)"
            )
        result[key] = ids
    return result


def _build_core(
    info: Mapping[str, dict], **core_config: Any
) -> tuple[nn.Module, dict[str, tuple[int, int, int]]]:
    """The shared core and the feature-map shape ``(c, h, w)`` it gives each session."""
    input_channels = next(iter(info.values()))["input_shape"][0]
    core = Stacked2dCore(input_channels=input_channels, **core_config)
    in_shapes = {key: get_module_output(core, (1, *entry["input_shape"]))[1:] for key, entry in info.items()}
    return core, in_shapes


def _session_readout_config(
    info: Mapping[str, dict], in_shapes: Mapping[str, tuple[int, int, int]]
) -> dict[str, Any]:
    """The per-session readout arguments every builder passes: input shapes and neuron counts.

    No mean responses: sensorium's builder gives none (its readouts start with bias 0), and the
    same seed must give the same initial model.
    """
    return {
        "in_shape_dict": in_shapes,
        "n_neurons_dict": {key: entry["n_neurons"] for key, entry in info.items()},
    }


def _seeded_core(arguments: Mapping[str, Any]) -> tuple[dict, nn.Module, dict[str, Any]]:
    """What every builder starts from, given its ``arguments`` (its ``locals()``).

    Returns:
        The checked data info (from ``data_info`` or ``dataloaders``); then, after seeding Python,
        NumPy and PyTorch with ``seed`` (unless None), the shared core; and the per-session readout
        arguments (:func:`_session_readout_config`).
    """
    info = _resolve_data_info(arguments["dataloaders"], arguments["data_info"])
    if arguments["seed"] is not None:
        set_seed(arguments["seed"])
    core, in_shapes = _build_core(info, **_core_config(arguments))
    return info, core, _session_readout_config(info, in_shapes)


def _core_config(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The ``Stacked2dCore`` keyword arguments among a builder's ``arguments`` (``core_bias`` → ``bias``)."""
    config = {name: arguments[name] for name in _CORE_ARGUMENTS if name in arguments}
    config["bias"] = arguments["core_bias"]
    return config


def _build_shifter(
    shifter: Any,
    shifter_type: str,
    data_keys: Sequence[str],
    input_channels_shifter: int,
    hidden_channels_shifter: int,
    shift_layers: int,
    gamma_shifter: float,
    shifter_bias: bool,
) -> nn.Module | None:
    if shifter is None or shifter is False:
        return None
    if shifter is not True:
        raise TypeError(f"shifter must be True, False or None, got {shifter!r}")
    if shifter_type == "MLP":
        return MLPShifter(
            data_keys=list(data_keys),
            input_channels=input_channels_shifter,
            hidden_channels_shifter=hidden_channels_shifter,
            shift_layers=shift_layers,
            gamma_shifter=gamma_shifter,
        )
    if shifter_type == "StaticAffine":
        return StaticAffine2dShifter(
            data_keys=list(data_keys),
            input_channels=input_channels_shifter,
            bias=shifter_bias,
            gamma_shifter=gamma_shifter,
        )
    raise ValueError(f"shifter_type must be 'MLP' or 'StaticAffine', got {shifter_type!r}")


# --------------------------------------------------------------------------------------- builders
def stacked_core_full_gauss_readout(
    dataloaders: Mapping[str, Any] | None = None,
    seed: int | None = None,
    data_info: Mapping[str, Any] | None = None,
    hidden_channels: PositiveInt = 32,
    input_kern: PositiveInt = 13,
    hidden_kern: PositiveInt = 3,
    layers: PositiveInt = 3,
    gamma_input: NonNegativeFloat = 15.5,
    skip: NonNegativeInt = 0,
    final_nonlinearity: bool = True,
    momentum: float = 0.9,
    pad_input: bool = False,
    batch_norm: bool = True,
    hidden_dilation: PositiveInt = 1,
    laplace_padding: int | None = None,
    input_regularizer: str = "LaplaceL2norm",
    use_avg_reg: bool = False,
    init_mu_range: NonNegativeFloat = 0.2,
    init_sigma: NonNegativeFloat = 1.0,
    readout_bias: bool = True,
    gamma_readout: NonNegativeFloat = 4,
    elu_offset: float = 0,
    stack: int | Sequence[int] | None = None,
    depth_separable: bool = False,
    linear: bool = False,
    gauss_type: str = "full",
    grid_mean_predictor: Mapping[str, Any] | None = None,
    attention_conv: bool = False,
    shifter: bool | None = None,
    shifter_type: str = "MLP",
    input_channels_shifter: PositiveInt = 2,
    hidden_channels_shifter: PositiveInt = 5,
    shift_layers: PositiveInt = 3,
    gamma_shifter: NonNegativeFloat = 0,
    shifter_bias: bool = True,
    hidden_padding: int | None = None,
    core_bias: bool = True,
    share_features: bool = False,
    share_grid: bool = False,
    shared_match_ids: Mapping[str, Any] | None = None,
) -> FiringRateEncoder:
    """Sensorium's model: a Stacked2dCore shared by all sessions + one FullGaussian2d readout per session.

    Args:
        dataloaders: ``{data_key: loader}`` or ``{tier: {data_key: loader}}`` (the train tier is used);
            sessions, neuron counts, input channels (images + behaviour / eye-position channels) and
            shape, and cortex coordinates are read from its first batch and dataset.
        seed: seeds Python, NumPy and PyTorch right before the modules are built (plain int; None = not
            seeded).
        data_info: instead of ``dataloaders``: the output of :func:`data_info_from_loaders` (it wins
            when both are given).
        hidden_channels ... core_bias: the core (see ``Stacked2dCore``; ``core_bias`` is its ``bias``).
        init_mu_range, init_sigma, readout_bias, gauss_type: the FullGaussian2d readouts;
            ``gamma_readout`` is their ``feature_reg_weight``.
        grid_mean_predictor: None, or ``{"type": "cortex", "input_dimensions": 2, "hidden_layers": 1,
            "hidden_features": 30, "final_tanh": True}`` to predict each neuron's position from its
            cortex coordinates.
        share_features, share_grid, shared_match_ids: share feature vectors / positions of matched
            neurons across sessions; ``shared_match_ids`` is ``{data_key: (N,) ids}`` (default:
            ``dataset.neurons.multi_match_id``).
        shifter: True → one eye-position shifter per session (``shifter_type`` "MLP" or
            "StaticAffine", with ``input_channels_shifter``, ``hidden_channels_shifter``,
            ``shift_layers``, ``gamma_shifter``, ``shifter_bias``).
        elu_offset: offset of the output non-linearity.

    Returns:
        A :class:`FiringRateEncoder` with ``.core``, ``.readout`` (keyed by data_key) and ``.shifter``.
    """
    info, core, session_config = _seeded_core(locals())
    gmp_config, gmp_type, source_grids = _grid_mean_predictor(grid_mean_predictor, info)
    sharing: dict[str, Any] = {}
    if share_features or share_grid:
        sharing = {
            "share_features": bool(share_features),
            "share_grid": bool(share_grid),
            "shared_match_ids": _shared_match_ids(shared_match_ids, dataloaders, info),
        }
    readout = MultipleFullGaussian2d(
        **session_config,
        init_mu_range=init_mu_range,
        init_sigma=init_sigma,
        bias=readout_bias,
        feature_reg_weight=gamma_readout,
        gauss_type=gauss_type,
        grid_mean_predictor=gmp_config,
        grid_mean_predictor_type=gmp_type,
        source_grids=source_grids,
        **sharing,
    )
    shifter_module = _build_shifter(
        shifter,
        shifter_type,
        list(info),
        input_channels_shifter,
        hidden_channels_shifter,
        shift_layers,
        gamma_shifter,
        shifter_bias,
    )
    return FiringRateEncoder(core=core, readout=readout, shifter=shifter_module, elu_offset=elu_offset)


def stacked_core_factorized_readout(
    dataloaders: Mapping[str, Any] | None = None,
    seed: int | None = None,
    data_info: Mapping[str, Any] | None = None,
    hidden_channels: PositiveInt = 32,
    input_kern: PositiveInt = 13,
    hidden_kern: PositiveInt = 3,
    layers: PositiveInt = 3,
    gamma_input: NonNegativeFloat = 15.5,
    gamma_hidden: NonNegativeFloat = 0,
    skip: NonNegativeInt = 0,
    final_nonlinearity: bool = True,
    momentum: float = 0.9,
    pad_input: bool = False,
    batch_norm: bool = True,
    hidden_dilation: PositiveInt = 1,
    laplace_padding: int | None = None,
    input_regularizer: str = "LaplaceL2norm",
    use_avg_reg: bool = False,
    stack: int | Sequence[int] | None = None,
    depth_separable: bool = False,
    linear: bool = False,
    attention_conv: bool = False,
    hidden_padding: int | None = None,
    core_bias: bool = True,
    readout_bias: bool = True,
    gamma_readout: NonNegativeFloat = 4,
    init_noise: float = 1e-3,
    normalize: bool = True,
    constrain_pos: bool = False,
    positive_weights: bool = False,
    elu_offset: float = 0,
) -> FiringRateEncoder:
    """A Stacked2dCore shared by all sessions + one FullFactorized2d readout per session (Klindt et al. 2017).

    Args:
        dataloaders, seed, data_info: as in :func:`stacked_core_full_gauss_readout`.
        hidden_channels ... core_bias: the core (see ``Stacked2dCore``; ``gamma_hidden`` weighs the
            group-sparsity penalty of the hidden layers).
        readout_bias: whether each neuron has a bias (initialised to 0).
        gamma_readout: weight of the readout regulariser Σ_n ‖mask_n‖₁·‖features_n‖₁
            (``spatial_and_feature_reg_weight``).
        init_noise: std of the normal initialisation of masks and features.
        normalize: normalise each spatial mask to unit L2 norm in the forward pass.
        constrain_pos, positive_weights: keep masks / features non-negative.
        elu_offset: offset of the output non-linearity.
    """
    _, core, session_config = _seeded_core(locals())
    readout = MultipleFullFactorized2d(
        **session_config,
        bias=readout_bias,
        spatial_and_feature_reg_weight=gamma_readout,
        init_noise=init_noise,
        normalize=normalize,
        constrain_pos=constrain_pos,
        positive_weights=positive_weights,
    )
    return FiringRateEncoder(core=core, readout=readout, elu_offset=elu_offset)
