"""Kernel variants as data, and the operations they compute.

A :class:`Variant` describes one kernel (one ``.cl`` file in ``kernels/``):
its named buffer arguments, how its scalar arguments, build options and
NDRange follow from the geometry and a *configuration* (a dict of its
tunable parameters), its search space and constraints, and the local memory
it needs.  Nothing outside this module knows a kernel's argument order:
:func:`make_plan` turns (variant, configuration, geometry, dtype,
activation, bias) into a :class:`Plan`, everything one launch needs, and
:mod:`clatrous.launch` checks the plan's argument count against the built
kernel's own, once.

The search space is written as CLBlast writes its tuners'
(``src/tuning/kernels/*.hpp``): each parameter's allowed values, then
constraints, as data.  A configuration is *valid* when every parameter takes
an allowed value and the constraints hold; that alone decides whether a
stored (tuned) configuration may run, on any image size of its class.  The
geometry only narrows what the tuner tries (:meth:`Variant.candidates`).

An :class:`Operation` is a name, its variants and its NumPy reference; the
launch cache, the defaults and tuning database, the tuner, splitting and
staging work on any operation.  The operations themselves are declared where
their public functions are (``conv.py``).

Geometry that changes with every call stays a run-time argument; what shapes
the generated code (dtype, kernel extent, tiles, activation, bias) is a
build option.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from .arguments import ACTIVATIONS, MAX_BRANCHES
from .geometry import BORDERS, ConvGeometry

__all__ = [
    "ASPP_PARAMETERS",
    "BLOCKED",
    "Branch",
    "CONV2D_VARIANTS",
    "DEPTHWISE",
    "DEPTHWISE_LOCAL",
    "DIRECT",
    "LOCAL",
    "PLANE",
    "TILED",
    "TILED_LOCAL_BYTES",
    "WINOGRAD",
    "WINOGRAD_MOST_TILES",
    "Operation",
    "Plan",
    "Variant",
    "aspp_local_bytes",
    "aspp_plan",
    "make_plan",
    "mean_plan",
    "tiled_spans",
    "transpose_plan",
    "variant_names",
    "winograd_span",
    "winograd_tiles",
]

Config = Mapping[str, int]
_NAMES: set[str] = set()


def variant_names() -> frozenset[str]:
    """The name of every variant this version defines, of any operation."""
    return frozenset(_NAMES)


@dataclass(frozen=True)
class Plan:
    """A fully specialised launch: what :class:`clatrous.launch.Launch` builds and enqueues.

    The kernel's arguments are ``buffers`` (in order), then ``scalars``, then
    one element offset for each buffer named in ``offsets``.
    """

    variant: str
    config: tuple[tuple[str, int], ...]
    source: str
    kernel_name: str
    options: tuple[str, ...]
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    buffers: tuple[str, ...]
    scalars: tuple[np.int32, ...]
    offsets: tuple[str, ...]
    scratch_bytes: int = 0

    @property
    def arg_count(self) -> int:
        return len(self.buffers) + len(self.scalars) + len(self.offsets)


def _no_local(g: ConvGeometry, config: Config, dtype: np.dtype) -> int:
    return 0


def _always(g: ConvGeometry, config: Config) -> bool:
    return True


@dataclass(frozen=True, eq=False)
class Variant:
    """One kernel and everything needed to launch and tune it.

    Attributes
    ----------
    name, source, kernel
        The variant's name, its file in ``kernels/`` and its kernel function.
    parameters
        Each tunable parameter and its allowed values.
    constraints
        Predicates on a configuration alone (no geometry), as CLBlast's tuners
        write them: a configuration must satisfy every one.
    applies
        ``applies(g, config)``: whether this configuration can compute ``g``
        (a requirement of the kernel, e.g. ``COUT % VW == 0``).
    options, scalars
        ``f(g, config)``: the variant's own ``-D`` build options, and its
        run-time scalar arguments in the kernel's order.
    ndrange
        ``f(g, config)``: (work-item counts per axis, work-group size or None).
    defaults
        Values of parameters a configuration may leave out.
    narrow
        ``f(g, dtype)``: a dict of parameter values for this geometry, for the
        parameters whose useful values depend on it (the tuner's candidates);
        None when the tuner should not try this variant on ``g`` at all.
    worth
        ``f(g, config)``: whether a candidate is worth the tuner's time on
        ``g`` (it is correct either way).
    local_bytes
        ``f(g, config, dtype)``: local memory one work-group needs.
    buffers, offsets
        The kernel's buffer arguments, and those whose element offset follows
        the scalars.
    scratch
        ``f(g, config, dtype)``: bytes of a device buffer the kernel takes as
        its buffer argument ``"scratch"`` (its work-items' own memory), which
        each launch owns (:class:`clatrous.launch.Launch`); 0 for none.
    channels_first
        Whether the kernel reads and writes channels-first data; the others
        index channels-last data only.
    cpu_only
        Whether the tuner tries it on CPU devices only (a shape that would
        leave a GPU idle); it still runs anywhere when forced.
    band_exact
        Whether a band of output rows computes each output as the whole
        image does; not so where tiles are laid from a piece's first row
        (:func:`clatrous.execute.run` then runs the defaults without it).
    """

    name: str
    source: str
    kernel: str
    parameters: Mapping[str, tuple[int, ...] | range]
    options: Callable[[ConvGeometry, Config], list[str]]
    scalars: Callable[[ConvGeometry, Config], tuple[int, ...]]
    ndrange: Callable[[ConvGeometry, Config], tuple[tuple[int, ...], tuple[int, ...] | None]]
    constraints: tuple[Callable[[Config], bool], ...] = ()
    defaults: Mapping[str, int] = field(default_factory=dict)
    applies: Callable[[ConvGeometry, Config], bool] = _always
    narrow: Callable[[ConvGeometry, np.dtype], dict | None] = lambda g, dtype: {}
    worth: Callable[[ConvGeometry, Config], bool] = _always
    local_bytes: Callable[[ConvGeometry, Config, np.dtype], int] = _no_local
    scratch: Callable[[ConvGeometry, Config, np.dtype], int] = _no_local
    buffers: tuple[str, ...] = ("x", "w", "bias", "y")
    offsets: tuple[str, ...] = ("x",)
    channels_first: bool = False
    cpu_only: bool = False
    band_exact: bool = True

    def __post_init__(self):
        _NAMES.add(self.name)

    def computes(self, g: ConvGeometry, config: Config) -> bool:
        """Whether the complete ``config`` computes ``g``: its data layout, then :attr:`applies`."""
        if g.channels_first and not self.channels_first:
            return False
        return self.applies(g, config)

    def complete(self, config: Config) -> dict:
        """``config`` with the defaults of the parameters it leaves out."""
        return {**self.defaults, **config}

    def valid(self, config) -> bool:
        """Whether ``config`` is one of this variant's configurations (on any geometry)."""
        if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
            return False
        full = self.complete(config)
        return (
            set(full) == set(self.parameters)
            and all(type(v) is int and v in self.parameters[k] for k, v in full.items())
            and all(rule(full) for rule in self.constraints)
        )

    def admits(self, g: ConvGeometry, config: Config) -> bool:
        """Whether the tuner may try ``config`` on ``g``: valid, computing ``g``, and worth it."""
        if not self.valid(config):
            return False
        full = self.complete(config)
        return self.computes(g, full) and self.worth(g, full)

    def candidates(self, g: ConvGeometry, dtype: np.dtype) -> list[dict]:
        """The configurations worth trying on ``g``: valid, applicable, narrowed to ``g``."""
        narrowed = self.narrow(g, np.dtype(dtype))
        if narrowed is None:
            return []
        names = list(self.parameters)
        values = [narrowed.get(k, self.parameters[k]) for k in names]
        out = []
        for combo in itertools.product(*values):
            config = dict(zip(names, combo, strict=True))
            if self.admits(g, config):
                out.append(config)
        return out


@dataclass(frozen=True, eq=False)
class Operation:
    """An operation: a name, the variants that compute it, its NumPy reference and its defaults.

    ``reference(prepared)`` computes a :class:`clatrous.arguments.Prepared`
    call on the host, in the launch's output layout; ``defaults(info, g,
    dtype)`` is the (variant, configuration) used where nothing was tuned.
    """

    name: str
    variants: tuple[Variant, ...]
    reference: Callable
    defaults: Callable
    by_name: Mapping[str, Variant] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "by_name", MappingProxyType({v.name: v for v in self.variants}))

    def variant(self, name: str) -> Variant:
        try:
            return self.by_name[name]
        except KeyError:
            raise ValueError(f"{self.name} has no variant {name!r}; known: {tuple(self.by_name)}") from None


# ---------------------------------------------------------------- helpers


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
    precision = 64 if np.dtype(dtype) == np.float64 else 32
    return [
        f"-DPRECISION={precision}",
        f"-DACTIVATION={ACTIVATIONS[activation]}",
        f"-DHAS_BIAS={int(has_bias)}",
    ]


def _sizes(g: ConvGeometry) -> tuple[int, ...]:
    return (g.h, g.w, g.cin, g.cout, g.ho, g.wo)


def _steps(g: ConvGeometry) -> tuple[int, ...]:
    return (g.sh, g.sw, g.dh, g.dw, g.pad_top, g.pad_left)


def _extent(g: ConvGeometry) -> list[str]:
    return [f"-DKH={g.kh}", f"-DKW={g.kw}"]


def border_far(g: ConvGeometry) -> bool:
    """Whether a pad of ``g`` is as wide as its axis or wider, under a border that reflects or wraps.

    Then the kernels' border index needs its general form (a remainder);
    otherwise one reflection or wrap reaches every tap (``BORDER_FAR`` in
    ``kernels/common.h``).
    """
    if g.border in ("zeros", "replicate"):
        return False
    return max(g.pad_top, g.pad_bottom) >= g.h > 1 or max(g.pad_left, g.pad_right) >= g.w > 1


def make_plan(
    variant: Variant, config: Config, g: ConvGeometry, dtype: np.dtype, activation: str, has_bias: bool
) -> Plan:
    """The launch of ``variant`` with ``config`` on geometry ``g``."""
    if not variant.valid(config):
        raise ValueError(f"{config} is not a configuration of variant {variant.name!r}")
    config = variant.complete(config)
    if not variant.computes(g, config):
        raise ValueError(f"variant {variant.name!r} with {config} cannot compute {g}")
    options = [
        *_common_options(dtype, activation, has_bias),
        f"-DBORDER={BORDERS[g.border]}",
        f"-DBORDER_FAR={int(border_far(g))}",
        *variant.options(g, config),
    ]
    global_size, local_size = _ndrange(*variant.ndrange(g, config))
    return Plan(
        variant=variant.name,
        config=tuple(sorted(config.items())),
        source=variant.source,
        kernel_name=variant.kernel,
        options=tuple(options),
        global_size=global_size,
        local_size=local_size,
        buffers=variant.buffers,
        scalars=tuple(np.int32(v) for v in variant.scalars(g, config)),
        offsets=variant.offsets,
        scratch_bytes=variant.scratch(g, config, dtype),
    )


# ---------------------------------------------------------------- direct


def _direct_local(config: Config) -> tuple[int, int, int] | None:
    l0, l1 = config["LOCAL0"], config["LOCAL1"]
    return (l0, l1, 1) if l0 and l1 else None


DIRECT = Variant(
    name="direct",
    source="conv2d_direct.cl",
    kernel="conv2d_direct",
    parameters={"LOCAL0": (0, 1), "LOCAL1": (0, 8, 32)},
    defaults={"LOCAL0": 0, "LOCAL1": 0},  # the driver chooses the work-group
    constraints=(lambda c: (c["LOCAL0"] == 0) == (c["LOCAL1"] == 0),),
    options=lambda g, c: [],
    scalars=lambda g, c: (*_sizes(g), g.kh, g.kw, *_steps(g), g.groups),
    ndrange=lambda g, c: ((g.cout, g.wo, g.n * g.ho), _direct_local(c)),
)


# ---------------------------------------------------------------- blocked

_VW = (1, 2, 4, 8, 16)


def _channel_block_fits(c: Config) -> bool:
    return c["VW"] * c["NV"] <= 64


def _cout_fits(g: ConvGeometry, c: Config) -> bool:
    # COUT % VW == 0 is the kernel's requirement; more vectors than the
    # channels fill would only compute clamped duplicates.
    return g.cout % c["VW"] == 0 and (c["NV"] == 1 or c["VW"] * c["NV"] <= g.cout)


def _blocked_counts(g: ConvGeometry, c: Config) -> tuple[int, int, int]:
    return _ceil_div(g.cout, c["VW"] * c["NV"]), _ceil_div(g.wo, c["PX"]), g.n * g.ho


def _group_fits(g: ConvGeometry, c: Config) -> bool:
    """A work-group no wider than the NDRange along either axis it spans."""
    channels, pixels, _ = _blocked_counts(g, c)
    return c["LC"] <= channels and c["LX"] <= pixels


# The work-group: the driver's choice (LC = LX = 0), or LC channel blocks by
# LX pixel blocks of one row.  Intel's runtime runs a group's work-items as
# the lanes of its vectors (a GPU's warp), so the group's shape is the
# tuner's to find there; the tuner tries the driver's choice and groups of
# 4 or 16 along the pixels or 16 along the channels, and any valid pair can
# be stored (the defaults: clatrous.params.conv2d_defaults).
BLOCKED = Variant(
    name="blocked",
    source="conv2d_blocked.cl",
    kernel="conv2d_blocked",
    parameters={
        "VW": _VW,
        "NV": (1, 2, 4),
        "PX": (1, 2, 4, 6, 8),
        "LC": (0, 1, 2, 4, 8, 16, 32, 64),
        "LX": (0, 1, 2, 4, 8, 16, 32, 64),
    },
    defaults={"LC": 0, "LX": 0},
    constraints=(
        _channel_block_fits,
        lambda c: (c["LC"] == 0) == (c["LX"] == 0) and c["LC"] * c["LX"] <= 64,
    ),
    applies=lambda g, c: g.groups == 1 and g.cout % c["VW"] == 0,
    narrow=lambda g, dtype: (
        {"VW": [v for v in _VW if g.cout % v == 0], "LC": (0, 1, 16), "LX": (0, 1, 4, 16)}
        if g.groups == 1
        else None
    ),
    worth=lambda g, c: _cout_fits(g, c) and _group_fits(g, c) and (c["LC"], c["LX"]) != (1, 1),
    options=lambda g, c: [f"-DVW={c['VW']}", f"-DNV={c['NV']}", f"-DPX={c['PX']}", *_extent(g)],
    scalars=lambda g, c: (*_sizes(g), *_steps(g)),
    ndrange=lambda g, c: (_blocked_counts(g, c), (c["LC"], c["LX"], 1) if c["LC"] else None),
)


# ---------------------------------------------------------------- tiled

#: The most local memory a tiled work-item's partial sums may take
#: (RW*NB*PX*NV*VW elements): 28 of W3's 33 rows at its default blocks, and
#: still within a core's L2 between channel tiles.
TILED_LOCAL_BYTES = 256 * 1024


def _tiled_local_bytes(c: Config, dtype: np.dtype) -> int:
    return c["RW"] * c["NB"] * c["PX"] * c["NV"] * c["VW"] * np.dtype(dtype).itemsize


def _even_split(total: int, most: int) -> int:
    """The part size that splits ``total`` into as few parts of at most ``most`` as can be, evenly."""
    most = max(1, most)
    return _ceil_div(total, _ceil_div(total, most))


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


def _tiled_narrow(g: ConvGeometry, dtype: np.dtype) -> dict | None:
    if g.cin < 32 or g.groups != 1:
        return None  # too few channels to tile
    vw = 16 if g.cout % 16 == 0 else 8  # the tiled form pays off with wide vectors only
    if g.cout % vw:
        return None
    # NB and RW are searched together (tiled_spans), through the candidates below.
    # One tile of every channel (CT = CIN) is not the blocked kernel: a
    # work-item still reuses its weights over NB*RW blocks (W4: 9% faster).
    return {"VW": (vw,), "CT": tuple(ct for ct in (32, 64, 128) if ct <= g.cin)}


def _tiled_candidates(g: ConvGeometry, dtype: np.dtype) -> list[dict]:
    narrowed = _tiled_narrow(g, np.dtype(dtype))
    if narrowed is None:
        return []
    (vw,), itemsize = narrowed["VW"], np.dtype(dtype).itemsize
    out = []
    for nv in (1, 2, 4):
        for px in (4, 6, 8):
            for nb, rw in tiled_spans(g, px, px * nv * vw * itemsize):
                for ct in narrowed["CT"]:
                    config = {"VW": vw, "NV": nv, "PX": px, "CT": ct, "NB": nb, "RW": rw}
                    if TILED.admits(g, config):
                        out.append(config)
    return out


class _TiledVariant(Variant):
    """The tiled variant's candidates pair NB with RW (:func:`tiled_spans`)."""

    def candidates(self, g: ConvGeometry, dtype: np.dtype) -> list[dict]:
        return _tiled_candidates(g, dtype)


TILED = _TiledVariant(
    name="tiled",
    source="conv2d_tiled.cl",
    kernel="conv2d_tiled",
    parameters={
        "VW": _VW,
        "NV": (1, 2, 4),
        "PX": (1, 2, 4, 6, 8),
        "CT": (16, 32, 64, 128),
        "NB": range(1, 2049),
        "RW": range(1, 1025),
    },
    constraints=(_channel_block_fits,),  # local memory: the device decides (params.fits)
    applies=lambda g, c: g.groups == 1 and g.cout % c["VW"] == 0,
    worth=_cout_fits,
    local_bytes=lambda g, c, dtype: _tiled_local_bytes(c, dtype),
    options=lambda g, c: [
        *(f"-D{k}={c[k]}" for k in ("VW", "NV", "PX", "CT", "NB", "RW")),
        f"-DPXT={g.wo % c['PX']}",  # the short last block of a row
        *_extent(g),
    ],
    scalars=lambda g, c: (*_sizes(g), *_steps(g)),
    # One work-item per work-group: it spreads the few, long work-items over
    # every core of a CPU (the kernel requires it: reqd_work_group_size).
    ndrange=lambda g, c: (
        (
            _ceil_div(g.cout, c["VW"] * c["NV"]),
            _ceil_div(g.wo, c["PX"] * c["NB"]),
            g.n * _ceil_div(g.ho, c["RW"]),
        ),
        (1, 1, 1),
    ),
)


# ---------------------------------------------------------------- plane


def _plane_rows(g: ConvGeometry, c: Config) -> tuple[int, int]:
    """(STEP, RB): rows STEP = DH / SH apart share input rows; without such a lattice, one row each."""
    return (g.dh // g.sh, c["RB"]) if g.dh % g.sh == 0 else (1, 1)


def _plane_ndrange(g: ConvGeometry, c: Config):
    step, rb = _plane_rows(g, c)
    chunks = _ceil_div(_ceil_div(g.ho, step), rb)
    return (_ceil_div(g.wo, c["VW"]), step * chunks, g.n * (g.cout // c["CB"])), None


def is_planar(g: ConvGeometry) -> bool:
    """Channels-first data, or one channel in and out (where both layouts are the same memory)."""
    return g.channels_first or (g.cin == 1 and g.cout == 1)


PLANE = Variant(
    name="plane",
    source="conv2d_plane.cl",
    kernel="conv2d_plane",
    parameters={"VW": (4, 8, 16), "RB": (1, 2, 4, 8), "CB": (1, 2, 4, 8)},
    defaults={"CB": 1},
    # Accumulators: RB * CB vectors of VW, at most 128 elements, the most
    # the one-channel kernel ever had: PoCL 3.1 crashed (a segmentation
    # fault) running 256 (VW=16, RB=2, CB=8) on W4's shape, channels-first.
    constraints=(lambda c: c["RB"] * c["CB"] * c["VW"] <= 128,),
    applies=lambda g, c: is_planar(g) and (g.cout // g.groups) % c["CB"] == 0,
    narrow=lambda g, dtype: (
        {"CB": [b for b in (1, 2, 4, 8) if (g.cout // g.groups) % b == 0]} if is_planar(g) else None
    ),
    options=lambda g, c: [
        f"-DVW={c['VW']}",
        f"-DRB={_plane_rows(g, c)[1]}",
        f"-DCB={c['CB']}",
        f"-DCING={g.cin_per_group}",
        f"-DCOUT={g.cout}",
        f"-DCOUTG={g.cout // g.groups}",
        *_extent(g),
        f"-DSH={g.sh}",
        f"-DSW={g.sw}",
    ],
    scalars=lambda g, c: (g.h, g.w, g.ho, g.wo, g.dh, g.dw, g.pad_top, g.pad_left, _plane_rows(g, c)[0]),
    ndrange=_plane_ndrange,
    channels_first=True,
)

# ---------------------------------------------------------------- depthwise


def is_depthwise(g: ConvGeometry) -> bool:
    """One input channel per group: each channel convolved with its own filters."""
    return g.groups == g.cin


DEPTHWISE = Variant(
    name="depthwise",
    source="conv2d_depthwise.cl",
    kernel="conv2d_depthwise",
    parameters={"VW": _VW, "PX": (1, 2, 4, 8)},
    applies=lambda g, c: is_depthwise(g) and g.cin % c["VW"] == 0,
    narrow=lambda g, dtype: {"VW": [v for v in _VW if g.cin % v == 0]} if is_depthwise(g) else None,
    options=lambda g, c: [
        f"-DVW={c['VW']}",
        f"-DPX={c['PX']}",
        f"-DM={g.cout // g.cin}",
        *_extent(g),
    ],
    scalars=lambda g, c: (g.h, g.w, g.cin, g.ho, g.wo, *_steps(g)),
    ndrange=lambda g, c: ((g.cin // c["VW"], _ceil_div(g.wo, c["PX"]), g.n * g.ho), None),
)


# ---------------------------------------------------------------- depthwise, a work-group sharing a tile

_GROUP_MOST = 256  # work-items a group may have: what most GPUs allow


def _depthwise_local_bytes(g: ConvGeometry, c: Config, dtype: np.dtype) -> int:
    staged = (c["LY"] + g.kh - 1) * (c["LX"] * c["PX"] + g.kw - 1) * c["LC"] * c["VW"]
    weights = g.kh * g.kw * c["LC"] * c["VW"] * (g.cout // max(1, g.cin))
    return (staged + weights) * np.dtype(dtype).itemsize


def _phase_tiles(count: int, rate: int, tile: int) -> tuple[int, int]:
    """(phases, tiles per phase) along an output axis of ``count`` at ``rate`` in tiles of ``tile``."""
    return min(rate, count), _ceil_div(_ceil_div(count, rate), tile)


def _phase_grid(g: ConvGeometry, c: Config) -> tuple[int, int, int, int]:
    """(PHX, TX, PHY, TY) of a cooperative variant (phase_tile.h): its tile is LY*PY x LX*PX outputs."""
    tile_rows, tile_cols = c["LY"] * c.get("PY", 1), c["LX"] * c["PX"]
    return (*_phase_tiles(g.wo, g.dw, tile_cols), *_phase_tiles(g.ho, g.dh, tile_rows))


def _cooperative(channels: Callable[[ConvGeometry], int]):
    """The NDRange and worth rule of a cooperative variant whose groups split ``channels(g)``."""

    def ndrange(g: ConvGeometry, c: Config):
        phx, tx, phy, ty = _phase_grid(g, c)
        groups = (_ceil_div(channels(g), c["LC"] * c["VW"]), phx * tx, g.n * phy * ty)
        local = (c["LC"], c["LX"], c["LY"])
        return tuple(n * size for n, size in zip(groups, local, strict=True)), local

    def worth(g: ConvGeometry, c: Config) -> bool:
        # No more channels, tile columns or tile rows in a group than the output has.
        py = c.get("PY", 1)
        return (
            (c["LC"] == 1 or c["LC"] * c["VW"] <= channels(g))
            and c["LX"] * c["PX"] <= max(c["PX"], _ceil_div(g.wo, g.dw))
            and c["LY"] * py <= max(py, _ceil_div(g.ho, g.dh))
            and c.get("CT", 4) <= max(4, g.cin)
        )

    return ndrange, worth


_depthwise_local_ndrange, _depthwise_local_worth = _cooperative(lambda g: g.cin)


def _stride_one_depthwise(g: ConvGeometry) -> bool:
    return is_depthwise(g) and g.sh == 1 and g.sw == 1


DEPTHWISE_LOCAL = Variant(
    name="depthwise_local",
    source="conv2d_depthwise_local.cl",
    kernel="conv2d_depthwise_local",
    parameters={
        "VW": _VW,
        "PX": (1, 2, 4),
        "LC": (1, 2, 4, 8, 16, 32),
        "LX": (1, 2, 4, 8),
        "LY": (1, 2, 4, 8),
    },
    constraints=(lambda c: c["LC"] * c["LX"] * c["LY"] <= _GROUP_MOST,),
    applies=lambda g, c: _stride_one_depthwise(g) and g.cin % c["VW"] == 0,
    narrow=lambda g, dtype: {"VW": [v for v in _VW if g.cin % v == 0]} if _stride_one_depthwise(g) else None,
    worth=_depthwise_local_worth,
    local_bytes=_depthwise_local_bytes,
    options=lambda g, c: [
        *(f"-D{k}={c[k]}" for k in ("VW", "PX", "LC", "LX", "LY")),
        f"-DM={g.cout // g.cin}",
        *_extent(g),
    ],
    scalars=lambda g, c: (
        g.h,
        g.w,
        g.cin,
        g.ho,
        g.wo,
        g.dh,
        g.dw,
        g.pad_top,
        g.pad_left,
        *_phase_grid(g, c)[1::2],
    ),
    ndrange=_depthwise_local_ndrange,
)


# ---------------------------------------------------------------- dense, a work-group sharing tiles


def _local_bytes(g: ConvGeometry, c: Config, dtype: np.dtype) -> int:
    staged = (c["LY"] * c["PY"] + g.kh - 1) * (c["LX"] * c["PX"] + g.kw - 1) * c["CT"]
    weights = g.kh * g.kw * c["CT"] * c["LC"] * c["VW"]
    return (staged + weights) * np.dtype(dtype).itemsize


_local_ndrange, _local_worth = _cooperative(lambda g: g.cout)


def _stride_one_dense(g: ConvGeometry) -> bool:
    return g.groups == 1 and g.sh == 1 and g.sw == 1


# The work-group shapes the tuner tries, (LC, LX, LY, PX, PY): 64 to 256
# work-items (two to eight warps or wavefronts), tiles of 8x8 to 16x32
# outputs (the larger the tile, the fewer times its weights are read: W4 on
# one image moves 1.7x its lower bound with 16x16, 4.5x with 8x8, counted by
# Oclgrind); with each vector width that divides COUT up to 8 and CT of 4, 8
# or 16 (the device's local memory decides which fit).  Any valid
# configuration may still be stored and run; this only keeps the search to
# minutes.
_LOCAL_SHAPES = (
    (16, 4, 4, 2, 2),
    (8, 4, 4, 2, 4),
    (8, 4, 4, 4, 2),
    (16, 2, 4, 4, 2),
    (4, 4, 8, 4, 2),
    (32, 2, 2, 4, 4),
    (4, 8, 8, 2, 2),
    (16, 4, 4, 4, 4),
    (8, 8, 4, 4, 4),
)


class _LocalVariant(Variant):
    """The cooperative variant's candidates are :data:`_LOCAL_SHAPES`, not the whole product."""

    def candidates(self, g: ConvGeometry, dtype: np.dtype) -> list[dict]:
        if not _stride_one_dense(g):
            return []
        out = []
        for vw in (v for v in (1, 2, 4, 8) if g.cout % v == 0):
            for lc, lx, ly, px, py in _LOCAL_SHAPES:
                for ct in (4, 8, 16):
                    config = {"VW": vw, "PX": px, "PY": py, "LC": lc, "LX": lx, "LY": ly, "CT": ct}
                    if self.admits(g, config):
                        out.append(config)
        return out


LOCAL = _LocalVariant(
    name="local",
    source="conv2d_local.cl",
    kernel="conv2d_local",
    parameters={
        "VW": _VW,
        "PX": (1, 2, 4, 8),
        "PY": (1, 2, 4),
        "LC": (1, 2, 4, 8, 16),
        "LX": (1, 2, 4, 8),
        "LY": (1, 2, 4, 8),
        "CT": (4, 8, 16, 32),
    },
    constraints=(
        lambda c: c["LC"] * c["LX"] * c["LY"] <= _GROUP_MOST,
        lambda c: c["PX"] * c["PY"] <= 16,  # a register block of at most 16 vectors
    ),
    applies=lambda g, c: _stride_one_dense(g) and g.cout % c["VW"] == 0,
    worth=_local_worth,
    local_bytes=_local_bytes,
    options=lambda g, c: [
        *(f"-D{k}={c[k]}" for k in ("VW", "PX", "PY", "LC", "LX", "LY", "CT")),
        *_extent(g),
    ],
    scalars=lambda g, c: (
        g.h,
        g.w,
        g.cin,
        g.cout,
        g.ho,
        g.wo,
        g.dh,
        g.dw,
        g.pad_top,
        g.pad_left,
        *_phase_grid(g, c)[1::2],
    ),
    ndrange=_local_ndrange,
)

# ---------------------------------------------------------------- winograd, on the dilation's phases


def winograd_tiles(count: int, rate: int, m: int) -> int:
    """Tiles of ``m`` outputs ``rate`` apart along an output axis of ``count`` (conv2d_winograd.cl).

    Runs of ``m * rate`` outputs hold ``rate`` tiles each, one per phase; the
    last run holds only the phases that start inside the axis.
    """
    runs = _ceil_div(count, m * rate)
    return (runs - 1) * rate + min(rate, count - (runs - 1) * m * rate)


def _winograd_grid(g: ConvGeometry, c: Config) -> tuple[int, int, int]:
    """(TY, TX, TILES): tile rows and columns of an image, and tiles of the batch."""
    ty, tx = winograd_tiles(g.ho, g.dh, c["M"]), winograd_tiles(g.wo, g.dw, c["M"])
    return ty, tx, g.n * ty * tx


#: The most tiles a Winograd job covers: its partial sums stay within a core's L2 on W3.
WINOGRAD_MOST_TILES = 72


def winograd_span(g: ConvGeometry, m: int, tb: int, parts: int) -> int:
    """NT: the batch's tiles of ``m`` outputs in about ``parts`` runs, whole register blocks, at most 72."""
    tiles = _winograd_grid(g, {"M": m})[2]
    return min(WINOGRAD_MOST_TILES, _round_up(_ceil_div(tiles, parts), tb))


def _winograd_work_items(g: ConvGeometry, c: Config) -> int:
    """Work-items of a launch: one a job (channel block by tile run), at most WI."""
    jobs = _ceil_div(g.cout, c["VW"] * c["NV"] * c["NS"]) * _ceil_div(_winograd_grid(g, c)[2], c["NT"])
    return min(jobs, c["WI"])


def _winograd_scratch(g: ConvGeometry, c: Config, dtype: np.dtype) -> int:
    """Bytes of scratch: each work-item's partial sums and slices of transformed input and weights."""
    alpha2 = (c["M"] + 2) ** 2
    channels = c["VW"] * c["NV"] * c["NS"]
    each = alpha2 * (c["NT"] * channels + c["NT"] * c["CT"] + c["CT"] * channels)
    return _winograd_work_items(g, c) * each * np.dtype(dtype).itemsize


def _winograd_computes(g: ConvGeometry) -> bool:
    return g.groups == 1 and g.kh == 3 and g.kw == 3 and g.sh == 1 and g.sw == 1


class _WinogradVariant(Variant):
    """The Winograd variant's candidates: a few shapes of job per tile size, not the whole space."""

    def candidates(self, g: ConvGeometry, dtype: np.dtype) -> list[dict]:
        if not _winograd_computes(g) or g.cin < 8:
            return []
        vw = next((v for v in (16, 8, 4) if g.cout % v == 0), None)
        if vw is None:
            return []
        out = []
        for m in (2, 3, 4):
            for nv in (1, 2, 4):
                # One block of channels a job, or as many as cover them all (at most 256).
                for ns in sorted({1, max(1, min(16, 256 // (vw * nv), _ceil_div(g.cout, vw * nv)))}):
                    for tb in (4, 6):
                        for nt in sorted({winograd_span(g, m, tb, parts) for parts in (1, 2, 4, 8, 16)}):
                            for ct in (32, 64):
                                config = {"M": m, "VW": vw, "NV": nv, "NS": ns, "NT": nt, "TB": tb, "CT": ct}
                                if self.admits(g, config):
                                    out.append(config)
        return out


WINOGRAD = _WinogradVariant(
    name="winograd",
    source="conv2d_winograd.cl",
    kernel="conv2d_winograd",
    parameters={
        "M": (2, 3, 4),
        "VW": _VW,
        "NV": (1, 2, 4),
        "NS": (1, 2, 4, 8, 16),
        "NT": range(1, 4097),
        "TB": (1, 2, 4, 6, 8),
        "CT": (4, 8, 16, 32, 64, 128),
        "WI": (1, 2, 4, 8, 16, 32, 64, 128, 256),
    },
    # At most 16 work-items: each owns its scratch (1-2 MB at the defaults).
    defaults={"NS": 1, "WI": 16},
    constraints=(
        _channel_block_fits,
        lambda c: c["NT"] % c["TB"] == 0 and c["CT"] % c["VW"] == 0,
        lambda c: c["TB"] * c["NV"] <= 32,  # the register block
    ),
    applies=lambda g, c: _winograd_computes(g) and g.cout % c["VW"] == 0,
    worth=lambda g, c: (
        _cout_fits(g, c)
        and (c["NS"] == 1 or (c["NS"] // 2) * c["VW"] * c["NV"] < g.cout)
        and c["NT"] <= _round_up(_winograd_grid(g, c)[2], c["TB"])
    ),
    scratch=_winograd_scratch,
    buffers=("x", "w", "bias", "y", "scratch"),
    cpu_only=True,  # at most WI (16) work-items a launch
    band_exact=False,  # tiles start at a piece's first output row
    options=lambda g, c: [f"-D{k}={c[k]}" for k in ("M", "VW", "NV", "NS", "NT", "TB", "CT")],
    scalars=lambda g, c: (
        *_sizes(g),
        g.dh,
        g.dw,
        g.pad_top,
        g.pad_left,
        *_winograd_grid(g, c),
    ),
    # One work-item per work-group, as the tiled variant, for the same reasons.
    ndrange=lambda g, c: ((_winograd_work_items(g, c),), (1,)),
)

#: The variants of the (dense or grouped) convolution, in the order the tuner walks them.
CONV2D_VARIANTS = (DIRECT, BLOCKED, TILED, PLANE, DEPTHWISE, DEPTHWISE_LOCAL, LOCAL, WINOGRAD)


# ---------------------------------------------------------------- aspp (several branches, one launch)


@dataclass(frozen=True)
class Branch:
    """One convolution of a fused launch: stride 1, zero padding, into channels ``offset`` on."""

    kh: int
    kw: int
    dh: int
    dw: int
    pad_top: int
    pad_left: int
    cout: int
    offset: int
    has_bias: bool

    @classmethod
    def of(cls, g: ConvGeometry, offset: int, has_bias: bool) -> Branch:
        """The branch computing geometry ``g`` (stride 1, zero padding) into channels ``offset`` on."""
        if (g.sh, g.sw, g.border, g.groups) != (1, 1, "zeros", 1) or (g.ho, g.wo) != (g.h, g.w):
            raise ValueError(f"a fused branch is a stride-1, zero-padded, 'same' dense convolution, not {g}")
        return cls(g.kh, g.kw, g.dh, g.dw, g.pad_top, g.pad_left, g.cout, offset, has_bias)


#: The fused kernel's space: the tiled kernel's blocks, CT = 0 for one tile without local
#: memory, and FUSE: every branch in one launch (1) or a launch per branch (0).
ASPP_PARAMETERS: Mapping[str, tuple[int, ...] | range] = MappingProxyType(
    {
        "FUSE": (0, 1),
        "VW": _VW,
        "NV": (1, 2, 4),
        "PX": (1, 2, 4, 6, 8),
        "CT": (0, 16, 32, 64, 128),
        "NB": range(1, 2049),
        "RW": range(1, 1025),
    }
)


def aspp_local_bytes(config: Config, dtype: np.dtype) -> int:
    """Local memory of one work-group of the fused kernel (none when CT = 0)."""
    return _tiled_local_bytes(config, dtype) if config["CT"] else 0


def aspp_plan(
    branches: tuple[Branch, ...],
    config: Config,
    shape: tuple[int, int, int, int],
    channels: int,
    dtype: np.dtype,
    activation: str,
    bias_stride: int = 0,
) -> Plan:
    """The launch of ``kernels/aspp.cl`` for ``branches`` of an input ``shape`` (N, H, W, CIN).

    ``channels`` is the output pixel's width (the slices of every branch fit
    in it); ``bias_stride`` the elements between images' biases (0: one bias
    for the whole batch).
    """
    config = dict(config)
    if set(config) != set(ASPP_PARAMETERS) or not all(
        type(v) is int and v in ASPP_PARAMETERS[k] for k, v in config.items()
    ):
        raise ValueError(f"{config} is not a configuration of the fused kernel")
    if not 1 <= len(branches) <= MAX_BRANCHES:
        raise ValueError(f"a fused launch has 1 to {MAX_BRANCHES} branches, got {len(branches)}")
    vw, nv = config["VW"], config["NV"]
    for b in branches:
        if b.cout % vw or b.offset % vw or b.offset + b.cout > channels or channels % vw:
            raise ValueError(f"branch {b} does not fit VW={vw} vectors in {channels} output channels")
    n, h, w, _ = shape
    options = [
        *_common_options(dtype, activation, False),
        *(f"-D{k}={config[k]}" for k in ("VW", "NV", "PX", "CT", "NB", "RW")),
        f"-DNBR={len(branches)}",
        f"-DYC={channels}",
        f"-DPXT={shape[2] % config['PX']}",  # the short last block of a row
    ]
    for i, b in enumerate(branches):
        values = (b.kh, b.kw, b.dh, b.dw, b.pad_top, b.pad_left, b.cout, b.offset, int(b.has_bias))
        options += [
            f"-D{k}{i}={v}"
            for k, v in zip(("KH", "KW", "DH", "DW", "PT", "PL", "CO", "OFF", "HB"), values, strict=True)
        ]
    blocks = sum(_ceil_div(b.cout, vw * nv) for b in branches)
    counts = (blocks, _ceil_div(w, config["PX"] * config["NB"]), n * _ceil_div(h, config["RW"]))
    local = (1, 1, 1) if config["CT"] else None
    names = ("x", *(f"w{i}" for i in range(MAX_BRANCHES)), *(f"b{i}" for i in range(MAX_BRANCHES)), "y")
    return Plan(
        variant="aspp",
        config=tuple(sorted(config.items())),
        source="aspp.cl",
        kernel_name="aspp",
        options=tuple(options),
        global_size=counts,
        local_size=local,
        buffers=names,
        scalars=tuple(np.int32(v) for v in (h, w, shape[3], bias_stride)),
        offsets=("x",),
    )


def mean_plan(shape: tuple[int, int, int, int], dtype: np.dtype, max_work_group: int) -> Plan:
    """The launch of ``kernels/spatial_mean.cl``: (N, H, W, C) -> (N, C), each channel's pixel mean."""
    n, h, w, c = shape
    local = min(64, max_work_group)
    return Plan(
        variant="spatial_mean",
        config=(),
        source="spatial_mean.cl",
        kernel_name="spatial_mean",
        options=tuple(_common_options(dtype, "linear", False)),
        global_size=(_round_up(c, local), n),
        local_size=(local, 1),
        buffers=("x", "y"),
        scalars=tuple(np.int32(v) for v in (h, w, c)),
        offsets=("x",),
    )


#: The transpose kernel's tile side and the rows each work-item moves: a
#: work-group of 32 x 4, within what every OpenCL device allows (128).
TRANSPOSE_TILE, TRANSPOSE_ROWS = 32, 8


def transpose_plan(batch: int, rows: int, cols: int, dtype: np.dtype) -> Plan:
    """The launch of ``kernels/transpose.cl``: ``batch`` matrices (rows, cols) -> (cols, rows)."""
    tile, per = TRANSPOSE_TILE, TRANSPOSE_ROWS
    return Plan(
        variant="transpose",
        config=(),
        source="transpose.cl",
        kernel_name="transpose",
        options=(*_common_options(dtype, "linear", False), f"-DTILE={tile}", f"-DROWS={per}"),
        global_size=(_round_up(cols, tile), _ceil_div(rows, tile) * (tile // per), batch),
        local_size=(tile, tile // per, 1),
        buffers=("x", "y"),
        scalars=tuple(np.int32(v) for v in (rows, cols)),
        offsets=("x",),
    )
