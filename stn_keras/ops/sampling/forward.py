"""`grid_sample` on TensorFlow: the public op, its checks, and the forward pass.

The sampler takes the outer product of the axes' taps (`taps`; of the z, y and x taps for a
volume: one implementation for both ranks), turns each tap into a flat row index of the
`(B * H * W, C)` image matrix, gathers each tap's rows with `tf.gather` and sums them with their
weights. Taps outside the image are clamped to a valid index and then selected away ("clamp,
then mask"; a select, since 0 * NaN is NaN and images may hold NaN), so the gather never sees an
out-of-range index: runtimes disagree on what that means (TF's CPU kernel raises, ONNX wraps
negative indices, TFLite aborts) and the exporters carry this code into all of them. The backward
pass is written out (`backward`). On JAX and PyTorch, `grid_sample` validates its arguments here
and runs the backend's kernel (`stn_keras.ops.backend`).
"""

import tensorflow as tf

from stn_keras.ops import backend, coordinates, portable, recording
from stn_keras.ops.sampling import backward, taps
from stn_keras.ops.sampling.taps import INTERPOLATIONS, select
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
        out = portable.sample(
            images, grid, *options, taps.KERNELS, taps.axis_taps, taps.rows_of_taps
        )
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
    kernel, pad_taps = taps.KERNELS[interpolation]
    if not pad_taps:
        pixels = coordinates.apply_padding(pixels, sizes, padding_mode, align_corners)

    def taps_of_axis(pixel, size):
        return taps.axis_taps(pixel, size, kernel, pad_taps, padding_mode, align_corners)

    out = _interpolate(
        images,
        pixels,
        finite,
        tf.cast(movable, dtype),
        taps_of_axis,
        constant_weights=interpolation == "nearest",
    )
    return recording.mark(tf.cast(out, images.dtype), "output")


def _interpolate(images, pixels, finite, movable, taps_of_axis, constant_weights):
    """Sum the taps around pixel coordinates `pixels`, with the written-out gradient (`backward`).

    A tap is one tap position per spatial axis (the outer product of the axes' taps: 4 for
    bilinear images, 8 for trilinear volumes). The forward pass gathers each tap's rows of the
    `(B * prod(in), C)` image matrix with one `tf.gather` per tap and accumulates them with their
    weights, which lets XLA compute a pixel's tap arithmetic once for all its taps.

    Args:
        images: `(B, H, W, C)` or `(B, D, H, W, C)`.
        pixels: finite pixel coordinates `(B, *out, N)`, last axis `(x, y[, z])`, in the compute
            dtype; `out` is the output's N spatial sizes.
        finite: bool `(B, *out)`, whether the grid point was finite: a point that was not reads no
            tap at all.
        movable: `(B, *out, N)`, 1 where the coordinate was finite and not clamped, else 0: the
            weights' slopes are zeroed elsewhere, which makes the gradient exact through `_sanitize`.
        taps_of_axis: `(pixel, size) -> (indices, weights, slopes, inside)`, see `taps.axis_taps`.
        constant_weights: whether every slope is 0 (nearest interpolation).

    Returns:
        `(B, *out, C)` in the compute dtype.
    """
    spatial = images.shape.rank - 2
    in_size = tuple(coordinates.dim(images, axis) for axis in range(1, spatial + 1))  # [D,] H, W
    channels = coordinates.dim(images, -1)

    @tf.custom_gradient
    def interpolate(images, pixels):
        flat = tf.reshape(images, [-1, channels])  # (B*[D*]H*W)xC
        table = taps.tap_table(images, pixels, finite, movable, taps_of_axis, in_size)
        out = _sum_taps(flat, table, pixels.dtype)

        def grad(upstream):
            return backward.gradients(upstream, images, pixels, flat, table, constant_weights)

        return out, grad

    return interpolate(images, pixels)


def _sum_taps(flat, table, dtype):
    """Every tap's values, read from `flat` `(N, C)`, times its weight, summed: `(B, *out, C)`."""
    channels = flat.shape[-1]
    zero_row = channels is not None and channels <= _ZERO_ROW_CHANNELS
    values = _with_zero_row(flat) if zero_row else flat  # what the forward pass gathers from
    # The zero row's index, built once for every tap (each op a trace builds costs eager calls
    # and exports time; XLA would merge the copies anyway).
    last = tf.shape(values, out_type=tf.int64)[0] - 1 if zero_row else None
    return tf.add_n(
        [
            tf.cast(_read(values, rows, valid, last), dtype) * tf.expand_dims(weight, -1)
            for rows, valid, weight in zip(
                table.rows, table.valid, table.weights_of_taps, strict=True
            )
        ]
    )


@tf.custom_gradient
def _sanitize(grid, finite):
    """`grid` with non-finite points set to 0 and the rest clamped to +-`coordinates.COORD_LIMIT`.

    The gradient is passed through unchanged: the sampler zeros the coordinate slopes of every point
    this function changed (see `_interpolate`'s `movable`), so the result is still exact. Autodiff's
    own gradient here would be a select whose operand is the whole sampler backward, which XLA
    compiles to a branch inside that loop and then cannot vectorise it (measured: `benchmarks/README.md`).

    Args:
        grid: `(B, H_out, W_out, 2)`.
        finite: bool `(B, H_out, W_out)`, whether both coordinates of a point are finite.

    Returns:
        `(B, H_out, W_out, 2)`.
    """
    clipped = tf.clip_by_value(grid, -coordinates.COORD_LIMIT, coordinates.COORD_LIMIT)
    sanitized = tf.where(finite[..., None], clipped, tf.zeros_like(grid))
    return sanitized, lambda upstream: (upstream, None)


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
        table: the `(N, C)` image matrix, or `(N + 1, C)` with a zero row last.
        rows: int64 `(B, H_out, W_out)`, the taps' rows, always inside the image.
        valid: bool `(B, H_out, W_out, 1)`, whether each tap is read.
        zero_row: the index of `table`'s zero row (int64 scalar), or `None` if it has none.

    Returns:
        `(B, H_out, W_out, C)` in `table`'s dtype.
    """
    if zero_row is not None:
        return tf.gather(table, tf.where(tf.squeeze(valid, -1), rows, zero_row))
    return select(valid, tf.gather(table, rows))
