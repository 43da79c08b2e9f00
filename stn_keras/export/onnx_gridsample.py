"""Replace the gather decomposition of each `grid_sample` in an ONNX graph by ONNX's native ops.

tf2onnx converts our sampler into Gather/Floor/Cast/Min/Max arithmetic that runs everywhere; runtimes
with ONNX's `GridSample` (opset 16+) run the native op several times faster. The rewrite reads what the
ops recorded in the traced TensorFlow graph (`stn_keras.ops.recording`) and never looks inside a
sampler:

1. Each `grid_sample` call ran in a name scope that spells its mode and marked its `images`, `grid` and
   `output`; each `affine_grid` marked its `theta` and `grid`. `find_samplers` reads them. Each sampler's
   output is rewired to `Transpose(NHWC->NCHW) -> GridSample -> Transpose(NCHW->NHWC)` (NDHWC and
   NCDHW for a volume, from opset 20); the sampler is replaced inside tf2onnx's conversion, before
   its optimisers run (`native_rewriter`).
2. When a sampler's grid is an `affine_grid`'s output, the opset has `AffineGrid` and the output size is
   static, the grid becomes `AffineGrid(theta)`. Not with `align_corners=True` and a 1-pixel output
   axis: onnxruntime puts a lone pixel at -1 there, PyTorch at 0, so that grid stays explicit. `theta`
   is kept as an extra graph output through the conversion so that its name survives
   (`use_affine_grids`).
3. Everything no longer needed (the gather decomposition, the explicit affine grid) is dropped.

A sampler that GridSample cannot run (onnxruntime's CPU kernel takes float32 and float64 only; a
volume below opset 20) stays on the gather path, with a warning that names it. The caller validates
the result end to end against Keras.
"""

import dataclasses
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stn_keras.ops import recording

# Our interpolation names -> ONNX GridSample modes, by opset (opset 20 renamed them).
_ONNX_MODES = {
    16: {"bilinear": "bilinear", "nearest": "nearest", "bicubic": "bicubic"},
    20: {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"},
}
GRID_SAMPLE_OPSET = 16  # first opset with GridSample
AFFINE_GRID_OPSET = 20  # first opset with AffineGrid
VOLUME_OPSET = 20  # first opset whose GridSample and AffineGrid take volumes (5-D)
# onnxruntime's CPU GridSample runs these, with the grid in the images' dtype.
_ORT_DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}


@dataclasses.dataclass
class SamplerBoundary:
    """One `grid_sample` call in a TensorFlow graph, as its ops recorded it (tensor names, `x:0`).

    Attributes:
        scope: the sampler's name scope, e.g. `model/warp/grid_sample.bilinear.zeros.corners0/`.
        images, grid, output: its marked boundary tensors, each as the tensor behind its marker
            (tf2onnx drops `Identity` ops before any rewriter sees the graph).
        mode: `(interpolation, padding_mode, align_corners)`.
        dtypes: the dtype names of `images`, `grid` and `theta` (`None` without one), e.g. `"float32"`.
        size: the static `(H_out, W_out)` (`(D_out, H_out, W_out)` for a volume), or `None` when
            any is dynamic.
        theta: the marked `theta` of the `affine_grid` that made `grid`, or `None`.
        affine_align_corners: that `affine_grid`'s `align_corners`, or `None`.
        spatial_dims: 2 for images, 3 for volumes.
    """

    scope: str
    images: str
    grid: str
    output: str
    mode: tuple
    dtypes: tuple = ()
    size: tuple | None = None
    theta: str | None = None
    affine_align_corners: bool | None = None
    spatial_dims: int = 2


def _source(tensor):
    """The tensor behind `tensor`'s chain of identities: what tf2onnx keeps (it drops `Identity` and
    `IdentityN`, which `tf.custom_gradient` wraps around a function's outputs)."""
    while tensor.op.type in ("Identity", "IdentityN"):
        tensor = tensor.op.inputs[tensor.value_index if tensor.op.type == "IdentityN" else 0]
    return tensor


def _affine_source(grid):
    """`(theta tensor name, align_corners)` when `grid` is an `affine_grid`'s marked output, else `None`."""
    source = grid.op.inputs[0] if grid.op.type == "Identity" else None
    if source is None or source.op.type != "Identity":
        return None
    record = recording.parse_scope(source.op.name)
    if record is None or record["kind"] != recording.AFFINE_GRID:
        return None
    if source.op.name != record["prefix"] + "grid":
        return None
    return record["prefix"] + "theta:0", record["align_corners"]


def find_samplers(graph):
    """Every `grid_sample` call in a (frozen) `tf.Graph`, read from what the op recorded.

    Args:
        graph: the `tf.Graph` of a concrete function, variables frozen to constants.

    Returns:
        A list of `SamplerBoundary`, in graph order.
    """
    samplers = []
    for op in graph.get_operations():
        record = recording.parse_scope(op.name)
        if (
            op.type != "Identity"
            or record is None
            or record["kind"] != recording.SAMPLER
            or op.name != record["prefix"] + "output"
        ):
            continue
        prefix = record["prefix"]
        grid = graph.get_tensor_by_name(prefix + "grid:0")
        spatial = grid.shape.rank - 2
        size = tuple(grid.shape[1:-1]) if grid.shape[1:-1].is_fully_defined() else None
        affine = _affine_source(grid)
        theta, affine_corners = affine if affine is not None else (None, None)
        theta_dtype = None
        if theta is not None:
            theta = _source(graph.get_tensor_by_name(theta))
            theta, theta_dtype = theta.name, theta.dtype.name
        images = graph.get_tensor_by_name(prefix + "images:0")
        samplers.append(
            SamplerBoundary(
                scope=prefix,
                images=_source(images).name,
                grid=_source(grid).name,
                output=_source(op.outputs[0]).name,
                mode=(record["interpolation"], record["padding_mode"], record["align_corners"]),
                dtypes=(images.dtype.name, grid.dtype.name, theta_dtype),
                size=size,
                theta=theta,
                affine_align_corners=affine_corners,
                spatial_dims=spatial,
            )
        )
    return samplers


def _graph_inputs_of(node):
    """Every tensor name `node` reads, including those its subgraphs (If/Loop bodies) read."""
    names = set(node.input)
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in sub.node:
                names |= _graph_inputs_of(inner)
    return names


def prune(model):
    """Drop the nodes and initializers no graph output depends on (in place)."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed |= _graph_inputs_of(node)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def sort_nodes(model):
    """Order the graph's nodes so that each comes after the producers of what it reads (in place).

    `use_affine_grids` inserts each `AffineGrid` before its `GridSample`, but its `theta` may be
    produced later in tf2onnx's order (nothing else needed it there; tf2onnx merges the identical
    thetas of several samplers, in an order that varies from run to run), and `prune` reads the
    nodes in order. The sort is stable: every other node keeps its place.
    """
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if set(n.input) <= available]
        if not ready:
            raise ValueError("The ONNX graph has a cycle or reads a tensor nothing produces.")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        taken = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in taken]
    del graph.node[:]
    graph.node.extend(ordered)


def _const(graph, name, values):
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def _can_use_affine_grid(boundary):
    """Whether `boundary`'s grid can become ONNX's `AffineGrid` of its theta (module docstring, 2.)."""
    if boundary.theta is None or boundary.size is None:
        return False
    images_dtype, _, theta_dtype = boundary.dtypes
    if theta_dtype != images_dtype:
        return False
    return not (boundary.affine_align_corners and 1 in boundary.size)


def _native_name(boundary, what):
    return boundary.scope.rstrip("/") + "/native/" + what


def _refusal(boundary, opset):
    """`(short, long)` reasons GridSample cannot replace `boundary` at `opset`, or `None` when it
    can: the short one for the report line ("float16 images"), the long one for the warning."""
    images_dtype, grid_dtype, _ = boundary.dtypes
    if images_dtype not in _ORT_DTYPES or grid_dtype != images_dtype:
        return (
            f"{images_dtype} images" if images_dtype not in _ORT_DTYPES else f"{grid_dtype} grid",
            f"samples {images_dtype} images with a {grid_dtype} grid; onnxruntime's GridSample "
            "needs float32 or float64 for both",
        )
    if boundary.spatial_dims == 3 and opset < VOLUME_OPSET:
        return (
            f"a volume below opset {VOLUME_OPSET}",
            f"samples a volume, which GridSample takes from opset {VOLUME_OPSET} on (opset {opset})",
        )
    return None


# The warning's pattern, for `warnings.filterwarnings` (the command line always shows it).
GATHER_PATH_WARNING = r"The sampler in scope .* so it stays on the gather path"


def gather_path_message(scope, reason):
    """The warning for a sampler that stays on the gather path."""
    return f"The sampler in scope {scope!r} {reason}, so it stays on the gather path."


def native_rewriter(samplers, rewrites, opset, kept=None):
    """A tf2onnx rewriter that replaces each sampler by `Transpose -> GridSample -> Transpose`.

    It runs on tf2onnx's graph before tf2onnx maps and optimises it, so every consumer of a sampler's
    marked output is rewired to GridSample before tf2onnx can merge or rename anything; the gather
    decomposition is then dead and dropped. GridSample is emitted at opset 16 (tf2onnx's own opset is
    at most 18); `onnx.version_converter` renames its modes for opset 20, where it also takes volumes
    (NCDHW, transposed from and back to channels-last like images).

    Args:
        samplers: the `SamplerBoundary`s, with TensorFlow tensor names.
        rewrites: a list the rewriter appends to: one `(boundary, used_affine_grid_candidate)` per
            sampler replaced (see `use_affine_grids`).
        opset: the opset the model is exported at; a volume sampler below `VOLUME_OPSET` stays on
            the gather path, with a warning.
        kept: a list the rewriter appends `(scope, short reason, long reason)` to for each
            sampler that stays on the gather path, or `None`. Defaults to `None`.

    Returns:
        A function `(graph, ops) -> ops` for `tf2onnx.convert`'s `custom_rewriter`.
    """

    def rewrite(graph, ops):
        for boundary in samplers:
            if graph.get_node_by_output(boundary.output) is None:
                continue
            refusal = _refusal(boundary, opset)
            if refusal is not None:
                warnings.warn(gather_path_message(boundary.scope, refusal[1]), stacklevel=2)
                if kept is not None:
                    kept.append((boundary.scope, *refusal))
                continue
            dtype = _ORT_DTYPES[boundary.dtypes[0]]
            interpolation, padding_mode, align_corners = boundary.mode
            spatial = boundary.spatial_dims
            channels_first = graph.make_node(
                "Transpose",
                [boundary.images],
                attr={"perm": [0, spatial + 1, *range(1, spatial + 1)]},
                name=_native_name(boundary, "images_nchw"),
                dtypes=[dtype],
            )
            sampled = graph.make_node(
                "GridSample",
                [channels_first.output[0], boundary.grid],
                attr={
                    "mode": _ONNX_MODES[16][interpolation],
                    "padding_mode": padding_mode,
                    "align_corners": int(align_corners),
                },
                name=_native_name(boundary, "GridSample"),
                dtypes=[dtype],
            )
            channels_last = graph.make_node(
                "Transpose",
                [sampled.output[0]],
                attr={"perm": [0, *range(2, spatial + 2), 1]},
                name=_native_name(boundary, "sampled_nhwc"),
                dtypes=[dtype],
            )
            graph.replace_all_inputs(boundary.output, channels_last.output[0])
            rewrites.append((boundary, _can_use_affine_grid(boundary)))
        return graph.get_nodes()

    return rewrite


def use_affine_grids(model, rewrites, opset):
    """Feed each rewritten GridSample whose grid is affine from `AffineGrid(theta)`, in place.

    Args:
        model: the converted `onnx.ModelProto` at `opset`, each candidate's `theta` still a graph
            output.
        rewrites: what `native_rewriter` appended, with ONNX tensor names.
        opset: the model's opset; `AffineGrid` needs 20.

    Returns:
        A list of `(scope, (interpolation, padding_mode, align_corners), used_affine_grid)`, one per
        GridSample in `model` (tf2onnx merges two samplers that compute the same value).
    """
    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    report = []
    for boundary, candidate in rewrites:
        sampler = nodes.get(_native_name(boundary, "GridSample"))
        if sampler is None:
            continue
        affine = candidate and opset >= AFFINE_GRID_OPSET
        if affine:
            prefix = _native_name(boundary, "affine_grid")
            new_nodes = [
                helper.make_node("Shape", [boundary.theta], [f"{prefix}/theta_shape"]),
                helper.make_node(
                    "Slice",
                    [
                        f"{prefix}/theta_shape",
                        _const(graph, f"{prefix}/zero", [0]),
                        _const(graph, f"{prefix}/one", [1]),
                    ],
                    [f"{prefix}/batch"],
                ),
                helper.make_node(
                    "Concat",
                    [f"{prefix}/batch", _const(graph, f"{prefix}/chw", [1, *boundary.size])],
                    [f"{prefix}/size"],
                    axis=0,
                ),
                helper.make_node(
                    "AffineGrid",
                    [boundary.theta, f"{prefix}/size"],
                    [f"{prefix}/grid"],
                    align_corners=int(boundary.affine_align_corners),
                ),
            ]
            index = list(graph.node).index(sampler)
            for offset, node in enumerate(new_nodes):
                graph.node.insert(index + offset, node)
            sampler.input[1] = f"{prefix}/grid"
        report.append((boundary.scope, boundary.mode, affine))
    return report
