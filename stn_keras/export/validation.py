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
        spatial_sizes: the sizes dynamic spatial axes took, one per batch size (empty when all
            sizes are static).
        gather_path: for a native ONNX export, `(scope, reason)` of each sampler that stayed on
            the gather path (empty otherwise).
        target: the runtime the artifact was exported for (`stn_keras.export.registry.TARGETS`).
    """

    format: str
    path: str
    errors: dict
    tolerance: float
    runtime: str = ""
    spatial_sizes: tuple = ()
    gather_path: list = dataclasses.field(default_factory=list)
    target: str = ""

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
        sizes = self.spatial_sizes or [None] * len(self.errors)
        errors = ", ".join(
            f"batch {b}{'' if n is None else f' at size {n}'}: {e:.2e}"
            for (b, e), n in zip(self.errors.items(), sizes, strict=True)
        )
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{self.format:<11} max abs error {errors} (tolerance {self.tolerance:.1e}) {verdict}"
            f"  [{f'for {self.target}; ' if self.target else ''}{self.runtime}] {self.path}"
        )

    def __str__(self):
        return self.summary()


# Sizes a dynamic spatial axis takes in validation, one per batch size in turn: two different sizes,
# neither a power of two, so a size baked in at export shows.
DYNAMIC_SIZES = (11, 14)


def input_specs(model, *, dynamic_sizes=True, format="this format"):
    """The model's inputs as `(name, shape, dtype)` triples, batch axis first.

    Args:
        model: a built Keras model with known inputs (functional, sequential with an input, or one
            that has been called).
        dynamic_sizes: whether sizes other than the batch may be unknown (`None`). Defaults to `True`.
        format: the format's name, for the error when they may not. Defaults to `"this format"`.

    Returns:
        A list with one `(name, shape, dtype)` per model input; `shape` is a tuple whose first entry is
        `None` (the dynamic batch).

    Raises:
        ValueError: if the model's inputs are unknown, or (with `dynamic_sizes=False`) one has an
            unknown size other than the batch.
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
        if not dynamic_sizes and any(d is None for d in shape[1:]):
            raise ValueError(
                f"Cannot export model {model.name!r} to {format}: input {i} has shape {shape}, and "
                f"{format} needs every size but the batch to be known. Build the model on an input "
                "of fixed size, or export to SavedModel or ONNX, which keep such sizes dynamic."
            )
        name = getattr(tensor, "name", None) or f"input_{i}"
        specs.append((name.split(":")[0], shape, keras.backend.standardize_dtype(tensor.dtype)))
    return specs


def sample_inputs(specs, batch_size, seed=0, dynamic_size=DYNAMIC_SIZES[0]):
    """Random inputs for `specs` (see `input_specs`) at `batch_size`, uniform in [0, 1).

    Args:
        specs: see `input_specs`.
        batch_size: the batch size.
        seed: the random seed (offset by the batch size). Defaults to `0`.
        dynamic_size: the size given to every unknown axis but the batch. Defaults to
            `DYNAMIC_SIZES[0]`.

    Returns:
        A list of numpy arrays, one per input, `(batch_size, *shape[1:])`.
    """
    rng = np.random.default_rng(seed + batch_size)
    shapes = [
        (batch_size, *(dynamic_size if d is None else d for d in shape[1:]))
        for _, shape, _ in specs
    ]
    return [
        rng.random(shape).astype(dtype) for shape, (_, _, dtype) in zip(shapes, specs, strict=True)
    ]


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

    Sizes unknown in the model's inputs (other than the batch) take the sizes of `DYNAMIC_SIZES` in
    turn, one per batch size.

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
    dynamic = any(d is None for _, shape, _ in specs for d in shape[1:])
    sizes = [DYNAMIC_SIZES[i % len(DYNAMIC_SIZES)] for i in range(len(batch_sizes))]
    errors, scale = {}, 1.0
    for batch_size, size in zip(batch_sizes, sizes, strict=True):
        # Dynamic spatial sizes take a different size in each round, so two sizes are checked.
        inputs = sample_inputs(specs, batch_size, dynamic_size=size)
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
    return ParityReport(
        format, str(path), errors, atol * scale, runtime, tuple(sizes) if dynamic else ()
    )


def raise_unless_passed(report):
    """Return `report` if it passed, else raise `ValidationError` carrying it."""
    if not report.passed:
        raise ValidationError(report)
    return report
