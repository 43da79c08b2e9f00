"""stn-keras: the Spatial Transformer (Jaderberg et al., NIPS 2015) for Keras 3 / TensorFlow."""

from stn_keras.layers import SpatialTransformer, TransformSampler
from stn_keras.ops import (
    INTERPOLATIONS,
    PADDING_MODES,
    affine_grid,
    attention_grid,
    grid_sample,
    projective_grid,
    tps_grid,
)

__version__ = "0.1.0"

__all__ = [
    "INTERPOLATIONS",
    "PADDING_MODES",
    "SpatialTransformer",
    "TransformSampler",
    "affine_grid",
    "attention_grid",
    "grid_sample",
    "projective_grid",
    "tps_grid",
    "__version__",
]
