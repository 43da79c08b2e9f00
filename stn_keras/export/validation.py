"""Parity checks: run an exported artifact in its runtime and compare it with the Keras model.

Every exporter validates its artifact the same way: it feeds the same random inputs, at batch sizes 1
and an odd larger one (`DEFAULT_BATCH_SIZES`), to the Keras model and to the artifact loaded in its
own runtime, and compares every output. The result is a `ParityReport`; an artifact that fails it is
never moved into place.
"""

import dataclasses

import keras
import numpy as np

# Batch sizes every artifact is run at: 1, and an odd size that catches a batch baked in as a constant.
DEFAULT_BATCH_SIZES = (1, 5)

# Default tolerance on the absolute error, relative to the outputs' scale: an output is accepted when
# max |artifact - keras| <= atol * max(1, max |keras|).
DEFAULT_ATOL = 1e-4


class ValidationError(RuntimeError):
    """An exported artifact does not reproduce the Keras model; `report` holds the measurements."""

    def __init__(self, report):
        super().__init__(f"Validation failed: {report.summary()}")
        self.report = report


@dataclasses.dataclass
class ParityReport:
    """How closely an artifact reproduces its Keras model.

    Attributes:
        format: the artifact's format (`"savedmodel"`, `"onnx"`, `"onnx-native"`, `"litert"`).
        path: where the artifact was written.
        errors: `{batch_size: max abs error over all outputs}`.
        tolerance: the largest error accepted, `atol * max(1, max |keras output|)`.
        runtime: the runtime the artifact ran in.
    """

    format: str
    path: str
    errors: dict
    tolerance: float
    runtime: str = ""

    @property
    def max_abs_error(self):
        """The largest error over all batch sizes."""
        return max(self.errors.values())

    @property
    def passed(self):
        """Whether every batch size is within `tolerance` (NaN never passes)."""
        return all(e <= self.tolerance for e in self.errors.values())

    def summary(self):
        """One line: format, errors per batch size, tolerance, PASS/FAIL."""
        errors = ", ".join(f"batch {b}: {e:.2e}" for b, e in self.errors.items())
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{self.format:<11} max abs error {errors} (tolerance {self.tolerance:.1e}) {verdict}"
            f"  [{self.runtime}] {self.path}"
        )

    def __str__(self):
        return self.summary()


def input_specs(model):
    """The model's inputs as `(name, shape, dtype)` triples, batch axis first.

    Args:
        model: a built Keras model with known inputs (functional, sequential with an input, or one
            that has been called).

    Returns:
        A list with one `(name, shape, dtype)` per model input; `shape` is a tuple whose first entry is
        `None` (the dynamic batch).

    Raises:
        ValueError: if the model's inputs are unknown, or one has an unknown size other than the batch.
    """
    try:
        inputs = keras.tree.flatten(model.inputs)
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"Cannot export model {model.name!r}: its inputs are unknown. Build it on a "
            "`keras.Input` (functional or Sequential API) or call it once before exporting."
        )
    specs = []
    for i, tensor in enumerate(inputs):
        shape = (None, *tuple(tensor.shape)[1:])
        if any(d is None for d in shape[1:]):
            raise ValueError(
                f"Cannot export model {model.name!r}: input {i} has shape {shape}; exporters need every "
                "size but the batch to be known."
            )
        name = getattr(tensor, "name", None) or f"input_{i}"
        specs.append((name.split(":")[0], shape, keras.backend.standardize_dtype(tensor.dtype)))
    return specs


def sample_inputs(specs, batch_size, seed=0):
    """Random inputs for `specs` (see `input_specs`) at `batch_size`, uniform in [0, 1).

    Returns:
        A list of numpy arrays, one per input, `(batch_size, *shape[1:])`.
    """
    rng = np.random.default_rng(seed + batch_size)
    return [rng.random((batch_size, *shape[1:])).astype(dtype) for _, shape, dtype in specs]


def keras_outputs(model, inputs):
    """The model's outputs on `inputs` (a list, one array per input) as a flat list of numpy arrays."""
    outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]


def check_parity(
    model,
    run_artifact,
    *,
    format,
    path,
    runtime,
    batch_sizes=DEFAULT_BATCH_SIZES,
    atol=DEFAULT_ATOL,
):
    """Compare an artifact with its Keras model on random inputs at each of `batch_sizes`.

    Args:
        model: the Keras model the artifact was exported from.
        run_artifact: callable `(inputs: list of arrays) -> list of arrays` running the artifact, its
            outputs in the model's flattened output order.
        format, path, runtime: recorded in the report.
        batch_sizes: batch sizes to run. Defaults to `DEFAULT_BATCH_SIZES`.
        atol: tolerance relative to the output scale (see `DEFAULT_ATOL`). Defaults to `1e-4`.

    Returns:
        A `ParityReport`.
    """
    specs = input_specs(model)
    errors, scale = {}, 1.0
    for batch_size in batch_sizes:
        inputs = sample_inputs(specs, batch_size)
        expected = keras_outputs(model, inputs)
        actual = run_artifact(inputs)
        if len(actual) != len(expected):
            raise ValueError(
                f"The {format} artifact returned {len(actual)} outputs; the model has {len(expected)}."
            )
        error = 0.0
        for want, got in zip(expected, actual, strict=True):
            got = np.asarray(got)
            if got.shape != want.shape:  # e.g. a batch size baked into the artifact
                error = float("inf")
                continue
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            error = max(
                error, float("inf") if np.isnan(diff).any() else float(diff.max(initial=0.0))
            )
            scale = max(scale, float(np.max(np.abs(want), initial=0.0)))
        errors[batch_size] = error
    return ParityReport(format, str(path), errors, atol * scale, runtime)


def raise_unless_passed(report):
    """Return `report` if it passed, else raise `ValidationError` carrying it."""
    if not report.passed:
        raise ValidationError(report)
    return report
