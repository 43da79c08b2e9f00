"""What can be exported, and for which runtime: the registry of formats and targets.

A *format* is a kind of artifact (a SavedModel directory, an ONNX file with the gather graph or with
native `GridSample`, a LiteRT flatbuffer); a *target* is the runtime a user deploys it to. A target
picks what its runtime runs correctly (the opset, native or gather samplers, a static batch) and
refuses, with one line, what it cannot run; it names the runtime the export is validated in. The
registry is plain data, read without importing TensorFlow: `stn_keras.export.pipeline.export` runs
an export from it, and the command line (`stn_keras.export.cli`) is built from it.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Format:
    """A kind of artifact.

    Attributes:
        name: the format's name (`export(..., format=name)`, the command line's subcommand).
        help: one line for the command line.
        metavar: the output argument's name on the command line.
        kind: `"file"` or `"savedmodel"` (what `files.check_target` may replace).
        prepare: `"module:function"` preparing an export (see `pipeline.Plan`), imported on use.
        default_target: the target when none is given.
        options: the format's own keyword options (beyond those every format takes).
        suffix: the ending the path must have (the LiteRT converter checks it), or `None`.
        dynamic_sizes: whether inputs may keep sizes other than the batch unknown.
        title: the format's name in messages.
    """

    name: str
    help: str
    metavar: str
    kind: str
    prepare: str
    default_target: str
    options: tuple = ()
    suffix: str | None = None
    dynamic_sizes: bool = True
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
    """A runtime an artifact is deployed to.

    Attributes:
        name: the target's name (`export(..., target=name)`, `--target`).
        help: one line for the command line.
        formats: the formats it takes; the first is its default.
        runtime: the `runners.RUNNERS` entry the export is validated in.
        max_opset: the newest opset whose native `GridSample` it reads right, or `None`.
        volume_grid_sample: whether it runs a 5-D (volume) `GridSample`.
        static_batch: the batch size baked into the artifact, or `None` for a dynamic batch.
        gpu_delegate: whether the artifact must pass the LiteRT GPU delegate's op rules
            (`stn_keras.export.gpu_rules`).
        caveat: what the report says of the validation (a runtime that is not run here).
    """

    name: str
    help: str
    formats: tuple
    runtime: str
    max_opset: int | None = None
    volume_grid_sample: bool = True
    static_batch: int | None = None
    gpu_delegate: bool = False
    caveat: str = ""


_ONNX_OPTIONS = ("opset",)

FORMATS = {
    f.name: f
    for f in (
        Format(
            "savedmodel",
            "SavedModel directory with a serving_default signature",
            "OUT_DIR",
            "savedmodel",
            "stn_keras.export.savedmodel:prepare",
            "tf-serving",
        ),
        Format(
            "onnx",
            "ONNX file, each sampler as its gather decomposition (runs everywhere)",
            "OUT.onnx",
            "file",
            "stn_keras.export.onnx:prepare_gather",
            "onnxruntime",
            _ONNX_OPTIONS,
        ),
        Format(
            "onnx-native",
            "ONNX file, each sampler as ONNX's GridSample (and AffineGrid where it can)",
            "OUT.onnx",
            "file",
            "stn_keras.export.onnx:prepare_native",
            "onnxruntime",
            (*_ONNX_OPTIONS, "require_native"),
        ),
        Format(
            "litert",
            "LiteRT flatbuffer with builtin ops only",
            "OUT.tflite",
            "file",
            "stn_keras.export.litert:prepare",
            "litert",
            suffix=".tflite",
            dynamic_sizes=False,
            title="LiteRT",
        ),
    )
}

_ONNX = ("onnx-native", "onnx")

TARGETS = {
    t.name: t
    for t in (
        Target("onnxruntime", "onnxruntime (CPU, CUDA, ...)", _ONNX, "onnxruntime"),
        Target(
            "tensorrt",
            "TensorRT's ONNX parser: GridSample at opset <= 19, images only",
            _ONNX,
            "onnxruntime",
            max_opset=19,
            volume_grid_sample=False,
            caveat="TensorRT is not run here",
        ),
        Target(
            "openvino",
            "OpenVINO (validated on CPU at f32): GridSample on images only",
            _ONNX,
            "openvino",
            volume_grid_sample=False,
        ),
        Target(
            "web",
            "onnxruntime-web's WebAssembly backend (WebGL has no GridSample)",
            _ONNX,
            "onnxruntime",
            caveat="the same kernels as onnxruntime-web's wasm backend",
        ),
        Target(
            "tf-serving",
            "TensorFlow Serving, tf.saved_model.load",
            ("savedmodel",),
            "tf.saved_model",
        ),
        Target("litert", "LiteRT on CPU (XNNPACK)", ("litert",), "litert"),
        Target(
            "litert-gpu",
            "LiteRT's GPU delegate: batch 1, only the ops the delegate accepts",
            ("litert",),
            "litert",
            static_batch=1,
            gpu_delegate=True,
            caveat="ops checked against the GPU delegate's rules; the delegate is not run here",
        ),
    )
}


def _choice(kind, value, names):
    if value not in names:
        raise ValueError(
            f"Invalid value for argument `{kind}`. Expected one of {sorted(names)}. "
            f"Received: {kind}={value!r}"
        )


def resolve(format=None, target=None):
    """The `(Format, Target)` of an export: either may be `None` (the other's default).

    Raises:
        ValueError: if both are `None`, either is unknown, or the target does not take the format.
    """
    if format is None and target is None:
        raise ValueError(
            f"Pass `format` (one of {sorted(FORMATS)}) or `target` (one of {sorted(TARGETS)})."
        )
    if format is not None:
        _choice("format", format, FORMATS)
    if target is not None:
        _choice("target", target, TARGETS)
    chosen_target = TARGETS[target if target is not None else FORMATS[format].default_target]
    chosen_format = FORMATS[format if format is not None else chosen_target.formats[0]]
    if chosen_format.name not in chosen_target.formats:
        raise ValueError(
            f"Target {chosen_target.name!r} takes format {' or '.join(chosen_target.formats)}, "
            f"not {chosen_format.name!r}."
        )
    return chosen_format, chosen_target


def targets_of(format_name):
    """The names of the targets that take `format_name`."""
    return [t.name for t in TARGETS.values() if format_name in t.formats]
