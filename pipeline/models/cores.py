"""Convolutional cores: the feature extractor shared by all neurons and sessions.

``Stacked2dCore`` takes the arguments of neuralpredictors 0.3.0's core of the same name, builds the
same modules under the same state-dict names (so Sinz-lab checkpoints load with ``strict=True``)
and consumes the random number generator in the same order (so a seeded build gives the same
initial weights).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..kernels import depthwise_conv2d
from . import regularizers as _regularizers
from .activations import AdaptiveELU

__all__ = [
    "Bias2DLayer",
    "DepthSeparableConv2d",
    "DepthwiseConv2d",
    "Scale2DLayer",
    "Stacked2dCore",
    "conv_output_size",
]

logger = logging.getLogger(__name__)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, groups=channels)`` (same parameters, same
    state-dict entries, printed as ``Conv2d``) whose weight gradient on the CPU comes from
    :func:`pipeline.kernels.depthwise_conv2d` (5x faster than oneDNN's); elsewhere it is the plain
    convolution."""

    def __init__(
        self,
        channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            channels,
            channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=bias,
            groups=channels,
        )

    def _get_name(self) -> str:
        return "Conv2d"  # printed like the peer's module

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            self.stride == (1, 1)
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and torch.is_grad_enabled()
            and weight.requires_grad
        ):
            return depthwise_conv2d(input, weight, bias, self.padding, self.dilation)
        return super()._conv_forward(input, weight, bias)


class DepthSeparableConv2d(nn.Sequential):
    """1x1 conv (mix channels) -> depthwise k x k conv (one filter per channel) -> 1x1 conv.

    Far fewer parameters than a dense k x k convolution. Submodules are named ``in_depth_conv``,
    ``spatial_conv`` and ``out_depth_conv``.

    Args:
        in_channels: channels of the input (B, in_channels, H, W).
        out_channels: channels of the output.
        kernel_size: size of the depthwise spatial filter.
        stride, padding, dilation: of the spatial (depthwise) convolution.
        bias: whether each of the three convolutions has a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.add_module("in_depth_conv", nn.Conv2d(in_channels, out_channels, 1, bias=bias))
        self.add_module(
            "spatial_conv",
            DepthwiseConv2d(
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                bias=bias,
            ),
        )
        self.add_module("out_depth_conv", nn.Conv2d(out_channels, out_channels, 1, bias=bias))


class Bias2DLayer(nn.Module):
    """Learned per-channel bias for (B, C, H, W) inputs; parameter ``bias`` of shape (1, C, 1, 1)."""

    def __init__(self, channels: int, initial: float = 0.0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((1, channels, 1, 1), float(initial)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the bias to ``x`` (B, C, H, W)."""
        return x + self.bias


class Scale2DLayer(nn.Module):
    """Learned per-channel scale for (B, C, H, W) inputs; parameter ``scale`` of shape (1, C, 1, 1)."""

    def __init__(self, channels: int, initial: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), float(initial)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multiply ``x`` (B, C, H, W) by the scale."""
        return x * self.scale


def conv_output_size(size: int, kernel: int, padding: int = 0, stride: int = 1, dilation: int = 1) -> int:
    """Spatial output size of a convolution along one axis (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Stacked2dCore: {name} must be an int >= {minimum}, got {value!r}")
    return value


class Stacked2dCore(nn.Module):
    """A stack of conv -> batch norm -> ELU layers whose outputs are read out by the readouts.

    Args:
        input_channels: channels of the input images (B, input_channels, H, W).
        hidden_channels: feature maps per layer.
        input_kern: kernel size of the first (input) layer.
        hidden_kern: kernel size of every hidden layer, or one size per hidden layer (list).
        layers: number of layers (>= 1).
        gamma_hidden: weight of the group-sparsity penalty on hidden conv weights.
        gamma_input: weight of the Laplace penalty on the input-layer weights.
        skip: if > 1, layer l receives the concatenation of the last min(skip, l) layer outputs.
        stride: stride of the hidden convolutions.
        final_nonlinearity: apply the ELU after the last layer too.
        elu_shift: (xshift, yshift) of the ELU, ``elu(x - xshift) + yshift``; overrides the two below.
        elu_xshift, elu_yshift: the same, as separate numbers.
        bias: learn conv biases (the input conv has none when batch_norm is on).
        momentum: batch-norm momentum.
        pad_input: "same" zero padding for the input layer (input_kern // 2), else no padding.
        hidden_padding: padding of the hidden convs (int or one per hidden layer); None gives
            "same" padding for each hidden layer's own kernel size and dilation.
        batch_norm: add a ``norm`` BatchNorm2d after every conv.
        batch_norm_scale: with ``independent_bn_bias=False``: learn a scale (see below).
        final_batchnorm_scale: if False, the last layer behaves as if ``batch_norm_scale=False``.
        independent_bn_bias: True (default): a standard affine BatchNorm2d. False: the norm is
            affine only if ``bias and batch_norm_scale``; with bias but no scale a ``bias``
            (Bias2DLayer) follows the norm, with scale but no bias a ``scale`` (Scale2DLayer).
        hidden_dilation: dilation of the hidden convs.
        laplace_padding: padding of the Laplace regularizer's convolution (None: "same").
        input_regularizer: "LaplaceL2" or "LaplaceL2norm".
        stack: which layer outputs form the output: None = all (concatenated on channels),
            an int s = layers ``range(layers)[s:]`` (-1: the last one), or a list of indices.
        use_avg_reg: average (True) or sum (False) in the Laplace regularizer.
        depth_separable: use :class:`DepthSeparableConv2d` for the hidden layers (named ``ds_conv``).
        attention_conv: not supported (raises NotImplementedError).
        linear: no nonlinearities at all.

    Forward: (B, input_channels, H, W) -> (B, outchannels, H', W').
    """

    def __init__(
        self,
        input_channels: int,
        hidden_channels: int,
        input_kern: int,
        hidden_kern: int | Sequence[int],
        layers: int = 3,
        gamma_hidden: float = 0.0,
        gamma_input: float = 0.0,
        skip: int = 0,
        stride: int = 1,
        final_nonlinearity: bool = True,
        elu_shift: tuple[float, float] | None = None,
        bias: bool = True,
        momentum: float = 0.1,
        pad_input: bool = True,
        hidden_padding: int | Sequence[int] | None = None,
        batch_norm: bool = True,
        batch_norm_scale: bool = True,
        final_batchnorm_scale: bool = True,
        independent_bn_bias: bool = True,
        hidden_dilation: int = 1,
        laplace_padding: int | None = 0,
        input_regularizer: str = "LaplaceL2",
        stack: int | Sequence[int] | None = None,
        use_avg_reg: bool = True,
        depth_separable: bool = False,
        attention_conv: bool = False,
        linear: bool = False,
        elu_xshift: float = 0.0,
        elu_yshift: float = 0.0,
    ) -> None:
        super().__init__()
        if depth_separable and attention_conv:
            raise ValueError("Stacked2dCore: depth_separable and attention_conv cannot both be True")
        if attention_conv:
            raise NotImplementedError(
                "Stacked2dCore: attention_conv=True (self-attention hidden layers) is not implemented; "
                "use depth_separable=True or plain convolutions"
            )
        self.input_channels = _positive_int("input_channels", input_channels)
        self.hidden_channels = _positive_int("hidden_channels", hidden_channels)
        self.input_kern = _positive_int("input_kern", input_kern)
        self.num_layers = _positive_int("layers", layers)
        self.skip = _positive_int("skip", skip, minimum=0)
        self.stride = _positive_int("stride", stride)
        self.hidden_dilation = _positive_int("hidden_dilation", hidden_dilation)
        n_hidden = self.num_layers - 1
        self.hidden_kern = self._per_hidden_layer("hidden_kern", hidden_kern, n_hidden)
        if hidden_padding is None:
            # "same" padding for each layer's own kernel (neuralpredictors reuses the first layer's)
            self.hidden_padding = [((k - 1) * self.hidden_dilation + 1) // 2 for k in self.hidden_kern]
        else:
            self.hidden_padding = self._per_hidden_layer(
                "hidden_padding", hidden_padding, n_hidden, minimum=0
            )

        if elu_shift is not None:
            if not isinstance(elu_shift, Sequence) or len(elu_shift) != 2:
                raise ValueError(
                    f"Stacked2dCore: elu_shift must be a pair (xshift, yshift), got {elu_shift!r}"
                )
            elu_xshift, elu_yshift = elu_shift
        self.elu_xshift, self.elu_yshift = float(elu_xshift), float(elu_yshift)

        self.gamma_input = float(gamma_input)
        self.gamma_hidden = float(gamma_hidden)
        self.final_nonlinearity = bool(final_nonlinearity)
        self.bias = bool(bias)
        self.momentum = momentum
        self.pad_input = bool(pad_input)
        self.batch_norm = bool(batch_norm)
        self.batch_norm_scale = bool(batch_norm_scale)
        self.final_batchnorm_scale = bool(final_batchnorm_scale)
        self.independent_bn_bias = bool(independent_bn_bias)
        self.laplace_padding = laplace_padding
        self.use_avg_reg = bool(use_avg_reg)
        self.depth_separable = bool(depth_separable)
        self.linear = bool(linear)
        self.stack = self._resolve_stack(stack)
        self.conv_layer_name = "ds_conv" if self.depth_separable else "conv"
        # group sparsity is defined on dense k x k filters only
        self.ignore_group_sparsity = self.depth_separable
        if self.ignore_group_sparsity and self.gamma_hidden > 0:
            logger.info("Stacked2dCore: gamma_hidden is ignored with depth-separable convolutions")

        # the regularizer is built first: its buffer is the first state-dict entry, as in the peer
        self._input_weights_regularizer = _regularizers.input_regularizer(
            input_regularizer, padding=laplace_padding
        )
        self.input_regularizer = input_regularizer
        self.features = nn.Sequential()
        for index in range(self.num_layers):
            self.features.add_module(f"layer{index}", self._make_layer(index))
        self.initialize()

    # ---------------------------------------------------------------- construction helpers
    @staticmethod
    def _per_hidden_layer(name: str, value, n_hidden: int, minimum: int = 1) -> list[int]:
        if isinstance(value, Sequence) and not isinstance(value, str):
            values = list(value)
            if len(values) != n_hidden:
                raise ValueError(
                    f"Stacked2dCore: {name} has {len(values)} entries but there are {n_hidden} hidden layers"
                )
        else:
            values = [value] * n_hidden
        return [_positive_int(name, v, minimum) for v in values]

    def _resolve_stack(self, stack) -> list[int]:
        indices = range(self.num_layers)
        if stack is None:
            return list(indices)
        if isinstance(stack, bool):
            raise TypeError("Stacked2dCore: stack must be None, an int or a list of ints, not a bool")
        if isinstance(stack, int):
            selected = list(indices[stack:])
        elif isinstance(stack, Sequence) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in stack
        ):
            try:
                selected = [indices[s] for s in stack]
            except IndexError:
                raise ValueError(
                    f"Stacked2dCore: stack {list(stack)} has an index outside 0..{self.num_layers - 1}"
                ) from None
        else:
            raise TypeError(f"Stacked2dCore: stack must be None, an int or a list of ints, got {stack!r}")
        if not selected:
            raise ValueError(f"Stacked2dCore: stack={stack!r} selects no layer of {self.num_layers}")
        return selected

    def _make_layer(self, index: int) -> nn.Sequential:
        layer: OrderedDict[str, nn.Module] = OrderedDict()
        if index == 0:
            layer["conv"] = nn.Conv2d(
                self.input_channels,
                self.hidden_channels,
                self.input_kern,
                padding=self.input_kern // 2 if self.pad_input else 0,
                bias=self.bias and not self.batch_norm,
            )
        else:
            conv_cls = DepthSeparableConv2d if self.depth_separable else nn.Conv2d
            in_channels = self.hidden_channels * (min(self.skip, index) if self.skip > 1 else 1)
            layer[self.conv_layer_name] = conv_cls(
                in_channels,
                self.hidden_channels,
                self.hidden_kern[index - 1],
                stride=self.stride,
                padding=self.hidden_padding[index - 1],
                dilation=self.hidden_dilation,
                bias=self.bias,
            )
        is_last = index == self.num_layers - 1
        if self.batch_norm:
            scale = self.batch_norm_scale and (self.final_batchnorm_scale or not is_last)
            if self.independent_bn_bias:
                layer["norm"] = nn.BatchNorm2d(self.hidden_channels, momentum=self.momentum)
            else:
                layer["norm"] = nn.BatchNorm2d(
                    self.hidden_channels, momentum=self.momentum, affine=self.bias and scale
                )
                if self.bias and not scale:
                    layer["bias"] = Bias2DLayer(self.hidden_channels)
                elif not self.bias and scale:
                    layer["scale"] = Scale2DLayer(self.hidden_channels)
        if not self.linear and (not is_last or self.final_nonlinearity):
            layer["nonlin"] = AdaptiveELU(self.elu_xshift, self.elu_yshift)
        return nn.Sequential(layer)

    def initialize(self) -> None:
        """Re-initialise every convolution: xavier-normal weights, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------- forward and shapes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, input_channels, H, W) to features (B, outchannels, H', W')."""
        if x.dim() != 4:
            raise ValueError(f"Stacked2dCore expects input of shape (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.input_channels:
            raise ValueError(
                f"Stacked2dCore expects {self.input_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        outputs: list[torch.Tensor] = []
        for index, layer in enumerate(self.features):
            if index >= 1 and self.skip > 1:
                x = torch.cat(outputs[-min(self.skip, index) :], dim=1)
            x = layer(x)
            outputs.append(x)
        if len(self.stack) == 1:
            return outputs[self.stack[0]]
        selected = [outputs[i] for i in self.stack]
        sizes = {tuple(o.shape[-2:]) for o in selected}
        if len(sizes) > 1:
            raise ValueError(
                f"Stacked2dCore: the stacked layers {self.stack} have different spatial sizes {sorted(sizes)}; "
                "use 'same' padding (pad_input=True, hidden_padding=None) or stack=-1"
            )
        return torch.cat(selected, dim=1)

    @property
    def outchannels(self) -> int:
        """Channels of the output: hidden_channels times the number of stacked layers."""
        return len(self.stack) * self.hidden_channels

    def layer_output_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Spatial size (H, W) of each layer's output for an input of size (height, width)."""
        sizes = []
        pad = self.input_kern // 2 if self.pad_input else 0
        h = conv_output_size(height, self.input_kern, pad)
        w = conv_output_size(width, self.input_kern, pad)
        sizes.append((h, w))
        for kern, pad in zip(self.hidden_kern, self.hidden_padding):
            h = conv_output_size(h, kern, pad, self.stride, self.hidden_dilation)
            w = conv_output_size(w, kern, pad, self.stride, self.hidden_dilation)
            sizes.append((h, w))
        return sizes

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Output shape for an input shape, computed without running the network.

        Args:
            input_shape: (C, H, W) or (B, C, H, W).

        Returns:
            (outchannels, H', W') or (B, outchannels, H', W') respectively.
        """
        shape = tuple(int(s) for s in input_shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"output_shape expects (C, H, W) or (B, C, H, W), got {shape}")
        channels, height, width = shape[-3:]
        if channels != self.input_channels:
            raise ValueError(f"Stacked2dCore expects {self.input_channels} input channels, got {channels}")
        sizes = [self.layer_output_sizes(height, width)[i] for i in self.stack]
        if len(set(sizes)) != 1:
            raise ValueError(f"stacked layers have different spatial sizes {sizes}; cannot concatenate")
        if min(sizes[0]) < 1:
            raise ValueError(f"input {height}x{width} is too small for this core (output {sizes[0]})")
        return shape[:-3] + (self.outchannels, *sizes[0])

    # ---------------------------------------------------------------- regularisation
    def laplace(self) -> torch.Tensor:
        """Laplace smoothness penalty of the input-layer weights (scalar tensor)."""
        return self._input_weights_regularizer(self.features[0].conv.weight, avg=self.use_avg_reg)

    def group_sparsity(self) -> torch.Tensor:
        """Mean group-sparsity penalty of the hidden dense convs (0 for depth-separable ones)."""
        weight = self.features[0].conv.weight
        total = weight.new_zeros(())
        if self.ignore_group_sparsity:
            return total
        for layer in list(self.features)[1:]:
            total = total + _regularizers.group_sparsity(layer.conv.weight)
        return total / max(self.num_layers - 1, 1)

    def regularizer(self) -> torch.Tensor:
        """``gamma_hidden * group_sparsity() + gamma_input * laplace()`` as a scalar tensor."""
        return self.group_sparsity() * self.gamma_hidden + self.gamma_input * self.laplace()

    def __repr__(self) -> str:
        gammas = f"gamma_hidden = {self.gamma_hidden}|gamma_input = {self.gamma_input}|skip = {self.skip}"
        return super().__repr__() + f" [{self.__class__.__name__} regularizers: {gammas}]\n"
