"""Models the export tests convert: one sampler per mode, and a user-style custom layer.

`sampler_model` has one `stn_keras.TransformSampler` per mode; `ExportTestSampler` is a user-style
custom layer that calls `stn_keras.affine_grid` and `stn_keras.grid_sample` directly (the exporters find
the sampler inside any layer). Test fixtures, not part of the package.
"""

import itertools

import keras
import numpy as np

import stn_keras
from stn_keras.ops.coordinates import PADDING_MODES
from stn_keras.ops.sampling import INTERPOLATIONS

ALL_MODES = tuple(itertools.product(INTERPOLATIONS, PADDING_MODES, (False, True)))

# A transform that zooms out and shifts, so that part of every output reads outside the image and
# exercises the padding mode.
_THETA = np.array([1.3, 0.2, 0.1, -0.15, 1.2, -0.05])
# The same for volumes: a (3, 4) theta.
_THETA_3D = np.array([1.3, 0.2, 0.0, 0.1, -0.15, 1.2, 0.1, -0.05, 0.05, 0.0, 1.1, 0.08])
VOLUME_MODES = tuple(m for m in ALL_MODES if m[0] != "bicubic")


@keras.saving.register_keras_serializable(package="stn_keras_tests")
class ExportTestSampler(keras.layers.Layer):
    """`[images (B, H, W, C), theta (B, 6)] -> affine warp (B, H_out, W_out, C)` via the core ops."""

    def __init__(
        self,
        output_size,
        interpolation="bilinear",
        padding_mode="zeros",
        align_corners=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_size = tuple(output_size)
        self.interpolation = interpolation
        self.padding_mode = padding_mode
        self.align_corners = align_corners

    def call(self, inputs):
        images, params = inputs
        theta = keras.ops.reshape(params, (-1, 2, 3))  # Bx2x3
        grid = stn_keras.affine_grid(theta, self.output_size, align_corners=self.align_corners)
        return stn_keras.grid_sample(
            images,
            grid,
            interpolation=self.interpolation,
            padding_mode=self.padding_mode,
            align_corners=self.align_corners,
        )

    def compute_output_shape(self, input_shape):
        images_shape, _ = input_shape
        return (images_shape[0], *self.output_size, images_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "output_size": self.output_size,
            "interpolation": self.interpolation,
            "padding_mode": self.padding_mode,
            "align_corners": self.align_corners,
        }


def sampler_model(modes=ALL_MODES, input_shape=(8, 10, 2), output_size=(6, 7), seed=0):
    """A model `images -> [one TransformSampler warp per mode]` whose affine `theta` depends on the images.

    Args:
        modes: `(interpolation, padding_mode, align_corners)` triples, one sampler (and output) each.
            Defaults to all 18.
        input_shape: `(H, W, C)` of the images, or `(D, H, W, C)` of volumes. Defaults to
            `(8, 10, 2)`.
        output_size: `(H_out, W_out)` (`(D_out, H_out, W_out)`) of every warp. Defaults to `(6, 7)`.
        seed: seed of the localisation weights. Defaults to `0`.

    Returns:
        A functional `keras.Model` with one output per mode.
    """
    images = keras.Input(input_shape, name="images")
    features = keras.layers.Flatten()(images)
    bias = _THETA if len(output_size) == 2 else _THETA_3D
    theta = keras.layers.Dense(
        len(bias),
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.05, seed=seed),
        bias_initializer=keras.initializers.Constant(bias),
        name="theta",
    )(features)
    outputs = [
        stn_keras.TransformSampler(
            output_size=output_size,
            interpolation=mode,
            padding_mode=padding,
            align_corners=corners,
            name=f"warp_{mode}_{padding}_{'ac' if corners else 'noac'}",
        )([images, theta])
        for mode, padding, corners in modes
    ]
    return keras.Model(images, outputs, name="sampler_model")


def custom_layer_model(input_shape=(4, 5, 1), output_size=(3, 3)):
    """A model whose only sampler is the custom `ExportTestSampler` (bicubic, reflection)."""
    images = keras.Input(input_shape, name="images")
    theta = keras.layers.Dense(
        6,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.05, seed=1),
        bias_initializer=keras.initializers.Constant(_THETA),
    )(keras.layers.Flatten()(images))
    warped = ExportTestSampler(output_size, interpolation="bicubic", padding_mode="reflection")(
        [images, theta]
    )
    return keras.Model(images, warped, name="custom_layer_model")
