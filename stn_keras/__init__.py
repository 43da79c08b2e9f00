"""stn-keras: the Spatial Transformer (Jaderberg et al., NIPS 2015) for Keras 3 / TensorFlow."""

from stn_keras.layers import IntegrateVelocity, SpatialTransformer, TransformSampler, Warp
from stn_keras.ops import (
    INTERPOLATIONS,
    PADDING_MODES,
    affine_grid,
    affine_to_flow,
    attention_grid,
    compose_flows,
    cv2_from_theta,
    fiducial_points,
    grid_sample,
    integrate_velocity,
    jacobian_determinant,
    projective_grid,
    resize_flow,
    theta_from_cv2,
    tps_grid,
    tps_grid_from_points,
    warp,
)

__version__ = "0.1.0"

__all__ = [
    "INTERPOLATIONS",
    "IntegrateVelocity",
    "PADDING_MODES",
    "SpatialTransformer",
    "TransformSampler",
    "Warp",
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
    "theta_from_cv2",
    "cv2_from_theta",
    "__version__",
]
