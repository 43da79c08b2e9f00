"""Keras 3 layers: `SpatialTransformer` and the lower-level `TransformSampler`."""

from stn_keras.layers.localization import default_localization
from stn_keras.layers.sampler import TransformSampler
from stn_keras.layers.spatial_transformer import SpatialTransformer

__all__ = ["SpatialTransformer", "TransformSampler", "default_localization"]
