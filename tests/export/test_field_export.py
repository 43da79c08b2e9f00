"""Registration models (`IntegrateVelocity` + `Warp`) export to SavedModel, ONNX on both paths and
LiteRT, each validated in its runtime against Keras."""

import onnx
import pytest

from stn_keras.export import export_litert, export_onnx, export_savedmodel
from tests.layers.test_field_layers import registration_model

pytestmark = pytest.mark.xdist_group("export_fields")


@pytest.mark.parametrize(
    "exporter, name, options",
    [
        (export_savedmodel, "sm", {}),
        (export_onnx, "g.onnx", {}),
        (export_onnx, "n.onnx", {"native_gridsample": True}),
        (export_litert, "m.tflite", {}),
    ],
    ids=["savedmodel", "onnx-gather", "onnx-native", "litert"],
)
def test_registration_model_exports_and_validates(exporter, name, options, tmp_path):
    report = exporter(registration_model(steps=3), tmp_path / name, **options)
    assert report.passed
    if options:  # 3 squarings and the final warp: four samplers, none of them affine
        ops = [node.op_type for node in onnx.load(tmp_path / name).graph.node]
        assert ops.count("GridSample") == 4 and "AffineGrid" not in ops


def test_volume_registration_model_exports_natively(tmp_path):
    report = export_onnx(
        registration_model(shape=(6, 5, 4, 1), steps=2), tmp_path / "v.onnx", native_gridsample=True
    )
    assert report.passed
