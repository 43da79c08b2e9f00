"""SavedModel (reloaded in a fresh process, dynamic batch) and LiteRT (builtin ops) exports."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stn_keras.export import export_litert, export_savedmodel
from stn_keras.export.runners import litert_interpreter as interpreter
from stn_keras.export.validation import keras_outputs, sample_inputs
from stn_keras.testing.export import run_export_test
from tests.export.models import ALL_MODES, sampler_model

# Keep the module on one xdist worker (`--dist loadgroup`): its fixtures convert large models once.
pytestmark = pytest.mark.xdist_group("export_savedmodel_litert")


@pytest.fixture(scope="module")
def model():
    return sampler_model(ALL_MODES)


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("artifacts")
    reports = run_export_test(model, str(directory), formats=("savedmodel", "litert"))
    return directory, reports


def test_savedmodel_reloads_in_fresh_process_with_dynamic_batch(model, artifacts, tmp_path):
    directory, _ = artifacts
    inputs = sample_inputs([("images", (None, 8, 10, 2), "float32")], 3, seed=11)
    np.save(tmp_path / "x.npy", inputs[0])
    script = textwrap.dedent(
        f"""
        import json, numpy as np, tensorflow as tf
        fn = tf.saved_model.load({str(directory / "savedmodel")!r}).signatures["serving_default"]
        out = fn(images=tf.constant(np.load({str(tmp_path / "x.npy")!r})))
        np.savez({str(tmp_path / "y.npz")!r}, **{{k: v.numpy() for k, v in out.items()}})
        print(json.dumps(sorted(out)))
        """
    )
    # A fresh interpreter that never imports stn_keras: the SavedModel must stand alone.
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = json.loads(result.stdout.strip().splitlines()[-1])
    assert names == sorted(f"output_{i}" for i in range(len(ALL_MODES)))
    got = np.load(tmp_path / "y.npz")
    for i, want in enumerate(keras_outputs(model, inputs)):
        np.testing.assert_allclose(got[f"output_{i}"], want, rtol=0, atol=1e-5)


def test_litert_uses_builtin_ops_only(artifacts):
    directory, reports = artifacts
    runtime, _ = interpreter(str(directory / "model.tflite"))
    ops = {op["op_name"] for op in runtime._get_ops_details()}
    assert ops, "no ops found"
    assert not any("Flex" in op or "Custom" in op.title() for op in ops), ops
    assert "GATHER" in ops or "GATHER_ND" in ops
    assert reports["litert"].passed


@pytest.mark.parametrize("batch_size", [1, 5, 2])
def test_litert_matches_keras_after_resizing_the_batch(model, artifacts, batch_size):
    directory, _ = artifacts
    runtime, _ = interpreter(str(directory / "model.tflite"))
    signature = runtime.get_signature_runner("serving_default")
    (image_detail,) = signature.get_input_details().values()
    outputs = signature.get_output_details()
    del signature  # it holds views of the tensors, which would block the reallocation
    inputs = sample_inputs([("images", (None, 8, 10, 2), "float32")], batch_size, seed=3)
    # Resize by hand (what a mobile app does), then read each output tensor by its signature name.
    runtime.resize_tensor_input(image_detail["index"], inputs[0].shape)
    runtime.allocate_tensors()
    runtime.set_tensor(image_detail["index"], inputs[0])
    runtime.invoke()
    for i, want in enumerate(keras_outputs(model, inputs)):
        got = runtime.get_tensor(outputs[f"output_{i}"]["index"])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def small_model():
    return sampler_model(
        [("nearest", "reflection", True)], input_shape=(4, 5, 1), output_size=(3, 3)
    )


def test_litert_path_must_end_in_tflite(small_model, tmp_path):
    with pytest.raises(ValueError, match="must end with '.tflite'"):
        export_litert(small_model, tmp_path / "model.bin")


def test_savedmodel_failed_validation_leaves_target_untouched(small_model, tmp_path):
    # A negative tolerance can never pass: the export must fail and keep the old directory.
    target = tmp_path / "sm"
    (target / "variables").mkdir(parents=True)
    (target / "saved_model.pb").write_text("old")
    from stn_keras.export import ValidationError

    with pytest.raises(ValidationError):
        export_savedmodel(small_model, target, force=True, atol=-1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]
    assert sorted(p.name for p in target.iterdir()) == ["saved_model.pb", "variables"]
    assert (target / "saved_model.pb").read_text() == "old"


def test_savedmodel_force_replaces_an_existing_savedmodel_only(small_model, tmp_path):
    target = tmp_path / "sm"
    export_savedmodel(small_model, target, validate=False)
    with pytest.raises(FileExistsError):
        export_savedmodel(small_model, target)
    (target / "saved_model.pb").write_bytes(b"stale")
    report = export_savedmodel(small_model, target, force=True)
    assert report.passed
    assert (target / "saved_model.pb").read_bytes() != b"stale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]
    (target / "notes.txt").write_text("mine")  # no longer a SavedModel alone: never replaced
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        export_savedmodel(small_model, target, force=True)
    assert (target / "notes.txt").read_text() == "mine"
