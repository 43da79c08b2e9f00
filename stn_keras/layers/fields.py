"""`Warp` and `IntegrateVelocity`: the registration layers, thin Keras wrappers of `stn_keras.ops.fields`."""

import keras
from keras import ops

from stn_keras.ops import coordinates
from stn_keras.ops.fields import INDEXINGS, INTEGRATION_PADDINGS, integrate_velocity, warp
from stn_keras.ops.sampling import INTERPOLATIONS
from stn_keras.ops.validation import check_choice, check_int


@keras.saving.register_keras_serializable(package="stn_keras")
class Warp(keras.layers.Layer):
    """Warp images by a dense displacement field: `[images, flow] -> images[p + flow[p]]`.

    See `stn_keras.ops.fields.warp` for the conventions (pixel units, `indexing`). Under a mixed
    precision policy the images are warped in the compute dtype while the field and the sampling
    coordinates stay in the variable dtype (float32), so sub-pixel displacements are not rounded.

    Args:
        interpolation: `"bilinear"`, `"nearest"` or `"bicubic"` (images only). Defaults to
            `"bilinear"`.
        padding_mode: `"zeros"`, `"border"` (VoxelMorph's `fill_value=None`) or `"reflection"`.
            Defaults to `"zeros"`.
        indexing: `"ij"` (VoxelMorph's) or `"xy"`. Defaults to `"ij"`.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: `[images, flow]`: `(B, H, W, C)` and `(B, H, W, 2)`, or `(B, D, H, W, C)` and
            `(B, D, H, W, 3)`.

    Returns:
        The warped images, the images' shape, in the compute dtype.
    """

    def __init__(self, interpolation="bilinear", padding_mode="zeros", indexing="ij", **kwargs):
        kwargs.setdefault("autocast", False)  # `call` casts images and field itself
        super().__init__(**kwargs)
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        check_choice("padding_mode", padding_mode, coordinates.PADDING_MODES)
        check_choice("indexing", indexing, INDEXINGS)
        self.interpolation = interpolation
        self.padding_mode = padding_mode
        self.indexing = indexing

    def call(self, inputs):
        images, flow = inputs
        return warp(
            ops.cast(images, self.compute_dtype),
            ops.cast(flow, self.variable_dtype),
            interpolation=self.interpolation,
            padding_mode=self.padding_mode,
            indexing=self.indexing,
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {
            **super().get_config(),
            "interpolation": self.interpolation,
            "padding_mode": self.padding_mode,
            "indexing": self.indexing,
        }


@keras.saving.register_keras_serializable(package="stn_keras")
class IntegrateVelocity(keras.layers.Layer):
    """Integrate a stationary velocity field into a displacement field (scaling and squaring).

    See `stn_keras.ops.fields.integrate_velocity` (VoxelMorph's `VecInt`). The field stays in the
    variable dtype (float32) under mixed precision.

    Args:
        steps: number of squarings, an integer >= 0. Defaults to `7`.
        indexing: `"ij"` or `"xy"`. Defaults to `"ij"`.
        padding_mode: what the squaring steps read outside the image: `"border"` (VoxelMorph
            0.2's `VecInt`) or `"zeros"` (MONAI's `DVF2DDF`, VoxelMorph >= 0.3's `VecInt`).
            Defaults to `"border"`.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: the velocity field, `(B, H, W, 2)` or `(B, D, H, W, 3)`, in pixels.

    Returns:
        The displacement field, the same shape, in the variable dtype.
    """

    def __init__(self, steps=7, indexing="ij", padding_mode="border", **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.steps = check_int("steps", steps, minimum=0)
        check_choice("indexing", indexing, INDEXINGS)
        check_choice("padding_mode", padding_mode, INTEGRATION_PADDINGS)
        self.indexing = indexing
        self.padding_mode = padding_mode

    def call(self, velocity):
        velocity = ops.cast(velocity, self.variable_dtype)
        return integrate_velocity(
            velocity, steps=self.steps, indexing=self.indexing, padding_mode=self.padding_mode
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "steps": self.steps,
            "indexing": self.indexing,
            "padding_mode": self.padding_mode,
        }
