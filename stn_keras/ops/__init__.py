"""Differentiable, XLA-ready spatial-transformer ops (channels-last, PyTorch semantics)."""

from stn_keras.ops import backend
from stn_keras.ops.coordinates import PADDING_MODES
from stn_keras.ops.fields import (
    affine_to_flow,
    compose_flows,
    integrate_velocity,
    jacobian_determinant,
    resize_flow,
    warp,
)
from stn_keras.ops.fitting import estimate_affine, estimate_homography, estimate_similarity
from stn_keras.ops.grids import affine_grid, attention_grid, projective_grid
from stn_keras.ops.opencv import cv2_from_theta, theta_from_cv2
from stn_keras.ops.sampling import INTERPOLATIONS, grid_sample
from stn_keras.ops.tps import fiducial_points, tps_grid, tps_grid_from_points

# The backend's kernels, imported now rather than inside a function a compiler traces.
backend.load()

__all__ = [
    "INTERPOLATIONS",
    "PADDING_MODES",
    "affine_grid",
    "affine_to_flow",
    "compose_flows",
    "integrate_velocity",
    "jacobian_determinant",
    "resize_flow",
    "warp",
    "attention_grid",
    "grid_sample",
    "projective_grid",
    "tps_grid",
    "tps_grid_from_points",
    "fiducial_points",
    "estimate_affine",
    "estimate_homography",
    "estimate_similarity",
    "theta_from_cv2",
    "cv2_from_theta",
]
