"""`TransformSampler`: the lower-level layer that warps images with given transform parameters."""

import keras
import tensorflow as tf

from stn_keras.ops import coordinates
from stn_keras.ops.sampling import INTERPOLATIONS, grid_sample
from stn_keras.ops.transforms import get_transform
from stn_keras.ops.validation import check_bool, check_choice, check_size


def check_output_size(output_size):
    """Validate `output_size` (`None` or two positive integers) and return it as a tuple or `None`."""
    if output_size is None:
        return None
    return check_size(output_size, "output_size", allow_tensors=False)


def make_transform(transform, transform_options):
    """The `Transform` called `transform`, with its options checked; `ValueError` for bad ones."""
    if transform_options is not None and not isinstance(transform_options, dict):
        raise ValueError(
            "Invalid value for argument `transform_options`. Expected a dict or `None`. "
            f"Received: transform_options={transform_options!r}"
        )
    return get_transform(transform, **(transform_options or {}))


@keras.saving.register_keras_serializable(package="stn_keras")
class TransformSampler(keras.layers.Layer):
    """Warp images with a transform family, given its parameters: `[images, params] -> warped`.

    The parameters map each output pixel to the input position it reads (the convention of
    `stn_keras.affine_grid`); the layer builds the transform's sampling grid and samples the images
    with `stn_keras.grid_sample`. Use it to build your own localisation branch in the functional
    API; `SpatialTransformer` is built from it.

    Under a mixed precision policy the images are sampled in the compute dtype (e.g. float16) while
    the parameters and the grid coordinates stay in the variable dtype (float32), so small parameter
    changes are not rounded away.

    Args:
        transform: the transform family, one of `stn_keras.ops.transforms.TRANSFORMS` (e.g.
            `"affine"`). Defaults to `"affine"`.
        transform_options: dict of family options, e.g. `{"control_points": 4}` for `"tps"`.
            Defaults to `None` (no options).
        output_size: `(H_out, W_out)` of the output, or `None` to keep the input's size (which may
            be dynamic). Defaults to `None`.
        interpolation: `"bilinear"`, `"nearest"` or `"bicubic"`. Defaults to `"bilinear"`.
        padding_mode: `"zeros"`, `"border"` or `"reflection"`. Defaults to `"zeros"`.
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a list `[images, params]`: images `(B, H, W, C)` and parameters `(B, P)` with
            `P = transform.num_params`.

    Returns:
        The warped images, `(B, H_out, W_out, C)` in the layer's compute dtype.

    Raises:
        ValueError: for an invalid constructor argument, or inputs that are not
            `[(B, H, W, C), (B, P)]`.

    Example:
        >>> images = keras.Input((28, 28, 1))
        >>> theta = keras.layers.Dense(6)(keras.layers.Flatten()(images))
        >>> TransformSampler(output_size=(14, 14))([images, theta]).shape
        (None, 14, 14, 1)
    """

    def __init__(
        self,
        transform="affine",
        transform_options=None,
        output_size=None,
        interpolation="bilinear",
        padding_mode="zeros",
        align_corners=False,
        **kwargs,
    ):
        # `call` casts the inputs itself: images to the compute dtype, parameters to the variable
        # dtype (float32 under mixed precision).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.family = make_transform(transform, transform_options)
        self.transform = transform
        self.transform_options = dict(transform_options or {})
        self.output_size = check_output_size(output_size)
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        check_choice("padding_mode", padding_mode, coordinates.PADDING_MODES)
        check_bool("align_corners", align_corners)
        self.interpolation = interpolation
        self.padding_mode = padding_mode
        self.align_corners = align_corners

    @property
    def num_params(self):
        """Number of transform parameters `P` the layer takes."""
        return self.family.num_params

    def _check_shapes(self, input_shape):
        """Raise `ValueError` unless `input_shape` is `[(B, H, W, C), (B, P)]`."""
        try:
            images_shape, params_shape = input_shape
            images_shape = tf.TensorShape(images_shape)
            params_shape = tf.TensorShape(params_shape)
        except (TypeError, ValueError):
            raise ValueError(
                "`TransformSampler` expects a list of two inputs "
                "[images (B, H, W, C), params (B, P)]. "
                f"Received: input_shape={input_shape!r}"
            ) from None
        if images_shape.rank != 4:
            raise ValueError(
                "Input `images` must be a rank-4 tensor of shape (B, H, W, C). "
                f"Received: images.shape={images_shape}"
            )
        if params_shape.rank != 2 or params_shape[-1] not in (self.num_params, None):
            raise ValueError(
                f"Input `params` must have shape (B, {self.num_params}) for the "
                f"{self.transform!r} transform. Received: params.shape={params_shape}"
            )
        return images_shape, params_shape

    def build(self, input_shape):
        self._check_shapes(input_shape)

    def call(self, inputs):
        images, params = inputs
        self._check_shapes([images.shape, params.shape])
        images = tf.cast(images, self.compute_dtype)
        params = tf.cast(params, self.variable_dtype)
        size = self.output_size or (coordinates.dim(images, 1), coordinates.dim(images, 2))
        grid = self.family.grid(params, size, align_corners=self.align_corners)
        return grid_sample(
            images,
            grid,
            interpolation=self.interpolation,
            padding_mode=self.padding_mode,
            align_corners=self.align_corners,
        )

    def compute_output_shape(self, input_shape):
        images_shape, _ = self._check_shapes(input_shape)
        batch, height, width, channels = images_shape.as_list()
        if self.output_size is not None:
            height, width = self.output_size
        return (batch, height, width, channels)

    def get_config(self):
        return {
            **super().get_config(),
            "transform": self.transform,
            "transform_options": dict(self.transform_options),
            "output_size": self.output_size,
            "interpolation": self.interpolation,
            "padding_mode": self.padding_mode,
            "align_corners": self.align_corners,
        }
