"""`grid_sample`: one gather path, with the interpolation modes as small per-axis tap kernels.

An interpolation mode is separable: along each axis it turns a pixel coordinate into a few integer tap
positions and their weights (nearest: 1 tap, bilinear: 2, bicubic: 4). The sampler takes the outer
product of the y and x taps, turns each tap into a flat row index of the `(B * H * W, C)` image matrix,
gathers all rows in a single `tf.gather` and sums them with their weights. Taps outside the image are
clamped to a valid index and given weight 0 ("clamp, then mask"), so the gather never sees an
out-of-range index: runtimes disagree on what that means (TF's CPU kernel raises, ONNX wraps negative
indices, TFLite aborts) and the exporters carry this code into all of them.
"""

import tensorflow as tf

from stn_keras.ops import coordinates
from stn_keras.ops.validation import check_bool, check_choice, check_rank, check_same_batch

INTERPOLATIONS = ("bilinear", "nearest", "bicubic")

# Normalised coordinates beyond this magnitude are far outside any image; clamping them first keeps the
# pixel arithmetic finite (no overflow to inf) for values such as 1e30 or -3e38.
_COORD_LIMIT = 1e6

# PyTorch's cubic convolution coefficient (Keys, with A = -0.75, as OpenCV).
_CUBIC_A = -0.75


def _nearest_taps(pixel):
    """One tap at the nearest pixel, ties to even (PyTorch's `nearbyint`)."""
    # 0 * pixel keeps the output connected to the grid, so the grid's gradient is a zero tensor, as in
    # PyTorch, rather than `None`.
    return [tf.round(pixel)], [1.0 + 0.0 * pixel]


def _bilinear_taps(pixel):
    """Two taps, floor and floor + 1, with linear weights."""
    left = tf.floor(pixel)
    frac = pixel - left
    return [left, left + 1.0], [1.0 - frac, frac]


def _cubic_weights(t):
    """Keys' cubic convolution weights of the 4 taps around a point at fraction `t` past the 2nd tap."""

    def near(d):  # |d| <= 1
        return ((_CUBIC_A + 2.0) * d - (_CUBIC_A + 3.0)) * d * d + 1.0

    def far(d):  # 1 < |d| < 2
        return ((_CUBIC_A * d - 5.0 * _CUBIC_A) * d + 8.0 * _CUBIC_A) * d - 4.0 * _CUBIC_A

    return [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]


def _bicubic_taps(pixel):
    """Four taps, floor - 1 .. floor + 2, with cubic convolution weights."""
    left = tf.floor(pixel)
    return [left + float(k) for k in (-1, 0, 1, 2)], _cubic_weights(pixel - left)


# mode -> (tap kernel, whether padding applies to each tap rather than to the coordinate). PyTorch pads
# the coordinate before bilinear and nearest interpolation, but pads each tap of a bicubic one.
_KERNELS = {
    "nearest": (_nearest_taps, False),
    "bilinear": (_bilinear_taps, False),
    "bicubic": (_bicubic_taps, True),
}


def _axis_taps(coord, size, interpolation, padding_mode, align_corners):
    """Tap indices and weights along one axis.

    Args:
        coord: finite normalised coordinates `(B, H_out, W_out)`.
        size: number of input pixels along the axis.
        interpolation, padding_mode, align_corners: as in `grid_sample`.

    Returns:
        `(indices, weights)`: `(B, H_out, W_out, T)` int64 tap positions, always inside `[0, size - 1]`,
        and their weights, 0 for a tap that falls outside the image.
    """
    kernel, pad_taps = _KERNELS[interpolation]
    pixel = coordinates.unnormalize(coord, size, align_corners)
    if not pad_taps:
        pixel = coordinates.apply_padding(pixel, size, padding_mode, align_corners)
    positions, weights = kernel(pixel)
    if pad_taps:
        positions = [
            coordinates.apply_padding(p, size, padding_mode, align_corners) for p in positions
        ]
    positions = tf.stack(positions, axis=-1)  # BxHoxWoxT
    weights = tf.stack(weights, axis=-1)  # BxHoxWoxT
    inside = (positions >= 0.0) & (positions <= tf.cast(size, positions.dtype) - 1.0)
    indices = tf.cast(tf.where(inside, positions, tf.zeros_like(positions)), tf.int64)
    return indices, tf.where(inside, weights, tf.zeros_like(weights))


def flat_indices(batch, y, x, height, width):
    """Row index of pixel `(batch, y, x)` in the images reshaped to `(B * H * W, C)`.

    The arithmetic is int64 so that it stays exact when `B * H * W * C` exceeds 2**31.

    Args:
        batch: integer tensor of batch indices, broadcastable against `y` and `x`.
        y, x: integer tensors of pixel rows and columns (already inside the image).
        height, width: the input's `H` and `W` (Python ints or scalar integer tensors).

    Returns:
        An int64 tensor of the broadcast shape: `(batch * H + y) * W + x`.
    """
    height = tf.cast(height, tf.int64)
    width = tf.cast(width, tf.int64)
    batch, y, x = (tf.cast(v, tf.int64) for v in (batch, y, x))
    return (batch * height + y) * width + x


def grid_sample(
    images, grid, interpolation="bilinear", padding_mode="zeros", align_corners=False
):
    """Sample `images` at the normalised positions of `grid`, exactly as `torch.nn.functional.grid_sample`.

    Channels-last: the result equals PyTorch's `F.grid_sample` on the NCHW transpose of `images` with
    `mode=interpolation`, transposed back. Differentiable w.r.t. `images` and `grid` with PyTorch's
    gradient conventions (nearest interpolation has a zero gradient w.r.t. the grid). Runs eagerly, in
    `tf.function` and under XLA (`jit_compile=True`), with dynamic batch and spatial sizes.

    Robustness: a grid point with a NaN or infinite coordinate reads as outside the image and yields 0
    whatever the padding mode; finite far-out points follow the padding mode (0 for `"zeros"`). Nothing
    one sample's grid holds can change another sample's output.

    Args:
        images: float tensor `(B, H, W, C)` (float16, bfloat16, float32 or float64).
        grid: float tensor `(B, H_out, W_out, 2)`, last axis `(x, y)` normalised to [-1, 1] (see
            `stn_keras.ops.coordinates`).
        interpolation: one of `"bilinear"`, `"nearest"` (ties to even) or `"bicubic"` (Keys, A=-0.75).
            Defaults to `"bilinear"`.
        padding_mode: what is read outside the image: `"zeros"`, `"border"` (the nearest edge pixel) or
            `"reflection"` (mirrored at the borders). Defaults to `"zeros"`.
        align_corners: whether -1 and 1 are the centres (`True`) or the outer edges (`False`) of the corner
            pixels. Defaults to `False`.

    Returns:
        `(B, H_out, W_out, C)` in `images`' dtype. Coordinates and weights are computed in float32, or in
        float64 when `images` or `grid` is float64.

    Raises:
        ValueError: if `images` is not rank 4, `grid` is not rank 4 with a last axis of 2, the batch sizes
            differ, or `interpolation` / `padding_mode` / `align_corners` is not a valid value.

    Example:
        >>> images = tf.random.uniform((2, 32, 32, 3))
        >>> theta = tf.constant([[[0.5, 0.0, 0.2], [0.0, 0.5, 0.0]]] * 2)
        >>> grid = affine_grid(theta, (16, 16))
        >>> grid_sample(images, grid).shape
        TensorShape([2, 16, 16, 3])
    """
    # The exporters find the sampler in a traced graph by this name scope (see `stn_keras.export`).
    with tf.name_scope("grid_sample"):
        return _grid_sample(images, grid, interpolation, padding_mode, align_corners)


def _grid_sample(images, grid, interpolation, padding_mode, align_corners):
    """The body of `grid_sample`, run inside its `grid_sample` name scope."""
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    check_choice("padding_mode", padding_mode, coordinates.PADDING_MODES)
    check_bool("align_corners", align_corners)
    images = tf.convert_to_tensor(images)
    grid = tf.convert_to_tensor(grid)
    check_rank(images, "images", 4, "(B, H, W, C)")
    check_rank(grid, "grid", 4, "(B, H_out, W_out, 2)")
    if grid.shape[-1] not in (2, None):
        raise ValueError(
            "Argument `grid` must have a last axis of size 2 holding (x, y). "
            f"Received: grid.shape={tf.TensorShape(grid.shape)}"
        )
    if not images.dtype.is_floating or not grid.dtype.is_floating:
        raise ValueError(
            "Arguments `images` and `grid` must be floating. "
            f"Received: images.dtype={images.dtype.name}, grid.dtype={grid.dtype.name}"
        )
    check_same_batch(images, "images", grid, "grid")

    dtype = coordinates.compute_dtype(images.dtype, grid.dtype)
    height, width, channels = (coordinates.dim(images, axis) for axis in (1, 2, 3))
    grid = tf.cast(grid, dtype)

    # A non-finite point reads as outside the image; finite ones are clamped so pixel maths stays finite.
    finite = tf.reduce_all(tf.math.is_finite(grid), axis=-1)  # BxHoxWo
    grid = tf.where(
        finite[..., None], tf.clip_by_value(grid, -_COORD_LIMIT, _COORD_LIMIT), tf.zeros_like(grid)
    )
    options = (interpolation, padding_mode, align_corners)
    ix, wx = _axis_taps(grid[..., 0], width, *options)  # BxHoxWoxT each
    iy, wy = _axis_taps(grid[..., 1], height, *options)  # BxHoxWoxT each

    batch = tf.range(tf.shape(grid, out_type=tf.int64)[0])[:, None, None, None, None]  # Bx1x1x1x1
    rows = flat_indices(batch, iy[..., :, None], ix[..., None, :], height, width)  # BxHoxWoxTxT
    weights = wy[..., :, None] * wx[..., None, :] * tf.cast(finite, dtype)[..., None, None]
    taps = rows.shape[-1] * rows.shape[-2]
    rows = tf.reshape(rows, tf.concat([tf.shape(rows)[:3], [taps]], axis=0))  # BxHoxWox(T*T)
    weights = tf.reshape(weights, tf.shape(rows))  # BxHoxWox(T*T)

    values = tf.gather(tf.reshape(images, [-1, channels]), rows)  # BxHoxWox(T*T)xC
    out = tf.reduce_sum(tf.cast(values, dtype) * tf.expand_dims(weights, -1), axis=-2)  # BxHoxWoxC
    return tf.cast(out, images.dtype)
