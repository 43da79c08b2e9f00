"""Exported graphs run where users deploy them and match Keras within the exporters' tolerance:
onnxruntime-node and onnxruntime-web (WebAssembly) under Node 20, and OpenVINO on CPU at float32;
the ST-CNN, a volume transformer and the registration model (two inputs, two outputs), on the
gather path and natively (GridSample)."""

import keras
import numpy as np
import pytest

import stn_keras
from examples import distorted_digits, register
from stn_keras.export import export_onnx
from stn_keras.export.runners import openvino as openvino_runner
from stn_keras.export.validation import check_parity, input_specs
from tests.export import node_runtime

pytestmark = pytest.mark.xdist_group("runtimes")


def _st_cnn():
    model = distorted_digits.build_st_cnn(42)
    # Off the identity, so that the grid reads between pixels and outside the image.
    regression = model.get_layer("spatial_transformer").regression
    regression.bias.assign([1.1, 0.2, 0.1, -0.15, 0.9, -0.05])
    return model


def _volume_stn():
    return keras.Sequential(
        [
            keras.Input((8, 10, 12, 1), name="volumes"),
            stn_keras.SpatialTransformer(output_size=(6, 8, 10)),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )


def _registration():
    keras.utils.set_random_seed(0)
    return register.build_model((28, 28, 1), steps=3, width=4)


MODELS = {"st_cnn": _st_cnn, "volume_stn": _volume_stn, "registration": _registration}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    node_runtime.check_installed()
    folder = tmp_path_factory.mktemp("node")
    artifacts = {}
    for name, build in MODELS.items():
        model = build()
        for path_kind, native in (("gather", False), ("native", True)):
            path = folder / f"{name}_{path_kind}.onnx"
            assert export_onnx(model, path, native_gridsample=native).passed
            artifacts[name, path_kind] = (model, path)
    return artifacts


@pytest.mark.parametrize("runtime", node_runtime.RUNTIMES)
@pytest.mark.parametrize("path_kind", ["gather", "native"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_graph_matches_keras_under_node(exported, name, path_kind, runtime):
    model, path = exported[name, path_kind]
    names = [spec_name for spec_name, _, _ in input_specs(model)]
    report = check_parity(
        model,
        node_runtime.runner(path, runtime, names),
        format=f"onnx ({path_kind})",
        path=path,
        runtime=f"onnxruntime-{runtime}",
    )
    assert report.passed, report.summary()


def test_the_runtimes_are_the_pinned_ones(exported):
    model, path = exported["st_cnn", "native"]
    x = np.zeros((1, 42, 42, 1), "float32")
    (input_name, _, _), *_ = input_specs(model)
    for runtime in node_runtime.RUNTIMES:
        name, _ = node_runtime.run_cases(path, runtime, [[(input_name, x)]])
        assert name == f"onnxruntime-{runtime} 1.30.0"


@pytest.mark.parametrize("path_kind", ["gather", "native"])
@pytest.mark.parametrize("name", ["st_cnn", "registration", "volume_stn"])
def test_exported_graph_matches_keras_in_openvino_at_float32(exported, name, path_kind):
    model, path = exported[name, path_kind]
    if (name, path_kind) == ("volume_stn", "native"):
        # OpenVINO's GridSample takes 4-D inputs only: a volume goes on the gather path.
        with pytest.raises(RuntimeError, match="GridSample"):
            openvino_runner(path)
        return
    run, runtime = openvino_runner(path)
    report = check_parity(model, run, format=f"onnx ({path_kind})", path=path, runtime=runtime)
    assert report.passed, report.summary()
    assert runtime.startswith("OpenVINO 2026.") and runtime.endswith("CPU, f32")
