"""`grid_sample`: one gather path, with the interpolation modes as small per-axis tap kernels.

An interpolation mode is separable: along each axis it turns a pixel coordinate into a few integer tap
positions, their weights and the weights' slopes (nearest: 1 tap, bilinear: 2, bicubic: 4). The sampler
takes the outer product of the y and x taps (of the z, y and x taps for a volume: one implementation
for both ranks), turns each tap into a flat row index of the `(B * H * W, C)` image matrix, gathers
each tap's rows with `tf.gather` and sums them with their weights. Taps outside the image are clamped
to a valid index and then selected away ("clamp, then mask"; a select, since 0 * NaN is NaN and
images may hold NaN), so the gather never sees an out-of-range index: runtimes disagree on what that
means (TF's CPU kernel raises, ONNX wraps negative indices, TFLite aborts) and the exporters carry
this code into all of them.

Speed (see `benchmarks/`; measured per XLA loop with the profiler): one gather per tap, summed, lets
XLA compute a pixel's tap arithmetic once for all its taps. The backward pass is written out
(`_interpolate`) rather than left to autodiff, and shaped around what made XLA's loops slow: no
select on the whole gradient (the clamp passes its gradient through, `_sanitize`), no stack of the
coordinates' gradients (`_combine`), no reduction over a few channels, and no gathered tensor shared
by two loops (XLA would write it out to memory). Few-channel and many-channel images take different
layouts of the same sums (`_FEW_CHANNELS`), and the image gradient of an odd channel count is
scattered in rows one channel wider (`_scatter_width`).
"""

import functools
import itertools
import math
import operator

import tensorflow as tf
from keras import ops

from stn_keras.ops import backend, coordinates, portable, recording
from stn_keras.ops.validation import (
    as_tensor,
    check_bool,
    check_choice,
    check_rank,
    check_same_batch,
    dtype_name,
    is_floating,
    shape_text,
    static_shape,
)

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
_KERNELS = {
    "nearest": (_nearest_taps, False),
    "bilinear": (_bilinear_taps, False),
    "bicubic": (_bicubic_taps, True),
}


def _axis_taps(pixel, size, kernel, pad_taps, padding_mode, align_corners, index_dtype="int64"):
    """Tap indices, weights, weight slopes and validity along one axis.

    Args:
        pixel: finite pixel coordinates `(B, H_out, W_out)`, already padded unless `pad_taps`.
        size: number of input pixels along the axis.
        kernel, pad_taps: an entry of `_KERNELS`.
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


@tf.custom_gradient
def _sanitize(grid, finite):
    """`grid` with non-finite points set to 0 and the rest clamped to +-`coordinates.COORD_LIMIT`.

    The gradient is passed through unchanged: the sampler zeros the coordinate slopes of every point
    this function changed (see `_interpolate`'s `movable`), so the result is still exact. Autodiff's
    own gradient here would be a select whose operand is the whole sampler backward, which XLA
    compiles to a branch inside that loop and then cannot vectorise it (2-3x slower).

    Args:
        grid: `(B, H_out, W_out, 2)`.
        finite: bool `(B, H_out, W_out)`, whether both coordinates of a point are finite.

    Returns:
        `(B, H_out, W_out, 2)`.
    """
    clipped = tf.clip_by_value(grid, -coordinates.COORD_LIMIT, coordinates.COORD_LIMIT)
    sanitized = tf.where(finite[..., None], clipped, tf.zeros_like(grid))
    return sanitized, lambda upstream: (upstream, None)


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
    row = tf.cast(batch, tf.int64)
    for position, size in zip(positions, sizes, strict=True):
        row = row * tf.cast(size, tf.int64) + tf.cast(position, tf.int64)
    return row


def _select(valid, values):
    """`values` where `valid` (broadcast), else exactly 0, even where `values` is NaN or inf."""
    return tf.where(valid, values, tf.zeros_like(values))


# How a tap that is not read contributes exactly 0 (a select, never a product with 0: 0 * NaN is NaN).
# Up to this many channels the forward pass gathers it from an extra row of zeros appended to the
# image matrix (a copy of the image); with more, it selects the gathered value away. XLA runs a
# select over a few channels far slower than the gathers alone, while over many channels the copy
# costs more than the select (measured in `benchmarks/results/ab-nan-masking-cpu.md`).
_ZERO_ROW_CHANNELS = 8


def _with_zero_row(flat):
    """The `(N, C)` image matrix with a row of zeros appended, `(N + 1, C)`: what no tap reads."""
    return tf.concat([flat, tf.zeros_like(flat[:1])], axis=0)


def _read(table, rows, valid, zero_row):
    """Each tap's pixel values, exactly 0 where the tap is not read.

    Args:
        table: the `(N, C)` image matrix, or `(N + 1, C)` with a zero row last (`zero_row`).
        rows: int64 `(B, H_out, W_out)`, the taps' rows, always inside the image.
        valid: bool `(B, H_out, W_out, 1)`, whether each tap is read.
        zero_row: whether `table` ends with the zero row.

    Returns:
        `(B, H_out, W_out, C)` in `table`'s dtype.
    """
    if zero_row:
        last = tf.shape(table, out_type=tf.int64)[0] - 1
        return tf.gather(table, tf.where(valid[..., 0], rows, last))
    return _select(valid, tf.gather(table, rows))


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


def grid_sample(images, grid, interpolation="bilinear", padding_mode="zeros", align_corners=False):
    """Sample `images` at the normalised positions of `grid`, exactly as `torch.nn.functional.grid_sample`.

    Channels-last: the result equals PyTorch's `F.grid_sample` on the NCHW transpose of `images` with
    `mode=interpolation`, transposed back. Volumes work the same way with one more axis: `images`
    `(B, D, H, W, C)` and a grid `(B, D_out, H_out, W_out, 3)` whose last axis is `(x, y, z)` (x along
    W, z along D), as PyTorch's 5-D `grid_sample` on the NCDHW transpose (`"bilinear"` is trilinear
    there). Differentiable w.r.t. `images` and `grid` with PyTorch's gradient conventions (nearest
    interpolation has a zero gradient w.r.t. the grid). Runs eagerly, in `tf.function` and under XLA
    (`jit_compile=True`), with dynamic batch and spatial sizes. On the JAX and PyTorch Keras
    backends it takes and returns their tensors with the same semantics (`stn_keras.ops.backend`).

    Robustness: a grid point with a NaN or infinite coordinate reads as outside the image and yields 0
    whatever the padding mode; finite far-out points follow the padding mode (0 for `"zeros"`). Nothing
    one sample's grid holds can change another sample's output.

    Args:
        images: float tensor `(B, H, W, C)` or, for volumes, `(B, D, H, W, C)` (float16, bfloat16,
            float32 or float64).
        grid: float tensor `(B, H_out, W_out, 2)`, last axis `(x, y)`, or `(B, D_out, H_out, W_out, 3)`,
            last axis `(x, y, z)`, normalised to [-1, 1] (see `stn_keras.ops.coordinates`).
        interpolation: one of `"bilinear"`, `"nearest"` (ties to even) or `"bicubic"` (Keys, A=-0.75;
            images only, as in PyTorch and ONNX). Defaults to `"bilinear"`.
        padding_mode: what is read outside the image: `"zeros"`, `"border"` (the nearest edge pixel) or
            `"reflection"` (mirrored at the borders). Defaults to `"zeros"`.
        align_corners: whether -1 and 1 are the centres (`True`) or the outer edges (`False`) of the corner
            pixels. Defaults to `False`.

    Returns:
        `(B, H_out, W_out, C)` or `(B, D_out, H_out, W_out, C)` in `images`' dtype. Coordinates and
        weights are computed in float32, or in float64 when `images` or `grid` is float64.

    Raises:
        ValueError: if `images` is neither rank 4 nor rank 5, `grid` does not have the same rank with a
            last axis of 2 (images) or 3 (volumes), the batch sizes differ, `interpolation` is
            `"bicubic"` on a volume, or `interpolation` / `padding_mode` / `align_corners` is not a
            valid value.

    Example:
        >>> images = tf.random.uniform((2, 32, 32, 3))
        >>> theta = tf.constant([[[0.5, 0.0, 0.2], [0.0, 0.5, 0.0]]] * 2)
        >>> grid = affine_grid(theta, (16, 16))
        >>> grid_sample(images, grid).shape
        TensorShape([2, 16, 16, 3])
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    check_choice("padding_mode", padding_mode, coordinates.PADDING_MODES)
    check_bool("align_corners", align_corners)
    kernels = backend.kernels()
    if kernels is not None:  # JAX or PyTorch: the backend's kernel
        images, grid = as_tensor(images), as_tensor(grid)
        _check_arguments(images, grid, interpolation)
        return kernels.grid_sample(images, grid, interpolation, padding_mode, align_corners)
    # The scope and the marked boundary tell the exporters the sampler and its mode (`recording`).
    with tf.name_scope(recording.sampler_scope(interpolation, padding_mode, align_corners)):
        return _grid_sample(images, grid, interpolation, padding_mode, align_corners)


# The layouts of the sampler's arguments by rank: images, then volumes.
_LAYOUTS = {
    4: ("(B, H, W, C)", "(B, H_out, W_out, 2)"),
    5: ("(B, D, H, W, C)", "(B, D_out, H_out, W_out, 3)"),
}


def _check_arguments(images, grid, interpolation):
    """Raise `ValueError` naming the shape or dtype unless `images` and `grid` fit each other.

    Returns:
        The number of spatial axes, 2 or 3.
    """
    shape = static_shape(images)
    rank = None if shape is None else len(shape)
    if rank not in _LAYOUTS:
        raise ValueError(
            "Argument `images` must be a rank-4 tensor of shape (B, H, W, C) or a rank-5 tensor of "
            f"shape (B, D, H, W, C). Received: images.shape={shape_text(images)}"
        )
    images_layout, grid_layout = _LAYOUTS[rank]
    spatial = rank - 2
    check_rank(grid, "grid", rank, f"{grid_layout} for images {images_layout}")
    if grid.shape[-1] not in (spatial, None):
        coords = ("x", "y", "z")[:spatial]
        raise ValueError(
            f"Argument `grid` must have a last axis of size {spatial} holding ({', '.join(coords)}) "
            f"for images {images_layout}. Received: grid.shape={shape_text(grid)}, "
            f"images.shape={shape_text(images)}"
        )
    if not is_floating(images) or not is_floating(grid):
        raise ValueError(
            "Arguments `images` and `grid` must be floating. "
            f"Received: images.dtype={dtype_name(images)}, grid.dtype={dtype_name(grid)}"
        )
    if interpolation == "bicubic" and spatial == 3:
        raise ValueError(
            "Bicubic interpolation samples images only (as in PyTorch and ONNX); volumes take "
            "`interpolation='bilinear'` (trilinear) or `'nearest'`. "
            f"Received: images.shape={shape_text(images)}"
        )
    check_same_batch(images, "images", grid, "grid")
    return spatial


def _grid_sample(images, grid, interpolation, padding_mode, align_corners):
    """The body of `grid_sample`, run inside its recorded name scope."""
    images = tf.convert_to_tensor(images)
    grid = tf.convert_to_tensor(grid)
    spatial = _check_arguments(images, grid, interpolation)
    images = recording.mark(images, "images")
    grid = recording.mark(grid, "grid")

    dtype = coordinates.compute_dtype(images.dtype, grid.dtype)
    grid = tf.cast(grid, dtype)
    if portable.active():  # an export traces the model: the same numbers in portable ops
        options = (interpolation, padding_mode, align_corners)
        out = portable.sample(images, grid, *options, _KERNELS, _axis_taps)
        return recording.mark(tf.cast(out, images.dtype), "output")

    # A non-finite point reads as outside the image; finite ones are clamped so pixel maths stays finite.
    finite = tf.reduce_all(tf.math.is_finite(grid), axis=-1)  # B x out
    # Coordinates the clamp leaves alone (False for NaN): the only ones with a nonzero slope.
    movable = finite[..., None] & (tf.abs(grid) <= coordinates.COORD_LIMIT)  # B x out x N
    grid = _sanitize(grid, finite)
    # All axes at once, elementwise against the sizes in the grid's order (x, y[, z]): slicing the
    # grid per axis here would make its gradient a padded concatenation, which XLA compiles to
    # branchy, unvectorised code.
    sizes = tf.stack([coordinates.dim(images, spatial - k) for k in range(spatial)])  # W, H[, D]
    pixels = coordinates.unnormalize(grid, sizes, align_corners)  # B x out x N
    kernel, pad_taps = _KERNELS[interpolation]
    if not pad_taps:
        pixels = coordinates.apply_padding(pixels, sizes, padding_mode, align_corners)

    def axis_taps(pixel, size):
        return _axis_taps(pixel, size, kernel, pad_taps, padding_mode, align_corners)

    out = _interpolate(
        images,
        pixels,
        finite,
        tf.cast(movable, dtype),
        axis_taps,
        constant_weights=interpolation == "nearest",
    )
    return recording.mark(tf.cast(out, images.dtype), "output")


# The backward pass takes one of two layouts, by the (static) number of channels; both give the same
# numbers. Up to this many channels it works per tap: one scatter-add per tap, and the coordinates'
# gradient as one elementwise loop that sums over the channels one gathered channel at a time (a
# reduction inside the loop made it 4-7x slower). With more channels it
# stacks all taps on one axis: one scatter, and one gather whose dot product over the channels is a
# long reduction, which XLA runs well. Each layout is the faster one on its side (see `benchmarks/`).
_FEW_CHANNELS = 4


def _product(factors):
    """The product of a non-empty list of tensors, left to right."""
    return functools.reduce(operator.mul, factors)


def _all(conditions):
    """The logical and of a non-empty list of bool tensors, left to right."""
    return functools.reduce(operator.and_, conditions)


def _interpolate(images, pixels, finite, movable, axis_taps, constant_weights):
    """Sum the taps around pixel coordinates `pixels`, with an exact custom gradient.

    A tap is one tap position per spatial axis (the outer product of the axes' taps: 4 for bilinear
    images, 8 for trilinear volumes). The forward pass gathers each tap's rows of the
    `(B * H * W, C)` image matrix with one `tf.gather` per tap and accumulates them with their
    weights, the product of the axes' weights. The backward pass is written out rather than left to
    autodiff, which would keep every intermediate of the tap arithmetic and route the grid's gradient
    through a dozen tensors the size of the output: the image gradient scatters the output gradient
    times each tap's weight back to the tap's row; the gradient w.r.t. `x` is the output gradient
    dotted with the taps' values times the x weight's slope and the other axes' weights (and
    symmetrically for `y` and `z`). These are autodiff's own numbers, in PyTorch's conventions: a tap
    outside the image has weight and slope 0, and nearest interpolation has a zero gradient w.r.t.
    the coordinates.

    Args:
        images: `(B, H, W, C)` or `(B, D, H, W, C)`.
        pixels: finite pixel coordinates `(B, *out, N)`, last axis `(x, y[, z])`, in the compute
            dtype; `out` is the output's N spatial sizes.
        finite: bool `(B, *out)`, whether the grid point was finite: a point that was not reads no
            tap at all.
        movable: `(B, *out, N)`, 1 where the coordinate was finite and not clamped, else 0: the
            weights' slopes are zeroed elsewhere, which makes the gradient exact through `_sanitize`.
        axis_taps: `(pixel, size) -> (indices, weights, slopes, inside)`, see `_axis_taps`.
        constant_weights: whether every slope is 0 (nearest interpolation).

    Returns:
        `(B, *out, C)` in the compute dtype.
    """
    spatial = images.shape.rank - 2
    in_size = tuple(coordinates.dim(images, axis) for axis in range(1, spatial + 1))  # [D,] H, W
    channels = coordinates.dim(images, -1)
    dtype = pixels.dtype

    @tf.custom_gradient
    def interpolate(images, pixels):
        flat = tf.reshape(images, [-1, channels])  # (B*[D*]H*W)xC
        # Per array axis ([z,] y, x): T tap indices, weights, slopes and insides, each B x out.
        # Component k of the grid's (x, y[, z]) runs along array axis N - 1 - k; they are built
        # in the grid's order, x first.
        per_component = [
            axis_taps(pixels[..., k], in_size[spatial - 1 - k]) for k in range(spatial)
        ]
        per_component = [
            (i, w, [s * movable[..., k] for s in slopes], inside)
            for k, (i, w, slopes, inside) in enumerate(per_component)
        ]
        indices, weights, slopes, inside = zip(*reversed(per_component), strict=True)
        batch = tf.reshape(_batch_indices(images, pixels), [-1] + [1] * spatial)  # Bx1x..x1
        # Every tap: one tap position per array axis, the last axis (x) fastest.
        taps = list(itertools.product(*(range(len(i)) for i in indices)))
        rows = [
            flat_indices(batch, [indices[a][t[a]] for a in range(spatial)], in_size) for t in taps
        ]  # B x out each
        # Whether each tap is read at all, B x out x 1: selected, never multiplied by 0 (0 * NaN).
        valid = [
            _all([inside[a][t[a]] for a in range(spatial)] + [finite])[..., None] for t in taps
        ]
        tap_weights = [_product([weights[a][t[a]] for a in range(spatial)]) for t in taps]
        zero_row = isinstance(channels, int) and channels <= _ZERO_ROW_CHANNELS
        table = _with_zero_row(flat) if zero_row else flat  # what the forward pass gathers from
        out = tf.add_n(
            [
                tf.cast(_read(table, rows[k], valid[k], zero_row), dtype)
                * tf.expand_dims(tap_weights[k], -1)
                for k in range(len(taps))
            ]
        )

        def grad(upstream):
            # The image gradient is scattered in rows of `scattered` channels, sliced back after.
            # Each scatter's updates are padded in their own loop: one padded copy of `upstream`
            # shared by all of them makes XLA run the whole backward pass in sequence on one
            # thread (8x224x224x3 on one thread: 27-29 ms, against 17-19 ms).
            scattered = _scatter_width(channels, in_size, pixels.shape[1:-1])
            few = isinstance(channels, int) and channels <= _FEW_CHANNELS
            if few:
                # Per tap: each tap's rows, updates and values are plain elementwise loops.
                d_flat = tf.zeros(tf.stack([tf.shape(flat)[0], scattered]), dtype=dtype)
                for k in range(len(taps)):
                    updates = _select(valid[k], upstream * tf.expand_dims(tap_weights[k], -1))
                    d_flat = tf.tensor_scatter_nd_add(
                        d_flat, rows[k][..., None], _pad_channels(updates, scattered)
                    )
            else:
                # All taps at once: one scatter, and one gather apart from the forward pass's.
                stacked = _StackedTaps(
                    batch, in_size, indices, weights, slopes, tf.concat(valid, -1)
                )
                updates = _select(
                    stacked.valid[..., None],
                    tf.expand_dims(upstream, -2) * tf.expand_dims(stacked.weights, -1),
                )
                updates = _pad_channels(updates, scattered)  # B x out x taps x (scattered)
                d_flat = tf.math.unsorted_segment_sum(
                    tf.reshape(updates, [-1, scattered]),  # (B*out*taps)x(scattered)
                    tf.reshape(stacked.rows, [-1]),
                    tf.shape(flat, tf.int64)[0],
                )
            if scattered != channels:
                d_flat = d_flat[:, :channels]
            d_images = tf.reshape(tf.cast(d_flat, images.dtype), tf.shape(images))
            if constant_weights:  # nearest: the output is piecewise constant in the coordinates
                d_pixels = tf.zeros_like(pixels)
            elif few:
                # Each tap's (d weight / dx, d weight / dy[, d weight / dz]): the slope along the
                # component's axis times the weights along the others.
                tap_slopes = [
                    [
                        _product(
                            [
                                (slopes if a == spatial - 1 - component else weights)[a][t[a]]
                                for a in range(spatial)
                            ]
                        )
                        for component in range(spatial)
                    ]
                    for t in taps
                ]
                d_pixels = _pixel_gradient_unrolled(images, rows, valid, tap_slopes, upstream)
            else:
                d_pixels = _pixel_gradient_stacked(flat, upstream, stacked)
            return d_images, d_pixels

        return out, grad

    return interpolate(images, pixels)


def _scatter_width(channels, in_size, out_size):
    """How many channels the image-gradient scatter writes per row: `channels`, or one more.

    XLA's CPU scatter-add is 2-3.5x slower on rows of 3 floats than of 4 when successive updates land
    on the same or adjacent rows, as they do when the output samples the input at least as densely
    (400k updates of 3 and 4 floats, rows advancing 0.5-1.25 per update: 1.9-2.4 ms vs 0.6-0.7 ms; 2
    rows per update: 1.25 vs 1.19 ms). Padding costs a slice of the whole image gradient, which does not
    pay when the output is smaller than the input (a 2x downsampling crop: 10% slower), so only odd
    channel counts above 1 are padded, and only when the output has at least as many pixels.

    Args:
        channels: the number of channels, an int or `None` when only known at run time.
        in_size, out_size: the input's and the output's spatial sizes, `(H, W)` or `(D, H, W)`,
            ints or `None`.

    Returns:
        `channels + 1` or `channels`.
    """
    sizes = (channels, *in_size, *out_size)
    if not all(isinstance(d, int) for d in sizes):
        return channels
    if channels > 1 and channels % 2 and math.prod(out_size) >= math.prod(in_size):
        return channels + 1
    return channels


def _pad_channels(tensor, channels):
    """`tensor` `(..., C)` zero-padded on its last axis to `channels` (no copy when equal)."""
    extra = channels - tensor.shape[-1] if isinstance(channels, int) else 0
    if not extra:
        return tensor
    return tf.pad(tensor, [[0, 0]] * (tensor.shape.rank - 1) + [[0, extra]])


def _combine(components):
    """`tf.stack(components, axis=-1)` by scaling unit vectors: a stack compiles to branches in XLA's
    loops, which then stop being vectorised (3-5x slower)."""
    units = tf.unstack(tf.eye(len(components), dtype=components[0].dtype))
    return tf.add_n(
        [tf.expand_dims(c, -1) * unit for c, unit in zip(components, units, strict=True)]
    )


def _pixel_gradient_unrolled(images, rows, valid, slopes, upstream):
    """The gradient w.r.t. the pixel coordinates for a few channels (static `C`), as one loop.

    Per tap, the image values are gathered one channel at a time from the flat image, with the row
    broadcast along a last axis of N (one entry per coordinate), so that `d/dx`, `d/dy` (and `d/dz`)
    each get their own gather. The whole gradient is then a single elementwise loop: no reduction
    over the channels and no gathered tensor shared by two loops, which XLA would write out to memory
    first. LLVM still leaves that loop scalar (its cost model finds vectorising a dozen gathers per
    pixel not worth it).

    Args:
        images: `(B, *in, C)`.
        rows: list of int64 `(B, *out)`, each tap's row in the `(B * prod(in), C)` matrix.
        valid: list of bool `(B, *out, 1)`, whether each tap is read.
        slopes: list of N-lists of `(B, *out)`: each tap's `(d weight / dx, d weight / dy[, .. dz])`.
        upstream: `(B, *out, C)`, the output gradient in the compute dtype.

    Returns:
        `(B, *out, N)`: `sum_tap sum_c upstream[c] * value[tap, c] * slopes[tap]`.
    """
    channels = images.shape[-1]
    values = tf.reshape(images, [-1])  # B*prod(in)*C
    spread = tf.zeros([len(slopes[0])], tf.int64)  # one entry per coordinate
    terms = []
    for row, read, tap_slopes in zip(rows, valid, slopes, strict=True):
        first = tf.expand_dims(row * channels, -1) + spread  # B x out x N, the tap's first channel
        dot = tf.add_n(
            [
                tf.cast(tf.gather(values, first + c), upstream.dtype)
                * tf.expand_dims(upstream[..., c], -1)
                for c in range(channels)
            ]
        )  # B x out x N, all entries equal
        terms.append(_select(read, dot) * _combine(tap_slopes))
    return tf.add_n(terms)


class _StackedTaps:
    """Every tap of every output pixel at once, on a last axis of all taps, the last array axis fastest.

    Built as outer products of the per-axis stacks, so XLA computes each axis's tap arithmetic once
    per pixel rather than once per tap.

    Attributes:
        rows: int64 `(B, *out, taps)`, each tap's row in the `(B * prod(in), C)` image matrix.
        weights: `(B, *out, taps)`, each tap's weight.
        slopes: N tensors `(B, *out, taps)`, its derivatives w.r.t. the coordinates `(x, y[, z])`.
        valid: bool `(B, *out, taps)`, whether each tap is read.
    """

    def __init__(self, batch, in_size, indices, weights, slopes, valid):
        """
        Args:
            batch: int64 `(B, 1, ..., 1)`, the batch indices.
            in_size: the input's spatial sizes in array order, `(H, W)` or `(D, H, W)`.
            indices, weights, slopes: per array axis, lists of T tensors `(B, *out)`.
            valid: bool `(B, *out, taps)`, whether each tap is read, in the same tap order.
        """
        self.valid = valid
        spatial = len(in_size)

        def spread(values, axis):  # T x (B x out) -> B x out x 1..T..1, T at position `axis`
            expand = (None,) * axis + (slice(None),) + (None,) * (spatial - 1 - axis)
            return tf.stack(values, axis=-1)[(..., *expand)]

        taps = math.prod(len(i) for i in indices)
        out_shape = tf.shape(indices[0][0])
        shape = tf.concat([out_shape, [taps]], axis=0)

        def outer(factors):
            return tf.reshape(_product(factors), shape)  # B x out x taps

        index, weight, slope = (
            [spread(v[a], a) for a in range(spatial)] for v in (indices, weights, slopes)
        )
        extra = (None,) * spatial
        self.rows = tf.reshape(flat_indices(batch[(..., *extra)], index, in_size), shape)
        self.weights = outer(weight)
        self.slopes = [
            outer([slope[a] if a == spatial - 1 - component else weight[a] for a in range(spatial)])
            for component in range(spatial)
        ]


def _pixel_gradient_stacked(flat, upstream, stacked):
    """The gradient w.r.t. the pixel coordinates for many channels: one gather of all taps.

    The gather differs from the forward pass's per-tap gathers, so XLA keeps them apart (merged, it
    would write every tap's values out to memory), and the dot product over the channels is a
    reduction over a long axis, which XLA runs well.

    Args:
        flat: the images as a `(B * prod(in), C)` matrix.
        upstream: `(B, *out, C)`, the output gradient in the compute dtype.
        stacked: the `_StackedTaps`.

    Returns:
        `(B, *out, N)`.
    """
    values = tf.cast(tf.gather(flat, stacked.rows), upstream.dtype)  # B x out x taps x C
    values = _select(stacked.valid[..., None], values)
    dots = tf.reduce_sum(values * tf.expand_dims(upstream, -2), axis=-1)  # B x out x taps
    return _combine([tf.reduce_sum(dots * slopes, axis=-1) for slopes in stacked.slopes])
