"""Sampling-grid generators: map transform parameters to a normalised `(B, H_out, W_out, 2)` grid.

The grid convention (last axis `(x, y)`, normalised to [-1, 1], `align_corners`) is defined once in
`stn_keras.ops.coordinates`.
"""

import tensorflow as tf

from stn_keras.ops import coordinates
from stn_keras.ops.validation import check_bool


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
        raise ValueError(f"Argument `size` must be (H_out, W_out). Received: size={size!r}") from None
    for value in (height, width):
        if isinstance(value, int) and value < 1:
            raise ValueError(
                f"Argument `size` must hold positive sizes (H_out, W_out). Received: size={size!r}"
            )
    return height, width


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
    theta = tf.convert_to_tensor(theta)
    shape = tf.TensorShape(theta.shape)
    if shape.rank != 3 or shape[1:] != (2, 3):
        raise ValueError(f"Argument `theta` must have shape (B, 2, 3). Received: theta.shape={shape}")
    if not theta.dtype.is_floating:
        raise ValueError(f"Argument `theta` must be floating. Received: theta.dtype={theta.dtype.name}")
    check_bool("align_corners", align_corners)
    height, width = _check_size(size)
    dtype = coordinates.compute_dtype(theta.dtype)
    base = coordinates.base_grid((height, width), align_corners, dtype)  # HxWx3
    grid = tf.einsum("hwk,bjk->bhwj", base, tf.cast(theta, dtype))  # BxHxWx2
    return tf.cast(grid, theta.dtype)
