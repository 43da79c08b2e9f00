"""The interpolation modes as per-axis tap kernels, shared by every backend's sampler.

An interpolation mode is separable: along each axis it turns a pixel coordinate into a few integer
tap positions, their weights and the weights' slopes (nearest: 1 tap, bilinear: 2, bicubic: 4),
with PyTorch's padding rules (`stn_keras.ops.coordinates`). The per-axis kernels are written in
`keras.ops`, so that the TensorFlow sampler (`forward`), its portable export form
(`stn_keras.ops.portable`) and the JAX kernel (`stn_keras.ops.kernels_jax`) read the same taps.
`TapTable` is the TensorFlow sampler's view of them: every tap (the outer product of the axes'
taps) as a row of the `(B * H * W, C)` image matrix, its weight and whether it is read.
"""

import functools
import itertools
import operator
from typing import NamedTuple

import tensorflow as tf
from keras import ops

from stn_keras.ops import coordinates

INTERPOLATIONS = ("bilinear", "nearest", "bicubic")

# PyTorch's cubic convolution coefficient (Keys, with A = -0.75, as OpenCV).
_CUBIC_A = -0.75


def _nearest_taps(pixel):
    """One tap at the nearest pixel, ties to even (PyTorch's `nearbyint`), with a constant weight."""
    return [ops.round(pixel)], [ops.ones_like(pixel)], [ops.zeros_like(pixel)]


def _bilinear_taps(pixel):
    """Two taps, floor and floor + 1, with linear weights."""
    left = ops.floor(pixel)
    frac = pixel - left
    one = ops.ones_like(pixel)
    return [left, left + 1.0], [1.0 - frac, frac], [-one, one]


def _cubic_weights(t):
    """Keys' cubic convolution weights of the 4 taps around a point at fraction `t` past the 2nd tap."""

    def near(d):  # |d| <= 1
        return ((_CUBIC_A + 2.0) * d - (_CUBIC_A + 3.0)) * d * d + 1.0

    def far(d):  # 1 < |d| < 2
        return ((_CUBIC_A * d - 5.0 * _CUBIC_A) * d + 8.0 * _CUBIC_A) * d - 4.0 * _CUBIC_A

    return [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]


def _cubic_slopes(t):
    """Derivatives of `_cubic_weights(t)` w.r.t. `t`."""

    def near(d):
        return (3.0 * (_CUBIC_A + 2.0) * d - 2.0 * (_CUBIC_A + 3.0)) * d

    def far(d):
        return (3.0 * _CUBIC_A * d - 10.0 * _CUBIC_A) * d + 8.0 * _CUBIC_A

    return [far(t + 1.0), near(t), -near(1.0 - t), -far(2.0 - t)]


def _bicubic_taps(pixel):
    """Four taps, floor - 1 .. floor + 2, with cubic convolution weights."""
    left = ops.floor(pixel)
    frac = pixel - left
    return [left + float(k) for k in (-1, 0, 1, 2)], _cubic_weights(frac), _cubic_slopes(frac)


# mode -> (tap kernel, whether padding applies to each tap rather than to the coordinate). PyTorch pads
# the coordinate before bilinear and nearest interpolation, but pads each tap of a bicubic one. A kernel
# maps pixel coordinates to T tap positions, their weights and the weights' derivatives.
KERNELS = {
    "nearest": (_nearest_taps, False),
    "bilinear": (_bilinear_taps, False),
    "bicubic": (_bicubic_taps, True),
}


def axis_taps(pixel, size, kernel, pad_taps, padding_mode, align_corners, index_dtype="int64"):
    """Tap indices, weights, weight slopes and validity along one axis.

    Args:
        pixel: finite pixel coordinates `(B, H_out, W_out)`, already padded unless `pad_taps`.
        size: number of input pixels along the axis.
        kernel, pad_taps: an entry of `KERNELS`.
        padding_mode, align_corners: as in `grid_sample`.
        index_dtype: the indices' integer dtype. Defaults to `"int64"`.

    Returns:
        `(indices, weights, slopes, inside)`, lists of T tensors `(B, H_out, W_out)`: integer tap
        positions, always inside `[0, size - 1]` (a tap outside is parked on 0), their weights, the
        weights' derivatives w.r.t. `pixel`, and whether the tap lies inside the image. A tap that is
        not inside must contribute nothing: the sampler selects it away (its parked pixel may hold
        NaN, and 0 * NaN is NaN).
    """
    positions, weights, slopes = kernel(pixel)
    if pad_taps:
        # The padded positions become integer indices, which carry no gradient.
        positions = [
            coordinates.padding_with_slope(p, size, padding_mode, align_corners)[0]
            for p in positions
        ]
    last = ops.cast(size, pixel.dtype) - 1.0
    zero = ops.convert_to_tensor(0.0, pixel.dtype)  # a scalar: exported graphs need no ZerosLike
    indices, inside = [], []
    for position in positions:
        within = (position >= 0.0) & (position <= last)
        indices.append(ops.cast(ops.where(within, position, zero), index_dtype))
        inside.append(within)
    return indices, weights, slopes, inside


def flat_indices(batch, positions, sizes):
    """Row index of pixel (or voxel) `(batch, *positions)` in the images reshaped to `(B * H * W, C)`.

    The arithmetic is int64 so that it stays exact when `B * H * W * C` exceeds 2**31.

    Args:
        batch: integer tensor of batch indices, broadcastable against the positions.
        positions: integer tensors of positions along each spatial axis, in array order: `(y, x)`
            for an image, `(z, y, x)` for a volume (already inside it).
        sizes: the input's spatial sizes in the same order, `(H, W)` or `(D, H, W)` (Python ints or
            scalar integer tensors).

    Returns:
        An int64 tensor of the broadcast shape: `(batch * H + y) * W + x` for an image,
        `((batch * D + z) * H + y) * W + x` for a volume.
    """
    (row,) = rows_of_taps(batch, [[position] for position in positions], sizes)
    return row


def rows_of_taps(batch, indices, in_size, index_dtype=tf.int64):
    """`flat_indices` of every tap, in `itertools.product` order (the last array axis fastest).

    The leading axes' partial rows are built once and shared by the taps that extend them: a graph
    of fewer ops traces and runs eagerly faster, an exported one holds each sum once, and XLA would
    merge the repeats anyway.

    Args:
        batch: integer `(B, 1, ..., 1)`, the batch indices.
        indices: per array axis, the list of its taps' integer positions `(B, *out)`.
        in_size: the input's spatial sizes in array order (ints or scalar integer tensors).
        index_dtype: the rows' integer dtype. Defaults to int64 (exact beyond 2**31 rows).
    """
    rows = [tf.cast(batch, index_dtype)]
    for positions, size in zip(indices, in_size, strict=True):
        size = tf.cast(size, index_dtype)
        rows = [row * size + tf.cast(p, index_dtype) for row in rows for p in positions]
    return rows


def select(valid, values):
    """`values` where `valid` (broadcast), else exactly 0, even where `values` is NaN or inf."""
    return tf.where(valid, values, tf.zeros_like(values))


def _batch_indices(images, grid):
    """`tf.range(B)` as int64, with the run-time check that `images` and `grid` share the batch size.

    Batch sizes known only at run time cannot be compared when the op is traced. Stacking the two
    ranges fails, in graph mode and when XLA compiles the function alike, with an error that names
    both sizes and this op; an assertion would be dropped by XLA.

    Args:
        images: `(B, ...)`.
        grid: `(B, ...)`.

    Returns:
        int64 `(B,)`.
    """
    ranges = [tf.range(tf.shape(x, out_type=tf.int64)[0]) for x in (images, grid)]
    return tf.stack(ranges, name="batch_sizes_of_images_and_grid_must_match")[0]


def product(factors):
    """The product of a non-empty list of tensors, left to right."""
    return functools.reduce(operator.mul, factors)


def all_of(conditions):
    """The logical and of a non-empty list of bool tensors, left to right."""
    return functools.reduce(operator.and_, conditions)


class TapTable(NamedTuple):
    """Every tap of every output pixel, per tap (the last array axis fastest).

    Attributes:
        batch: int64 `(B, 1, ..., 1)`, the batch indices.
        in_size: the input's spatial sizes in array order, `(H, W)` or `(D, H, W)`.
        indices, weights, slopes: per array axis, lists of T tensors `(B, *out)`: the axis's tap
            positions, weights and weight slopes (zero where the coordinate was clamped).
        taps: the taps, each a tuple of one tap number per array axis.
        rows: per tap, int64 `(B, *out)`: its row in the `(B * prod(in), C)` image matrix.
        valid: per tap, bool `(B, *out, 1)`: whether it is read (selected, never multiplied by 0).
        weights_of_taps: per tap, `(B, *out)`: the product of its axes' weights.
    """

    batch: tf.Tensor
    in_size: tuple
    indices: tuple
    weights: tuple
    slopes: tuple
    taps: list
    rows: list
    valid: list
    weights_of_taps: list


def tap_table(images, pixels, finite, movable, taps_of_axis, in_size):
    """The `TapTable` of pixel coordinates `pixels` `(B, *out, N)`, last axis `(x, y[, z])`.

    Args:
        images: `(B, *in, C)`.
        pixels: finite pixel coordinates in the compute dtype.
        finite: bool `(B, *out)`, whether the grid point was finite (one that was not reads nothing).
        movable: `(B, *out, N)`, 1 where the coordinate was neither non-finite nor clamped: the
            slopes are zeroed elsewhere.
        taps_of_axis: `(pixel, size) -> (indices, weights, slopes, inside)`, see `axis_taps`.
        in_size: the input's spatial sizes in array order.
    """
    spatial = len(in_size)
    # Component k of the grid's (x, y[, z]) runs along array axis N - 1 - k; the taps are built in
    # the grid's order, x first, then listed in array order.
    per_component = [taps_of_axis(pixels[..., k], in_size[spatial - 1 - k]) for k in range(spatial)]
    per_component = [
        (i, w, [s * movable[..., k] for s in slopes], inside)
        for k, (i, w, slopes, inside) in enumerate(per_component)
    ]
    indices, weights, slopes, inside = zip(*reversed(per_component), strict=True)
    batch = tf.reshape(_batch_indices(images, pixels), [-1] + [1] * spatial)  # Bx1x..x1
    taps = list(itertools.product(*(range(len(i)) for i in indices)))
    rows = rows_of_taps(batch, indices, in_size)
    valid = [
        tf.expand_dims(all_of([inside[a][t[a]] for a in range(spatial)] + [finite]), -1)
        for t in taps
    ]
    weights_of_taps = [product([weights[a][t[a]] for a in range(spatial)]) for t in taps]
    return TapTable(batch, in_size, indices, weights, slopes, taps, rows, valid, weights_of_taps)
