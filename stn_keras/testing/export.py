"""`run_export_test`: export a model to each format and check it reproduces Keras in its runtime."""

import os


def run_export_test(model, directory, formats=("savedmodel", "onnx", "onnx-native", "litert")):
    """Export `model` to each of `formats` under `directory` and assert each matches Keras.

    Each export validates itself at batch sizes 1 and 5 (see `stn_keras.export`); this helper
    additionally checks that it returned a passing report for that format and that the artifact
    exists.

    Args:
        model: a Keras model with known inputs.
        directory: an existing directory for the artifacts.
        formats: any of `"savedmodel"`, `"onnx"`, `"onnx-native"`, `"litert"`. Defaults to all four.

    Returns:
        `{format: ParityReport}`.
    """
    from stn_keras import export

    exporters = {
        "savedmodel": (export.export_savedmodel, "savedmodel", {}),
        "onnx": (export.export_onnx, "model.onnx", {}),
        "onnx-native": (export.export_onnx, "model_native.onnx", {"native_gridsample": True}),
        "litert": (export.export_litert, "model.tflite", {}),
    }
    reports = {}
    for name in formats:
        exporter, filename, options = exporters[name]
        path = os.path.join(directory, filename)
        report = exporter(model, path, **options)
        assert report.passed, report.summary()
        assert report.format == name, report.summary()
        assert sorted(report.errors) == [1, 5], report.summary()
        assert os.path.exists(path), path
        reports[name] = report
    return reports
