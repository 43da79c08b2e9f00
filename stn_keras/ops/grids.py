"""Sampling-grid generators: map transform parameters to a normalised `(B, H_out, W_out, 2)` grid.

The grid convention (last axis `(x, y)`, normalised to [-1, 1], `align_corners`) is defined once in
`stn_keras.ops.coordinates`. Every generator here maps each output pixel's normalised position
`(x, y)` to the normalised input position it samples; the thin-plate spline lives in
`stn_keras.ops.tps`.
"""

import numpy as np
import tensorflow as tf
from keras import ops

from stn_keras.ops import backend, coordinates, portable, recording
from stn_keras.ops.validation import (
    SIZE_LAYOUTS,
    as_tensor,
    check_bool,
    check_size,
    dtype_name,
    fits,
    is_floating,
    shape_text,
)

# The projective division x' / w is guarded by keeping |w| >= this, with w's sign (w == 0 counts
# as positive). A point with |w| below it lies near the homography's horizon: its true position is
# ~1e6 image widths away or more, which the sampler reads as outside the image anyway (it clamps
# coordinates at 1e6).
PROJECTIVE_MIN_W = 1e-6


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
    x = as_tensor(x)
    # Unknown dimensions (traced with a dynamic signature) are accepted; known wrong ones are not.
    if not fits(x, (None, *trailing)):
        raise ValueError(
            f"Argument `{name}` must have shape {layout}. Received: {name}.shape={shape_text(x)}"
        )
    if not is_floating(x):
        raise ValueError(
            f"Argument `{name}` must be floating. Received: {name}.dtype={dtype_name(x)}"
        )
    return x


def output_positions(size, align_corners, dtype, dims=(2,)):
    """Check `size` and `align_corners`; return the output pixels' homogeneous positions.

    Args:
        size: the output size, `(H_out, W_out)` or, if `dims` allows it, `(D_out, H_out, W_out)`.
        align_corners: see `stn_keras.ops.coordinates`.
        dtype: floating dtype of the result.
        dims: the accepted numbers of spatial axes (see `check_size`). Defaults to `(2,)`.

    Returns:
        `(H, W, 3)` holding `(x, y, 1)`, or `(D, H, W, 4)` holding `(x, y, z, 1)`.
    """
    check_bool("align_corners", align_corners)
    return positions(check_size(size, dims=dims), align_corners, dtype)


def positions(size, align_corners, dtype):
    """`output_positions` of a size known to be valid, on any backend (`dtype` a name or a dtype).

    On JAX and PyTorch, the backend's map of the positions by the identity (static sizes), so that
    one formula, `coordinates.linspace_normalized`'s, is restated only by the backends' own
    `affine_grid`.
    """
    kernels = backend.kernels()
    if kernels is None:
        return coordinates.base_grid(size, align_corners, tf.as_dtype(dtype))
    identity = ops.eye(len(size) + 1, dtype=dtype)[None]  # 1x(N+1)x(N+1)
    return kernels.map_positions(identity, tuple(int(n) for n in size), align_corners)[0]


def transform_points(points, matrices):
    """Apply a batch of linear maps to one set of points, in full precision on every device.

    `out[b, ..., j] = sum_k matrices[b, j, k] * points[..., k]`, computed as a broadcast multiply and
    sum rather than a matmul: TensorFlow runs float32 matmuls in TF32 (10 mantissa bits) on recent
    NVIDIA GPUs by default, which would move grid points by a quarter of a pixel on 256-pixel images.
    The contractions here are short (3 to K*K + 3 terms), so this costs nothing.

    The gradient is written out as two matmuls. Left to autodiff, the gradient w.r.t. `matrices`
    would be a broadcast product reduced over every point, which XLA on a CPU runs as one serial
    accumulation per entry (measured on 2 CPU cores: 1.7 ms for 8 x 224 x 224 points of 3 terms,
    against 0.6 ms as a matmul). On a GPU with TF32 enabled the gradient is rounded as every `Dense`
    layer's gradient is; the points themselves never are.

    Args:
        points: float tensor `(..., K)`, shared by the batch (e.g. `(H, W, 3)` homogeneous positions).
        matrices: float tensor `(B, J, K)` of the same dtype.

    Returns:
        `(B, ..., J)`.
    """
    kernels = backend.kernels()
    if kernels is not None:  # JAX or PyTorch: the backend's full-precision product
        return kernels.transform_points(points, matrices)
    shape = tf.concat([tf.shape(matrices)[:1], tf.shape(points)[:-1], tf.shape(matrices)[1:2]], 0)
    flat = tf.reshape(points, [-1, tf.shape(points)[-1]])  # NxK
    return tf.reshape(_transform_flat_points(flat, matrices), shape)


@tf.custom_gradient
def _transform_flat_points(points, matrices):
    """`transform_points` on `(N, K)` points, giving `(B, N, J)`, with a matmul gradient."""
    out = tf.reduce_sum(points[None, :, None, :] * matrices[:, None], axis=-1)  # BxNxJ

    def grad(upstream):  # BxNxJ
        d_points = tf.einsum("bnj,bjk->nk", upstream, matrices)  # NxK
        d_matrices = tf.einsum("bnj,nk->bjk", upstream, points)  # BxJxK
        return d_points, d_matrices

    return out, grad


def map_output_positions(matrices, size, align_corners):
    """Apply a batch of linear maps to the homogeneous positions of every output pixel or voxel.

    For an image, `out[b, h, w, j] = matrices[b, j, 0] * x_w + matrices[b, j, 1] * y_h +
    matrices[b, j, 2]`: the grid of an affine map (J = 2) or the homogeneous grid of a projective one
    (J = 3); a volume adds `matrices[b, j, 2] * z_d` and its matrices are `(B, J, 4)`. It is a
    broadcast product summed over the terms, in full precision on every device (a matmul would run
    in TF32 on recent NVIDIA GPUs and move points by a quarter of a pixel on 256-pixel images).

    The gradient w.r.t. `matrices` is written out. The positions are separable (`x` depends on the
    column only, `y` on the row only, `z` on the slice only), so it is one matmul of the output
    gradient, read in its own layout as `(B * [D *] H, W * J)`, against a small `(W * J, 2 * J)`
    matrix of column positions, and a reduction over the other axes. Autodiff would reduce over
    every pixel serially (1.7 ms for an `(8, 224, 224)` grid on a CPU), and a plain matmul over the
    pixels would first transpose the gradient, which XLA fuses into the sampler's backward loop and
    stops vectorising. On a GPU with TF32 enabled this gradient is rounded as every `Dense` layer's
    gradient is; the grid itself never is.

    Args:
        matrices: float tensor `(B, J, N + 1)` for N spatial axes (2 or 3), in the compute dtype.
        size: the output size, N Python ints or scalar integer tensors (may be dynamic):
            `(H_out, W_out)`, or `(D_out, H_out, W_out)` when N is 3.
        align_corners: see `stn_keras.ops.coordinates`.

    Returns:
        `(B, H_out, W_out, J)` or `(B, D_out, H_out, W_out, J)` in `matrices`' dtype.

    Raises:
        ValueError: if `size` does not hold N positive sizes or `align_corners` is not a bool.
    """
    spatial = matrices.shape[-1] - 1
    size = check_size(size, dims=(spatial,))
    dtype = matrices.dtype
    positions = output_positions(size, align_corners, dtype, dims=(spatial,))  # size x (N+1)
    # Each axis's normalised positions, in array order ((D,) H, W): the last is x.
    axes = [coordinates.linspace_normalized(n, align_corners, dtype) for n in size]
    # An export traces a matmul: the sum's ReduceSum is what onnxruntime-web's WebGPU backend gets
    # wrong after another model ran in the page.
    if portable.active():
        joints = matrices.shape[1]
        flat = tf.reshape(positions, [-1, spatial + 1])  # (prod size) x (N+1)
        return tf.reshape(tf.matmul(flat, matrices, transpose_b=True), [-1, *size, joints])
    width = size[-1]
    expand = (None,) * spatial  # the output's spatial axes, for broadcasting

    @tf.custom_gradient
    def apply(matrices):
        # A reduction over the terms rather than their sum: XLA then writes the grid to memory
        # once, instead of recomputing it inside every loop that reads it, which stops those loops
        # (the sampler's) from being vectorised.
        out = tf.reduce_sum(
            positions[None, ..., None, :] * matrices[(slice(None), *expand)], axis=-1
        )  # B x size x J

        def grad(upstream):
            joints = matrices.shape[1]
            # A matmul by the identity first: it makes XLA write the output gradient to memory in its
            # own `(B*H*W, J)` layout. Otherwise XLA computes it inside the loop that produces the
            # `(B*H, W*J)` operand below, whose merged minor axis keeps that loop (the sampler's
            # whole backward pass) from being vectorised: 2x slower.
            eye = tf.eye(joints, dtype=dtype)
            upstream = tf.matmul(tf.reshape(upstream, [-1, joints]), eye)  # (B*H*W)xJ
            # column_sums[(b, [d,] h), (j, t)] = sum_w upstream[b, [d,] h, w, j] * (x_w, 1)[t]
            per_column = tf.stack([axes[-1], tf.ones_like(axes[-1])], axis=-1)  # Wx2
            weights = per_column[:, None, None, :] * eye[None, :, :, None]  # WxJxJx2
            column_sums = tf.matmul(
                tf.reshape(upstream, [-1, width * joints]),  # (B*[D*]H)x(W*J)
                tf.reshape(weights, [width * joints, joints * 2]),
            )
            column_sums = tf.reshape(column_sums, [-1, *size[:-1], joints, 2])  # Bx[D]xHxJx2
            rows = tuple(range(1, spatial))  # the spatial axes left: ([D,] H)
            d_x = tf.reduce_sum(column_sums[..., 0], axis=rows)  # BxJ
            d_other = []  # d_y, then d_z: the array's axes from the last but one back
            for axis in reversed(range(spatial - 1)):
                shape = [1] * spatial + [1]  # B x ([D,] H) x J
                shape[1 + axis] = -1
                coord = tf.reshape(axes[axis], shape)
                d_other.append(tf.reduce_sum(column_sums[..., 1] * coord, axis=rows))
            d_1 = tf.reduce_sum(column_sums[..., 1], axis=rows)
            return tf.stack([d_x, *d_other, d_1], axis=-1)  # BxJx(N+1)

        return out, grad

    return apply(matrices)


def spatial_dims(params, name, layouts, size):
    """The number of spatial axes a grid generator builds: 2 (image) or 3 (volume).

    Read from the parameters' static shape; when it is unknown, from the number of entries of
    `size` (which the generator then checks against it).

    Args:
        params: the parameters, a tensor.
        name: the parameters' argument name, for the message.
        layouts: `{spatial axes: trailing parameter shape}`, e.g. `{2: (2, 3), 3: (3, 4)}`.
        size: the `size` argument as received.

    Returns:
        A key of `layouts`.

    Raises:
        ValueError: if the parameters fit no layout (naming their shape), or their shape is unknown
            and `size` has no accepted number of entries. A size whose length is unknown too stands
            for an image's.
    """
    matches = [n for n, trailing in layouts.items() if fits(params, (None, *trailing))]
    if not matches:
        expected = " or ".join(f"(B, {', '.join(map(str, t))})" for t in layouts.values())
        raise ValueError(
            f"Argument `{name}` must have shape {expected}. "
            f"Received: {name}.shape={shape_text(params)}"
        )
    if len(matches) > 1:  # unknown trailing sizes: the output size decides, images when it cannot
        if isinstance(size, tf.Tensor | tf.Variable):
            length = size.shape[0] if size.shape.rank == 1 else -1
        else:
            length = len(check_size(size, dims=tuple(matches)))
        if length is not None and length not in matches:
            check_size(size, dims=tuple(matches))  # raises, naming `size`
        return matches[0] if length is None else length
    _check_size_fits(params, name, layouts, size, matches[0])
    return matches[0]


def _check_size_fits(params, name, layouts, size, spatial):
    """Raise `ValueError` naming both when `size` has the other rank's number of entries."""
    if isinstance(size, tf.Tensor | tf.Variable) or not hasattr(size, "__len__"):
        return  # checked by `check_size` when the caller validates it
    if len(size) != spatial and len(size) in layouts:
        what = {2: "an image", 3: "a volume"}
        raise ValueError(
            f"Arguments `{name}` and `size` describe different ranks: `{name}` of shape "
            f"{shape_text(params)} transforms {what[spatial]}, which takes a size "
            f"{SIZE_LAYOUTS[spatial]}, but `size` has {len(size)} entries ({what[len(size)]}'s "
            f"{SIZE_LAYOUTS[len(size)]}). Received: {name}.shape={shape_text(params)}, "
            f"size={size!r}"
        )


def affine_grid(theta, size, align_corners=False):
    """Sampling grid of a batch of affine transforms, exactly as `torch.nn.functional.affine_grid`.

    Images: output pixel `(i, j)` with normalised position `(x_j, y_i)` samples the input at
    `theta[b] @ (x_j, y_i, 1)`; the identity is `[[1, 0, 0], [0, 1, 0]]`. Volumes (PyTorch's 5-D
    `affine_grid`): output voxel `(k, i, j)` samples the input at `theta[b] @ (x_j, y_i, z_k, 1)`
    with a `(3, 4)` theta, identity `[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]`. The identity
    reproduces the input.

    Args:
        theta: float tensor `(B, 2, 3)` for images or `(B, 3, 4)` for volumes: maps output
            coordinates to input coordinates, both normalised, rows and columns in `(x, y[, z])`
            order.
        size: `(H_out, W_out)` for images, `(D_out, H_out, W_out)` for volumes: Python ints or
            scalar integer tensors (may be dynamic).
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`.

    Returns:
        The grid, `(B, H_out, W_out, 2)` with last axis `(x, y)`, or `(B, D_out, H_out, W_out, 3)`
        with last axis `(x, y, z)`, in `theta`'s dtype. The arithmetic runs in at least float32.

    Raises:
        ValueError: if `theta` is neither `(B, 2, 3)` nor `(B, 3, 4)`, or `size` does not hold
            positive sizes for each of theta's spatial axes.

    Example:
        >>> theta = tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
        >>> affine_grid(theta, (2, 3)).shape
        TensorShape([1, 2, 3, 2])
        >>> theta = tf.constant([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]])
        >>> affine_grid(theta, (4, 2, 3)).shape
        TensorShape([1, 4, 2, 3, 3])
    """
    theta = as_tensor(theta)
    spatial = spatial_dims(theta, "theta", {2: (2, 3), 3: (3, 4)}, size)
    theta = check_params(theta, "theta", (spatial, spatial + 1), f"(B, {spatial}, {spatial + 1})")
    size = check_size(size, dims=(spatial,))
    check_bool("align_corners", align_corners)
    kernels = backend.kernels()
    if kernels is not None:  # JAX or PyTorch: the backend's kernel
        return kernels.affine_grid(theta, tuple(int(n) for n in size), align_corners)
    if not theta.shape[1:].is_fully_defined():  # traced without its shape: give it the layout
        theta = tf.reshape(theta, [-1, spatial, spatial + 1])
    # The scope and the marked theta and grid tell the ONNX exporter an AffineGrid (`recording`).
    with tf.name_scope(recording.affine_grid_scope(align_corners)):
        theta = recording.mark(theta, "theta")
        dtype = coordinates.compute_dtype(theta.dtype)
        grid = map_output_positions(tf.cast(theta, dtype), size, align_corners)  # Bx[D]xHxWxN
        return recording.mark(tf.cast(grid, theta.dtype), "grid")


def attention_grid(params, size, align_corners=False):
    """Sampling grid of a batch of attention transforms: an isotropic scale and a translation.

    The constrained transform the paper uses for attention (SVHN, CUB): output position `(x, y)`
    samples the input at `(s x + t_x, s y + t_y)`, i.e. the affine transform
    `[[s, 0, t_x], [0, s, t_y]]`. A scale `s < 1` zooms in on a window of `s` times the input's
    extent centred on `(t_x, t_y)`. The identity is `(1, 0, 0)`. A volume's transform adds `t_z`:
    `(x, y, z)` samples `(s x + t_x, s y + t_y, s z + t_z)`, identity `(1, 0, 0, 0)`.

    Args:
        params: float tensor `(B, 3)`, each row `(s, t_x, t_y)` in normalised units, or `(B, 4)`,
            each row `(s, t_x, t_y, t_z)`, for volumes.
        size: `(H_out, W_out)`, or `(D_out, H_out, W_out)` for volumes: Python ints or scalar
            integer tensors (may be dynamic).
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`.

    Returns:
        The grid, `(B, H_out, W_out, 2)` with last axis `(x, y)` or `(B, D_out, H_out, W_out, 3)`
        with last axis `(x, y, z)`, in `params`' dtype. The arithmetic runs in at least float32.

    Raises:
        ValueError: if `params` is neither `(B, 3)` nor `(B, 4)`, or `size` does not hold positive
            sizes for each of the transform's spatial axes.

    Example:
        >>> params = tf.constant([[0.5, 0.2, -0.1]])  # a half-size window, right of the centre
        >>> attention_grid(params, (4, 4)).shape
        TensorShape([1, 4, 4, 2])
    """
    params = as_tensor(params)
    spatial = spatial_dims(params, "params", {2: (3,), 3: (4,)}, size)
    params = check_params(params, "params", (spatial + 1,), f"(B, {spatial + 1})")
    if backend.kernels() is not None:  # JAX or PyTorch: the same map as an affine theta
        return affine_grid(_attention_theta(params, spatial), size, align_corners=align_corners)
    dtype = coordinates.compute_dtype(params.dtype)
    positions = output_positions(size, align_corners, dtype, dims=(spatial,))[..., :spatial]
    expand = (slice(None),) + (None,) * spatial  # B x (1,) * N
    scale = tf.cast(params[(*expand, slice(0, 1))], dtype)  # Bx1x..x1
    shift = tf.cast(params[(*expand, slice(1, None))], dtype)  # Bx1x..xN
    return tf.cast(scale * positions + shift, params.dtype)  # B x size x N


def _attention_theta(params, spatial):
    """The affine theta `(B, N, N + 1)` of attention parameters `(B, N + 1)`: `s I | t`."""
    eye = ops.convert_to_tensor(np.eye(spatial), params.dtype)
    linear = params[:, :1, None] * eye  # BxNxN
    return ops.concatenate([linear, params[:, 1:, None]], axis=-1)


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
    kernels = backend.kernels()
    if kernels is None:
        projected = map_output_positions(tf.cast(homography, dtype), size, align_corners)
    else:  # JAX or PyTorch: the backend's map of the output positions (static sizes)
        size = tuple(int(n) for n in check_size(size, dims=(2,)))
        check_bool("align_corners", align_corners)
        projected = kernels.map_positions(ops.cast(homography, dtype), size, align_corners)
    w = projected[..., 2:]  # BxHxWx1
    # Selects, not `ops.minimum` / `ops.maximum`: Keras 3.15's PyTorch backend returns those in
    # float32 even for two float64 tensors.
    bound = ops.convert_to_tensor(PROJECTIVE_MIN_W, w.dtype)
    negative = ops.where(w > -bound, -bound, w)
    w = ops.where(w < 0.0, negative, ops.where(w < bound, bound, w))
    return ops.cast(projected[..., :2] / w, homography.dtype)  # BxHxWx2
