"""Keras 3 layers: `SpatialTransformer`, the lower-level `TransformSampler`, and the registration
layers `Warp` and `IntegrateVelocity`."""

from stn_keras.layers.fields import IntegrateVelocity, Warp
from stn_keras.layers.localization import default_localization
from stn_keras.layers.sampler import TransformSampler
from stn_keras.layers.spatial_transformer import SpatialTransformer

__all__ = [
    "IntegrateVelocity",
    "SpatialTransformer",
    "TransformSampler",
    "Warp",
    "default_localization",
]
