"""Sampling-grid generators: map transform parameters to a normalised `(B, H_out, W_out, 2)` grid.

The grid convention (last axis `(x, y)`, normalised to [-1, 1], `align_corners`) is defined once in
`stn_keras.ops.coordinates`. Every generator here maps each output pixel's normalised position
`(x, y)` to the normalised input position it samples; the thin-plate spline lives in
`stn_keras.ops.tps`.
"""

import numpy as np
import tensorflow as tf

from stn_keras.ops import coordinates
from stn_keras.ops.validation import check_bool

# The projective division x' / w is guarded by keeping |w| >= this, with w's sign (w == 0 counts
# as positive). A point with |w| below it lies near the homography's horizon: its true position is
# ~1e6 image widths away or more, which the sampler reads as outside the image anyway (it clamps
# coordinates at 1e6).
PROJECTIVE_MIN_W = 1e-6


def _check_size(size):
    """Validate an output `size` of `(H_out, W_out)` and return it as a tuple of two scalars."""
    if isinstance(size, tf.Tensor):
        if size.shape.rank != 1 or size.shape[0] not in (2, None):
            raise ValueError(
                f"Argument `size` must be (H_out, W_out). Received: size.shape={size.shape}"
            )
        return size[0], size[1]
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ValueError(
            f"Argument `size` must be (H_out, W_out). Received: size={size!r}"
        ) from None
    for value in (height, width):
        if isinstance(value, tf.Tensor | tf.Variable):
            continue
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(
                f"Argument `size` must hold positive sizes (H_out, W_out). Received: size={size!r}"
            )
    return height, width


def check_params(x, name, trailing, layout):
    """Convert `x` to a tensor and check it is floating with static shape `(B,) + trailing`.

    Args:
        x: the parameters, anything `tf.convert_to_tensor` accepts.
        name: the argument's name, as the user wrote it.
        trailing: the required shape after the batch axis, a tuple of ints.
        layout: the expected layout for the message, e.g. `"(B, 2, 3)"`.

    Returns:
        `x` as a tensor.

    Raises:
        ValueError: naming the argument, the expected layout and the shape or dtype received.
    """
    x = tf.convert_to_tensor(x)
    shape = tf.TensorShape(x.shape)
    # Unknown dimensions (traced with a dynamic signature) are accepted; known wrong ones are not.
    if not shape.is_compatible_with((None, *trailing)):
        raise ValueError(
            f"Argument `{name}` must have shape {layout}. Received: {name}.shape={shape}"
        )
    if not x.dtype.is_floating:
        raise ValueError(
            f"Argument `{name}` must be floating. Received: {name}.dtype={x.dtype.name}"
        )
    return x


def output_positions(size, align_corners, dtype):
    """Check `size` and `align_corners`; return the output pixels' `(x, y, 1)`, `(H, W, 3)`."""
    check_bool("align_corners", align_corners)
    return coordinates.base_grid(_check_size(size), align_corners, dtype)


def transform_points(points, matrices):
    """Apply a batch of linear maps to one set of points, in full precision on every device.

    `out[b, ..., j] = sum_k matrices[b, j, k] * points[..., k]`, computed as a broadcast multiply and
    sum rather than a matmul: TensorFlow runs float32 matmuls in TF32 (10 mantissa bits) on recent
    NVIDIA GPUs by default, which would move grid points by a quarter of a pixel on 256-pixel images.
    The contractions here are short (3 to K*K + 3 terms), so this costs nothing.

    Args:
        points: float tensor `(..., K)`, shared by the batch (e.g. `(H, W, 3)` homogeneous positions).
        matrices: float tensor `(B, J, K)` of the same dtype.

    Returns:
        `(B, ..., J)`.
    """
    for _ in range(points.shape.rank - 1):
        matrices = matrices[:, None]  # Bx1x..xJxK
    return tf.reduce_sum(points[None, ..., None, :] * matrices, axis=-1)


def affine_grid(theta, size, align_corners=False):
    """Sampling grid of a batch of 2-D affine transforms, exactly as `torch.nn.functional.affine_grid`.

    Output pixel `(i, j)` with normalised position `(x_j, y_i)` samples the input at
    `theta[b] @ (x_j, y_i, 1)`. The identity `[[1, 0, 0], [0, 1, 0]]` reproduces the input.

    Args:
        theta: float tensor `(B, 2, 3)`: maps output coordinates to input coordinates, both normalised.
        size: `(H_out, W_out)`, Python ints or scalar integer tensors (may be dynamic).
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`.

    Returns:
        The grid, `(B, H_out, W_out, 2)` with last axis `(x, y)`, in `theta`'s dtype. The arithmetic runs
        in at least float32.

    Raises:
        ValueError: if `theta` is not `(B, 2, 3)` or `size` is not a pair of positive sizes.

    Example:
        >>> theta = tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
        >>> affine_grid(theta, (2, 3)).shape
        TensorShape([1, 2, 3, 2])
    """
    theta = check_params(theta, "theta", (2, 3), "(B, 2, 3)")
    dtype = coordinates.compute_dtype(theta.dtype)
    base = output_positions(size, align_corners, dtype)  # HxWx3
    grid = transform_points(base, tf.cast(theta, dtype))  # BxHxWx2
    return tf.cast(grid, theta.dtype)


def attention_grid(params, size, align_corners=False):
    """Sampling grid of a batch of attention transforms: an isotropic scale and a translation.

    The constrained transform the paper uses for attention (SVHN, CUB): output position `(x, y)`
    samples the input at `(s x + t_x, s y + t_y)`, i.e. the affine transform
    `[[s, 0, t_x], [0, s, t_y]]`. A scale `s < 1` zooms in on a window of `s` times the input's
    extent centred on `(t_x, t_y)`. The identity is `(1, 0, 0)`.

    Args:
        params: float tensor `(B, 3)`, each row `(s, t_x, t_y)` in normalised units.
        size: `(H_out, W_out)`, Python ints or scalar integer tensors (may be dynamic).
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`.

    Returns:
        The grid, `(B, H_out, W_out, 2)` with last axis `(x, y)`, in `params`' dtype. The
        arithmetic runs in at least float32.

    Raises:
        ValueError: if `params` is not `(B, 3)` or `size` is not a pair of positive sizes.

    Example:
        >>> params = tf.constant([[0.5, 0.2, -0.1]])  # a half-size window, right of the centre
        >>> attention_grid(params, (4, 4)).shape
        TensorShape([1, 4, 4, 2])
    """
    params = check_params(params, "params", (3,), "(B, 3)")
    dtype = coordinates.compute_dtype(params.dtype)
    xy = output_positions(size, align_corners, dtype)[..., :2]  # HxWx2
    scale = tf.cast(params[:, None, None, 0:1], dtype)  # Bx1x1x1
    shift = tf.cast(params[:, None, None, 1:3], dtype)  # Bx1x1x2
    return tf.cast(scale * xy + shift, params.dtype)  # BxHxWx2


def projective_grid(homography, size, align_corners=False):
    """Sampling grid of a batch of 2-D projective transforms (homographies).

    Output position `(x, y)` samples the input at `(x' / w, y' / w)` where
    `(x', y', w) = homography[b] @ (x, y, 1)`. The transform family regresses 8 parameters, the
    row-major entries of the matrix with `h33 = 1`; any nonzero `h33` works here, and a matrix with
    last row `(0, 0, 1)` gives exactly `affine_grid` of its first two rows.

    The division is guarded: `w` is clamped to `|w| >= PROJECTIVE_MIN_W` (1e-6) keeping its sign,
    with `w == 0` read as positive, so finite parameters always give a finite grid and a finite
    gradient (zero w.r.t. `w` where the clamp is active). Points with `w < 0` lie behind the
    projection centre; they are mapped by the same formula, as `cv2.warpPerspective` and `kornia`
    do.

    Args:
        homography: float tensor `(B, 3, 3)`: maps output coordinates to input coordinates, both
            normalised, in homogeneous form.
        size: `(H_out, W_out)`, Python ints or scalar integer tensors (may be dynamic).
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`.

    Returns:
        The grid, `(B, H_out, W_out, 2)` with last axis `(x, y)`, in `homography`'s dtype. The
        arithmetic runs in at least float32 (a float16 grid may overflow to inf near the horizon,
        which the sampler reads as outside the image).

    Raises:
        ValueError: if `homography` is not `(B, 3, 3)` or `size` is not a pair of positive sizes.

    Example:
        >>> homography = tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, 0.0, 1.0]]])
        >>> projective_grid(homography, (4, 4)).shape  # a perspective warp along x
        TensorShape([1, 4, 4, 2])
    """
    homography = check_params(homography, "homography", (3, 3), "(B, 3, 3)")
    dtype = coordinates.compute_dtype(homography.dtype)
    base = output_positions(size, align_corners, dtype)  # HxWx3
    projected = transform_points(base, tf.cast(homography, dtype))  # BxHxWx3
    w = projected[..., 2:]  # BxHxWx1
    w = tf.where(w < 0.0, tf.minimum(w, -PROJECTIVE_MIN_W), tf.maximum(w, PROJECTIVE_MIN_W))
    return tf.cast(projected[..., :2] / w, homography.dtype)  # BxHxWx2
