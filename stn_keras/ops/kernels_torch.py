"""The PyTorch backend's kernels: PyTorch's own `grid_sample` and `affine_grid`.

Channels-last tensors are moved to PyTorch's channels-first layout and back (views, no copy
before the kernel needs one). Two of stn-keras's rules that PyTorch leaves open are added
around the kernel: a grid point with a NaN or infinite coordinate reads 0 with zero gradients
(PyTorch's border padding would read the border), and finite coordinates beyond
`coordinates.COORD_LIMIT` are clamped first, so that the pixel arithmetic stays finite. Half
precision computes in float32 (PyTorch's CPU sampler has no float16 kernel), as on every backend.
"""

import torch
import torch.nn.functional as F

from stn_keras.ops import coordinates


def _compute_dtype(*dtypes):
    return getattr(torch, coordinates.compute_dtype_name(*dtypes))


def grid_sample(images, grid, interpolation, padding_mode, align_corners):
    """`stn_keras.grid_sample` on torch tensors (validated arguments, any rank)."""
    dtype = _compute_dtype(images.dtype, grid.dtype)
    grid = grid.to(dtype)
    finite = torch.isfinite(grid).all(dim=-1, keepdim=True)  # B x out x 1
    limit = coordinates.COORD_LIMIT
    grid = torch.where(finite, grid.clamp(-limit, limit), 0.0)
    out = F.grid_sample(
        images.to(dtype).movedim(-1, 1),
        grid,
        mode=interpolation,
        padding_mode=padding_mode,
        align_corners=align_corners,
    ).movedim(1, -1)
    return torch.where(finite, out, 0.0).to(images.dtype)


def affine_grid(theta, size, align_corners):
    """`stn_keras.affine_grid` on torch tensors: `theta` `(B, N, N + 1)`, `size` ints."""
    dtype = _compute_dtype(theta.dtype)
    shape = (theta.shape[0], 1, *size)
    return F.affine_grid(theta.to(dtype), shape, align_corners=align_corners).to(theta.dtype)
