"""The README's one-command demo, shortened: train briefly, save, export four ways, validate each."""

import collections
import os
import pathlib
import subprocess
import sys

import onnx

from examples import quickstart

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = [
    ".stn-keras-example",  # marks the directory as the quick start's (examples/outputs.py)
    "savedmodel",
    "st_cnn.keras",
    "st_cnn.onnx",
    "st_cnn.tflite",
    "st_cnn_gridsample.onnx",
]


def test_quickstart_exports_every_format_and_exits_zero(tmp_path, capsys):
    status = quickstart.main(["--out", str(tmp_path), "--epochs", "1", "--train-copies", "1"])
    captured = capsys.readouterr()
    out = captured.out
    assert status == 0, out
    # Third-party deprecation notices and warnings stay out of the demo's output (--verbose shows them).
    for noise in ("Instructions for updating", "is deprecated", "Warning:", "WARNING:"):
        assert noise not in out and noise not in captured.err, noise
    assert out.count("PASS") == 4 and "FAIL" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == FILES
    proto = onnx.load(tmp_path / "st_cnn_gridsample.onnx")
    # Serving signatures and graphs name the input after the model's: "images", not "input_layer".
    assert [i.name for i in proto.graph.input] == ["images"]
    native = collections.Counter(n.op_type for n in proto.graph.node)
    # The default native graph of images: opset 19, "bilinear", which TensorRT reads right.
    assert native["GridSample"] == 1 and native["AffineGrid"] == 0
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {19}


def test_quickstart_trains_on_jax_and_exports_under_tensorflow(tmp_path):
    command = [sys.executable, "-m", "examples.quickstart", "--out", str(tmp_path)]
    done = subprocess.run(
        [*command, "--epochs", "1", "--train-copies", "1"],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "exporting under TensorFlow (this process runs Keras on jax)" in done.stdout
    assert done.stdout.count("PASS") == 4 and "FAIL" not in done.stdout
    # Each artifact against the JAX model's own classes (the exit status requires >= 99%).
    agreement = [line for line in done.stdout.splitlines() if line.endswith("digits")]
    assert len(agreement) == 4, done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == FILES
