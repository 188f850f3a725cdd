"""``Conv2D``: a Keras-like layer over :func:`clatrous.conv2d`."""

from __future__ import annotations

import numbers
import threading

import numpy as np

from .arguments import is_device_array, normalize_activation
from .conv import conv2d
from .geometry import normalize_padding, normalize_tuple, output_length, same_padding
from .staging import aligned_copy

__all__ = ["Conv2D"]


class Conv2D:
    """A 2-D dilated convolution layer with Keras's constructor and methods.

    Parameters
    ----------
    filters : int
        Output channels.
    kernel_size : int or (int, int)
    strides, padding, dilation_rate, activation
        As for :func:`clatrous.conv2d`.
    use_bias : bool
    dtype : {"float32", "float64"}
        The weights' dtype; inputs are cast to it, as Keras does.
    device : pyopencl Device, Context or CommandQueue, optional

    Notes
    -----
    As in Keras, weights are created by :meth:`build` (Glorot-uniform kernel,
    zero bias) from the input's channel count only, so a layer built on 7x7
    inputs accepts any spatial size afterwards.

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
    ):
        if not isinstance(filters, numbers.Integral) or isinstance(filters, bool):
            raise TypeError(f"filters must be a positive int, got {filters!r}")
        if filters < 1:
            raise ValueError(f"filters must be a positive int, got {filters!r}")
        if not isinstance(use_bias, (bool, np.bool_)):
            raise TypeError(f"use_bias must be a bool, got {use_bias!r}")
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
        if np_dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.filters = int(filters)
        self.kernel_size = normalize_tuple(kernel_size, 2, "kernel_size")
        self.strides = normalize_tuple(strides, 2, "strides")
        self.dilation_rate = normalize_tuple(dilation_rate, 2, "dilation_rate")
        self.padding = normalize_padding(padding, 2)
        self.activation = normalize_activation(activation)
        self.use_bias = bool(use_bias)
        self.dtype = np_dtype
        self.device = device
        self.kernel: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        # Building and replacing the weights, and reading them for a call,
        # happen under this lock: an unbuilt layer called from many threads
        # builds once, and no call sees one weight new and the other old.
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self.kernel is not None

    @staticmethod
    def _shape(input_shape) -> tuple:
        """``input_shape`` as a 4-tuple of sizes, each None or a non-negative int (channels positive)."""
        try:
            shape = tuple(input_shape)
        except TypeError:
            raise TypeError(f"input_shape must be a sequence (N, H, W, C_in), got {input_shape!r}") from None
        if len(shape) != 4:
            raise ValueError(f"input_shape must be (N, H, W, C_in), got {input_shape!r}")
        for size in shape:
            if size is not None and (
                not isinstance(size, numbers.Integral) or isinstance(size, (bool, np.bool_))
            ):
                raise TypeError(f"input_shape must hold ints or None, got {input_shape!r}")
            if size is not None and size < 0:
                raise ValueError(f"input_shape must hold non-negative sizes, got {input_shape!r}")
        if shape[-1] is None or shape[-1] < 1:
            raise ValueError(f"input_shape must end with a positive channel count, got {input_shape!r}")
        return tuple(None if size is None else int(size) for size in shape)

    def build(self, input_shape) -> None:
        """Create the weights for inputs of ``input_shape`` (only C_in matters)."""
        cin = self._shape(input_shape)[-1]
        kh, kw = self.kernel_size
        fan_in, fan_out = kh * kw * cin, kh * kw * self.filters
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        rng = np.random.default_rng()
        kernel = aligned_copy(rng.uniform(-limit, limit, (kh, kw, cin, self.filters)), self.dtype)
        bias = aligned_copy(np.zeros(self.filters), self.dtype) if self.use_bias else None
        with self._lock:
            self.bias, self.kernel = bias, kernel

    @property
    def weights(self) -> list[np.ndarray]:
        return self.get_weights()

    def get_weights(self) -> list[np.ndarray]:
        """Copies of ``[kernel, bias]`` (``[kernel]`` without bias)."""
        if not self.built:
            return []
        out = [self.kernel.copy()]
        if self.use_bias:
            out.append(self.bias.copy())
        return out

    def set_weights(self, weights) -> None:
        """Replace the weights with copies of ``[kernel, bias]`` (``[kernel]`` without bias)."""
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"weights must be a list [kernel, bias], got {type(weights).__name__}")
        expected = 2 if self.use_bias else 1
        if len(weights) != expected:
            raise ValueError(f"weights must hold {expected} arrays, got {len(weights)}")
        kernel = np.asarray(weights[0])
        if kernel.dtype.kind not in "biuf":
            raise TypeError(f"kernel weights must be real numbers, got dtype {kernel.dtype}")
        if kernel.ndim != 4 or kernel.shape[:2] != self.kernel_size or kernel.shape[3] != self.filters:
            expected = (*self.kernel_size, "C_in", self.filters)
            raise ValueError(f"kernel weights must have shape {expected}, got {kernel.shape}")
        if self.built and kernel.shape != self.kernel.shape:
            raise ValueError(f"kernel weights must have shape {self.kernel.shape}, got {kernel.shape}")
        bias = None
        if self.use_bias:
            bias = np.asarray(weights[1])
            if bias.dtype.kind not in "biuf":
                raise TypeError(f"bias weights must be real numbers, got dtype {bias.dtype}")
            if bias.shape != (self.filters,):
                raise ValueError(f"bias weights must have shape {(self.filters,)}, got {bias.shape}")
            bias = aligned_copy(bias, self.dtype)
        # The layer's own copies, aligned so that a CPU device reads them in place.
        kernel = aligned_copy(kernel, self.dtype)
        with self._lock:
            self.bias, self.kernel = bias, kernel

    def __call__(self, x):
        """Apply the layer to ``x`` of shape (N, H, W, C_in); returns an ndarray."""
        if not is_device_array(x):
            x = np.asarray(x)
            if x.dtype.kind in "biuf":
                x = x.astype(self.dtype, copy=False)
        if len(x.shape) != 4:
            raise ValueError(f"x must be 4-D (N, H, W, C_in), got shape {tuple(x.shape)}")
        with self._lock:
            kernel, bias = self.kernel, self.bias
        if kernel is None:
            with self._build_lock:  # the first call builds, once; the others wait for it
                if not self.built:
                    self.build(x.shape)
            with self._lock:
                kernel, bias = self.kernel, self.bias
        out = conv2d(
            x,
            kernel,
            bias,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            activation=self.activation,
            device=self.device,
        )
        return out.get() if is_device_array(out) else out

    def compute_output_shape(self, input_shape) -> tuple:
        """Output shape for ``input_shape`` (N, H, W, C_in); unknown sizes stay ``None``."""
        shape = self._shape(input_shape)
        spatial = []
        for axis in range(2):
            n = shape[1 + axis]
            if n is None:
                spatial.append(None)
                continue
            k, s, d = self.kernel_size[axis], self.strides[axis], self.dilation_rate[axis]
            if self.padding == "valid":
                pads = (0, 0)
            elif self.padding == "same":
                pads = same_padding(n, k, s, d)
            else:
                pads = self.padding[axis]
            size = output_length(n, k, s, d, *pads)
            if size < 1:
                raise ValueError(f"input_shape {input_shape!r} is too small for the dilated kernel")
            spatial.append(size)
        return (shape[0], *spatial, self.filters)

    def get_config(self) -> dict:
        """The constructor's arguments; ``Conv2D(**layer.get_config())`` rebuilds the layer."""
        return {
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "dtype": self.dtype.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> Conv2D:
        return cls(**config)

    def __repr__(self) -> str:
        return (
            f"Conv2D(filters={self.filters}, kernel_size={self.kernel_size}, strides={self.strides}, "
            f"padding={self.padding!r}, dilation_rate={self.dilation_rate}, activation={self.activation!r})"
        )
