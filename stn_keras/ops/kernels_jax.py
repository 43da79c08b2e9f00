"""The JAX backend's kernels: the sampler's taps gathered with `jax.numpy`, and the affine grid.

The taps, their weights and the padding rules are the ones every backend shares
(`sampling.KERNELS`, `sampling.axis_taps`, `coordinates`); this module only gathers and sums
them. Gradients are JAX's own through the weights, with two rules of PyTorch's written in:
padding's derivative is PyTorch's set-grad multiplier (`_pad`, 0 on a clipping border), and a tap
that is not read contributes an exact 0 by a select (0 * NaN is NaN), as does a non-finite grid
point. Everything is shape-static, so it runs under `jax.jit` with no per-sample loop.
"""

import functools
import itertools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

from stn_keras.ops import coordinates, sampling


def _pad(pixels, sizes, padding_mode, align_corners):
    """`coordinates.padding_with_slope`'s padded coordinates, with its slope as the derivative."""

    @jax.custom_jvp
    def pad(pixels):
        return coordinates.padding_with_slope(pixels, sizes, padding_mode, align_corners)[0]

    @pad.defjvp
    def pad_jvp(primals, tangents):
        padded, slope = coordinates.padding_with_slope(
            primals[0], sizes, padding_mode, align_corners
        )
        return padded, slope * tangents[0]

    return pad(pixels)


def grid_sample(images, grid, interpolation, padding_mode, align_corners):
    """`stn_keras.grid_sample` on JAX arrays (validated arguments, any rank)."""
    dtype = coordinates.compute_dtype_name(images.dtype, grid.dtype)
    spatial = grid.shape[-1]
    in_size = tuple(images.shape[1:-1])  # [D,] H, W
    grid = grid.astype(dtype)
    finite = jnp.all(jnp.isfinite(grid), axis=-1)  # B x out
    limit = coordinates.COORD_LIMIT
    grid = jnp.where(finite[..., None], jnp.clip(grid, -limit, limit), 0.0)
    sizes = np.array(in_size[::-1], dtype)  # W, H[, D]: the grid's order
    pixels = coordinates.unnormalize(grid, sizes, align_corners)
    kernel, pad_taps = sampling.KERNELS[interpolation]
    if not pad_taps:
        pixels = _pad(pixels, sizes, padding_mode, align_corners)
    index_dtype = "int32" if images.size < 2**31 else "int64"
    per_component = [
        sampling.axis_taps(
            pixels[..., k],
            in_size[spatial - 1 - k],
            kernel,
            pad_taps,
            padding_mode,
            align_corners,
            index_dtype,
        )
        for k in range(spatial)
    ]
    indices, weights, _, inside = zip(*reversed(per_component), strict=True)  # array order
    return _sum_taps(images, finite, indices, weights, inside, dtype).astype(images.dtype)


def _sum_taps(images, finite, indices, weights, inside, dtype):
    """Sum every tap (the outer product of the axes' taps) of the flat `(B * prod(in), C)` image."""
    spatial = len(indices)
    in_size = images.shape[1:-1]
    flat = images.reshape(-1, images.shape[-1])
    batch = jnp.arange(images.shape[0], dtype=indices[0][0].dtype)
    batch = batch.reshape(-1, *([1] * spatial))
    out = None
    for tap in itertools.product(*(range(len(i)) for i in indices)):
        row = batch
        for axis in range(spatial):
            row = row * in_size[axis] + indices[axis][tap[axis]]
        read = functools.reduce(operator.and_, [inside[a][tap[a]] for a in range(spatial)], finite)
        weight = math.prod(weights[a][tap[a]] for a in range(spatial))
        value = jnp.where(read[..., None], flat[row].astype(dtype), 0.0) * weight[..., None]
        out = value if out is None else out + value
    return out


def affine_grid(theta, size, align_corners):
    """`stn_keras.affine_grid` on JAX arrays: `theta` `(B, N, N + 1)`, `size` static ints."""
    dtype = coordinates.compute_dtype_name(theta.dtype)
    return map_positions(theta.astype(dtype), size, align_corners).astype(theta.dtype)


def map_positions(matrices, size, align_corners):
    """Each output position `(x, y[, z], 1)` times `matrices` `(B, J, N + 1)`: `(B, *size, J)`."""
    axes = [_positions(n, align_corners) for n in size]  # array order: [D,] H, W
    mesh = np.meshgrid(*axes, indexing="ij")
    base = np.stack([*reversed(mesh), np.ones_like(mesh[0])], axis=-1).astype(matrices.dtype)
    return transform_points(base, matrices)


def transform_points(points, matrices):
    """`grids.transform_points`: points `(..., K)` by matrices `(B, J, K)`, `(B, ..., J)`, in full
    precision on every device (JAX's default rounds float32 products to TF32 or bfloat16 on
    accelerators)."""
    return jnp.einsum("...k,bjk->b...j", points, matrices, precision=jax.lax.Precision.HIGHEST)


def _positions(n, align_corners):
    """`coordinates.linspace_normalized` in float64 numpy (sizes are static under JAX)."""
    i = np.arange(n, dtype="float64")
    if align_corners:
        return -1.0 + 2.0 * i / (n - 1) if n > 1 else np.zeros(1)
    return (2.0 * i + 1.0) / n - 1.0
