"""`SpatialTransformer`: localisation network -> transform parameters -> grid -> sampler."""

import numbers

import keras

from stn_keras.layers.localization import default_localization
from stn_keras.layers.sampler import TransformSampler, spatial_dims_of
from stn_keras.ops.validation import check_bool, static_shape


def scale_gradient(x, scale):
    """`x` in the forward pass; its gradient multiplied by `scale` in the backward pass."""
    if scale == 1.0:
        return x
    # stop_gradient(x) + scale * (x - stop_gradient(x)) is exactly x, with gradient `scale`.
    stopped = keras.ops.stop_gradient(x)
    return stopped + scale * (x - stopped)


@keras.saving.register_keras_serializable(package="stn_keras")
class SpatialTransformer(keras.layers.Layer):
    """A spatial transformer (Jaderberg et al., 2015): the network learns where to look.

    A localisation network maps the input to features; a final dense layer, added by this layer,
    regresses the parameters of the transform family from them; the transform's sampling grid then
    resamples the input (with `TransformSampler`). The regression layer starts with a zero kernel
    and the identity's parameters as bias, so the initial transform is exactly the identity and the
    layer initially reproduces its input (to float precision, with `output_size=None`).

    The paper trains the localisation branch with a smaller learning rate than the rest of the
    network. With SGD (with or without momentum) `localization_gradient_scale` does exactly that: it
    multiplies the gradients of the localisation network and the regression layer by the factor,
    leaving the other weights' gradients alone (what flows back to the input through the
    localisation branch is scaled too; through the sampled images it is not). Adaptive optimizers
    (Adam, RMSprop) normalise away a constant gradient scale; with them the identity initialisation
    usually suffices, and otherwise a smaller global learning rate is the tool.

    Under a mixed precision policy (`mixed_float16`, `mixed_bfloat16`) the images flow in the
    compute dtype, while the regression layer, the parameters and the grid coordinates stay float32.

    Volumes `(B, D, H, W, C)` work the same way (`"affine"` regresses a `(3, 4)` theta, 12
    parameters; `"attention"` 4, `(s, t_x, t_y, t_z)`), with a 3-D default localisation network.

    Args:
        localization: any Keras layer or model mapping the input `(B, H, W, C)` or
            `(B, D, H, W, C)` to features (any rank; they are flattened and must have a static
            size). `None` uses `default_localization()` for the input's rank. Defaults to `None`.
        output_size: `(H_out, W_out)` of the output (`(D_out, H_out, W_out)` for volumes), or `None`
            to keep the input's size (which may be dynamic). A smaller size downsamples, a larger
            one upsamples. Defaults to `None`.
        transform: the transform family, one of `stn_keras.ops.transforms.TRANSFORMS`. Defaults to
            `"affine"`.
        transform_options: dict of family options: for `"tps"`, `{"control_points": K}` (a K x
            K lattice), `{"control_points": "aster"}` (or `"clovaai"`: a text rectifier's 20
            fiducials) or `{"control_points": [[x, y], ...]}` (any output positions); see
            `stn_keras.ops.transforms.get_transform`.
            Defaults to `None`.
        interpolation: `"bilinear"`, `"nearest"` or `"bicubic"`. Defaults to `"bilinear"`.
        padding_mode: `"zeros"`, `"border"` or `"reflection"`. Defaults to `"zeros"`.
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`.
        return_transform: whether to also return the transform parameters `(B, P)` (for plots and
            regularisers). Defaults to `False`.
        localization_gradient_scale: positive factor on the gradient that reaches the localisation
            branch (see above). Defaults to `1.0`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: images `(B, H, W, C)` or volumes `(B, D, H, W, C)`.

    Returns:
        The transformed images `(B, H_out, W_out, C)` (`(B, D_out, H_out, W_out, C)`), or with
        `return_transform=True` a tuple `(images, params)` with the float32 parameters `(B, P)`.

    Raises:
        ValueError: for an invalid constructor argument, an input that is neither rank 4 nor rank
            5, or a volume with a family defined on images only (`"projective"`, `"tps"`).

    Example:
        >>> model = keras.Sequential([
        ...     keras.Input((42, 42, 1)),
        ...     SpatialTransformer(output_size=(28, 28)),
        ...     keras.layers.Conv2D(16, 3, activation="relu"),
        ...     keras.layers.GlobalMaxPooling2D(),
        ...     keras.layers.Dense(10),
        ... ])
        >>> model.output_shape
        (None, 10)
    """

    def __init__(
        self,
        localization=None,
        output_size=None,
        transform="affine",
        transform_options=None,
        interpolation="bilinear",
        padding_mode="zeros",
        align_corners=False,
        return_transform=False,
        localization_gradient_scale=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if localization is not None and not isinstance(localization, keras.layers.Layer):
            raise ValueError(
                "Invalid value for argument `localization`. Expected a Keras layer or model, or "
                f"`None`. Received: localization={localization!r}"
            )
        check_bool("return_transform", return_transform)
        if (
            not isinstance(localization_gradient_scale, numbers.Real)
            or isinstance(localization_gradient_scale, bool)
            or not localization_gradient_scale > 0
        ):
            raise ValueError(
                "Invalid value for argument `localization_gradient_scale`. Expected a positive "
                f"number. Received: localization_gradient_scale={localization_gradient_scale!r}"
            )
        self.localization = localization
        self._default_localization = localization is None
        self.return_transform = return_transform
        self.localization_gradient_scale = float(localization_gradient_scale)
        # The sampler validates the transform and sampling arguments; it has no weights.
        self.sampler = TransformSampler(
            transform=transform,
            transform_options=transform_options,
            output_size=output_size,
            interpolation=interpolation,
            padding_mode=padding_mode,
            align_corners=align_corners,
            dtype=self.dtype_policy,
            name="sampler",
        )

    @property
    def num_params(self):
        """Number of transform parameters `P` the layer regresses."""
        return self.sampler.num_params

    def _check_input_shape(self, input_shape):
        spatial_dims_of(input_shape, "SpatialTransformer")
        return static_shape(input_shape)

    def build(self, input_shape):
        shape = self._check_input_shape(input_shape)
        family = self.sampler.family_for(len(shape) - 2)  # the volume family for volumes
        if self.localization is None:
            self.localization = default_localization(
                dtype=self.dtype_policy, spatial_dims=len(shape) - 2
            )
        if not self.localization.built:
            self.localization.build(shape)
        # A symbolic call rather than `compute_output_shape`, which custom layers may not define.
        features_shape = self.localization.compute_output_spec(
            keras.KerasTensor(shape, dtype=self.compute_dtype)
        ).shape
        self.flatten = keras.layers.Flatten(dtype=self.dtype_policy, name="flatten")
        flat_shape = self.flatten.compute_output_shape(features_shape)
        if flat_shape[-1] is None:
            raise ValueError(
                "The localisation network must output features of a static size. "
                f"Received: features of shape {features_shape} for inputs of shape {shape}"
            )
        identity = family.identity
        # Zero kernel + identity bias: the initial transform is exactly the identity. The
        # regression runs in the variable dtype (float32 under mixed precision): no rounding.
        self.regression = keras.layers.Dense(
            family.num_params,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(identity.tolist()),
            dtype=self.dtype_policy.variable_dtype,
            name="regression",
        )
        self.regression.build(flat_shape)
        self.sampler.build([shape, (shape[0], family.num_params)])

    def call(self, inputs):
        self._check_input_shape(inputs.shape)
        features = self.flatten(self.localization(inputs))
        params = scale_gradient(self.regression(features), self.localization_gradient_scale)
        outputs = self.sampler([inputs, params])
        if self.return_transform:
            return outputs, params
        return outputs

    def compute_output_shape(self, input_shape):
        shape = self._check_input_shape(input_shape)
        num_params = self.sampler.family_for(len(shape) - 2).num_params
        outputs = self.sampler.compute_output_shape([shape, (shape[0], num_params)])
        if self.return_transform:
            return outputs, (shape[0], num_params)
        return outputs

    def get_config(self):
        sampler = self.sampler.get_config()
        localization = None
        if not self._default_localization:
            localization = keras.saving.serialize_keras_object(self.localization)
        return {
            **super().get_config(),
            "localization": localization,
            **{
                key: sampler[key]
                for key in (
                    "output_size",
                    "transform",
                    "transform_options",
                    "interpolation",
                    "padding_mode",
                    "align_corners",
                )
            },
            "return_transform": self.return_transform,
            "localization_gradient_scale": self.localization_gradient_scale,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("localization") is not None:
            config["localization"] = keras.saving.deserialize_keras_object(config["localization"])
        return cls(**config)
