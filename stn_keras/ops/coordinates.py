"""The one place that defines stn-keras's coordinate conventions.

Normalised coordinates follow PyTorch's ``F.affine_grid`` / ``F.grid_sample``:

* A sampling grid has shape ``(B, H_out, W_out, 2)`` and its last axis is ``(x, y)``: ``x`` runs along
  the width, ``y`` along the height, both in ``[-1, 1]``.
* A volume's grid has shape ``(B, D_out, H_out, W_out, 3)`` and its last axis is ``(x, y, z)``: ``z``
  runs along the depth. The coordinates come in the reverse order of the array axes, as in PyTorch's
  5-D ``grid_sample`` (whose input is NCDHW).
* ``align_corners=True``: -1 and 1 are the *centres* of the corner pixels, so pixel ``i`` of an axis of
  size ``n`` sits at ``-1 + 2 i / (n - 1)``.
* ``align_corners=False``: -1 and 1 are the outer *edges* of the corner pixels, so pixel ``i`` sits at
  ``(2 i + 1) / n - 1``. This makes the sampling independent of the resolution.

Everything else in the package (grid generators, the sampler, the layers, the exporters) refers to the
functions here rather than restating the formulas.
"""

import keras
import tensorflow as tf
from keras import ops

PADDING_MODES = ("zeros", "border", "reflection")

# Normalised coordinates beyond this magnitude are far outside any image; clamping them first keeps the
# pixel arithmetic finite (no overflow to inf) for values such as 1e30 or -3e38.
COORD_LIMIT = 1e6


def compute_dtype_name(*dtypes):
    """The floating dtype coordinate arithmetic runs in: at least float32, float64 if any input is.

    Args:
        *dtypes: the dtypes of the tensors taking part, of any backend (or their names).

    Returns:
        `"float64"` if any of `dtypes` is float64, else `"float32"`.
    """
    wide = any(keras.backend.standardize_dtype(d) == "float64" for d in dtypes)
    return "float64" if wide else "float32"


def compute_dtype(*dtypes):
    """`compute_dtype_name` as a `tf.DType`, for the TensorFlow code."""
    return tf.as_dtype(compute_dtype_name(*dtypes))


def dim(x, axis):
    """Static size of `x` along `axis` when known, else the dynamic size as a scalar int32 tensor."""
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


def linspace_normalized(size, align_corners, dtype=tf.float32):
    """Normalised positions of the pixel centres along one axis.

    Args:
        size: number of pixels `n` along the axis (Python int or scalar integer tensor).
        align_corners: whether -1 and 1 are corner pixel centres (`True`) or edges (`False`).
        dtype: floating dtype of the result. Defaults to `tf.float32`.

    Returns:
        A `(n,)` tensor. As in PyTorch, a single pixel sits at 0.
    """
    n = tf.cast(size, dtype)
    i = tf.range(n, dtype=dtype)
    if align_corners:
        # -1 + 2 i / (n - 1); for n == 1 the denominator is replaced so the lone pixel lands on 0.
        return tf.where(n > 1, -1.0 + 2.0 * i / tf.maximum(n - 1.0, 1.0), tf.zeros_like(i))
    return (2.0 * i + 1.0) / n - 1.0


def base_grid(size, align_corners, dtype=tf.float32):
    """Homogeneous normalised coordinates of every output pixel (or voxel).

    Args:
        size: `(H, W)` of an image or `(D, H, W)` of a volume, Python ints or scalar integer tensors.
        align_corners: see the module docstring.
        dtype: floating dtype of the result. Defaults to `tf.float32`.

    Returns:
        An `(H, W, 3)` tensor whose last axis is `(x, y, 1)`, or `(D, H, W, 4)` with `(x, y, z, 1)`:
        the coordinates in the grid's order, the reverse of the array axes'.
    """
    axes = [linspace_normalized(n, align_corners, dtype) for n in size]  # array order: (D,) H, W
    mesh = tf.meshgrid(*axes, indexing="ij")  # size each
    return tf.stack([*reversed(mesh), tf.ones_like(mesh[0])], axis=-1)  # size x (N + 1)


def unnormalize(coord, size, align_corners):
    """Map a normalised coordinate in [-1, 1] to a pixel coordinate along an axis of `size` pixels.

    Args:
        coord: normalised coordinates, any shape, floating.
        size: number of pixels along the axis (Python int or scalar integer tensor), or a tensor of
            sizes broadcastable against `coord`, such as `(W, H)` for a last axis `(x, y)`.
        align_corners: see the module docstring.

    Returns:
        Pixel coordinates of the same shape and dtype: 0 is the centre of the first pixel.
    """
    n = ops.cast(size, coord.dtype)
    if align_corners:
        return (coord + 1.0) / 2.0 * (n - 1.0)
    return ((coord + 1.0) * n - 1.0) / 2.0


def _reflect(coord, twice_low, twice_high):
    """Fold `coord` into [twice_low / 2, twice_high / 2] at both ends, as PyTorch does.

    Returns:
        `(reflected, direction)`: the folded coordinate and d reflected / d coord, +1 or -1 (0 for a
        degenerate span, a single pixel with `align_corners=True`, which folds everything onto 0).
    """
    low = twice_low / 2.0
    span = (twice_high - twice_low) / 2.0
    safe_span = ops.maximum(span, 1.0)  # only used where span > 0
    shifted = coord - low
    dist = ops.abs(shifted)
    extra = ops.mod(dist, safe_span)
    flips = ops.floor(dist / safe_span)
    even = ops.equal(ops.mod(flips, 2.0), 0.0)
    reflected = ops.where(even, extra + low, safe_span - extra + low)
    # PyTorch's sign: -1 below `low` (not at it), flipped again by every odd fold.
    sign = ops.where(shifted < 0.0, -ops.ones_like(coord), ops.ones_like(coord))
    direction = ops.where(even, sign, -sign)
    degenerate = span <= 0.0
    # A scalar 0, not `zeros_like`: exported graphs then need no ZerosLike (LiteRT's GPU delegate).
    zero = ops.convert_to_tensor(0.0, coord.dtype)
    return ops.where(degenerate, zero, reflected), ops.where(degenerate, zero, direction)


def _clip(coord, n):
    """Clip `coord` to `[0, n - 1]`; the slope is 1 strictly inside and 0 on or beyond either end.

    PyTorch counts a coordinate exactly on a border as clipped (`clip_coordinates_set_grad`), so the
    gradient there is 0, not the one-sided derivative.
    """
    last = n - 1.0
    slope = ops.cast((coord > 0.0) & (coord < last), coord.dtype)
    return ops.clip(coord, 0.0, last), slope


def padding_with_slope(coord, size, padding_mode, align_corners):
    """Where `padding_mode` reads `coord` from, and the derivative PyTorch gives that map.

    Args:
        coord: pixel coordinates (see `unnormalize`), any shape, floating, finite.
        size: number of pixels along the axis (Python int or scalar integer tensor), or a tensor of
            sizes broadcastable against `coord`, such as `(W, H)` for a last axis `(x, y)`.
        padding_mode: one of `PADDING_MODES`.
        align_corners: see the module docstring.

    Returns:
        `(padded, slope)`, both of `coord`'s shape and dtype. `slope` is PyTorch's
        `compute_coordinates_set_grad` multiplier: 1 for `"zeros"`; for `"border"` 1 strictly inside
        the image and 0 on or beyond its border pixels' centres; for `"reflection"` the folds' sign
        (+-1) times the clip's 0/1 after folding.
    """
    if padding_mode == "zeros":
        return coord, ops.ones_like(coord)
    n = ops.cast(size, coord.dtype)
    direction = ops.ones_like(coord)
    if padding_mode == "reflection":
        if align_corners:
            coord, direction = _reflect(coord, 0.0, 2.0 * (n - 1.0))
        else:
            coord, direction = _reflect(coord, -1.0, 2.0 * n - 1.0)
    coord, slope = _clip(coord, n)
    return coord, direction * slope


def apply_padding(coord, size, padding_mode, align_corners):
    """Move an out-of-image pixel coordinate where `padding_mode` reads it from (PyTorch's rule).

    `"zeros"` leaves the coordinate alone (taps outside read as 0); `"border"` clips it to
    `[0, size - 1]`; `"reflection"` folds it at the image borders (the pixel centres of the corner pixels
    with `align_corners=True`, their outer edges otherwise) and then clips. The gradient is PyTorch's
    (see `padding_with_slope`): 0 for a coordinate exactly on a clipping border.

    Args:
        coord: pixel coordinates (see `unnormalize`), any shape, floating.
        size: number of pixels along the axis (Python int or scalar integer tensor), or a tensor of
            sizes broadcastable against `coord`, such as `(W, H)` for a last axis `(x, y)`.
        padding_mode: one of `PADDING_MODES`.
        align_corners: see the module docstring.

    Returns:
        Coordinates of the same shape and dtype, finite for finite `coord` (the sampler masks non-finite
        coordinates before they get here).
    """
    if padding_mode == "zeros":
        return coord

    @tf.custom_gradient
    def pad(coord):
        padded, slope = padding_with_slope(coord, size, padding_mode, align_corners)
        return padded, lambda upstream: upstream * slope

    return pad(coord)
