"""The README's one-command demo, shortened: train briefly, save, export four ways, validate each."""

import collections

import onnx

from examples import quickstart


def test_quickstart_exports_every_format_and_exits_zero(tmp_path, capsys):
    status = quickstart.main(["--out", str(tmp_path), "--epochs", "1", "--train-copies", "1"])
    captured = capsys.readouterr()
    out = captured.out
    assert status == 0, out
    # Third-party deprecation notices and warnings stay out of the demo's output (--verbose shows them).
    for noise in ("Instructions for updating", "is deprecated", "Warning:", "WARNING:"):
        assert noise not in out and noise not in captured.err, noise
    assert out.count("PASS") == 4 and "FAIL" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".stn-keras-example",  # marks the directory as the quick start's (examples/outputs.py)
        "savedmodel",
        "st_cnn.keras",
        "st_cnn.onnx",
        "st_cnn.tflite",
        "st_cnn_gridsample.onnx",
    ]
    proto = onnx.load(tmp_path / "st_cnn_gridsample.onnx")
    # Serving signatures and graphs name the input after the model's: "images", not "input_layer".
    assert [i.name for i in proto.graph.input] == ["images"]
    native = collections.Counter(n.op_type for n in proto.graph.node)
    # The default native graph of images: opset 19, "bilinear", which TensorRT reads right.
    assert native["GridSample"] == 1 and native["AffineGrid"] == 0
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {19}
