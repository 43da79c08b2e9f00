"""Export Keras models with stn-keras layers to SavedModel, ONNX and LiteRT, each validated in its runtime.

Every exporter writes to a temporary path beside the target, loads the artifact in its own runtime,
compares it with the Keras model at batch sizes 1 and 5 and only then moves it into place
(`stn_keras.export.files`); it returns a `ParityReport` and raises `ValidationError` (writing nothing)
when the artifact does not match.
"""

from stn_keras.export.litert import export_litert
from stn_keras.export.loading import load_model
from stn_keras.export.onnx import export_onnx
from stn_keras.export.savedmodel import export_savedmodel
from stn_keras.export.validation import ParityReport, ValidationError

__all__ = [
    "ParityReport",
    "ValidationError",
    "export_litert",
    "export_onnx",
    "export_savedmodel",
    "load_model",
]
