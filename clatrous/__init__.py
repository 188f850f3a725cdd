"""clatrous: dilated ("atrous") convolution in hand-written OpenCL, on any vendor's device.

The public names:

- :func:`conv2d`, :func:`conv1d`, :func:`depthwise_conv2d`: the functional
  API (NumPy or pyopencl Arrays), with ``groups`` and ``padding_mode``.
- :class:`Conv1D`, :class:`Conv2D`, :class:`DepthwiseConv2D`, :class:`SeparableConv2D`:
  Keras-like layers that load Keras' ``get_weights()`` as they are.
- :func:`aspp`: DeepLab's atrous branches of one input, computed in one pass;
  :class:`ASPP`: DeepLabv3's whole block (branches, image pooling, projection) as a layer.
- :func:`starlet`, :func:`istarlet`: the starlet wavelet transform (the
  original algorithme à trous) and its inverse, every scale on the device.
- :func:`dilate`: zero-insertion of a kernel, as the lecture notebook shows it.
- :mod:`clatrous.dask` (``pip install clatrous[dask]``, imported on its own): the
  operations on dask arrays, block by block with exact halos, and a cluster per device.
- :mod:`clatrous.reference`: the NumPy oracle with the same signatures.
- :mod:`clatrous.params`: which kernel configuration runs (``params.forced``),
  and the tuning database that ``python -m clatrous tune`` fills.
- :func:`aligned_empty`: a host array a CPU device writes in place as ``out=``.
- :func:`devices`, :func:`default_device`: which OpenCL devices are there.
"""

from importlib import metadata as _metadata

from . import params, reference
from .conv import conv1d, conv2d, depthwise_conv2d
from .errors import BuildError, ClatrousError, DeviceMemoryError, DeviceNotFoundError, UnsupportedDeviceError
from .layers import ASPP, Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D
from .pyramid import aspp
from .reference import dilate
from .runtime import default_device
from .runtime import list_devices as devices
from .staging import aligned_empty
from .wavelet import istarlet, starlet

try:
    __version__ = _metadata.version("clatrous")
except _metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ASPP",
    "BuildError",
    "ClatrousError",
    "Conv1D",
    "Conv2D",
    "DepthwiseConv2D",
    "DeviceMemoryError",
    "DeviceNotFoundError",
    "SeparableConv2D",
    "UnsupportedDeviceError",
    "aligned_empty",
    "aspp",
    "conv1d",
    "conv2d",
    "default_device",
    "depthwise_conv2d",
    "devices",
    "dilate",
    "istarlet",
    "params",
    "reference",
    "starlet",
]
