"""Kernel variants: which source, which ``-D`` options, which NDRange.

A *variant* is one ``.cl`` file; a *configuration* is a dict of its tunable
parameters (tile sizes, vector widths, work-group size).  :func:`make_plan`
turns (variant, configuration, geometry, dtype, activation, bias) into a
:class:`Plan`: everything a launch needs, computed once and cached by the
caller.  Geometry that changes with every call stays a run-time argument;
what shapes the generated code (dtype, kernel extent, tiles, activation,
bias) is a build option.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arguments import ACTIVATIONS
from .geometry import ConvGeometry

__all__ = [
    "TILED_LOCAL_BYTES",
    "VARIANTS",
    "Plan",
    "applicable",
    "local_bytes",
    "make_plan",
    "search_space",
    "tiled_spans",
]


@dataclass(frozen=True)
class Plan:
    """A fully specialised launch."""

    variant: str
    config: tuple[tuple[str, int], ...]
    source: str
    kernel_name: str
    options: tuple[str, ...]
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    scalars: tuple[np.int32, ...]


def _ceil_div(value: int, divisor: int) -> int:
    return -(-value // divisor)


def _round_up(value: int, multiple: int) -> int:
    return _ceil_div(value, multiple) * multiple


def _ndrange(counts: tuple[int, ...], local: tuple[int, ...] | None):
    """Global size rounded up to the work-group size; the last axis is never rounded."""
    if local is None:
        return counts, None
    rounded = tuple(_round_up(c, size) for c, size in zip(counts[:-1], local[:-1], strict=True)) + counts[-1:]
    return rounded, local


def _common_options(dtype: np.dtype, activation: str, has_bias: bool) -> list[str]:
    real = "double" if dtype == np.float64 else "float"
    return [f"-DREAL={real}", f"-DACTIVATION={ACTIVATIONS[activation]}", f"-DHAS_BIAS={int(has_bias)}"]


def _local(config: dict) -> tuple[int, int, int] | None:
    l0, l1 = config.get("LOCAL0", 0), config.get("LOCAL1", 0)
    return (l0, l1, 1) if l0 and l1 else None


def applicable(variant: str, g: ConvGeometry, config: dict | None = None) -> bool:
    """Whether ``variant`` (with ``config``) can compute geometry ``g``."""
    if variant == "plane":
        return g.cin == 1 and g.cout == 1
    if variant in ("blocked", "tiled"):
        return config is None or g.cout % config["VW"] == 0
    return variant == "direct"


def make_plan(
    variant: str, config: dict, g: ConvGeometry, dtype: np.dtype, activation: str, has_bias: bool
) -> Plan:
    """The launch of ``variant`` with ``config`` on geometry ``g``."""
    if not applicable(variant, g, config):
        raise ValueError(f"variant {variant!r} with {config} cannot compute {g}")
    options = _common_options(dtype, activation, has_bias)
    local = _local(config)
    # Run-time geometry, in the kernels' argument order after the four buffers.
    sizes = (g.h, g.w, g.cin, g.cout, g.ho, g.wo)
    steps = (g.sh, g.sw, g.dh, g.dw, g.pad_top, g.pad_left)
    if variant == "direct":
        counts = (g.cout, g.wo, g.n * g.ho)
        scalars = (*sizes, g.kh, g.kw, *steps)
    elif variant == "blocked":
        vw, nv, px = config["VW"], config["NV"], config["PX"]
        options += [f"-DVW={vw}", f"-DNV={nv}", f"-DPX={px}", f"-DKH={g.kh}", f"-DKW={g.kw}"]
        counts = (_ceil_div(g.cout, vw * nv), _ceil_div(g.wo, px), g.n * g.ho)
        scalars = (*sizes, *steps)
    elif variant == "tiled":
        vw, nv, px, ct, nb, rw = (config[k] for k in ("VW", "NV", "PX", "CT", "NB", "RW"))
        options += [f"-DVW={vw}", f"-DNV={nv}", f"-DPX={px}", f"-DCT={ct}", f"-DNB={nb}", f"-DRW={rw}"]
        options += [f"-DPXT={g.wo % px}"]  # the short last block of a row
        options += [f"-DKH={g.kh}", f"-DKW={g.kw}"]
        counts = (_ceil_div(g.cout, vw * nv), _ceil_div(g.wo, px * nb), g.n * _ceil_div(g.ho, rw))
        # One work-item per work-group: it spreads the few, long work-items
        # over every core of a CPU.
        local = (1, 1, 1)
        scalars = (*sizes, *steps)
    elif variant == "plane":
        vw = config["VW"]
        # Rows STEP apart share input rows; without such a lattice, one row each.
        step, rb = (g.dh // g.sh, config.get("RB", 1)) if g.dh % g.sh == 0 else (1, 1)
        chunks = _ceil_div(_ceil_div(g.ho, step), rb)
        options += [f"-DVW={vw}", f"-DRB={rb}", f"-DKH={g.kh}", f"-DKW={g.kw}"]
        options += [f"-DSH={g.sh}", f"-DSW={g.sw}"]
        counts = (_ceil_div(g.wo, vw), step * chunks, g.n)
        scalars = (g.h, g.w, g.ho, g.wo, g.dh, g.dw, g.pad_top, g.pad_left, step)
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    global_size, local_size = _ndrange(counts, local)
    return Plan(
        variant=variant,
        config=tuple(sorted(config.items())),
        source="conv2d_blocked.cl" if variant == "tiled" else f"conv2d_{variant}.cl",
        kernel_name=f"conv2d_{variant}",
        options=tuple(options),
        global_size=global_size,
        local_size=local_size,
        scalars=tuple(np.int32(v) for v in scalars),
    )


#: The most local memory a tiled work-item's partial sums may take in the
#: search (RW*NB*PX*NV*VW elements): 28 of W3's 33 rows at its default
#: blocks, and still within a core's L2 between channel tiles.
TILED_LOCAL_BYTES = 256 * 1024


def local_bytes(variant: str, config: dict, dtype: np.dtype) -> int:
    """The local memory a work-group of ``variant`` with ``config`` needs."""
    if variant != "tiled":
        return 0
    blocks = config["RW"] * config["NB"] * config["PX"] * config["NV"] * config["VW"]
    return blocks * np.dtype(dtype).itemsize


def tiled_spans(g: ConvGeometry, px: int, block_bytes: int) -> list[tuple[int, int]]:
    """(NB, RW) pairs worth trying: a few blocks of one row, or whole rows, one to many.

    ``block_bytes`` is one block's partial sums (PX*NV*VW elements); every
    span keeps RW*NB blocks within TILED_LOCAL_BYTES.
    """
    most = max(1, TILED_LOCAL_BYTES // block_bytes)  # blocks per work-item
    row = _ceil_div(g.wo, px)
    spans = {(min(4, row, most), 1)}
    for rw in (1, 2, 4, 8, 16, 32):
        nb = _even_split(row, max(1, most // rw))
        spans.add((nb, _even_split(g.ho, min(rw, most // nb))))
    return sorted(spans)


def _even_split(total: int, most: int) -> int:
    """The part size that splits ``total`` into as few parts of at most ``most`` as can be, evenly."""
    most = max(1, most)
    return _ceil_div(total, _ceil_div(total, most))


#: Tunable parameters per variant; the tuner walks these.
VARIANTS = ("direct", "blocked", "tiled", "plane")


def search_space(variant: str, g: ConvGeometry, dtype: np.dtype) -> list[dict]:
    """Every configuration of ``variant`` worth trying on geometry ``g``."""
    if variant == "direct":
        return [{}] + [{"LOCAL0": 1, "LOCAL1": l1} for l1 in (8, 32)]
    if variant == "plane":
        if not applicable("plane", g):
            return []
        return [{"VW": vw, "RB": rb} for vw in (4, 8, 16) for rb in (1, 2, 4, 8)]
    if variant == "tiled":
        if g.cin < 32:
            return []  # one tile would hold every channel: that is the blocked variant
        vw = 16 if g.cout % 16 == 0 else 8  # the tiled form pays off with wide vectors only
        if g.cout % vw:
            return []
        return [
            {"VW": vw, "NV": nv, "PX": px, "CT": ct, "NB": nb, "RW": rw}
            for nv in (1, 2, 4)
            if vw * nv <= 64 and (nv == 1 or vw * nv <= g.cout)
            for px in (4, 6, 8)
            for nb, rw in tiled_spans(g, px, px * nv * vw * np.dtype(dtype).itemsize)
            for ct in (32, 64, 128)
            if ct < g.cin
        ]
    configs = []
    for vw in (1, 2, 4, 8, 16):
        if g.cout % vw:
            continue
        for nv in (1, 2, 4):
            if vw * nv > 64 or (nv > 1 and vw * nv > g.cout):
                continue
            for px in (1, 2, 4, 6, 8):
                configs.append({"VW": vw, "NV": nv, "PX": px})
    return configs
