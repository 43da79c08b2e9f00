"""Dense deformation fields: displacement warps, velocity integration and field algebra.

A displacement field `flow` `(B, *spatial, N)` moves every pixel (voxel) of an image with N spatial
axes by a vector in pixel units: `warp(images, flow)[p] = images[p + flow[p]]`. The components come in
one of two orders (`indexing`):

* `"ij"` (VoxelMorph's convention, the default): component k moves array axis k, so a volume's field
  holds `(d, h, w)` displacements and an image's `(h, w)`;
* `"xy"`: the components are `(x, y[, z])`, the order of a sampling grid's last axis
  (`stn_keras.ops.coordinates`): `x` along W, `y` along H, `z` along D.

Every op here is built on `grid_sample` (a field becomes the normalised grid `base + flow * 2 / n`,
`align_corners=False`, whose pixel positions are exactly `p + flow[p]`), so it has the sampler's
gradients, its handling of non-finite values, XLA support and exports.
"""

import tensorflow as tf
from keras import ops

from stn_keras.ops import backend, coordinates, grids
from stn_keras.ops.grids import affine_grid
from stn_keras.ops.sampling import grid_sample
from stn_keras.ops.validation import (
    as_tensor,
    check_choice,
    check_int,
    dtype_name,
    fits,
    is_floating,
    shape_text,
    static_shape,
)

INDEXINGS = ("ij", "xy")
# Padding of the squaring steps of `integrate_velocity`: "border" is VoxelMorph 0.2's `VecInt`
# (its `fill_value=None`), "zeros" is MONAI's `DVF2DDF` and VoxelMorph >= 0.3's `VecInt`.
INTEGRATION_PADDINGS = ("border", "zeros")


def _check_field(flow, name="flow", images=None):
    """`flow` as a floating tensor `(B, *spatial, N)` with N = its number of spatial axes (2 or 3).

    Raises:
        ValueError: naming the shapes, if `flow`'s rank is not 4 or 5, its last axis is not N, or
            its rank or spatial shape differs from `images`' (when given).
    """
    flow = as_tensor(flow)
    shape = static_shape(flow)
    received = f"{name}.shape={shape_text(flow)}"
    if images is not None:
        received = f"images.shape={shape_text(images)}, {received}"
    if shape is None or len(shape) not in (4, 5) or shape[-1] not in (len(shape) - 2, None):
        raise ValueError(
            f"Argument `{name}` must be a field (B, H, W, 2) over images or (B, D, H, W, 3) over "
            f"volumes: its last axis holds one displacement per spatial axis. Received: {received}"
        )
    if not is_floating(flow):
        raise ValueError(
            f"Argument `{name}` must be floating. Received: {name}.dtype={dtype_name(flow)}"
        )
    if images is not None and not fits(images, (None, *shape[1:-1], None)):
        raise ValueError(
            f"Arguments `images` and `{name}` must have the same spatial shape, and `{name}` one "
            f"displacement per spatial axis of `images`. Received: {received}"
        )
    return flow


def _to_xy(flow, indexing):
    """The field's components in the grid's `(x, y[, z])` order."""
    return ops.flip(flow, axis=-1) if indexing == "ij" else flow


def _from_xy(flow, indexing):
    """The inverse of `_to_xy`."""
    return _to_xy(flow, indexing)  # reversing is its own inverse


def _spatial_size(x):
    """`(H, W)` or `(D, H, W)` of `x` `(B, *spatial, C)`, static where known (always, but on
    TensorFlow)."""
    return tuple(coordinates.dim(x, axis) for axis in range(1, len(x.shape) - 1))


def flow_to_grid(flow, indexing="ij"):
    """The normalised sampling grid that reads pixel `p + flow[p]` (`align_corners=False`).

    Args:
        flow: displacement field `(B, H, W, 2)` or `(B, D, H, W, 3)`, in pixels.
        indexing: `"ij"` or `"xy"`, the order of `flow`'s components (module docstring).

    Returns:
        The grid, `flow`'s shape, last axis `(x, y[, z])`, in float32 (float64 for a float64 field).

    Raises:
        ValueError: for a field of the wrong shape or an unknown `indexing`.
    """
    flow = _check_field(flow)
    check_choice("indexing", indexing, INDEXINGS)
    return _flow_to_grid(flow, indexing)


def _flow_to_grid(flow, indexing):
    """`flow_to_grid` of a checked field."""
    dtype = coordinates.compute_dtype_name(flow.dtype)
    size = _spatial_size(flow)
    displacement = _to_xy(ops.cast(flow, dtype), indexing)
    base = grids.positions(size, False, dtype)[..., :-1]  # size x N, (x, y[, z])
    if backend.kernels() is not None:  # JAX or PyTorch: static sizes
        scale = ops.convert_to_tensor([2.0 / n for n in size[::-1]], dtype)  # a pixel, normalised
        return base + displacement * scale
    # One pixel is 2 / n in normalised units (align_corners=False), n in (x, y[, z]) order.
    scale = 2.0 / tf.cast(tf.stack(size[::-1]), dtype)
    # A reduction over the two terms rather than their sum, as in `grids.map_output_positions`:
    # XLA then writes the grid to memory once instead of recomputing it inside every loop of the
    # sampler that reads it, which keeps those loops vectorised.
    terms = tf.stack([tf.broadcast_to(base, tf.shape(displacement)), displacement * scale], axis=-1)
    return tf.reduce_sum(terms, axis=-1)


def warp(images, flow, interpolation="bilinear", padding_mode="zeros", indexing="ij"):
    """Warp `images` by a dense displacement field: `out[p] = images[p + flow[p]]`, in pixel units.

    What VoxelMorph's `SpatialTransformer` does (its `fill_value=None`, nearest-edge extrapolation,
    is `padding_mode="border"` here), built on `grid_sample`: the same gradients w.r.t. images and
    flow, non-finite displacements read as outside, XLA, and exports. Positions between pixels are
    interpolated; `"reflection"` mirrors about the outer pixel edges.

    Args:
        images: `(B, H, W, C)` or `(B, D, H, W, C)`.
        flow: `(B, H, W, 2)` or `(B, D, H, W, 3)` over the same spatial shape, in pixels.
        interpolation: `"bilinear"` (trilinear on volumes), `"nearest"`, or `"bicubic"` (images
            only). Defaults to `"bilinear"`.
        padding_mode: `"zeros"`, `"border"` or `"reflection"`. Defaults to `"zeros"`.
        indexing: `"ij"` (component k moves array axis k) or `"xy"` (`(x, y[, z])`). Defaults to
            `"ij"`.

    Returns:
        The warped images, `images`' shape and dtype.

    Raises:
        ValueError: naming the shapes, if `flow` does not hold one displacement per spatial axis of
            `images` or their spatial shapes differ; for bicubic on a volume; for an unknown option.

    Example:
        >>> images = tf.random.uniform((1, 4, 5, 1))
        >>> shift = tf.concat([tf.zeros((1, 4, 5, 1)), tf.ones((1, 4, 5, 1))], -1)  # +1 along W
        >>> warp(images, shift)[0, :, :4, 0].shape  # out[h, w] = images[h, w + 1]
        TensorShape([4, 4])
    """
    images = as_tensor(images)
    flow = _check_field(flow, images=images)
    check_choice("indexing", indexing, INDEXINGS)
    return _warp(images, flow, interpolation, padding_mode, indexing)


def _warp(images, flow, interpolation, padding_mode, indexing):
    """`warp` of checked arguments (`grid_sample` checks and records its own)."""
    grid = _flow_to_grid(flow, indexing)
    return grid_sample(images, grid, interpolation, padding_mode, align_corners=False)


def integrate_velocity(velocity, steps=7, indexing="ij", padding_mode="border"):
    """Integrate a stationary velocity field by scaling and squaring, as VoxelMorph's `VecInt`.

    `v = velocity / 2**steps`, then `steps` times `v = v + warp(v, v)`, giving the displacement of
    the flow's time-1 map: a diffeomorphism when the velocity is smooth enough. `steps=0` returns
    the velocity unchanged.

    The squaring reads the field outside the image near the borders, and peers differ there:
    `padding_mode="border"` repeats the edge displacement (VoxelMorph 0.2's `VecInt`, whose
    `fill_value=None` extrapolates the nearest edge value); `"zeros"` reads 0 (MONAI's `DVF2DDF`,
    which warps with `padding_mode="zeros"`, and VoxelMorph >= 0.3's `VecInt`). Inside the image,
    away from the borders, both give the same field.

    Args:
        velocity: `(B, H, W, 2)` or `(B, D, H, W, 3)`, in pixels.
        steps: number of squarings, an integer >= 0. Defaults to `7`.
        indexing: `"ij"` or `"xy"`, the order of the components (unchanged on output).
            Defaults to `"ij"`.
        padding_mode: `"border"` or `"zeros"`, what the squaring steps read outside the image.
            Defaults to `"border"`.

    Returns:
        The displacement field, `velocity`'s shape and dtype.

    Raises:
        ValueError: for `steps` not an integer >= 0, a field of the wrong shape, or an unknown
            `indexing` or `padding_mode`.
    """
    steps = check_int("steps", steps, minimum=0)
    velocity = _check_field(velocity, "velocity")
    check_choice("indexing", indexing, INDEXINGS)
    check_choice("padding_mode", padding_mode, INTEGRATION_PADDINGS)
    flow = velocity / (2.0**steps)
    for _ in range(steps):
        flow = flow + _warp(flow, flow, "bilinear", padding_mode, indexing)
    return flow


def compose_flows(first, second, indexing="ij"):
    """The field that moves pixels as `first` and then `second` do.

    `warp(warp(images, first), second)` reads `images` at `q + first[q]` with `q = p + second[p]`, so
    the composition is `second + warp(first, second)`: warping by it equals warping by `first`, then
    warping the result by `second` (up to the interpolation of `first`).

    Args:
        first: the field applied first, `(B, *spatial, N)`, in pixels.
        second: the field applied to its result, the same shape.
        indexing: `"ij"` or `"xy"`, the order of both fields' components.

    Returns:
        The composed field, `second`'s shape.

    Raises:
        ValueError: for fields of different or wrong shapes.
    """
    first = _check_field(first, "first")
    second = _check_field(second, "second", images=first)
    check_choice("indexing", indexing, INDEXINGS)
    return second + _warp(first, second, "bilinear", "border", indexing)


def resize_flow(flow, size, interpolation="bilinear"):
    """A displacement field resampled to another spatial size, its vectors rescaled to the new pixels.

    The field is sampled like an image (`align_corners=False`, border padding) and component k is
    multiplied by `size[k] / flow's size[k]` along its axis, so that it moves the same fraction of
    the image: resizing a field from a half-resolution network to the image's size is the common use.

    Args:
        flow: `(B, H, W, 2)` or `(B, D, H, W, 3)`, `"ij"` indexing (component k along array axis k).
            For an `"xy"` field, reverse its last axis first.
        size: the new `(H, W)` or `(D, H, W)`.
        interpolation: `"bilinear"` or `"nearest"`. Defaults to `"bilinear"`.

    Returns:
        `(B, *size, N)` in `flow`'s dtype.

    Raises:
        ValueError: for a field of the wrong shape or a `size` of another rank.
    """
    flow = _check_field(flow)
    spatial = len(flow.shape) - 2
    identity = ops.eye(spatial, spatial + 1, dtype=dtype_name(flow))[None]  # 1xNx(N+1)
    theta = ops.tile(identity, [ops.shape(flow)[0], 1, 1])
    grid = affine_grid(theta, size)
    resized = grid_sample(flow, grid, interpolation=interpolation, padding_mode="border")
    old = ops.cast(ops.stack(_spatial_size(flow)), flow.dtype)
    new = ops.cast(ops.stack(_spatial_size(resized)), flow.dtype)
    return resized * (new / old)


def affine_to_flow(theta, size, align_corners=False, indexing="ij"):
    """The dense displacement field of an affine transform: `warp` by it is `grid_sample` of its grid.

    Args:
        theta: `(B, 2, 3)` or `(B, 3, 4)`, as for `affine_grid`: maps output to input coordinates,
            normalised.
        size: `(H, W)` or `(D, H, W)` of the field.
        align_corners: the convention `theta` is written in (see `stn_keras.ops.coordinates`).
            Defaults to `False`.
        indexing: `"ij"` or `"xy"`, the order of the result's components. Defaults to `"ij"`.

    Returns:
        `(B, *size, N)`, in pixels, float32 (float64 for a float64 theta): at pixel `p`, the input
        pixel position `theta` reads minus `p`.

    Raises:
        ValueError: as `affine_grid`.
    """
    check_choice("indexing", indexing, INDEXINGS)
    grid = affine_grid(theta, size, align_corners=align_corners)
    dtype = coordinates.compute_dtype_name(grid.dtype)
    grid = ops.cast(grid, dtype)
    size = _spatial_size(grid)
    sizes = ops.cast(ops.stack(size[::-1]), dtype)  # (W, H[, D])
    pixels = coordinates.unnormalize(grid, sizes, align_corners)  # B x size x N, (x, y[, z])
    base = grids.positions(size, align_corners, dtype)[..., :-1]
    return _from_xy(pixels - coordinates.unnormalize(base, sizes, align_corners), indexing)


def jacobian_determinant(flow, indexing="ij"):
    """The determinant of the Jacobian of `p -> p + flow[p]` at every pixel: where it is <= 0 the
    deformation folds.

    Derivatives are central differences inside and one-sided at the borders (`numpy.gradient`, as
    VoxelMorph's `jacobian_determinant`).

    Args:
        flow: `(B, H, W, 2)` or `(B, D, H, W, 3)`, in pixels.
        indexing: `"ij"` or `"xy"`, the order of the components. Defaults to `"ij"`.

    Returns:
        `(B, H, W)` or `(B, D, H, W)` in float32 (float64 for a float64 field).

    Raises:
        ValueError: for a field of the wrong shape, or one with an axis of fewer than 2 pixels
            (a derivative needs two); an axis known only at run time is checked when the op runs.
    """
    flow = _check_field(flow)
    check_choice("indexing", indexing, INDEXINGS)
    flow = _check_differentiable(flow)
    flow = ops.cast(flow, coordinates.compute_dtype_name(flow.dtype))
    if indexing == "xy":  # to "ij": components in array order
        flow = ops.flip(flow, axis=-1)
    spatial = len(flow.shape) - 2
    # rows[k][a] = d (p_k + u_k) / d p_a, with components and axes in array order.
    derivatives = [_gradient(flow, axis=1 + a) for a in range(spatial)]  # each B x size x N
    rows = [
        [derivatives[a][..., k] + float(k == a) for a in range(spatial)] for k in range(spatial)
    ]
    if spatial == 2:
        return rows[0][0] * rows[1][1] - rows[0][1] * rows[1][0]
    (a, b, c), (d, e, f), (g, h, i) = rows
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def _check_differentiable(flow):
    """`flow`, checked to have at least 2 pixels along every spatial axis."""
    message = (
        "Argument `flow` must have at least 2 pixels along every spatial axis for "
        "`jacobian_determinant` (finite differences need two)."
    )
    sizes = static_shape(flow)[1:-1]
    if any(size is not None and size < 2 for size in sizes):
        raise ValueError(f"{message} Received: flow.shape={shape_text(flow)}")
    if None not in sizes:
        return flow
    # Only TensorFlow traces unknown sizes: check them when the graph runs.
    check = tf.debugging.assert_greater_equal(tf.shape(flow)[1:-1], 2, message=message)
    with tf.control_dependencies([check]):
        return tf.identity(flow)


def _along(x, axis, start=None, stop=None):
    """`x[start:stop]` along `axis`."""
    return x[(slice(None),) * axis + (slice(start, stop),)]


def _gradient(x, axis):
    """`numpy.gradient` along `axis`: central differences, one-sided at both ends."""
    forward = _along(x, axis, 1) - _along(x, axis, None, -1)  # n - 1 differences
    inner = (_along(forward, axis, 1) + _along(forward, axis, None, -1)) / 2.0
    first, last = _along(forward, axis, None, 1), _along(forward, axis, -1)
    return ops.concatenate([first, inner, last], axis=axis)
