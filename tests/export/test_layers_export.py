"""Real models: a SpatialTransformer classifier and a user's own layer around `grid_sample`."""

import collections

import keras
import onnx
import pytest

import stn_keras
from stn_keras.export import export_onnx
from stn_keras.testing.export import custom_layer_model, run_export_test


@pytest.fixture(scope="module")
def st_classifier():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1), name="images"),
            stn_keras.SpatialTransformer(output_size=(8, 8), padding_mode="border"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    # Move the regression layer off the identity so the transform depends on the input.
    regression = [w for w in model.weights if w.shape == (32, 6)][0]
    regression.assign(keras.random.normal((32, 6), stddev=0.05, seed=1))
    return model


def test_spatial_transformer_model_exports_to_every_format(st_classifier, tmp_path):
    reports = run_export_test(st_classifier, str(tmp_path))
    assert set(reports) == {"savedmodel", "onnx", "onnx-native", "litert"}
    ops = collections.Counter(
        n.op_type for n in onnx.load(tmp_path / "model_native.onnx").graph.node
    )
    assert ops["GridSample"] == 1 and ops["AffineGrid"] == 1


def test_custom_layer_calling_grid_sample_is_replaced_natively(tmp_path):
    report = export_onnx(custom_layer_model(), tmp_path / "m.onnx", native_gridsample=True)
    assert report.passed, report.summary()
    nodes = [n for n in onnx.load(tmp_path / "m.onnx").graph.node if n.op_type == "GridSample"]
    assert len(nodes) == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert (attrs["mode"], attrs["padding_mode"], attrs["align_corners"]) == (
        b"cubic",
        b"reflection",
        0,
    )
