"""`TransformSampler`: the lower-level layer that warps images with given transform parameters."""

import keras
from keras import ops

from stn_keras.ops import coordinates
from stn_keras.ops.sampling import INTERPOLATIONS, grid_sample
from stn_keras.ops.transforms import get_transform
from stn_keras.ops.validation import (
    check_bool,
    check_choice,
    check_size,
    fits,
    shape_text,
    static_shape,
)


def check_output_size(output_size):
    """Validate `output_size` (`None`, or 2 or 3 positive integers) and return a tuple or `None`."""
    if output_size is None:
        return None
    return check_size(output_size, "output_size", dims=(2, 3), allow_tensors=False)


def spatial_dims_of(images_shape, layer):
    """The number of spatial axes of images `(B, H, W, C)` (2) or volumes `(B, D, H, W, C)` (3).

    Raises:
        ValueError: naming `layer` and the shape, for any other rank.
    """
    shape = static_shape(images_shape)
    if shape is None or len(shape) not in (4, 5):
        raise ValueError(
            f"Input to `{layer}` must be images of shape (B, H, W, C) or volumes of shape "
            f"(B, D, H, W, C). Received: inputs.shape={shape_text(images_shape)}"
        )
    return len(shape) - 2


def make_transform(transform, transform_options, spatial_dims=2):
    """The `Transform` called `transform` for `spatial_dims` (2: images, 3: volumes), with its
    options checked; `ValueError` for bad ones."""
    if transform_options is not None and not isinstance(transform_options, dict):
        raise ValueError(
            "Invalid value for argument `transform_options`. Expected a dict or `None`. "
            f"Received: transform_options={transform_options!r}"
        )
    return get_transform(transform, spatial_dims, **(transform_options or {}))


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
        transform_options: dict of family options: for `"tps"`, `{"control_points": K}` (a K x
            K lattice), `{"control_points": "aster"}` (or `"clovaai"`: a text rectifier's 20
            fiducials) or `{"control_points": [[x, y], ...]}` (any output positions); see
            `stn_keras.ops.transforms.get_transform`.
            Defaults to `None` (no options).
        output_size: `(H_out, W_out)` of the output, `(D_out, H_out, W_out)` for volumes, or `None`
            to keep the input's size (which may be dynamic). Defaults to `None`.
        interpolation: `"bilinear"`, `"nearest"` or `"bicubic"`. Defaults to `"bilinear"`.
        padding_mode: `"zeros"`, `"border"` or `"reflection"`. Defaults to `"zeros"`.
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Volumes work the same way: with images `(B, D, H, W, C)` the family is the transform's 3-D
    form (`"affine"`: 12 parameters, a row-major `(3, 4)` theta; `"attention"`: 4, `(s, t_x, t_y,
    t_z)`), and `num_params` is the 3-D count once the layer is built. `"projective"` and `"tps"`
    are defined on images only and refuse volumes with a `ValueError`.

    Call arguments:
        inputs: a list `[images, params]`: images `(B, H, W, C)` or `(B, D, H, W, C)` and parameters
            `(B, P)` with `P = num_params`.

    Returns:
        The warped images, `(B, H_out, W_out, C)` or `(B, D_out, H_out, W_out, C)`, in the layer's
        compute dtype.

    Raises:
        ValueError: for an invalid constructor argument, or inputs that are not
            `[(B, H, W, C), (B, P)]` or `[(B, D, H, W, C), (B, P)]` with a matching `output_size`.

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
        # The image family, which also validates the options; `build` swaps in the volume family
        # when the inputs are volumes.
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
        """Number of transform parameters `P` the layer takes (the volume family's once built on
        volumes)."""
        return self.family.num_params

    def family_for(self, spatial_dims):
        """The transform family for images (`spatial_dims=2`) or volumes (3); `ValueError` when the
        family is defined on images only."""
        if self.family.spatial_dims == spatial_dims:
            return self.family
        return make_transform(self.transform, self.transform_options, spatial_dims)

    def _check_shapes(self, input_shape):
        """The images' shape, the parameters' shape and the family, or `ValueError` naming the shape
        that does not fit."""
        try:
            images_shape, params_shape = input_shape
            images_shape, params_shape = static_shape(images_shape), static_shape(params_shape)
        except (TypeError, ValueError):
            raise ValueError(
                "`TransformSampler` expects a list of two inputs "
                "[images (B, H, W, C) or (B, D, H, W, C), params (B, P)]. "
                f"Received: input_shape={input_shape!r}"
            ) from None
        spatial = spatial_dims_of(images_shape, "TransformSampler")
        family = self.family_for(spatial)
        if not fits(params_shape, (None, family.num_params)):
            raise ValueError(
                f"Input `params` must have shape (B, {family.num_params}) for the "
                f"{self.transform!r} transform of images of shape {shape_text(images_shape)}. "
                f"Received: params.shape={shape_text(params_shape)}"
            )
        if self.output_size is not None and len(self.output_size) != spatial:
            raise ValueError(
                f"`output_size` must hold {spatial} sizes for inputs of shape "
                f"{shape_text(images_shape)}. Received: output_size={self.output_size}"
            )
        return images_shape, params_shape, family

    def build(self, input_shape):
        _, _, self.family = self._check_shapes(input_shape)

    def call(self, inputs):
        images, params = inputs
        _, _, family = self._check_shapes([images.shape, params.shape])
        images = ops.cast(images, self.compute_dtype)
        params = ops.cast(params, self.variable_dtype)
        spatial = family.spatial_dims
        size = self.output_size or tuple(coordinates.dim(images, 1 + a) for a in range(spatial))
        grid = family.grid(params, size, align_corners=self.align_corners)
        return grid_sample(
            images,
            grid,
            interpolation=self.interpolation,
            padding_mode=self.padding_mode,
            align_corners=self.align_corners,
        )

    def compute_output_shape(self, input_shape):
        images_shape, _, _ = self._check_shapes(input_shape)
        batch, *size, channels = images_shape
        return (batch, *(self.output_size or size), channels)

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
