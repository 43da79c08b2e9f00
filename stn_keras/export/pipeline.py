"""One export pipeline for every format and target: check, prepare, write, run, compare, move.

`export` checks the output path once (before any conversion, so a refused path costs nothing),
computes the model's input specs once, lets the format prepare its artifact for the target (a
`Plan`: how to write it and how to run it), writes it beside the target path, runs it in the
target's runtime (`stn_keras.export.runners`), compares it with the Keras model
(`stn_keras.export.validation`) and only then moves it into place (`stn_keras.export.files`).
"""

import dataclasses
import importlib
from collections.abc import Callable

from stn_keras.export import files, registry, validation


@dataclasses.dataclass
class Plan:
    """What a format prepared for one export (returned by a `Format.prepare` function).

    Attributes:
        write: `(staging_path) -> None`, writing the artifact.
        runner: `(staging_path) -> (run, runtime)`, see `stn_keras.export.runners`.
        model: the model the artifact is compared with (a float32 twin for LiteRT), or `None` for
            the exported model itself.
        notes: what the report's runtime line adds (the opset, the native samplers, caveats).
        gather_path: `(scope, reason)` of each sampler a native export left on the gather path.
        batch_sizes: the batch sizes the artifact runs at when its batch is static, else `None`.
    """

    write: Callable
    runner: Callable
    model: object = None
    notes: list = dataclasses.field(default_factory=list)
    gather_path: list = dataclasses.field(default_factory=list)
    batch_sizes: tuple | None = None


def _prepare_function(fmt):
    module, name = fmt.prepare.split(":")
    return getattr(importlib.import_module(module), name)


def _check_options(fmt, options):
    unknown = sorted(set(options) - set(fmt.options))
    if unknown:
        allowed = ", ".join(fmt.options) or "none"
        raise TypeError(
            f"Format {fmt.name!r} takes no option {', '.join(map(repr, unknown))} "
            f"(its options: {allowed})."
        )


def _check_backend():
    """Exporting traces the model with TensorFlow; on another backend, say what works instead."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            "Exporting runs on the TensorFlow backend; this process has "
            f"KERAS_BACKEND={keras.backend.backend()!r}. Save the model (`model.save('m.keras')`) "
            "and run `stn-keras-export FORMAT m.keras OUTPUT`, which reloads it under TensorFlow."
        )


def export(
    model,
    path,
    format=None,
    *,
    target=None,
    force=False,
    validate=True,
    batch_sizes=validation.DEFAULT_BATCH_SIZES,
    atol=validation.DEFAULT_ATOL,
    **options,
):
    """Export `model` to `path` for a runtime, validated in that runtime before it is moved into place.

    Args:
        model: a Keras model with known inputs (see `validation.input_specs`).
        path: the artifact's path (a file, or a directory for `"savedmodel"`).
        format: one of `registry.FORMATS` (`"savedmodel"`, `"onnx"`, `"onnx-native"`, `"litert"`),
            or `None` for the target's default.
        target: one of `registry.TARGETS` (`"onnxruntime"`, `"tensorrt"`, `"openvino"`, `"web"`,
            `"tf-serving"`, `"litert"`, `"litert-gpu"`), or `None` for the format's default.
        force: whether to replace an existing artifact of the same kind at `path`. Defaults to
            `False`.
        validate: whether to run the artifact and compare it with the model first. Defaults to
            `True`.
        batch_sizes: batch sizes to validate at (a static-batch target runs at its own). Defaults
            to `(1, 5)`.
        atol: validation tolerance (see `validation.DEFAULT_ATOL`). Defaults to `1e-4`.
        **options: the format's own options: `opset` (ONNX), `require_native` (`"onnx-native"`).

    Returns:
        The `ParityReport`, or `None` with `validate=False`.

    Raises:
        ValueError: for an unknown format or target, a target that does not take the format or
            cannot run the model (a volume `GridSample` on TensorRT), a path `files.check_target`
            refuses, or a model the format cannot convert.
        TypeError: for an option the format does not take.
        FileExistsError: if `path` exists and `force` is false.
        FileNotFoundError, PermissionError: if the directory that should hold `path` is missing
            or not writable.
        ValidationError: if the artifact does not reproduce the model; nothing is written then.
        NotImplementedError: on a Keras backend other than TensorFlow (the command line reloads
            a `.keras` file from any backend under TensorFlow).
    """
    _check_backend()
    fmt, chosen = registry.resolve(format, target)
    _check_options(fmt, options)
    if fmt.suffix and not str(path).endswith(fmt.suffix):
        raise ValueError(
            f"Argument `path` must end with {fmt.suffix!r} for format {fmt.name!r}. "
            f"Received: path={str(path)!r}"
        )
    files.check_target(path, force, kind=fmt.kind)
    specs = validation.input_specs(
        model, dynamic_sizes=fmt.dynamic_sizes, format=fmt.title or fmt.name
    )
    plan = _prepare_function(fmt)(model, specs, chosen, **options)
    report = None
    with files.staged_output(path, force=force, kind=fmt.kind) as staging:
        plan.write(staging)
        if validate:
            run, runtime = plan.runner(staging)
            report = validation.check_parity(
                plan.model if plan.model is not None else model,
                run,
                format=fmt.name,
                path=path,
                runtime="; ".join([runtime, *plan.notes]),
                batch_sizes=plan.batch_sizes or batch_sizes,
                atol=atol,
            )
            report.target = chosen.name
            report.gather_path = plan.gather_path
            validation.raise_unless_passed(report)
    return report
