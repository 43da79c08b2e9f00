"""`Warp` and `IntegrateVelocity`: closed forms, serialisation, mixed precision and XLA training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from stn_keras import IntegrateVelocity, Warp
from stn_keras.testing.layers import check_config_round_trip
from tests.backends.save_model import registration_model


def test_warp_layer_shifts_by_a_constant_integer_flow():
    images = np.arange(2 * 4 * 5, dtype="float32").reshape(2, 4, 5, 1)
    flow = np.broadcast_to(np.array([0.0, 1.0], "float32"), (2, 4, 5, 2))  # +1 along W ("ij")
    out = Warp()([images, flow]).numpy()
    # float32 positions through normalised coordinates: off by a few ulps of 5, times values < 40.
    np.testing.assert_allclose(out[:, :, :4], images[:, :, 1:], rtol=0, atol=40 * 8 * 2**-23)
    np.testing.assert_allclose(out[:, :, 4], 0.0, rtol=0, atol=40 * 8 * 2**-23)


def test_integrate_velocity_layer_keeps_a_constant_field():
    velocity = np.broadcast_to(np.array([0.5, -1.25, 2.0], "float32"), (1, 3, 4, 5, 3))
    out = IntegrateVelocity(steps=5)(velocity).numpy()
    # 2**-5 scaling and 5 doublings are exact in binary floating point.
    np.testing.assert_array_equal(out, velocity)


@pytest.mark.parametrize(
    "layer",
    [
        Warp(interpolation="nearest", padding_mode="reflection", indexing="xy"),
        IntegrateVelocity(steps=4, indexing="xy"),
    ],
    ids=["Warp", "IntegrateVelocity"],
)
def test_field_layers_survive_a_config_round_trip(layer):
    check_config_round_trip(layer)


def test_registration_model_survives_save_and_load(tmp_path):
    model = registration_model()
    rng = np.random.default_rng(0)
    inputs = [rng.random((2, 12, 12, 1), dtype=np.float32) for _ in range(2)]
    model.save(tmp_path / "reg.keras")
    revived = keras.saving.load_model(tmp_path / "reg.keras")
    for got, want in zip(
        revived.predict(inputs, verbose=0), model.predict(inputs, verbose=0), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_registration_model_trains_under_xla():
    model = registration_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=["mse", None], jit_compile=True)
    rng = np.random.default_rng(1)
    moving, fixed = (rng.random((4, 12, 12, 1), dtype=np.float32) for _ in range(2))
    before = model.get_layer("velocity").kernel.numpy().copy()
    history = model.fit([moving, fixed], fixed, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.array_equal(model.get_layer("velocity").kernel.numpy(), before)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_fields_stay_float32_under_mixed_precision(policy):
    images = np.random.default_rng(2).random((1, 6, 6, 1), dtype=np.float32)
    flow = np.full((1, 6, 6, 2), 0.3, "float32")  # a sub-pixel shift float16 would round
    velocity = IntegrateVelocity(dtype=policy)(flow)
    assert velocity.dtype == tf.float32
    out = Warp(dtype=policy)([images, flow])
    assert out.dtype == keras.mixed_precision.Policy(policy).compute_dtype
    exact = Warp()([images, flow]).numpy()
    eps = 2**-10 if policy == "mixed_float16" else 2**-7
    # Only the image values and the result are rounded to the compute dtype, not the positions.
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), exact, rtol=0, atol=4 * eps)


def test_field_layer_arguments_are_checked():
    with pytest.raises(ValueError, match=r"steps.*integer >= 0.*steps=-2"):
        IntegrateVelocity(steps=-2)
    with pytest.raises(ValueError, match=r"indexing.*'ij', 'xy'"):
        Warp(indexing="ji")
    with pytest.raises(ValueError, match=r"same spatial shape"):
        Warp()([np.zeros((1, 4, 4, 1), "float32"), np.zeros((1, 4, 5, 2), "float32")])
