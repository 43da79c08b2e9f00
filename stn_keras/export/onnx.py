"""Export to ONNX through tf2onnx, validated in onnxruntime; optionally with native GridSample.

Keras 3's `model.export(format="onnx")` runs `tf2onnx.convert.from_function` on the model's call; this
module takes the same route one step lower (freeze the traced call, then
`tf2onnx.convert.from_graph_def`), because the native-GridSample rewrite reads the frozen graph's
records of each sampler and runs as a tf2onnx rewriter inside the conversion, with each affine
sampler's theta kept as a graph output through it (see `stn_keras.export.onnx_gridsample`).

Opsets: tf2onnx 1.17 converts to opset 18 at most, which is the default here (`DEFAULT_OPSET`). A
higher opset is reached with `onnx.version_converter`. The native path needs GridSample (opset 16+)
and uses AffineGrid from opset 20 on. Its default is opset 19 (`NATIVE_OPSET`) for images and 20
(`onnx_gridsample.VOLUME_OPSET`) when a sampler takes a volume: opset 20 renamed GridSample's
"bilinear" to "linear", and TensorRT's ONNX parser reads the new name as nearest
(NVIDIA/TensorRT#4646, onnx/onnx-tensorrt#1060), a silent wrong answer on a common GPU serving stack;
opset 20 for images is opt-in (`opset=20`), and its report says so.

tf2onnx converts with continue-on-error (an unsupported op stays in the graph and the file is still
written), so only running the file in onnxruntime proves it: every export here is validated that way
before it is moved into place.
"""

import contextlib
import copy
import warnings

import keras
import onnx
import tensorflow as tf
from onnx import version_converter

from stn_keras.export import onnx_gridsample, pipeline, registry, runners, validation
from stn_keras.ops import portable
from stn_keras.ops.validation import is_int

TF2ONNX_MAX_OPSET = 18  # the newest opset tf2onnx 1.17 emits
DEFAULT_OPSET = 18
NATIVE_OPSET = 19  # images; volumes need onnx_gridsample.VOLUME_OPSET
# Said in the report of a native graph whose GridSample spells opset 20's modes.
TENSORRT_CAVEAT = (
    "TensorRT reads opset-20 GridSample 'linear'/'cubic' as nearest (NVIDIA/TensorRT#4646): "
    "export images at opset 19 for TensorRT"
)


def check_opset(opset, native_gridsample):
    """Raise `ValueError` unless `opset` is one the (native) ONNX export can produce."""
    minimum = onnx_gridsample.GRID_SAMPLE_OPSET if native_gridsample else 13
    newest = onnx.defs.onnx_opset_version()
    if not is_int(opset) or not minimum <= opset <= newest:
        what = "with native GridSample " if native_gridsample else ""
        raise ValueError(
            f"Invalid value for argument `opset`. Expected an int in [{minimum}, {newest}] {what}"
            f"(onnx {onnx.__version__}). Received: opset={opset!r}"
        )
    return int(opset)


@contextlib.contextmanager
def _optimizer_copies_the_graph_once():
    """Within: tf2onnx's graph optimizer copies the graph once, not before each of its ~24 passes.

    tf2onnx deep-copies the whole graph before every optimizer pass so that a pass that raises
    can be undone (its `TF2ONNX_CATCH_ERRORS` switch, which would turn that off, compares the
    variable's name rather than its value); on a graph of many samplers the copies take a third of
    the conversion. Here the passes run on the graph itself after one copy, and if any raises,
    tf2onnx's own careful loop reruns on that copy: the same graph either way.
    """
    from tf2onnx import optimizer

    careful = optimizer.optimize_graph

    def optimize_graph(graph, catch_errors=True, optimizers=None):
        pristine = copy.deepcopy(graph)
        try:
            return careful(graph, False, optimizers=optimizers)
        except Exception:  # any pass's failure, as tf2onnx's loop catches it
            return careful(pristine, catch_errors, optimizers=optimizers)

    optimizer.optimize_graph = optimize_graph
    try:
        yield
    finally:
        optimizer.optimize_graph = careful


def _frozen_call(model):
    """The model's inference call traced on its input specs, variables frozen to constants."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    specs = validation.input_specs(model)
    signature = [tf.TensorSpec(shape, dtype, name=name) for name, shape, dtype in specs]

    @tf.function
    def call(*inputs):
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        return keras.tree.flatten(outputs)  # the order every artifact returns them in

    with portable.export_kernel():  # the samplers in ops every runtime has
        concrete = call.get_concrete_function(*signature)
    return convert_variables_to_constants_v2(concrete), specs


def default_opset(samplers, native_gridsample):
    """The opset an export takes when none is given (module docstring)."""
    if not native_gridsample:
        return DEFAULT_OPSET
    volumes = any(s.spatial_dims == 3 for s in samplers)
    return onnx_gridsample.VOLUME_OPSET if volumes else NATIVE_OPSET


def model_opset(proto):
    """The default-domain opset of an ONNX model."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def tensorrt_caveat(proto):
    """`TENSORRT_CAVEAT` when a GridSample of `proto` spells opset 20's "linear" or "cubic"."""
    renamed = {b"linear", b"cubic"}
    for node in proto.graph.node:
        if node.op_type == "GridSample" and any(
            a.name == "mode" and a.s in renamed for a in node.attribute
        ):
            return TENSORRT_CAVEAT
    return None


def _check_volumes(samplers, target):
    """Raise when a volume sampler would be a GridSample that `target` cannot run."""
    volumes = [s.scope for s in samplers if s.spatial_dims == 3]
    if volumes and not target.volume_grid_sample:
        raise ValueError(
            f"Target {target.name!r} has no 5-D (volume) GridSample, which {len(volumes)} "
            f"sampler(s) would need ({volumes[0]!r}...): export them with format 'onnx' (the "
            "gather path), which it runs."
        )


def convert(model, opset=None, native_gridsample=False, kept=None, target=None):
    """Convert `model` to an `onnx.ModelProto` (not validated; see `export_onnx`).

    Args:
        model: a Keras model with known inputs (see `validation.input_specs`).
        opset: the ONNX opset, or `None` for `default_opset`: 18 (`DEFAULT_OPSET`), or with
            `native_gridsample` 19 for images and 20 with a volume sampler. Defaults to `None`.
        native_gridsample: whether to replace each `grid_sample` by GridSample (and AffineGrid where
            the grid is affine and the opset has it). Defaults to `False`.
        kept: a list to which each sampler that stays on the gather path appends
            `(scope, short reason, long reason)`, or `None`. Defaults to `None`.
        target: the `registry.Target` (`None`: onnxruntime); with `native_gridsample`, one
            without a volume GridSample refuses a volume sampler. Defaults to `None`.

    Returns:
        `(model_proto, rewrites)`: the ONNX model, inputs named after the Keras inputs and outputs
        `output_0`, `output_1`, ... in the model's flattened output order, its batch axis dynamic;
        `rewrites` lists `(scope, mode, used_affine_grid)` for each native sampler (a sampler that
        GridSample cannot run stays on the gather path, with a warning).

    Raises:
        ValueError: for an invalid `opset`, a model with unknown inputs, or, with `native_gridsample`,
            a model without a sampler or a volume sampler `target` cannot run natively.
    """
    import tf2onnx

    try:  # tf2onnx 1.17 and numpy 2 (what Keras's own ONNX exporter does first).
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # its probe of `np.object`
            patch_tf2onnx()
    except ImportError:
        pass

    if opset is not None:
        opset = check_opset(opset, native_gridsample)
    frozen, specs = _frozen_call(model)
    input_names = [t.name for t in frozen.inputs]
    output_names = [t.name for t in frozen.outputs]
    rename = {t: name for t, (name, _, _) in zip(input_names, specs, strict=True)}
    rename.update({t: f"output_{i}" for i, t in enumerate(output_names)})

    samplers, replaced = [], []
    if native_gridsample:
        samplers = onnx_gridsample.find_samplers(frozen.graph)
        if not samplers:
            raise ValueError(
                f"Model {model.name!r} has no `stn_keras.grid_sample` to replace by GridSample."
            )
        _check_volumes(samplers, target or registry.TARGETS["onnxruntime"])
    if opset is None:
        opset = default_opset(samplers, native_gridsample)
    # Each affine sampler's theta stays a graph output through the conversion, so its name survives.
    thetas = sorted({s.theta for s in samplers if s.theta} - set(input_names) - set(output_names))
    for s in samplers:  # tf2onnx renames the tensors before its rewriters run
        for field in ("images", "grid", "output", "theta"):
            setattr(s, field, rename.get(getattr(s, field), getattr(s, field)))
    with tf.device("/cpu:0"), _optimizer_copies_the_graph_once():
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(),
            input_names=input_names,
            output_names=output_names + thetas,
            opset=min(opset, TF2ONNX_MAX_OPSET),
            custom_rewriter=[onnx_gridsample.native_rewriter(samplers, replaced, opset, kept)]
            if samplers
            else None,
            tensors_to_rename=rename,
        )
    if opset > TF2ONNX_MAX_OPSET:
        proto = version_converter.convert_version(proto, opset)
    rewrites = []
    if samplers:
        rewrites = onnx_gridsample.use_affine_grids(proto, replaced, opset)
        outputs = [o for o in proto.graph.output if o.name in rename.values()]
        del proto.graph.output[:]
        proto.graph.output.extend(outputs)
        onnx_gridsample.sort_nodes(proto)  # before pruning, which walks the nodes in order
        onnx_gridsample.prune(proto)
    onnx.checker.check_model(proto)
    return proto, rewrites


def native_summary(rewrites, kept):
    """The report's account of the native path: "2 samplers: 1 GridSample (1 with AffineGrid),
    1 on the gather path (float16 images)"."""
    total = len(rewrites) + len(kept)
    affine = sum(used_affine_grid for _, _, used_affine_grid in rewrites)
    line = (
        f"{total} sampler{'s' if total != 1 else ''}: {len(rewrites)} GridSample "
        f"({affine} with AffineGrid)"
    )
    if kept:
        reasons = ", ".join(sorted({short for _, short, _ in kept}))
        line += f", {len(kept)} on the gather path ({reasons})"
    return line


def check_target_opset(target, opset, native_gridsample):
    """Raise unless `target` reads the native GridSample of `opset` right."""
    if native_gridsample and target.max_opset is not None and opset > target.max_opset:
        raise ValueError(
            f"Target {target.name!r} reads GridSample right up to opset {target.max_opset} "
            f"({TENSORRT_CAVEAT if target.name == 'tensorrt' else 'newer modes are unknown to it'}). "
            f"Received: opset={opset}"
        )


def _prepare(model, target, native_gridsample, opset=None, require_native=False):
    """The `pipeline.Plan` of an ONNX export for `target` (see `prepare_gather`, `prepare_native`)."""
    if opset is not None:
        opset = check_opset(opset, native_gridsample)
        check_target_opset(target, opset, native_gridsample)
    kept = []
    proto, rewrites = convert(
        model, opset=opset, native_gridsample=native_gridsample, kept=kept, target=target
    )
    if require_native and kept:
        raise ValueError(
            f"{len(kept)} sampler(s) cannot be a native GridSample: "
            + "; ".join(f"{scope!r} ({short})" for scope, short, _ in kept)
            + ". Nothing was written (without --require-native they stay on the gather path)."
        )
    notes = [f"opset {model_opset(proto)}"]
    if native_gridsample:
        notes.append(native_summary(rewrites, kept))
        notes.append(tensorrt_caveat(proto))
    notes.append(target.caveat)
    runner = runners.RUNNERS[target.runtime]
    return pipeline.Plan(
        write=lambda staging: onnx.save(proto, staging),
        runner=runner,
        notes=[n for n in notes if n],
        gather_path=[(scope, short) for scope, short, _ in kept],
    )


def prepare_gather(model, specs, target, opset=None):
    """The `pipeline.Plan` of format `"onnx"`: every sampler as its gather decomposition."""
    return _prepare(model, target, False, opset)


def prepare_native(model, specs, target, opset=None, require_native=False):
    """The `pipeline.Plan` of format `"onnx-native"`: each sampler as GridSample where it can be."""
    return _prepare(model, target, True, opset, require_native)


def export_onnx(
    model,
    path,
    *,
    opset=None,
    native_gridsample=False,
    require_native=False,
    force=False,
    validate=True,
    batch_sizes=validation.DEFAULT_BATCH_SIZES,
    atol=validation.DEFAULT_ATOL,
):
    """Export `model` to an ONNX file with a dynamic batch size, validated in onnxruntime.

    Args:
        model: a Keras model with known inputs (see `validation.input_specs`).
        path: the `.onnx` file to write.
        opset: the ONNX opset. Defaults to `None`: `DEFAULT_OPSET` (18), or with
            `native_gridsample` `NATIVE_OPSET` (19, whose GridSample every runtime we know reads
            right) for images and 20 when a sampler takes a volume (5-D GridSample).
        native_gridsample: whether to emit ONNX's native `GridSample` (and `AffineGrid` for affine
            grids, opset 20+) in place of the gather decomposition of each sampler; the numbers are the
            same, onnxruntime runs it faster. A sampler GridSample cannot run (float16 images, a
            volume below opset 20) stays on the gather path: a warning names it, and the report's
            runtime line and `gather_path` count it. Defaults to `False`.
        require_native: with `native_gridsample`, refuse (`ValueError`, nothing written) when any
            sampler would stay on the gather path. Defaults to `False`.
        force: whether to replace an existing `path`. Defaults to `False`.
        validate: whether to run the file in onnxruntime and compare it with the model before moving
            it into place. Defaults to `True`.
        batch_sizes: batch sizes to validate at. Defaults to `(1, 5)`.
        atol: validation tolerance (see `validation.DEFAULT_ATOL`). Defaults to `1e-4`.

    Returns:
        The `ParityReport` (its `gather_path` lists `(scope, reason)` of every sampler the native
        path left on the gather path), or `None` with `validate=False`.

    Raises:
        FileExistsError: if `path` exists and `force` is false.
        PermissionError: if the directory that should hold `path` is not writable (checked before
            converting).
        ValueError: for an invalid `opset`, a `path` that `files.check_target` refuses, a model
            that cannot be converted (see `convert`), or with `require_native` a sampler that
            GridSample cannot run.
        ValidationError: if onnxruntime's results do not match the model; nothing is written then.
    """
    if require_native and not native_gridsample:
        raise ValueError("`require_native=True` (--require-native) needs `native_gridsample=True`.")
    options = {"require_native": True} if require_native else {}
    return pipeline.export(
        model,
        path,
        "onnx-native" if native_gridsample else "onnx",
        opset=opset,
        force=force,
        validate=validate,
        batch_sizes=batch_sizes,
        atol=atol,
        **options,
    )
