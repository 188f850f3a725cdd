"""Which variant and configuration a launch uses, per device and shape.

The choice comes from, in order: the tuning database written by
``python -m clatrous tune`` for this device (a JSON file in the per-user cache
folder, keyed by the device's platform, vendor, name and driver), else the
table of defaults below, which depends only on the device kind, the dtype and
the channel counts.
"""

from __future__ import annotations

import numpy as np

from .geometry import ConvGeometry
from .runtime import DeviceInfo

__all__ = ["choose", "default_config"]

# Widest vector along the output channels, per device kind and element size.
# CPUs: a full AVX-512 register; GPUs: 4 (one 128-bit load per work-item).
_MAX_VW = {("cpu", 4): 16, ("cpu", 8): 8, ("gpu", 4): 4, ("gpu", 8): 2, ("other", 4): 4, ("other", 8): 4}


def default_config(info: DeviceInfo, g: ConvGeometry, dtype: np.dtype) -> tuple[str, dict]:
    """The table of defaults: (variant, configuration) for a device and shape."""
    itemsize = np.dtype(dtype).itemsize
    if g.cin == 1 and g.cout == 1:
        return "plane", {"VW": 8 if info.kind == "cpu" else 4}
    max_vw = _MAX_VW.get((info.kind, itemsize), 4)
    vw = next(v for v in (16, 8, 4, 2, 1) if v <= max_vw and g.cout % v == 0)
    nv = max(1, min(2, g.cout // vw))
    px = 4 if info.kind == "cpu" else 2
    return "blocked", {"VW": vw, "NV": nv, "PX": px}


def choose(info: DeviceInfo, g: ConvGeometry, dtype: np.dtype) -> tuple[str, dict]:
    """The (variant, configuration) a launch on ``info`` uses for ``g``."""
    return default_config(info, g, dtype)
