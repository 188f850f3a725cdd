"""Keras-like layers: ``Conv1D``, ``Conv2D``, ``DepthwiseConv2D`` and ``SeparableConv2D``.

Each takes Keras' constructor arguments and weight layout, so that
``layer.set_weights(keras_layer.get_weights())`` loads a trained Keras layer
as it is:

========================  ==================================================
layer                     weights, in order
========================  ==================================================
``Conv1D``                kernel ``(k, C_in // groups, filters)``, bias ``(filters,)``
``Conv2D``                kernel ``(kh, kw, C_in // groups, filters)``, bias ``(filters,)``
``DepthwiseConv2D``       depthwise kernel ``(kh, kw, C_in, M)``, bias ``(C_in * M,)``
``SeparableConv2D``       depthwise kernel ``(kh, kw, C_in, M)``, pointwise kernel
                          ``(1, 1, C_in * M, filters)``, bias ``(filters,)``
``ASPP``                  DeepLab's block: see :class:`ASPP` for its order
========================  ==================================================

(no bias with ``use_bias=False``).  Weights are created by :meth:`build` from
the input's channel count only (Glorot-uniform kernels, zero bias, as Keras),
so a layer built on 7x7 inputs accepts any spatial size afterwards.

A Keras layer's ``get_config()`` loads with :meth:`from_config`: the keys
that only matter for training (``name``, ``trainable``, initializers,
regularizers, constraints) are accepted and kept for :meth:`get_config`;
Keras' ``dtype`` policy dict is read for its dtype; a value clatrous cannot
honour (``channels_first`` layouts aside, which are supported, a
mixed-precision policy or LoRA, say) is a ValueError naming the key.
"""

from __future__ import annotations

import math
import numbers
import re
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyopencl as cl
import pyopencl.array as cl_array

from .arguments import (
    host_array,
    is_device_array,
    normalize_activation,
    normalize_data_format,
    prepare_depthwise,
    to_channels_first,
    to_channels_last,
)
from .conv import conv1d, conv2d, depthwise_conv2d
from .errors import DeviceMemoryError, UnsupportedDeviceError
from .geometry import normalize_padding, normalize_padding_mode, normalize_tuple, output_length, same_padding
from .params import CHANNELS_FIRST_MACS
from .pyramid import aspp_block
from .runtime import get_runtime
from .staging import Workspace, aligned_copy, pending_events

__all__ = ["ASPP", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D"]


def _positive_int(value, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _glorot(rng, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def _depthwise_glorot(rng, kernel_size: tuple[int, int], cin: int, multiplier: int) -> np.ndarray:
    """Keras' Glorot-uniform depthwise kernel: each filter's fans are its own taps."""
    kh, kw = kernel_size
    return _glorot(rng, (kh, kw, cin, multiplier), kh * kw, kh * kw * multiplier)


#: Keras config keys that matter only for training: accepted, kept, not used.
_TRAINING_ONLY = re.compile(
    r"(name|trainable|activity_regularizer|[a-z]+_(initializer|regularizer|constraint))"
)


def _keras_dtype(value):
    """A dtype from a Keras config: a name, or Keras 3's ``DTypePolicy`` dict."""
    if isinstance(value, dict):
        config = value.get("config")
        name = config.get("name") if isinstance(config, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"dtype: a Keras dtype policy must hold config.name, got {value!r}")
        if name.startswith("mixed_"):
            raise ValueError(
                f"dtype: the mixed-precision policy {name!r} is not supported; use 'float32' or 'float64'"
            )
        return name
    return value


class _Layer:
    """What the layers share: the geometry arguments, dtype, weights under a lock, and the call."""

    def _channels_first_in_place(self, x) -> bool:
        """Whether ``_forward`` takes channels-first ``x`` as it lies (the functional calls index it).

        Otherwise ``__call__`` reads it through a transposed view.
        """
        return False

    def __init__(
        self,
        kernel_size,
        strides,
        padding,
        dilation_rate,
        activation,
        use_bias,
        padding_mode,
        dtype,
        device,
        data_format="channels_last",
        training_only=None,
    ):
        for key in training_only or {}:
            if not _TRAINING_ONLY.fullmatch(key):
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {key!r}")
        #: The training-only Keras arguments given (``name``, initializers...),
        #: kept as they were for :meth:`get_config`; they change nothing here.
        self.training_config = dict(training_only or {})
        self.data_format = normalize_data_format(data_format)
        dtype = _keras_dtype(dtype)
        if not isinstance(use_bias, (bool, np.bool_)):
            raise TypeError(f"use_bias must be a bool, got {use_bias!r}")
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
        if np_dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.kernel_size = normalize_tuple(kernel_size, self.rank, "kernel_size")
        self.strides = normalize_tuple(strides, self.rank, "strides")
        self.dilation_rate = normalize_tuple(dilation_rate, self.rank, "dilation_rate")
        self.padding = normalize_padding(padding, self.rank)
        self.padding_mode = normalize_padding_mode(padding_mode)
        self.activation = normalize_activation(activation)
        self.use_bias = bool(use_bias)
        self.dtype = np_dtype
        self.device = device
        self._weights: tuple[np.ndarray, ...] | None = None
        # Building and replacing the weights, and reading them for a call,
        # happen under this lock: an unbuilt layer called from many threads
        # builds once, and no call sees one weight new and another old.
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()

    # -- what each layer defines

    #: Spatial axes: 2 for the image layers, 1 for ``Conv1D``.
    rank = 2

    #: The names of the kernels, in Keras' order; a "bias" follows when used.
    kernel_names: tuple[str, ...] = ()

    def _kernel_shapes(self, cin: int) -> list[tuple[int, ...]]:
        """The shape of each kernel for ``cin`` input channels."""
        raise NotImplementedError

    def _initial_kernels(self, rng, cin: int) -> list[np.ndarray]:
        """Freshly initialised kernels for ``cin`` input channels."""
        raise NotImplementedError

    def _forward(self, x, weights: tuple, layout: str = "channels_last"):
        """The layer on ``x`` in ``layout`` (channels-first only where the layer computes it)."""
        raise NotImplementedError

    def _channels_out(self, cin: int) -> int:
        raise NotImplementedError

    def _cin_of(self, first_weight_shape: tuple[int, ...]) -> int:
        """The input channel count a given first weight implies."""
        return first_weight_shape[self.rank]

    # -- shared

    @property
    def _layout(self) -> str:
        spatial = "L" if self.rank == 1 else "H, W"
        return f"(N, C_in, {spatial})" if self.data_format == "channels_first" else f"(N, {spatial}, C_in)"

    @property
    def weight_names(self) -> tuple[str, ...]:
        """The names of the weights, in Keras' order (the bias last, when used)."""
        return (*self.kernel_names, "bias") if self.use_bias else self.kernel_names

    def _weight_shapes(self, cin: int) -> list[tuple[int, ...]]:
        shapes = self._kernel_shapes(cin)
        return [*shapes, (self._channels_out(cin),)] if self.use_bias else shapes

    def _initial(self, rng, cin: int) -> list[np.ndarray]:
        kernels = self._initial_kernels(rng, cin)
        return [*kernels, np.zeros(self._channels_out(cin))] if self.use_bias else kernels

    @property
    def bias(self):
        return self._weight(len(self.kernel_names)) if self.use_bias else None

    def _bias_of(self, weights: tuple):
        return weights[len(self.kernel_names)] if self.use_bias else None

    @property
    def built(self) -> bool:
        return self._weights is not None

    def _weight(self, index: int):
        weights = self._weights
        return None if weights is None or index >= len(weights) else weights[index]

    def _shape(self, input_shape) -> tuple:
        """``input_shape`` as a channels-last tuple of sizes, each None or a non-negative int.

        With ``data_format="channels_first"`` it is given ``(N, C_in, H, W)``.
        """
        layout = self._layout
        try:
            shape = tuple(input_shape)
        except TypeError:
            raise TypeError(f"input_shape must be a sequence {layout}, got {input_shape!r}") from None
        if len(shape) != self.rank + 2:
            raise ValueError(f"input_shape must be {layout}, got {input_shape!r}")
        if self.data_format == "channels_first":
            shape = (shape[0], *shape[2:], shape[1])
        for size in shape:
            if size is not None and (
                not isinstance(size, numbers.Integral) or isinstance(size, (bool, np.bool_))
            ):
                raise TypeError(f"input_shape must hold ints or None, got {input_shape!r}")
            if size is not None and size < 0:
                raise ValueError(f"input_shape must hold non-negative sizes, got {input_shape!r}")
        if shape[-1] is None or shape[-1] < 1:
            raise ValueError(f"input_shape must have a positive channel count, got {input_shape!r}")
        return tuple(None if size is None else int(size) for size in shape)

    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create fresh weights for inputs of ``input_shape`` (only C_in matters).

        Raises
        ------
        TypeError, ValueError
            ``input_shape`` is not a shape of this layer's rank with a
            positive channel count (or one ``groups`` does not divide).
        """
        self._build_for(self._shape(input_shape)[-1])

    def _build_for(self, cin: int) -> None:
        self._check_channels(cin)
        weights = tuple(aligned_copy(w, self.dtype) for w in self._initial(np.random.default_rng(), cin))
        with self._lock:
            self._weights = weights

    def _check_channels(self, cin: int) -> None:
        """A layer with channel constraints (groups) refuses other channel counts here."""

    @property
    def weights(self) -> list[np.ndarray]:
        return self.get_weights()

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights, in Keras' order (empty before the layer is built)."""
        weights = self._weights
        return [] if weights is None else [w.copy() for w in weights]

    def set_weights(self, weights: Sequence[npt.ArrayLike]) -> None:
        """Replace the weights with copies of ``weights``, in Keras' order.

        Raises
        ------
        TypeError
            ``weights`` is not a list or tuple, or holds something that is not
            real numbers (a masked array, a tensor that requires grad...).
        ValueError
            The wrong number of arrays, or a shape that does not fit the
            layer (or its weights so far), named in the message.
        """
        if not isinstance(weights, (list, tuple)):
            names = ", ".join(self.weight_names)
            raise TypeError(f"weights must be a list [{names}], got {type(weights).__name__}")
        if len(weights) != len(self.weight_names):
            raise ValueError(
                f"weights must hold {len(self.weight_names)} arrays ({', '.join(self.weight_names)}), "
                f"got {len(weights)}"
            )
        arrays = []
        for name, value in zip(self.weight_names, weights, strict=True):
            arr = host_array(value, f"{name} weights")
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"{name} weights must be real numbers, got dtype {arr.dtype}")
            arrays.append(arr)
        first = arrays[0]
        if first.ndim != self.rank + 2:
            raise ValueError(
                f"{self.weight_names[0]} weights must be {self.rank + 2}-D, got shape {first.shape}"
            )
        cin = self._cin_of(first.shape)
        if cin < 1:
            raise ValueError(
                f"{self.weight_names[0]} weights must have input channels, got shape {first.shape}"
            )
        self._check_channels(cin)
        expected = self._weight_shapes(cin)
        built = self._weights
        for name, arr, shape, index in zip(
            self.weight_names, arrays, expected, range(len(arrays)), strict=True
        ):
            if arr.shape != shape:
                raise ValueError(f"{name} weights must have shape {shape}, got {arr.shape}")
            if built is not None and arr.shape != built[index].shape:
                raise ValueError(f"{name} weights must have shape {built[index].shape}, got {arr.shape}")
        # The layer's own copies, aligned so that a CPU device reads them in place.
        copies = tuple(aligned_copy(arr, self.dtype) for arr in arrays)
        with self._lock:
            self._weights = copies

    def __call__(self, x: npt.ArrayLike | cl_array.Array) -> np.ndarray:
        """Apply the layer to ``x`` of shape (N, H, W, C_in); returns an ndarray.

        With ``data_format="channels_first"``, ``x`` is ``(N, C_in, H, W)`` and
        so is the result: the convolution layers compute that layout as it
        is, :class:`ASPP` through a transposed view of a host array.  The
        first call builds the weights.

        Raises
        ------
        TypeError, ValueError
            As :func:`clatrous.conv2d` does for ``x`` (named ``x``), before
            any OpenCL call.
        """
        if not is_device_array(x):
            x = host_array(x, "x")
            if x.dtype.kind in "biuf":
                x = x.astype(self.dtype, copy=False)
        channels_first = False  # whether the result must move its channels back to axis 1
        channel_axis, layout = -1, "channels_last"
        if self.data_format == "channels_first":
            if self._channels_first_in_place(x):
                channel_axis, layout = 1, "channels_first"
            else:
                x, channels_first = to_channels_last(x, self.data_format, self.rank)
        if len(x.shape) != self.rank + 2:
            raise ValueError(f"x must be {self.rank + 2}-D {self._layout}, got shape {tuple(x.shape)}")
        with self._lock:
            weights = self._weights
        if weights is None:
            with self._build_lock:  # the first call builds, once; the others wait for it
                if not self.built:
                    self._build_for(int(x.shape[channel_axis]))
            with self._lock:
                weights = self._weights
        out = self._forward(x, weights, layout)
        out = out.get() if is_device_array(out) else out
        return to_channels_first(out) if channels_first else out

    def warmup(self, input_shape: Sequence[int]) -> None:
        """Build the weights (if needed) and compile every program a call on ``input_shape`` runs.

        The first call of each new specialisation (shape, dtype, rate,
        activation...) compiles for seconds (about 0.1 s from the disk caches
        in a later process); a server or a benchmark calls this once first.
        ``input_shape`` is a full shape, as the layer's input.

        Raises
        ------
        TypeError, ValueError
            ``input_shape`` is not a shape of concrete sizes this layer accepts.
        """
        shape = self._shape(input_shape)
        if any(size is None for size in shape):
            raise ValueError(f"input_shape must give every size to warm up for, got {input_shape!r}")
        if not self.built:
            self.build(input_shape)
        x = np.zeros(tuple(input_shape), self.dtype)
        self(x)

    def _geometry_kwargs(self, layout: str) -> dict:
        """The functional call's geometry, on data in ``layout``."""
        return dict(
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            padding_mode=self.padding_mode,
            data_format=layout,
        )

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        """Output shape for ``input_shape`` (N, H, W, C_in); unknown sizes stay ``None``."""
        shape = self._shape(input_shape)
        self._check_channels(shape[-1])
        spatial = []
        for axis in range(self.rank):
            n = shape[1 + axis]
            if n is None:
                spatial.append(None)
                continue
            k, s, d = self.kernel_size[axis], self.strides[axis], self.dilation_rate[axis]
            if self.padding == "valid":
                pads = (0, 0)
            elif self.padding == "same":
                pads = same_padding(n, k, s, d)
            elif self.padding == "causal":
                pads = (d * (k - 1), 0)
            else:
                pads = self.padding[axis]
            size = output_length(n, k, s, d, *pads)
            if size < 1:
                raise ValueError(f"input_shape {input_shape!r} is too small for the dilated kernel")
            spatial.append(size)
        if self.data_format == "channels_first":
            return (shape[0], self._channels_out(shape[-1]), *spatial)
        return (shape[0], *spatial, self._channels_out(shape[-1]))

    def get_config(self) -> dict:
        """The constructor's arguments; ``type(layer)(**layer.get_config())`` rebuilds the layer.

        The training-only Keras keys the layer was given (``name``,
        initializers...) come back as they were given.
        """
        return {
            **self.training_config,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "padding_mode": self.padding_mode,
            "dtype": self.dtype.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> _Layer:
        """A layer from its own :meth:`get_config` or from a Keras layer's.

        Raises
        ------
        TypeError
            ``config`` is not a dict.
        ValueError
            A key this layer does not know, or a value it cannot honour
            (LoRA, a mixed-precision policy...), named in the message.
        """
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        config = dict(config)
        for key in ("lora_rank", "dora_rank"):
            if config.pop(key, None) not in (None, 0):
                raise ValueError(
                    f"{key}: LoRA/DoRA-adapted layers are not supported; merge the adapter first"
                )
            config.pop(key.replace("rank", "alpha"), None)
        known = set(cls._constructor_keys())
        for key in config:
            if not isinstance(key, str) or not (key in known or _TRAINING_ONLY.fullmatch(key)):
                raise ValueError(f"{cls.__name__} config has the key {key!r}, which it does not know")
        training = {k: v for k, v in config.items() if k not in known}
        kwargs = {k: v for k, v in config.items() if k in known}
        try:
            return cls(**kwargs, **training)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{cls.__name__}.from_config: {exc}") from None

    @classmethod
    def _constructor_keys(cls) -> tuple[str, ...]:
        import inspect

        parameters = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in parameters if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)

    def __repr__(self) -> str:
        skip = {"dtype", *self.training_config}
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k not in skip)
        return f"{type(self).__name__}({args})"


class Conv2D(_Layer):
    """A 2-D dilated convolution layer with Keras' constructor and methods.

    Parameters
    ----------
    filters : int
        Output channels.
    kernel_size : int or (int, int)
    strides, padding, dilation_rate, activation, groups, padding_mode
        As for :func:`clatrous.conv2d`.
    use_bias : bool
    dtype : {"float32", "float64"}
        The weights' dtype; inputs are cast to it, as Keras does.
    device : pyopencl Device, Context or CommandQueue, optional

    Examples
    --------
    >>> import numpy as np, clatrous
    >>> layer = clatrous.Conv2D(1, (2, 2), dilation_rate=2)
    >>> layer.build((None, 4, 4, 1))
    >>> layer.set_weights([np.array([[10, -8], [15, -2]]).reshape(2, 2, 1, 1), np.zeros(1)])
    >>> simg = np.array([[4, 5, 8, 7], [1, 8, 8, 8], [3, 6, 6, 4], [6, 5, 7, 8]], np.float32)
    >>> layer(simg[None, :, :, None])[0, :, :, 0]
    array([[ 9., 76.],
           [22., 75.]], dtype=float32)
    """

    def _channels_first_in_place(self, x) -> bool:
        return True

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        dilation_rate=1,
        activation=None,
        use_bias=True,
        dtype="float32",
        device=None,
        groups=1,
        padding_mode="zeros",
        data_format="channels_last",
        **training_only,
    ):
        self.filters = _positive_int(filters, "filters")
        self.groups = _positive_int(groups, "groups")
        if self.filters % self.groups:
            raise ValueError(f"groups={self.groups} must divide filters={self.filters}")
        super().__init__(
            kernel_size, strides, padding, dilation_rate, activation, use_bias, padding_mode, dtype, device,
            data_format, training_only,
        )  # fmt: skip

    kernel_names = ("kernel",)

    @property
    def kernel(self):
        return self._weight(0)

    def _check_channels(self, cin: int) -> None:
        if cin % self.groups:
            raise ValueError(f"groups={self.groups} must divide the input channels, got {cin}")

    def _cin_of(self, first_weight_shape):
        return first_weight_shape[self.rank] * self.groups

    def _kernel_shapes(self, cin):
        return [(*self.kernel_size, cin // self.groups, self.filters)]

    def _initial_kernels(self, rng, cin):
        taps = math.prod(self.kernel_size)
        (shape,) = self._kernel_shapes(cin)
        return [_glorot(rng, shape, taps * (cin // self.groups), taps * self.filters)]

    def _channels_out(self, cin):
        return self.filters

    def _forward(self, x, weights, layout="channels_last"):
        return conv2d(
            x,
            weights[0],
            self._bias_of(weights),
            activation=self.activation,
            groups=self.groups,
            device=self.device,
            **self._geometry_kwargs(layout),
        )

    def get_config(self) -> dict:
        return {"filters": self.filters, **super().get_config(), "groups": self.groups}


class Conv1D(Conv2D):
    """A 1-D dilated convolution layer, as Keras ``Conv1D`` (WaveNet's layer with ``padding="causal"``).

    Input ``(N, L, C_in)`` (``(N, C_in, L)`` channels-first); weights
    ``[kernel (k, C_in // groups, filters), bias (filters,)]``.  Arguments as
    :class:`Conv2D`, with ints for ``kernel_size``, ``strides`` and
    ``dilation_rate``, and ``padding="causal"`` too: output ``t`` sees
    inputs up to ``t`` only.
    """

    rank = 1

    def _forward(self, x, weights, layout="channels_last"):
        return conv1d(
            x,
            weights[0],
            self._bias_of(weights),
            activation=self.activation,
            groups=self.groups,
            device=self.device,
            **self._geometry_kwargs(layout),
        )


class DepthwiseConv2D(_Layer):
    """Keras ``DepthwiseConv2D``: each input channel convolved with ``depth_multiplier`` filters.

    Output channel ``c * depth_multiplier + m`` is input channel ``c`` through
    filter ``m``.  Weights: ``[depthwise_kernel (kh, kw, C_in, M), bias (C_in * M,)]``.
    Arguments as :class:`Conv2D`; see :func:`clatrous.depthwise_conv2d`.
    """

    def _channels_first_in_place(self, x) -> bool:
        return True

    def __init__(
        self,
        kernel_size,
        strides=1,
        padding="valid",
        depth_multiplier=1,
        dilation_rate=1,
        activation=None,
        use_bias=True,
        padding_mode="zeros",
        dtype="float32",
        device=None,
        data_format="channels_last",
        **training_only,
    ):
        self.depth_multiplier = _positive_int(depth_multiplier, "depth_multiplier")
        super().__init__(
            kernel_size, strides, padding, dilation_rate, activation, use_bias, padding_mode, dtype, device,
            data_format, training_only,
        )  # fmt: skip

    kernel_names = ("depthwise_kernel",)

    @property
    def depthwise_kernel(self):
        return self._weight(0)

    def _kernel_shapes(self, cin):
        return [(*self.kernel_size, cin, self.depth_multiplier)]

    def _initial_kernels(self, rng, cin):
        return [_depthwise_glorot(rng, self.kernel_size, cin, self.depth_multiplier)]

    def _channels_out(self, cin):
        return cin * self.depth_multiplier

    def _forward(self, x, weights, layout="channels_last"):
        return depthwise_conv2d(
            x,
            weights[0],
            self._bias_of(weights),
            activation=self.activation,
            device=self.device,
            **self._geometry_kwargs(layout),
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "depth_multiplier": self.depth_multiplier}


class SeparableConv2D(_Layer):
    """Keras ``SeparableConv2D``: a depthwise dilated convolution, then a 1x1 one.

    The depthwise step (``depth_multiplier`` filters per channel, at
    ``strides``, ``padding``, ``padding_mode`` and ``dilation_rate``) has no
    bias; the pointwise 1x1 step to ``filters`` channels adds the bias and
    applies the activation, as in Keras.  Weights: ``[depthwise_kernel (kh,
    kw, C_in, M), pointwise_kernel (1, 1, C_in * M, filters), bias (filters,)]``.

    Both steps run on the device, the second ordered after the first by an
    event: the intermediate never comes back to the host.
    """

    def _channels_first_in_place(self, x) -> bool:
        # The pointwise step has C_in * M multiply-adds an output.  With many
        # channels a host x goes through a transposed view and the whole
        # layer runs channels-last: D2 13.3 ms, against 15.7 ms in place with
        # the 1x1 step transposed on the device (RESULTS.md, Run X).  A
        # device x stays as it is (its 1x1 step transposes on the device).
        if is_device_array(x) or len(x.shape) != self.rank + 2:  # the rank is checked next
            return True
        return x.shape[1] * self.depth_multiplier <= CHANNELS_FIRST_MACS

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        depth_multiplier=1,
        dilation_rate=1,
        activation=None,
        use_bias=True,
        padding_mode="zeros",
        dtype="float32",
        device=None,
        data_format="channels_last",
        **training_only,
    ):
        self.filters = _positive_int(filters, "filters")
        self.depth_multiplier = _positive_int(depth_multiplier, "depth_multiplier")
        super().__init__(
            kernel_size, strides, padding, dilation_rate, activation, use_bias, padding_mode, dtype, device,
            data_format, training_only,
        )  # fmt: skip

    kernel_names = ("depthwise_kernel", "pointwise_kernel")

    @property
    def depthwise_kernel(self):
        return self._weight(0)

    @property
    def pointwise_kernel(self):
        return self._weight(1)

    def _kernel_shapes(self, cin):
        m = self.depth_multiplier
        return [(*self.kernel_size, cin, m), (1, 1, cin * m, self.filters)]

    def _initial_kernels(self, rng, cin):
        m = self.depth_multiplier
        return [
            _depthwise_glorot(rng, self.kernel_size, cin, m),
            _glorot(rng, (1, 1, cin * m, self.filters), cin * m, self.filters),
        ]

    def _channels_out(self, cin):
        return self.filters

    def _forward(self, x, weights, layout="channels_last"):
        def both(x_in, device):
            middle = depthwise_conv2d(x_in, weights[0], device=device, **self._geometry_kwargs(layout))
            bias = self._bias_of(weights)
            return conv2d(middle, weights[1], bias, activation=self.activation, data_format=layout,
                          device=device)  # fmt: skip

        if is_device_array(x):
            return both(x, None)  # on x's queue
        try:
            return self._through_workspace(np.ascontiguousarray(x), weights, layout)
        except DeviceMemoryError:
            # Too large to keep on the device at once: two host calls, each split.
            return both(x, self.device)

    def _through_workspace(self, x: np.ndarray, weights, layout: str):
        """Both steps of a host ``x`` on the device, in arrays the runtime keeps call after call.

        ``x`` is copied into one and the depthwise result written to another,
        both from the runtime's workspace (warm memory: on Intel's runtime a
        new buffer of D2's 8.9 MB cost more than its kernel); the pointwise
        kernel waits for the depthwise one by its event.  Each reader's event
        goes on the array it read, so the next call's writers wait for it.
        """
        runtime = get_runtime(self.device)
        geometry = self._geometry_kwargs(layout)
        middle_shape = prepare_depthwise(
            x, weights[0], None, activation=None, channels_first=layout == "channels_first",
            **{k: v for k, v in geometry.items() if k != "data_format"},
        ).geometry.output_shape  # fmt: skip
        workspace = Workspace(runtime, x.shape, x.dtype)
        try:
            x_dev, middle = workspace.take(x.shape), workspace.take(middle_shape)
            # Blocking: the caller may change x as soon as the call returns.
            cl.enqueue_copy(runtime.queue, x_dev.base_data, x, wait_for=pending_events(x_dev) or None).wait()
            depthwise_conv2d(x_dev, weights[0], out=middle, **geometry)
            x_dev.events.append(middle.events[-1])  # the depthwise kernel, its reader
            bias = self._bias_of(weights)
            result = conv2d(middle, weights[1], bias, activation=self.activation, data_format=layout)
            middle.events.append(result.events[-1])
            workspace.give(x_dev)
            workspace.give(middle)
        finally:
            workspace.close()
        return result

    def get_config(self) -> dict:
        return {"filters": self.filters, **super().get_config(), "depth_multiplier": self.depth_multiplier}


class ASPP(_Layer):
    """DeepLabv3's atrous spatial pyramid pooling block, for inference (batch norm folded in).

    Input ``(N, H, W, C_in)``; output ``(N, H, W, filters)``.  Branches, each
    a "same" convolution to ``filters`` channels with a bias (the folded
    batch norm) and ``activation``:

    1. a 1x1 convolution;
    2. one ``kernel_size`` convolution per rate in ``rates``: dense, or with
       ``separable=True`` DeepLabv3+'s atrous separable convolution, a
       depthwise convolution at the rate (with its bias and the activation,
       as DeepLab's ``split_separable_conv2d``) then a 1x1 one;
    3. with ``image_pooling``, each image's mean over its pixels through a 1x1
       convolution, spread over the image (a bilinear upsampling of one pixel);

    then their concatenation, in that order, projected by a 1x1 convolution
    to ``filters`` channels (bias and activation).  Dropout, which acts only
    in training, is left out.

    Weights, in order (:meth:`get_weights`, :meth:`set_weights`,
    :attr:`weight_names`), with ``F = filters``, ``R = len(rates)`` and
    ``P = 1`` with image pooling, else 0:

    ================================  =============================================
    ``conv1x1_kernel``, ``_bias``     ``(1, 1, C_in, F)``, ``(F,)``
    each rate ``i``, dense:           ``atrous{i}_kernel`` ``(kh, kw, C_in, F)``, ``atrous{i}_bias`` ``(F,)``
    each rate ``i``, separable:       ``atrous{i}_depthwise_kernel`` ``(kh, kw, C_in, 1)``,
                                      ``atrous{i}_depthwise_bias`` ``(C_in,)``,
                                      ``atrous{i}_pointwise_kernel`` ``(1, 1, C_in, F)``,
                                      ``atrous{i}_pointwise_bias`` ``(F,)``
    ``pooling_kernel``, ``_bias``     ``(1, 1, C_in, F)``, ``(F,)`` (with image pooling)
    ``projection_kernel``, ``_bias``  ``(1, 1, (1 + R + P) * F, F)``, ``(F,)``
    ================================  =============================================

    The concatenation's channel order (1x1, rates, pooling) is torchvision's
    ``ASPP``; a PyTorch model's weights load after folding each batch norm
    into the convolution before it and transposing ``(out, in, kh, kw)`` to
    ``(kh, kw, in, out)``.

    How it runs: every step on the device, ordered by events, with no wait
    on the host between steps (see :func:`clatrous.pyramid.aspp_block`).  The
    dense branches are one fused launch of :func:`clatrous.aspp` writing
    their slices of one buffer; the pooling branch, constant over the
    pixels, is folded into a per-image bias of the projection, so the
    concatenation never holds it.  The result equals the block composed of
    :func:`clatrous.conv2d`, :func:`clatrous.depthwise_conv2d`, a mean and
    ``np.concatenate`` to rounding (the sums run in another order).

    Parameters
    ----------
    filters : int
        Channels of every branch and of the output (DeepLab: 256).
    rates : sequence of ints or (rows, cols) pairs
        One atrous branch per rate (DeepLabv3: 6, 12, 18 at output stride
        16); 1 to 7 of them.
    kernel_size : int or (int, int)
        The atrous branches' kernel (3).
    separable : bool
        DeepLabv3+'s atrous separable branches instead of dense ones.
    image_pooling : bool
        Whether the image-pooling branch is there.
    activation : str or None
        After every convolution, as :func:`clatrous.conv2d` takes it ("relu").
    dtype, device
        As for :class:`Conv2D`.

    Examples
    --------
    >>> import numpy as np, clatrous
    >>> block = clatrous.ASPP(8, rates=(2, 4))
    >>> block(np.ones((1, 9, 9, 3), np.float32)).shape
    (1, 9, 9, 8)
    >>> block.weight_names[:4]
    ('conv1x1_kernel', 'conv1x1_bias', 'atrous0_kernel', 'atrous0_bias')
    """

    def __init__(
        self,
        filters=256,
        rates=(6, 12, 18),
        kernel_size=3,
        separable=False,
        image_pooling=True,
        activation="relu",
        dtype="float32",
        device=None,
        **training_only,
    ):
        self.filters = _positive_int(filters, "filters")
        for name, value in (("separable", separable), ("image_pooling", image_pooling)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        if not isinstance(rates, (list, tuple)):
            raise TypeError(f"rates must be a list or tuple of rates, got {type(rates).__name__}")
        if not 1 <= len(rates) <= self.MAX_RATES:
            raise ValueError(f"rates must hold 1 to {self.MAX_RATES} rates, got {len(rates)}")
        self.rates = tuple(normalize_tuple(rate, 2, f"rates[{i}]") for i, rate in enumerate(rates))
        self.separable = bool(separable)
        self.image_pooling = bool(image_pooling)
        super().__init__(
            kernel_size, 1, "same", 1, activation, False, "zeros", dtype, device, "channels_last",
            training_only,
        )  # fmt: skip
        self._device_weights: dict = {}

    #: The most atrous branches: with the 1x1 one, the fused kernel's eight.
    MAX_RATES = 7

    @property
    def kernel_names(self) -> tuple[str, ...]:
        names = ["conv1x1_kernel", "conv1x1_bias"]
        for i in range(len(self.rates)):
            if self.separable:
                names += [f"atrous{i}_depthwise_kernel", f"atrous{i}_depthwise_bias"]
                names += [f"atrous{i}_pointwise_kernel", f"atrous{i}_pointwise_bias"]
            else:
                names += [f"atrous{i}_kernel", f"atrous{i}_bias"]
        if self.image_pooling:
            names += ["pooling_kernel", "pooling_bias"]
        return (*names, "projection_kernel", "projection_bias")

    def _kernel_shapes(self, cin):
        f, kernel = self.filters, self.kernel_size
        shapes = [(1, 1, cin, f), (f,)]
        for _ in self.rates:
            if self.separable:
                shapes += [(*kernel, cin, 1), (cin,), (1, 1, cin, f), (f,)]
            else:
                shapes += [(*kernel, cin, f), (f,)]
        if self.image_pooling:
            shapes += [(1, 1, cin, f), (f,)]
        branches = 1 + len(self.rates) + self.image_pooling
        return [*shapes, (1, 1, branches * f, f), (f,)]

    def _initial_kernels(self, rng, cin):
        weights = []
        for name, shape in zip(self.kernel_names, self._kernel_shapes(cin), strict=True):
            if name.endswith("bias"):
                weights.append(np.zeros(shape))
            elif name.endswith("depthwise_kernel"):
                weights.append(_depthwise_glorot(rng, self.kernel_size, cin, 1))
            else:
                taps = shape[0] * shape[1]
                weights.append(_glorot(rng, shape, taps * shape[2], taps * shape[3]))
        return weights

    def _channels_out(self, cin):
        return self.filters

    def set_weights(self, weights):
        super().set_weights(weights)
        with self._lock:
            self._device_weights = {}

    def _build_for(self, cin):
        super()._build_for(cin)
        with self._lock:
            self._device_weights = {}

    def _on_device(self, queue, weights: tuple) -> tuple:
        """The weights as device arrays of ``queue``, uploaded once per set of weights.

        The projection kernel is kept as its two parts: the rows of the
        branches the concatenation holds, and those of the pooling branch.
        """
        with self._lock:
            kept = self._device_weights.get(queue.int_ptr)
            if kept is not None and kept[0] is weights:
                return kept[1]
        host = list(weights)
        if self.image_pooling:
            rows = self.filters * (1 + len(self.rates))
            host[-2:-1] = [host[-2][:, :, :rows], host[-2][:, :, rows:]]
        arrays = tuple(cl_array.to_device(queue, np.ascontiguousarray(w)) for w in host)
        with self._lock:
            if self._weights is weights:
                self._device_weights = {queue.int_ptr: (weights, arrays)}
        return arrays

    def _forward(self, x, weights, layout="channels_last"):
        if is_device_array(x):
            runtime = get_runtime(x.queue)
            if self.device is not None and get_runtime(self.device).queue is not x.queue:
                raise ValueError("x is a device array on another queue than the layer's device")
            if x.dtype != self.dtype:
                raise TypeError(f"x on the device must have the layer's dtype {self.dtype}, got {x.dtype}")
            if not x.flags.c_contiguous:
                raise ValueError("x on the device must be C-contiguous")
        else:
            runtime = get_runtime(self.device)
        if len(x.shape) != 4 or 0 in x.shape[1:3]:
            raise ValueError(f"x must be (N, H, W, C_in) with pixels, got shape {tuple(x.shape)}")
        if x.shape[-1] != weights[0].shape[2]:
            raise ValueError(f"x has {x.shape[-1]} channels; the layer was built for {weights[0].shape[2]}")
        if x.shape[0] == 0:
            return np.empty((*x.shape[:3], self.filters), self.dtype)
        if self.dtype == np.float64 and not runtime.info.fp64:
            raise UnsupportedDeviceError(
                f"the layer is float64 but device {runtime.info.name!r} has no cl_khr_fp64"
            )
        if not is_device_array(x):
            x = cl_array.to_device(runtime.queue, np.ascontiguousarray(x))
        w = list(self._on_device(runtime.queue, weights))
        pointwise, w = tuple(w[:2]), w[2:]
        step = 4 if self.separable else 2
        atrous = [tuple(w[i * step : (i + 1) * step]) for i in range(len(self.rates))]
        w = w[len(self.rates) * step :]
        if self.image_pooling:
            pooling, projection = tuple(w[:2]), tuple(w[2:])
        else:
            pooling, projection = None, (w[0], None, w[1])
        return aspp_block(
            runtime,
            x,
            pointwise=pointwise,
            atrous=atrous,
            rates=self.rates,
            pooling=pooling,
            projection=projection,
            activation=self.activation,
        )

    def compute_output_shape(self, input_shape):
        shape = self._shape(input_shape)
        return (*shape[:3], self.filters)

    def get_config(self) -> dict:
        return {
            **self.training_config,
            "filters": self.filters,
            "rates": self.rates,
            "kernel_size": self.kernel_size,
            "separable": self.separable,
            "image_pooling": self.image_pooling,
            "activation": self.activation,
            "dtype": self.dtype.name,
        }
