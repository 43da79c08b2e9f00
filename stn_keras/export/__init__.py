"""Export Keras models with stn-keras layers to SavedModel, ONNX and LiteRT, each validated in its runtime.

`export(model, path, format=..., target=...)` is the one entry point (`stn_keras.export.pipeline`):
the format is the kind of artifact, the target the runtime it is deployed to
(`stn_keras.export.registry`). Every export writes to a temporary path beside the target, runs the
artifact in the target's runtime (`stn_keras.export.runners`), compares it with the Keras model at
batch sizes 1 and 5 and only then moves it into place (`stn_keras.export.files`); it returns a
`ParityReport` and raises `ValidationError` (writing nothing) when the artifact does not match.
`export_savedmodel`, `export_onnx` and `export_litert` are the same pipeline for one format each.
"""

from stn_keras.export.litert import export_litert
from stn_keras.export.loading import load_model
from stn_keras.export.onnx import export_onnx
from stn_keras.export.pipeline import export
from stn_keras.export.registry import FORMATS, TARGETS
from stn_keras.export.savedmodel import export_savedmodel
from stn_keras.export.validation import ParityReport, ValidationError

__all__ = [
    "FORMATS",
    "ParityReport",
    "TARGETS",
    "ValidationError",
    "export",
    "export_litert",
    "export_onnx",
    "export_savedmodel",
    "load_model",
]
