"""A user's own layer around `grid_sample` (the quickstart test covers a SpatialTransformer model)."""

import onnx

from stn_keras.export import export_onnx
from tests.export.models import custom_layer_model


def test_custom_layer_calling_grid_sample_is_replaced_natively(tmp_path):
    report = export_onnx(custom_layer_model(), tmp_path / "m.onnx", native_gridsample=True)
    assert report.passed, report.summary()
    nodes = [n for n in onnx.load(tmp_path / "m.onnx").graph.node if n.op_type == "GridSample"]
    assert len(nodes) == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    # The default native opset for images is 19, which spells the mode "bicubic" (20: "cubic").
    assert (attrs["mode"], attrs["padding_mode"], attrs["align_corners"]) == (
        b"bicubic",
        b"reflection",
        0,
    )
