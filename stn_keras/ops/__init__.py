"""Differentiable, XLA-ready spatial-transformer ops (channels-last, PyTorch semantics)."""

from stn_keras.ops.coordinates import PADDING_MODES
from stn_keras.ops.grids import affine_grid
from stn_keras.ops.sampling import INTERPOLATIONS, grid_sample

__all__ = ["INTERPOLATIONS", "PADDING_MODES", "affine_grid", "grid_sample"]
