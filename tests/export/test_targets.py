"""Export targets (`stn_keras.export.registry`): each picks what its runtime runs right, refuses with
one line what it cannot, and is validated where it says."""

import collections

import keras
import onnx
import pytest

import stn_keras
from examples import distorted_digits
from stn_keras.export import export, gpu_rules, registry, runners

pytestmark = pytest.mark.xdist_group("targets")

# Ops some runtime lacks or runs wrong (module docstring of `stn_keras.ops.portable`): WebGL and the
# LiteRT GPU delegate have no IsNaN/IsInf, WebGPU's ReduceSum of the grid goes wrong, TensorRT and
# the GPU delegate take only 2-input sums.
NOT_PORTABLE = {"IsNaN", "IsInf", "ReduceAll", "ReduceSum", "Sum", "Round"}


@pytest.fixture(scope="module")
def st_cnn():
    model = distorted_digits.build_st_cnn(42)
    model.get_layer("spatial_transformer").regression.bias.assign(
        [1.1, 0.2, 0.1, -0.15, 0.9, -0.05]
    )
    return model


@pytest.fixture(scope="module")
def volume_stn():
    return keras.Sequential(
        [
            keras.Input((6, 7, 8, 1)),
            stn_keras.SpatialTransformer(output_size=(4, 5, 6)),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )


def _ops(path):
    return collections.Counter(node.op_type for node in onnx.load(path).graph.node)


def _grid_sample_modes(path):
    return {
        attribute.s.decode()
        for node in onnx.load(path).graph.node
        if node.op_type == "GridSample"
        for attribute in node.attribute
        if attribute.name == "mode"
    }


@pytest.mark.parametrize(
    "format, target, message",
    [
        (None, None, "Pass `format`"),
        ("onnnx", None, "Expected one of"),
        (None, "tensorflow-lite", "Received: target='tensorflow-lite'"),
        ("onnx", "litert-gpu", "Target 'litert-gpu' takes format litert, not 'onnx'"),
        ("savedmodel", "web", "takes format onnx-native or onnx"),
    ],
)
def test_a_format_and_target_that_do_not_fit_raise_naming_them(format, target, message):
    with pytest.raises(ValueError, match=message):
        registry.resolve(format, target)


def test_every_target_has_a_runner_and_takes_registered_formats():
    for target in registry.TARGETS.values():
        assert target.runtime in runners.RUNNERS
        assert set(target.formats) <= set(registry.FORMATS)
    for fmt in registry.FORMATS.values():
        assert fmt.default_target in registry.targets_of(fmt.name)


def test_an_option_the_format_does_not_take_is_refused_before_anything_is_written(st_cnn, tmp_path):
    with pytest.raises(TypeError, match="Format 'savedmodel' takes no option 'opset'"):
        export(st_cnn, tmp_path / "sm", "savedmodel", opset=19)
    with pytest.raises(ValueError, match="must end with '.tflite'"):
        export(st_cnn, tmp_path / "m.lite", target="litert")
    assert list(tmp_path.iterdir()) == []


def test_the_default_native_graph_of_images_is_one_tensorrt_reads_right(st_cnn, tmp_path):
    report = export(st_cnn, tmp_path / "m.onnx", "onnx-native")
    assert report.passed, report.summary()
    assert onnx.load(tmp_path / "m.onnx").opset_import[0].version == 19
    assert _grid_sample_modes(tmp_path / "m.onnx") == {"bilinear"}
    assert "TensorRT reads" not in report.runtime


@pytest.mark.parametrize("format", ["onnx", "onnx-native"])
def test_web_graphs_have_no_op_a_browser_backend_lacks(st_cnn, tmp_path, format):
    report = export(st_cnn, tmp_path / "m.onnx", format, target="web")
    assert report.passed and report.target == "web", report.summary()
    ops = _ops(tmp_path / "m.onnx")
    assert not set(ops) & NOT_PORTABLE, set(ops) & NOT_PORTABLE
    assert ops["GridSample" if format == "onnx-native" else "Gather"] >= 1


def test_tensorrt_refuses_opset_20_gridsample_and_volume_gridsample(st_cnn, volume_stn, tmp_path):
    with pytest.raises(ValueError, match="TensorRT reads opset-20 GridSample 'linear'"):
        export(st_cnn, tmp_path / "m.onnx", "onnx-native", target="tensorrt", opset=20)
    with pytest.raises(ValueError, match="Target 'tensorrt' has no 5-D .* format 'onnx'"):
        export(volume_stn, tmp_path / "v.onnx", "onnx-native", target="tensorrt")
    assert list(tmp_path.iterdir()) == []
    # Its advice works: the gather path of the same volume model exports, and says it ran elsewhere.
    report = export(volume_stn, tmp_path / "v.onnx", "onnx", target="tensorrt")
    assert report.passed and "TensorRT is not run here" in report.runtime, report.summary()


def test_openvino_target_is_validated_in_openvino_at_float32(st_cnn, volume_stn, tmp_path):
    report = export(st_cnn, tmp_path / "m.onnx", "onnx-native", target="openvino")
    assert report.passed, report.summary()
    assert report.runtime.startswith("OpenVINO 2026.") and "CPU, f32" in report.runtime
    with pytest.raises(ValueError, match="Target 'openvino' has no 5-D"):
        export(volume_stn, tmp_path / "v.onnx", "onnx-native", target="openvino")


def test_litert_gpu_artifact_has_a_static_batch_and_only_ops_the_delegate_takes(st_cnn, tmp_path):
    path = tmp_path / "m.tflite"
    report = export(st_cnn, path, target="litert-gpu")
    assert report.passed and list(report.errors) == [1], report.summary()
    assert gpu_rules.rejected_ops(path) == []
    interpreter, _ = runners.litert_interpreter(path)
    assert [tuple(d["shape"]) for d in interpreter.get_input_details()] == [(1, 42, 42, 1)]
    # The dynamic-batch artifact needs shapes at run time, which the delegate cannot take.
    export(st_cnn, tmp_path / "dynamic.tflite", target="litert")
    assert any(
        line.startswith("SHAPE ") for line in gpu_rules.rejected_ops(tmp_path / "dynamic.tflite")
    )
