"""`SpatialTransformer` and `TransformSampler` on volumes `(B, D, H, W, C)`: identity start, the 3-D
families, serialisation, XLA training, mixed precision and the errors for what volumes do not take."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from stn_keras import SpatialTransformer, TransformSampler
from stn_keras.testing.layers import run_layer_test

SHAPE = (2, 6, 5, 7, 2)


def _volumes(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).random(shape).astype("float32")


def test_spatial_transformer_on_volumes_behaves_as_a_keras_layer():
    run_layer_test(
        SpatialTransformer,
        {"output_size": (3, 4, 2)},
        _volumes(),
        expected_output_shape=(2, 3, 4, 2, 2),
        expected_num_trainable_weights=6 + 2,  # 3-D default localisation: 2 convs, 1 dense
    )


@pytest.mark.parametrize("transform, num_params", [("affine", 12), ("attention", 4)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_volume_transformer_starts_at_the_identity(transform, num_params, align_corners):
    volumes = _volumes().astype("float64")
    layer = SpatialTransformer(
        transform=transform, align_corners=align_corners, return_transform=True, dtype="float64"
    )
    out, params = layer(volumes)
    assert layer.num_params == num_params
    identity = np.eye(3, 4).reshape(-1) if transform == "affine" else [1.0, 0.0, 0.0, 0.0]
    np.testing.assert_array_equal(params.numpy(), np.tile(identity, (2, 1)))
    np.testing.assert_allclose(out.numpy(), volumes, rtol=0, atol=1e-12)


def test_transform_sampler_permutes_volume_axes_with_a_permutation_theta():
    volumes = np.arange(2 * 4 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 4, 3)
    swap_xz = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]], "float32").reshape(-1)
    out = TransformSampler()([volumes, np.tile(swap_xz, (2, 1))])
    np.testing.assert_array_equal(out.numpy(), volumes.transpose(0, 3, 2, 1, 4))


@pytest.mark.parametrize("transform", ["affine", "attention"])
def test_volume_transformer_survives_save_and_load(transform, tmp_path):
    model = keras.Sequential(
        [keras.Input(SHAPE[1:]), SpatialTransformer(transform=transform, output_size=(4, 3, 3))]
    )
    layer = model.layers[0]
    kernel = layer.regression.kernel
    kernel.assign(np.random.default_rng(1).normal(scale=0.05, size=kernel.shape))
    path = tmp_path / "volume.keras"
    model.save(path)
    revived = keras.saving.load_model(path)
    volumes = _volumes(seed=2)
    np.testing.assert_array_equal(
        revived.predict(volumes, verbose=0), model.predict(volumes, verbose=0)
    )
    assert revived.layers[0].num_params == layer.num_params


def test_volume_transformer_trains_under_xla_and_moves_off_the_identity():
    model = keras.Sequential(
        [
            keras.Input(SHAPE[1:]),
            SpatialTransformer(output_size=(4, 4, 4)),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    volumes = _volumes((8, *SHAPE[1:]), seed=3)
    targets = np.random.default_rng(4).normal(size=(8, 3)).astype("float32")
    history = model.fit(volumes, targets, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    bias = model.layers[0].regression.bias.numpy()
    assert not np.array_equal(bias, np.eye(3, 4).reshape(-1))  # the transform's parameters learn


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_volume_transformer_under_mixed_precision_keeps_params_float32(policy):
    layer = SpatialTransformer(return_transform=True, dtype=policy)
    out, params = layer(_volumes())
    assert out.dtype == keras.mixed_precision.Policy(policy).compute_dtype
    assert params.dtype == tf.float32
    assert layer.regression.kernel.dtype == "float32"


@pytest.mark.parametrize("transform", ["projective", "tps"])
def test_image_only_families_refuse_volumes(transform):
    with pytest.raises(ValueError, match=rf"'{transform}' transform is defined on images only"):
        SpatialTransformer(transform=transform)(_volumes())
    with pytest.raises(ValueError, match="defined on images only"):
        TransformSampler(transform=transform)([_volumes(), np.zeros((2, 8), "float32")])


def test_volume_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"output_size` must hold 3 sizes.*\(2, 6, 5, 7, 2\)"):
        TransformSampler(output_size=(3, 4))([_volumes(), np.zeros((2, 12), "float32")])
    with pytest.raises(ValueError, match=r"\(B, 12\).*params.shape=\(2, 6\)"):
        TransformSampler()([_volumes(), np.zeros((2, 6), "float32")])
    with pytest.raises(ValueError, match=r"\(B, D, H, W, C\).*inputs.shape=\(2, 3, 4\)"):
        SpatialTransformer()(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match=r"2 or 3 positive integers.*output_size=\(1, 2, 3, 4\)"):
        SpatialTransformer(output_size=(1, 2, 3, 4))
