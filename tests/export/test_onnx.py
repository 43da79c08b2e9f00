"""ONNX export: every interpolation x padding x align_corners, gather path and native GridSample path."""

import collections

import numpy as np
import onnx
import pytest

from stn_keras.export import ValidationError, export_onnx, runners
from stn_keras.export import onnx as onnx_export
from stn_keras.export.validation import keras_outputs, sample_inputs
from tests.export.models import ALL_MODES, sampler_model

# Keep the module on one xdist worker (`--dist loadgroup`): its fixtures convert large models once.
pytestmark = pytest.mark.xdist_group("export_onnx_modes")

ONNX_MODES = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}


@pytest.fixture(scope="module")
def model():
    return sampler_model(ALL_MODES)


@pytest.fixture(scope="module")
def expected(model):
    """Keras's outputs at batch sizes 1 and 5 (odd, and not the traced batch)."""
    inputs = {
        b: sample_inputs([("images", (None, 8, 10, 2), "float32")], b, seed=7) for b in (1, 5)
    }
    return {b: (x, keras_outputs(model, x)) for b, x in inputs.items()}


@pytest.fixture(scope="module")
def gather_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    report = export_onnx(model, path)
    return path, report


@pytest.fixture(scope="module")
def native_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model_native.onnx"
    # Opset 20: the native graph with AffineGrid (the default, 19, keeps the grid explicit).
    report = export_onnx(model, path, native_gridsample=True, opset=20)
    return path, report


def _run(path, inputs):
    return runners.onnxruntime(path)[0](inputs)


def test_export_returns_passing_report_at_batch_1_and_5(gather_path, native_path):
    for path, report in (gather_path, native_path):
        assert report.passed, report.summary()
        assert sorted(report.errors) == [1, 5]
        assert report.max_abs_error <= report.tolerance
        assert path.is_file()


@pytest.mark.parametrize(
    "index", range(len(ALL_MODES)), ids=["-".join(map(str, m)) for m in ALL_MODES]
)
@pytest.mark.parametrize("export_path", ["gather_path", "native_path"])
def test_every_mode_matches_keras_in_onnxruntime(export_path, expected, index, request):
    path, _ = request.getfixturevalue(export_path)
    for inputs, want in expected.values():
        got = _run(path, inputs)[index]
        np.testing.assert_allclose(got, want[index], rtol=0, atol=1e-5)


def test_gather_path_has_dynamic_batch_and_no_gridsample(gather_path):
    proto = onnx.load(gather_path[0])
    ops = {node.op_type for node in proto.graph.node}
    assert "Gather" in ops and "GridSample" not in ops
    assert proto.opset_import[0].version == onnx_export.DEFAULT_OPSET
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert not batch.HasField("dim_value")


def test_native_path_replaces_every_gather_by_affinegrid_and_gridsample(native_path):
    proto = onnx.load(native_path[0])
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    assert ops["GridSample"] == len(ALL_MODES)
    assert ops["AffineGrid"] == len(ALL_MODES)
    assert "Gather" not in ops and "Floor" not in ops
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {20}


def test_opset_20_report_names_tensorrts_misreading(native_path):
    assert (
        "TensorRT reads opset-20 GridSample 'linear'/'cubic' as nearest" in native_path[1].runtime
    )


def test_default_native_graph_of_images_is_opset_19_with_bilinear_gridsample(small_model, tmp_path):
    # TensorRT reads opset 20's "linear" as nearest (NVIDIA/TensorRT#4646): the default avoids it.
    path = tmp_path / "default.onnx"
    report = export_onnx(small_model, path, native_gridsample=True)
    assert report.passed and "opset 19" in report.runtime and "TensorRT" not in report.runtime
    proto = onnx.load(path)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {19}
    samplers = [node for node in proto.graph.node if node.op_type == "GridSample"]
    assert len(samplers) == 1 and "AffineGrid" not in {node.op_type for node in proto.graph.node}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in samplers[0].attribute}
    assert attrs["mode"] == b"bilinear"


def test_native_gridsample_carries_each_samplers_mode(native_path):
    """The measured mode of each sampler lands on the GridSample feeding that sampler's output."""
    proto = onnx.load(native_path[0])
    producer = {out: node for node in proto.graph.node for out in node.output}
    for index, (interpolation, padding, corners) in enumerate(ALL_MODES):
        node = producer[f"output_{index}"]
        while node.op_type != "GridSample":
            node = producer[node.input[0]]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["mode"].decode() == ONNX_MODES[interpolation]
        assert attrs["padding_mode"].decode() == padding
        assert attrs["align_corners"] == int(corners)
        grid = producer[node.input[1]]
        assert grid.op_type == "AffineGrid"
        assert onnx.helper.get_attribute_value(grid.attribute[0]) == int(corners)


@pytest.fixture(scope="module")
def small_model():
    return sampler_model([("bilinear", "border", False)], input_shape=(4, 5, 1), output_size=(3, 3))


def test_failed_validation_leaves_nothing_behind(small_model, tmp_path):
    # GridSample and the gather decomposition round differently (~1e-7): no error is ever exactly 0
    # on the native path, so a zero tolerance must fail.
    with pytest.raises(ValidationError, match="Validation failed"):
        export_onnx(small_model, tmp_path / "m.onnx", native_gridsample=True, atol=0.0)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force(small_model, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        export_onnx(small_model, path)
    assert path.read_bytes() == b"keep me"
    report = export_onnx(small_model, path, force=True)
    assert report.passed
    assert onnx.load(path).graph.node
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_opset_above_tf2onnx_is_reached_by_version_conversion(small_model, tmp_path):
    report = export_onnx(small_model, tmp_path / "m.onnx", opset=19)
    assert report.passed
    assert onnx.load(tmp_path / "m.onnx").opset_import[0].version == 19


@pytest.mark.parametrize(
    ("opset", "native"), [(12, False), (15, True), (99, False), ("18", False), (True, False)]
)
def test_invalid_opset_raises(small_model, tmp_path, opset, native):
    with pytest.raises(ValueError, match="Invalid value for argument `opset`"):
        export_onnx(small_model, tmp_path / "m.onnx", opset=opset, native_gridsample=native)


def test_native_path_without_sampler_raises(tmp_path):
    import keras

    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="has no `stn_keras.grid_sample`"):
        export_onnx(model, tmp_path / "m.onnx", native_gridsample=True)
    assert list(tmp_path.iterdir()) == []


def test_native_path_keeps_a_float16_sampler_on_the_gather_path_with_a_warning(tmp_path):
    import keras

    import stn_keras

    images = keras.Input((4, 5, 1), name="images")
    theta = keras.layers.Dense(6, bias_initializer=keras.initializers.Constant([1, 0, 0, 0, 1, 0]))(
        keras.layers.Flatten()(images)
    )
    sampler = stn_keras.TransformSampler(output_size=(3, 3), dtype="mixed_float16")
    model = keras.Model(images, sampler([images, theta]))
    with pytest.warns(UserWarning, match=r"float16 images .* stays on the gather path"):
        report = export_onnx(model, tmp_path / "native.onnx", native_gridsample=True, atol=1e-2)
    assert report.passed
    ops = {node.op_type for node in onnx.load(tmp_path / "native.onnx").graph.node}
    assert "GridSample" not in ops and "Gather" in ops
    assert export_onnx(model, tmp_path / "gather.onnx", atol=1e-2).passed
