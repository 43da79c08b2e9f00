"""The layers on the Keras backend of this process: identity at the start, training with
`model.fit` (compiled where the backend compiles), mixed precision, volumes, run-time batch
sizes, a clear error for what runs on TensorFlow only, and `.keras` files that cross backends."""

import hashlib
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import stn_keras
from stn_keras.ops import tps
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
    # (a few ulps of 1, times n / 2 pixels per unit): that fraction of a pixel step. The spline
    # solves its 19 x 19 system in float32, which scales the rounding by its condition number.
    relative = 8 * EPS32
    if family == "tps":
        spline = tps.thin_plate_spline(4)
        relative *= np.linalg.cond(tps._system(spline.points, 0.0))
    np.testing.assert_allclose(y, x, rtol=0, atol=relative * 11 / 2)


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
    points = np.random.default_rng(0).random((1, 4, 2)).astype("float32")
    match = f"stn_keras.estimate_affine .*KERAS_BACKEND='{BACKEND}'.*every layer"
    with pytest.raises(NotImplementedError, match=match):
        stn_keras.estimate_affine(points, points)


def test_the_registration_layers_train_with_fit():
    keras.utils.set_random_seed(0)
    model = save_model.registration_model()
    model.compile(keras.optimizers.SGD(0.05), loss=["mse", None], jit_compile=BACKEND != "torch")
    rng = np.random.default_rng(1)
    moving, fixed = (rng.random((8, 12, 12, 1)).astype("float32") for _ in range(2))
    before = keras.ops.convert_to_numpy(model.get_layer("velocity").kernel)
    losses = model.fit([moving, fixed], fixed, batch_size=4, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    after = keras.ops.convert_to_numpy(model.get_layer("velocity").kernel)
    assert np.any(after != before), "no gradient reached the velocity's convolution"


# One worker writes the files (three processes, ~10 s each) and runs every test that reads them.
SAVED = pytest.mark.xdist_group("saved_models")


def _sources_digest():
    """A digest of what the saved files depend on: the package, the model builder, the versions."""
    import importlib.metadata

    digest = hashlib.sha256()
    files = sorted((ROOT / "stn_keras").rglob("*.py")) + [ROOT / "tests/backends/save_model.py"]
    for path in files:
        digest.update(path.read_bytes())
    for package in ("keras", "tensorflow", "jax", "torch"):
        digest.update(importlib.metadata.version(package).encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def saved_models(request):
    """`.keras` files and predictions written by each backend, each in its own process.

    Kept in pytest's cache under a digest of the sources, so that the README's test command writes
    them once for its three backend runs; a half-written set (no `done` marker) is rewritten."""
    out = request.config.cache.mkdir(f"saved-models-{_sources_digest()}")
    if (out / "done").exists():
        return out
    for backend in ("tensorflow", "jax", "torch"):
        env = {**os.environ, "KERAS_BACKEND": backend}
        subprocess.run(
            [sys.executable, "-m", "tests.backends.save_model", str(out)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
    (out / "done").write_text("")
    return out


@SAVED
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


@SAVED
@pytest.mark.parametrize("source", ["tensorflow", "jax", "torch"])
def test_a_registration_file_from_any_backend_loads_with_the_same_outputs(saved_models, source):
    model = keras.saving.load_model(saved_models / f"{source}-registration.keras")
    saved = np.load(saved_models / f"{source}-registration.npz")
    warped, flow = (keras.ops.convert_to_numpy(y) for y in model([saved["moving"], saved["fixed"]]))
    if source == BACKEND:
        np.testing.assert_array_equal(warped, saved["warped"])
        np.testing.assert_array_equal(flow, saved["flow"])
        return
    # A 3x3x2 convolution (18 terms) per velocity, then 3 squarings and a warp of 4-tap sums, each
    # step rounding afresh and moving by at most ~|grad v| < 2 times the error before it.
    atol = (18 + 4 * 4) * 8 * EPS32 * np.abs(saved["flow"]).max()
    np.testing.assert_allclose(flow, saved["flow"], rtol=0, atol=atol)
    np.testing.assert_allclose(warped, saved["warped"], rtol=0, atol=atol)


@SAVED
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
