"""Padding and output-shape rules: the one place that owns them.

Every geometry argument is first normalised to a tuple (one entry per spatial
axis), then validated with a message that names the argument and echoes what
was received.  The device path and :mod:`clatrous.reference` both call
:func:`conv_geometry`, so they cannot disagree on a shape.

A 1-D convolution is planned as a 2-D one with a single row, so kernels and
launch code only ever see the 2-D form.
"""

from __future__ import annotations

import numbers
from dataclasses import astuple, dataclass, field

__all__ = [
    "BORDERS",
    "ConvGeometry",
    "border_index",
    "conv_geometry",
    "normalize_padding",
    "normalize_tuple",
    "output_length",
    "same_padding",
]

#: padding_mode names, and the code the kernels use for them (``-D BORDER=``).
#: Each equals ``np.pad`` with the mode named in the comment, at any width.
BORDERS = {
    "zeros": 0,  # np.pad "constant" (0): a padded tap adds nothing
    "reflect": 1,  # np.pad "reflect": the edge sample is not repeated (d c b | a b c d | c b a)
    "replicate": 2,  # np.pad "edge": the edge sample repeated (a a a | a b c d | d d d)
    "circular": 3,  # np.pad "wrap": periodic (b c d | a b c d | a b c)
    "symmetric": 4,  # np.pad "symmetric": the edge sample repeated once (c b a | a b c d | d c b)
}

_PADDING_WORDS_2D = ("valid", "same")
_PADDING_WORDS_1D = ("valid", "same", "causal")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def normalize_tuple(value, n: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """Turn an int or a sequence of ``n`` ints into a tuple of ``n`` Python ints.

    Raises ``TypeError`` for anything that is not an integer (floats, bools,
    strings included) and ``ValueError`` for a wrong length or a value below
    ``minimum``.
    """
    if _is_int(value):
        items = (int(value),) * n
    elif isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
        items = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < minimum for v in items):
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {kind} ints, got {value!r}")
    return items


def output_length(n: int, k: int, s: int, d: int, pad_before: int, pad_after: int) -> int:
    """Output length of one axis: ``floor((n + pads - d*(k-1) - 1) / s) + 1``.

    Returns a value below 1 when the dilated kernel does not fit the padded
    input; callers turn that into an error.
    """
    return (n + pad_before + pad_after - d * (k - 1) - 1) // s + 1


def same_padding(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's ``"same"`` rule: output ``ceil(n/s)``, the odd pixel after.

    Total padding is ``max((ceil(n/s) - 1)*s + d*(k-1) + 1 - n, 0)``.
    """
    out = -(-n // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


def _explicit_padding(padding, ndim: int) -> tuple[tuple[int, int], ...]:
    """Normalise an explicit padding spec to ``ndim`` (before, after) pairs."""
    causal = ", 'causal'" if ndim == 1 else ""
    err = (
        f"padding must be 'valid', 'same'{causal}, a non-negative int, "
        f"a tuple of {ndim} ints or a tuple of {ndim} (before, after) pairs, got {padding!r}"
    )
    if _is_int(padding):
        pairs = ((int(padding), int(padding)),) * ndim
    elif isinstance(padding, (tuple, list)):
        items = list(padding)
        if ndim == 1 and len(items) == 2 and all(_is_int(v) for v in items):
            pairs = ((int(items[0]), int(items[1])),)  # conv1d: (left, right)
        elif len(items) == ndim and all(_is_int(v) for v in items):
            pairs = tuple((int(v), int(v)) for v in items)
        elif len(items) == ndim and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p) for p in items
        ):
            pairs = tuple((int(p[0]), int(p[1])) for p in items)
        else:
            bad_type = any(not isinstance(p, (tuple, list)) and not _is_int(p) for p in items)
            raise (TypeError if bad_type else ValueError)(err)
    else:
        raise TypeError(err)
    if any(v < 0 for pair in pairs for v in pair):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pairs


def normalize_padding(padding, ndim: int):
    """A lower-case padding word, or ``ndim`` explicit (before, after) pairs."""
    if isinstance(padding, str):
        words = _PADDING_WORDS_1D if ndim == 1 else _PADDING_WORDS_2D
        word = padding.lower()
        if word not in words:
            raise ValueError(f"padding must be one of {words} or explicit sizes, got {padding!r}")
        return word
    return _explicit_padding(padding, ndim)


def normalize_padding_mode(padding_mode) -> str:
    """A lower-case :data:`BORDERS` name."""
    if not isinstance(padding_mode, str):
        raise TypeError(f"padding_mode must be one of {tuple(BORDERS)}, got {padding_mode!r}")
    mode = padding_mode.lower()
    if mode not in BORDERS:
        raise ValueError(f"padding_mode must be one of {tuple(BORDERS)}, got {padding_mode!r}")
    return mode


def border_index(i: int, n: int, mode: str) -> int:
    """Where index ``i`` of an axis of length ``n`` reads from under ``mode``; -1 for the zeros.

    The same function as ``border_index`` in ``kernels/common.h``: reflect and
    symmetric are periodic (periods ``2n - 2`` and ``2n``), which is what
    ``np.pad`` gives for pads of any width, reflecting again and again.
    """
    if 0 <= i < n:
        return i
    if mode == "zeros":
        return -1
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    if mode == "circular":
        return i % n
    if mode == "reflect":
        if n == 1:
            return 0
        m = i % (2 * n - 2)
        return m if m < n else 2 * n - 2 - m
    m = i % (2 * n)  # symmetric
    return m if m < n else 2 * n - 1 - m


#: The kernels index with 32-bit ints; every geometry value, and the sum of
#: any two, must fit.  Keeping each below 2**30 proves it.
INDEX_LIMIT = 2**30


def _check_index_range(spatial, ksize, strides, dilation, pads, padding) -> None:
    """Refuse geometry whose indices could pass the kernels' 32-bit range, naming the argument."""
    for name, values, given in (("strides", strides, strides), ("dilation_rate", dilation, dilation)):
        if any(v > INDEX_LIMIT for v in values):
            raise ValueError(f"{name} must be at most {INDEX_LIMIT} (2**30), got {given!r}")
    for k, d in zip(ksize, dilation, strict=True):
        if d * (k - 1) > INDEX_LIMIT:
            raise ValueError(
                f"dilation_rate {tuple(dilation)} spreads a kernel of size {tuple(ksize)} over more than "
                f"{INDEX_LIMIT} (2**30) elements"
            )
    for size, (p0, p1) in zip(spatial, pads, strict=True):
        if max(p0, p1) > INDEX_LIMIT or size + p0 + p1 > INDEX_LIMIT:
            raise ValueError(
                f"padding {padding!r} (resolved to {tuple(pads)}) makes a padded size of more than "
                f"{INDEX_LIMIT} (2**30) elements"
            )


@dataclass(frozen=True)
class ConvGeometry:
    """Every size a 2-D dilated convolution needs, resolved and validated.

    The kernel is ``(kh, kw, cin // groups, cout)`` (Keras' layout) in every
    case; the data are channels-last, input ``(n, h, w, cin)`` and output
    ``(n, ho, wo, cout)``, or with ``channels_first`` input ``(n, cin, h, w)``
    and output ``(n, cout, ho, wo)``.
    """

    n: int
    h: int
    w: int
    cin: int
    cout: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    ho: int
    wo: int
    groups: int = 1
    border: str = "zeros"
    channels_first: bool = False
    # Computed once: a geometry is part of every launch's cache key, and a
    # small call (W1) would otherwise hash its nineteen fields each time.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_hash", hash(astuple(self)[:-1]))

    def __hash__(self) -> int:
        return self._hash

    @property
    def cin_per_group(self) -> int:
        return self.cin // self.groups

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.kh, self.kw, self.cin_per_group, self.cout)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The input's 4-D shape in its layout (a 1-D input with its row of one)."""
        if self.channels_first:
            return (self.n, self.cin, self.h, self.w)
        return (self.n, self.h, self.w, self.cin)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """The output's 4-D shape in its layout (a 1-D output with its row of one)."""
        if self.channels_first:
            return (self.n, self.cout, self.ho, self.wo)
        return (self.n, self.ho, self.wo, self.cout)

    @property
    def flops(self) -> int:
        """Multiply-adds counted twice, over every tap (padding included)."""
        return 2 * self.n * self.ho * self.wo * self.cout * self.cin_per_group * self.kh * self.kw


def conv_geometry(
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    *,
    strides,
    padding,
    dilation_rate,
    ndim: int = 2,
    groups=1,
    padding_mode="zeros",
    channels_first: bool = False,
) -> ConvGeometry:
    """Validate a convolution's geometry and resolve padding and output size.

    Parameters
    ----------
    x_shape : tuple
        ``(N, H, W, C_in)`` for ``ndim=2``, ``(N, L, C_in)`` for ``ndim=1``;
        ``(N, C_in, H, W)`` and ``(N, C_in, L)`` with ``channels_first``.
    kernel_shape : tuple
        ``(kh, kw, C_in, C_out)`` or ``(k, C_in, C_out)``.
    strides, dilation_rate : int or tuple of ints
    padding : str, int or tuple
        ``"valid"``, ``"same"`` (TensorFlow's rule), ``"causal"`` (1-D only),
        an int, a tuple of ``ndim`` ints, or ``ndim`` (before, after) pairs.
        For 1-D a pair of ints is (left, right).
    ndim : {1, 2}
    groups : int
        Input and output channels split into this many groups; the kernel is
        ``(..., C_in // groups, C_out)`` and output channel ``co`` reads the
        input channels of group ``co // (C_out // groups)``.
    padding_mode : str
        One of :data:`BORDERS`: what the padding reads.
    channels_first : bool
        The data's layout (the kernel's is Keras' either way).

    Returns
    -------
    ConvGeometry
        The 2-D plan; a 1-D convolution becomes one with ``h = kh = 1``.
    """
    strides = normalize_tuple(strides, ndim, "strides")
    dilation = normalize_tuple(dilation_rate, ndim, "dilation_rate")
    if len(x_shape) != ndim + 2:
        raise ValueError(f"x must be {ndim + 2}-D, got shape {tuple(x_shape)}")
    if len(kernel_shape) != ndim + 2:
        raise ValueError(f"kernel must be {ndim + 2}-D, got shape {tuple(kernel_shape)}")
    if channels_first:
        n, cin, *spatial = (int(v) for v in x_shape)
    else:
        n, *spatial, cin = (int(v) for v in x_shape)
    *ksize, kcin, cout = (int(v) for v in kernel_shape)
    if any(k < 1 for k in ksize):
        raise ValueError(f"kernel must have a positive spatial size, got shape {tuple(kernel_shape)}")
    if not _is_int(groups):
        raise TypeError(f"groups must be a positive int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    border = normalize_padding_mode(padding_mode)
    if cin < 1:
        raise ValueError(f"x must have at least one channel, got shape {tuple(x_shape)}")
    if cin % groups or cout % groups:
        raise ValueError(
            f"groups={groups} must divide both the input channels ({cin}) and the output channels "
            f"({cout}) (x shape {tuple(x_shape)}, kernel shape {tuple(kernel_shape)})"
        )
    if kcin != cin // groups:
        per = f" // groups = {cin // groups}" if groups > 1 else ""
        raise ValueError(
            f"kernel expects {kcin} input channels but x has {cin}{per} "
            f"(x shape {tuple(x_shape)}, kernel shape {tuple(kernel_shape)})"
        )
    if any(s < 1 for s in spatial):
        raise ValueError(f"x must have a non-empty spatial size, got shape {tuple(x_shape)}")

    pads = normalize_padding(padding, ndim)
    if pads == "valid":
        pads = ((0, 0),) * ndim
    elif pads == "same":
        pads = tuple(same_padding(*args) for args in zip(spatial, ksize, strides, dilation, strict=True))
    elif pads == "causal":  # everything on the left, as WaveNet and Keras Conv1D do
        pads = ((dilation[0] * (ksize[0] - 1), 0),)

    _check_index_range(spatial, ksize, strides, dilation, pads, padding)
    outs = tuple(
        output_length(size, k, s, d, p0, p1)
        for size, k, s, d, (p0, p1) in zip(spatial, ksize, strides, dilation, pads, strict=True)
    )
    if any(o < 1 for o in outs):
        raise ValueError(
            f"kernel of size {tuple(ksize)} dilated by {dilation} (extent "
            f"{tuple(d * (k - 1) + 1 for k, d in zip(ksize, dilation, strict=True))}) does not fit x of "
            f"spatial size {tuple(spatial)} with padding {pads}"
        )

    if ndim == 1:
        spatial, ksize, strides, dilation = [1, *spatial], [1, *ksize], (1, *strides), (1, *dilation)
        pads, outs = ((0, 0), *pads), (1, *outs)
    return ConvGeometry(
        n=n,
        h=spatial[0],
        w=spatial[1],
        cin=cin,
        cout=cout,
        kh=ksize[0],
        kw=ksize[1],
        sh=strides[0],
        sw=strides[1],
        dh=dilation[0],
        dw=dilation[1],
        pad_top=pads[0][0],
        pad_bottom=pads[0][1],
        pad_left=pads[1][0],
        pad_right=pads[1][1],
        ho=outs[0],
        wo=outs[1],
        groups=groups,
        border=border,
        channels_first=bool(channels_first),
    )
