"""The default localisation networks of `SpatialTransformer`, for images and for volumes."""

import keras
import numpy as np

from stn_keras.ops.grids import affine_grid
from stn_keras.ops.sampling import grid_sample

# The default network looks at the input at this fixed resolution, so it takes images of any size.
DEFAULT_VIEW_SIZE = (32, 32)
# The same for volumes: (D, H, W).
DEFAULT_VOLUME_VIEW_SIZE = (16, 16, 16)


@keras.saving.register_keras_serializable(package="stn_keras")
class ResizeVolume(keras.layers.Layer):
    """Resize volumes `(B, D, H, W, C)` to a fixed `(D_out, H_out, W_out)` by trilinear sampling.

    Keras has no 3-D `Resizing`; this samples the identity transform's grid at the new size
    (`align_corners=False`, no antialiasing: what `keras.layers.Resizing(interpolation="bilinear")`
    does for images, and PyTorch's `F.interpolate(mode="trilinear")`). It works on volumes of any,
    even dynamic, size.

    Args:
        size: `(D_out, H_out, W_out)`, positive integers.
        **kwargs: base layer arguments.
    """

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(n) for n in size)

    def call(self, volumes):
        identity = keras.ops.convert_to_tensor(np.eye(3, 4)[None], volumes.dtype)
        theta = keras.ops.tile(identity, [keras.ops.shape(volumes)[0], 1, 1])  # Bx3x4
        return grid_sample(volumes, affine_grid(theta, self.size))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def default_localization(dtype=None, name="localization", spatial_dims=2):
    """A small convolutional localisation network: images `(B, H, W, C)` -> features `(B, 32)`.

    The input is first resized (bilinear) to `DEFAULT_VIEW_SIZE`, then goes through two
    5x5 convolution + 2x2 max-pooling stages (8 and 16 filters) and a 32-unit dense layer, about
    16k weights for RGB input, the size of the paper's MNIST localisation networks. It works on
    inputs of any (even dynamic) size and channel count. The resize runs in float32 under every
    policy; the layers after it follow `dtype`.

    For volumes `(B, D, H, W, C)` (`spatial_dims=3`) the same design in 3-D: a trilinear resize to
    `DEFAULT_VOLUME_VIEW_SIZE`, two 3x3x3 convolutions of stride 2 (8 and 16 filters) and the
    32-unit dense layer, about 18k weights for one channel.

    Args:
        dtype: dtype policy of the network's layers. Defaults to `None` (the global policy).
        name: the network's name. Defaults to `"localization"`.
        spatial_dims: 2 for images, 3 for volumes. Defaults to `2`.

    Returns:
        A `keras.Sequential` model, unbuilt.
    """
    if spatial_dims == 3:
        layers = [
            ResizeVolume(DEFAULT_VOLUME_VIEW_SIZE, dtype="float32"),
            # Strided convolutions rather than max-pooling: TensorFlow's CPU MaxPool3D has no
            # float16 kernel, so a mixed_float16 model could not run on a CPU.
            keras.layers.Conv3D(8, 3, strides=2, activation="relu", dtype=dtype),
            keras.layers.Conv3D(16, 3, strides=2, activation="relu", dtype=dtype),
        ]
    else:
        layers = [
            # Resized in float32 whatever the policy: the resize is cheap, and its float16 form
            # converts to an ONNX graph that mixes float16 and float32 operands (which
            # onnxruntime refuses), so mixed-precision models could not be exported.
            keras.layers.Resizing(*DEFAULT_VIEW_SIZE, interpolation="bilinear", dtype="float32"),
            keras.layers.Conv2D(8, 5, activation="relu", dtype=dtype),
            keras.layers.MaxPooling2D(2, dtype=dtype),
            keras.layers.Conv2D(16, 5, activation="relu", dtype=dtype),
            keras.layers.MaxPooling2D(2, dtype=dtype),
        ]
    layers += [
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(32, activation="relu", dtype=dtype),
    ]
    return keras.Sequential(layers, name=name)
