"""The PyTorch backend's kernels: PyTorch's own `grid_sample` and `affine_grid`.

Channels-last tensors are moved to PyTorch's channels-first layout and back (views, no copy
before the kernel needs one). Two of stn-keras's rules that PyTorch leaves open are added
around the kernel: a grid point with a NaN or infinite coordinate reads 0 with zero gradients
(PyTorch's border padding would read the border), and finite coordinates beyond
`coordinates.COORD_LIMIT` are clamped first, so that the pixel arithmetic stays finite. Their cost
is measured in `benchmarks/results/cpu-backends.md`. Half precision computes in float32 (PyTorch's
CPU sampler has no float16 kernel), as on every backend.
"""

import functools
import operator

import torch
import torch.nn.functional as F

from stn_keras.ops import coordinates


def _compute_dtype(*dtypes):
    return getattr(torch, coordinates.compute_dtype_name(*dtypes))


def grid_sample(images, grid, interpolation, padding_mode, align_corners):
    """`stn_keras.grid_sample` on torch tensors (validated arguments, any rank)."""
    dtype = _compute_dtype(images.dtype, grid.dtype)
    limit = coordinates.COORD_LIMIT
    grid = grid.to(dtype)
    if padding_mode == "zeros":
        # Far outside every image a point reads 0 with zero gradients, as a non-finite one must:
        # parking non-finite coordinates there needs no pass over the output.
        grid = torch.nan_to_num(grid, nan=limit, posinf=limit, neginf=limit)
        return _sample(
            images, grid.clamp(-limit, limit), interpolation, padding_mode, align_corners
        )
    # Border and reflection read something everywhere: the output is masked instead. (Per
    # coordinate, not `.all(-1)`: PyTorch reduces a last axis of 2 or 3 slowly.)
    finite = functools.reduce(operator.and_, torch.isfinite(grid).unbind(-1))
    grid = torch.where(finite[..., None], grid.clamp(-limit, limit), 0.0)
    return _sample(images, grid, interpolation, padding_mode, align_corners, finite)


def _sample(images, grid, interpolation, padding_mode, align_corners, finite=None):
    """PyTorch's kernel on channels-last `images` (a channels-first view, no copy), in the grid's
    dtype, the result channels-last in `images`' dtype; 0 where `finite` `(B, *out)` is false.
    (The mask applies to the kernel's contiguous channels-first output: 2x faster than to its
    channels-last view.)"""
    out = F.grid_sample(
        images.to(grid.dtype).movedim(-1, 1),
        grid,
        mode=interpolation,
        padding_mode=padding_mode,
        align_corners=align_corners,
    )
    if finite is not None:
        out = out.masked_fill(~finite[:, None], 0.0)
    return out.movedim(1, -1).to(images.dtype)


def affine_grid(theta, size, align_corners):
    """`stn_keras.affine_grid` on torch tensors: `theta` `(B, N, N + 1)`, `size` ints."""
    dtype = _compute_dtype(theta.dtype)
    return map_positions(theta.to(dtype), size, align_corners).to(theta.dtype)


def map_positions(matrices, size, align_corners):
    """Each output position `(x, y[, z], 1)` times `matrices` `(B, J, N + 1)`: `(B, *size, J)`.

    PyTorch's own computation (`affine_grid_generator`: its base grid times theta transposed),
    with the base grid built for a batch of one: `F.affine_grid` needs a concrete batch size, which
    `torch.compile` makes symbolic once it has seen two (automatic dynamic shapes).
    """
    spatial = len(size)
    identity = torch.eye(spatial, spatial + 1, dtype=matrices.dtype)[None]
    positions = F.affine_grid(identity, (1, 1, *size), align_corners=align_corners)  # 1 x size x N
    ones = torch.ones((*positions.shape[:-1], 1), dtype=matrices.dtype)
    base = torch.cat([positions, ones], dim=-1)[0]  # size x (N + 1)
    return transform_points(base, matrices)


def transform_points(points, matrices):
    """`grids.transform_points`: points `(..., K)` by matrices `(B, J, K)`, `(B, ..., J)` (a
    matmul: PyTorch does not round float32 matmuls to TF32 unless asked to)."""
    flat = points.reshape(1, -1, points.shape[-1])  # 1 x P x K
    mapped = torch.matmul(flat, matrices.transpose(1, 2))  # B x P x J
    return mapped.reshape(-1, *points.shape[:-1], matrices.shape[1])
