"""`TransformSampler`: the layer that warps `[images, params]` with a transform family."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from stn_keras.layers import TransformSampler
from stn_keras.ops.transforms import TRANSFORMS, get_transform
from stn_keras.testing.layers import run_layer_test

# Options for the families that take some; the others take none.
FAMILY_OPTIONS = {"tps": {"control_points": 3}}


def _identity_params(transform, batch):
    identity = get_transform(transform, **FAMILY_OPTIONS.get(transform, {})).identity
    return np.tile(identity, (batch, 1))


def test_behaves_as_a_keras_layer():
    images = np.random.default_rng(0).random((2, 9, 7, 3)).astype("float32")
    run_layer_test(
        TransformSampler,
        {"output_size": (5, 4), "interpolation": "bicubic", "padding_mode": "border"},
        [images, _identity_params("affine", 2).astype("float32")],
        expected_output_shape=(2, 5, 4, 3),
        expected_num_trainable_weights=0,
        run_training_check=False,  # no weights to fit
    )


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_identity_params_reproduce_the_input(transform, align_corners):
    images = np.random.default_rng(1).random((2, 6, 5, 2))
    layer = TransformSampler(
        transform=transform,
        transform_options=FAMILY_OPTIONS.get(transform),
        align_corners=align_corners,
        dtype="float64",
    )
    outputs = layer([images, _identity_params(transform, 2)])
    np.testing.assert_allclose(outputs, images, rtol=0, atol=1e-12)


def test_one_pixel_translation_shifts_the_image():
    # With align_corners=False a pixel spans 2 / W in normalised units: t_x = 2 / W reads one pixel
    # to the right, so output column j is input column j + 1 and the last column reads zeros.
    images = np.random.default_rng(2).random((1, 4, 5, 1))
    theta = np.array([[1.0, 0.0, 2.0 / 5.0, 0.0, 1.0, 0.0]])
    outputs = TransformSampler(dtype="float64")([images, theta])
    expected = np.concatenate([images[:, :, 1:], np.zeros_like(images[:, :, :1])], axis=2)
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-12)


def test_half_size_output_with_identity_averages_2x2_blocks():
    # Output pixel i of a 2x smaller identity view sits at input pixel 2 i + 0.5 along each axis, so
    # bilinear sampling averages each 2x2 block: average pooling is the oracle.
    images = np.random.default_rng(3).random((2, 8, 6, 3))
    outputs = TransformSampler(output_size=(4, 3), dtype="float64")(
        [images, _identity_params("affine", 2)]
    )
    expected = images.reshape(2, 4, 2, 3, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-12)


def test_output_size_none_keeps_a_dynamic_input_size():
    layer = TransformSampler()
    call = tf.function(
        layer,
        input_signature=[[tf.TensorSpec([None] * 4, tf.float32), tf.TensorSpec([None, 6])]],
    )
    for size in [(5, 7), (9, 4)]:
        images = tf.random.uniform((2, *size, 1))
        assert call([images, _identity_params("affine", 2).astype("float32")]).shape == (
            2,
            *size,
            1,
        )


def test_mixed_precision_samples_images_in_compute_dtype_with_float32_params():
    images = np.random.default_rng(4).random((2, 6, 6, 1)).astype("float32")
    theta = np.array([[0.7, 0.2, 0.1, -0.2, 0.8, 0.05]] * 2, "float32")
    reference = TransformSampler()([images, theta])
    for policy in ("mixed_float16", "mixed_bfloat16"):
        layer = TransformSampler(dtype=policy)
        outputs = layer([images, theta])
        assert outputs.dtype == keras.DTypePolicy(policy).compute_dtype
        # Only the images and the output are rounded to 16 bits, not the parameters or coordinates.
        np.testing.assert_allclose(tf.cast(outputs, tf.float32), reference, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"transform": "perspective"}, "`transform`"),
        ({"transform_options": "control_points=3"}, "`transform_options`"),
        ({"transform": "affine", "transform_options": {"control_points": 3}}, "control_points"),
        ({"output_size": (0, 4)}, "`output_size`"),
        ({"output_size": (4,)}, "`output_size`"),
        ({"output_size": (4.0, 4)}, "`output_size`"),
        ({"interpolation": "linear"}, "`interpolation`"),
        ({"padding_mode": "constant"}, "`padding_mode`"),
        ({"align_corners": 1}, "`align_corners`"),
    ],
)
def test_invalid_constructor_argument_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformSampler(**kwargs)


@pytest.mark.parametrize(
    "images_shape, params_shape, match",
    [
        ((2, 5, 5), (2, 6), "images"),
        ((2, 5, 5, 1), (2, 8), "params"),
        ((2, 5, 5, 1), (2,), "params"),
    ],
)
def test_inputs_of_the_wrong_shape_raise(images_shape, params_shape, match):
    with pytest.raises(ValueError, match=match):
        TransformSampler()([np.zeros(images_shape, "float32"), np.zeros(params_shape, "float32")])
