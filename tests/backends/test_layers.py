"""The layers on the Keras backend of this process: identity at the start, training with
`model.fit` (compiled where the backend compiles), mixed precision, volumes, run-time batch
sizes, a clear error for what runs on TensorFlow only, and `.keras` files that cross backends."""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import stn_keras
from tests.backends import save_model
from tests.backends.harness import BACKEND

EPS32 = 2.0**-24
ROOT = pathlib.Path(__file__).resolve().parents[2]
FAMILIES = save_model.FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_the_transformer_starts_as_the_identity(family):
    x = np.random.default_rng(0).random((2, 9, 11, 3)).astype("float32")
    layer = stn_keras.SpatialTransformer(transform=family)
    y = keras.ops.convert_to_numpy(layer(x))
    # The identity grid samples pixel centres up to the float32 rounding of (2 i + 1) / n - 1
    # (a few ulps of 1, times n / 2 pixels per unit): that fraction of a pixel step.
    np.testing.assert_allclose(y, x, rtol=0, atol=4 * 11 * EPS32)


def test_volumes_start_as_the_identity_too():
    x = np.random.default_rng(0).random((2, 5, 6, 7, 2)).astype("float32")
    y = keras.ops.convert_to_numpy(stn_keras.SpatialTransformer()(x))
    np.testing.assert_allclose(y, x, rtol=0, atol=4 * 7 * EPS32)


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_trains_the_regression_and_the_classifier(family):
    rng = np.random.default_rng(1)
    x = rng.random((32, 16, 16, 1)).astype("float32")
    y = (x[:, :8].mean((1, 2, 3)) > x[:, 8:].mean((1, 2, 3))).astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            stn_keras.SpatialTransformer(output_size=(12, 12), transform=family, name="st"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=BACKEND != "torch",  # XLA on TensorFlow and JAX
    )
    before = keras.ops.convert_to_numpy(model.get_layer("st").regression.kernel)
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    after = keras.ops.convert_to_numpy(model.get_layer("st").regression.kernel)
    assert np.any(after != before), "no gradient reached the transformer's regression"


def test_run_time_batch_sizes_and_return_transform():
    model_in = keras.Input((10, 10, 2))
    images, params = stn_keras.SpatialTransformer(output_size=(6, 7), return_transform=True)(
        model_in
    )
    model = keras.Model(model_in, [images, params])
    for batch in (1, 4):
        x = np.random.default_rng(batch).random((batch, 10, 10, 2)).astype("float32")
        out, theta = model.predict(x, verbose=0)
        assert out.shape == (batch, 6, 7, 2) and theta.shape == (batch, 6)
        np.testing.assert_array_equal(theta, np.tile([[1, 0, 0, 0, 1, 0]], (batch, 1)))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_the_parameters_in_float32(policy):
    layer = stn_keras.SpatialTransformer(output_size=(5, 5), return_transform=True, dtype=policy)
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    images, params = layer(x)
    assert keras.backend.standardize_dtype(images.dtype) == policy.split("_")[1]
    assert keras.backend.standardize_dtype(params.dtype) == "float32"


def test_tensorflow_only_ops_say_so_on_other_backends():
    if BACKEND == "tensorflow":
        pytest.skip("everything runs on TensorFlow")
    with pytest.raises(NotImplementedError, match=f"stn_keras.warp .*KERAS_BACKEND='{BACKEND}'"):
        stn_keras.warp(np.zeros((1, 4, 4, 1), "float32"), np.zeros((1, 4, 4, 2), "float32"))
    with pytest.raises(NotImplementedError, match="'tps' transform.*'projective' families"):
        stn_keras.SpatialTransformer(transform="tps")(np.zeros((1, 8, 8, 1), "float32"))


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """`.keras` files and predictions written by each backend, each in its own process."""
    out = tmp_path_factory.mktemp("saved")
    for backend in ("tensorflow", "jax", "torch"):
        env = {**os.environ, "KERAS_BACKEND": backend}
        subprocess.run(
            [sys.executable, "-m", "tests.backends.save_model", str(out)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
    return out


@pytest.mark.parametrize("source", ["tensorflow", "jax", "torch"])
@pytest.mark.parametrize("family", [*FAMILIES, "affine-3d"])
def test_a_keras_file_from_any_backend_loads_with_the_same_outputs(saved_models, source, family):
    model = keras.saving.load_model(saved_models / f"{source}-{family}.keras")
    saved = np.load(saved_models / f"{source}-{family}.npz")
    got = keras.ops.convert_to_numpy(model(saved["x"]))
    if source == BACKEND:
        np.testing.assert_array_equal(got, saved["y"])
        return
    # Other kernels sum in another order: the longest sum (the dense layer over 10x10 or
    # 10x10x10 sampled pixels, each a sum of 4 or 8 taps) stays within n ulps of its terms.
    terms = 1000 + 8
    np.testing.assert_allclose(
        got, saved["y"], rtol=0, atol=terms * EPS32 * np.abs(saved["y"]).max()
    )


def test_the_export_command_exports_a_model_saved_on_this_backend(saved_models, tmp_path):
    # `stn-keras-export` under this backend: the command reloads the file under TensorFlow.
    output = tmp_path / "model.onnx"
    command = [sys.executable, "-m", "stn_keras.export", "onnx-native"]
    command += [str(saved_models / f"{BACKEND}-affine.keras"), str(output)]
    env = {**os.environ, "KERAS_BACKEND": BACKEND}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "PASS" in done.stdout and output.is_file()
    saved = np.load(saved_models / f"{BACKEND}-affine.npz")
    import onnxruntime as ort

    session = ort.InferenceSession(output, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: saved["x"]})
    # The graph's own kernels against this backend's: the dense layer's 100-term sums in another
    # order, as between backends above.
    atol = (100 + 4) * EPS32 * np.abs(saved["y"]).max()
    np.testing.assert_allclose(got, saved["y"], rtol=0, atol=atol)


def test_the_python_exporter_names_the_command_on_other_backends(tmp_path):
    if BACKEND == "tensorflow":
        pytest.skip("the exporters run here")
    from stn_keras.export import export

    model = save_model.build("affine")
    with pytest.raises(NotImplementedError, match="stn-keras-export FORMAT m.keras"):
        export(model, tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists()
