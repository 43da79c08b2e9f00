"""Replace the gather decomposition of each `grid_sample` in an ONNX graph by ONNX's native ops.

tf2onnx converts our sampler into Gather/Floor/Cast/Min/Max arithmetic that runs everywhere; runtimes
with ONNX's `GridSample` (opset 16+) run the native op several times faster. The rewrite works on the
sampler's *boundary*, never on the op sequence inside it:

1. In the traced TensorFlow graph, every op that `stn_keras.grid_sample` creates lives in its
   `grid_sample` name scope. The scope's external inputs are the images `(B, H, W, C)` and the grid
   `(B, H_out, W_out, 2)`; the one tensor it hands out is the sampled output. The images are the input
   that reaches the `params` of a gather (a gather sampler reads pixels out of them).
   These tensors are converted as extra graph outputs, so tf2onnx keeps their names.
2. The mode (interpolation, padding, align_corners) is not in the graph, so it is measured: the
   sampler's ONNX subgraph, cut out between those tensors, is run on random images and a random grid
   reaching outside the image, and compared with `GridSample` in each of the 18 modes; exactly one
   must match.
3. When the grid is computed from a `(B, 2, 3)` tensor `theta` and the opset has `AffineGrid`, the
   grid is replaced by `AffineGrid(theta)`, after checking numerically that it reproduces the grid
   and with which `align_corners`.
4. The subgraph's output is rewired to `Transpose(NHWC->NCHW) -> GridSample -> Transpose(NCHW->NHWC)`
   and everything no longer needed is dropped.

The caller validates the rewritten model end to end against Keras.
"""

import dataclasses
import itertools
import re

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from stn_keras.ops.coordinates import PADDING_MODES
from stn_keras.ops.sampling import INTERPOLATIONS

# Our interpolation names -> ONNX GridSample modes, by opset (opset 20 renamed them).
_ONNX_MODES = {
    16: {"bilinear": "bilinear", "nearest": "nearest", "bicubic": "bicubic"},
    20: {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"},
}
GRID_SAMPLE_OPSET = 16  # first opset with GridSample
AFFINE_GRID_OPSET = 20  # first opset with AffineGrid

_SCOPE = re.compile(r"(?:^|/)grid_sample(?:_\d+)?/")
_GATHER_OPS = {"GatherV2", "GatherNd", "ResourceGather", "Gather"}
_ORT_DTYPES = {TensorProto.FLOAT, TensorProto.DOUBLE}  # onnxruntime's CPU GridSample


@dataclasses.dataclass
class SamplerBoundary:
    """The tensors around one `grid_sample` call in a TensorFlow graph (tensor names, e.g. `x:0`)."""

    scope: str
    images: str
    grid: str
    output: str
    theta: str | None = None

    def tensors(self):
        """The boundary tensors to keep as graph outputs through the conversion."""
        return [t for t in (self.images, self.grid, self.output, self.theta) if t is not None]


def _depends_on_inputs(graph):
    """Names of the ops of a `tf.Graph` whose value depends on a placeholder (not constant-only)."""
    live = set()
    for op in graph.get_operations():  # topological order
        if op.type == "Placeholder" or any(t.op.name in live for t in op.inputs):
            live.add(op.name)
    return live


def _reaches_gather_params(tensor, scope_ops):
    """Whether `tensor` flows, inside the scope, into the `params` input of a gather."""
    frontier, seen = [tensor], set()
    while frontier:
        t = frontier.pop()
        for consumer in t.consumers():
            if consumer.name not in scope_ops:
                continue
            if consumer.type in _GATHER_OPS and consumer.inputs[0] is t:
                return True
            for out in consumer.outputs:
                if out.name not in seen:
                    seen.add(out.name)
                    frontier.append(out)
    return False


def _affine_theta(grid, live, max_depth=16):
    """The nearest `(B, 2, 3)` tensor the grid is computed from, a candidate affine `theta`.

    Only a candidate: `replace_samplers` uses it only after checking numerically that
    `AffineGrid(theta)` reproduces the grid.
    """
    frontier, seen = [t for t in grid.op.inputs], set()
    for _ in range(max_depth):
        found = [
            t
            for t in frontier
            if t.op.name in live and t.shape.rank == 3 and tuple(t.shape[1:]) == (2, 3)
        ]
        if found:
            return found[0].name
        seen.update(t.name for t in frontier)
        frontier = [
            u for t in frontier if t.op.name in live for u in t.op.inputs if u.name not in seen
        ]
    return None


def find_samplers(graph):
    """The boundary of every `grid_sample` call in a (frozen) `tf.Graph`.

    Args:
        graph: the `tf.Graph` of a concrete function, variables frozen to constants.

    Returns:
        A list of `SamplerBoundary`, in graph order.

    Raises:
        ValueError: if a `grid_sample` scope does not have exactly two varying inputs (images and grid)
            and one output.
    """
    scopes = {}
    for op in graph.get_operations():
        match = _SCOPE.search(op.name)
        if match:
            scopes.setdefault(op.name[: match.end()], set()).add(op.name)
    live = _depends_on_inputs(graph)
    samplers = []
    for scope, names in scopes.items():
        ops = [graph.get_operation_by_name(n) for n in names]
        inputs = {t.name: t for op in ops for t in op.inputs if t.op.name not in names}
        inputs = {k: t for k, t in inputs.items() if t.op.name in live}
        outputs = {
            t.name: t
            for op in ops
            for t in op.outputs
            if any(c.name not in names for c in t.consumers())
        }
        if len(inputs) != 2 or len(outputs) != 1:
            raise ValueError(
                f"Cannot find the sampler in scope {scope!r}: expected 2 varying inputs (images, grid) "
                f"and 1 output. Received: inputs={sorted(inputs)}, outputs={sorted(outputs)}"
            )
        (output,) = outputs.values()
        gathered = [t for t in inputs.values() if _reaches_gather_params(t, names)]
        if len(gathered) != 1:
            raise ValueError(
                f"Cannot tell the images from the grid in scope {scope!r}: "
                f"{len(gathered)} of its inputs are gathered from."
            )
        (images,) = gathered
        (grid,) = (t for t in inputs.values() if t is not images)
        if images.shape.rank != 4 or grid.shape.rank != 4 or grid.shape[-1] != 2:
            raise ValueError(
                f"The sampler in scope {scope!r} does not take images (B, H, W, C) and a grid "
                f"(B, H_out, W_out, 2). Received: images.shape={images.shape}, grid.shape={grid.shape}"
            )
        theta = _affine_theta(grid, live)
        samplers.append(SamplerBoundary(scope, images.name, grid.name, output.name, theta))
    return samplers


def session_of(model_or_path):
    """An onnxruntime CPU session of an ONNX model (a `ModelProto` or a path)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model_or_path
    if isinstance(model_or_path, onnx.ModelProto):
        source = model_or_path.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _grid_sample_modes_model(dtype, opset):
    """An ONNX model sampling NHWC images with GridSample in all 18 modes: `images, grid -> 18 outputs`."""
    nodes = [helper.make_node("Transpose", ["images"], ["x"], perm=[0, 3, 1, 2])]
    outputs = []
    for i, (mode, padding, corners) in enumerate(_all_modes()):
        nodes.append(
            helper.make_node(
                "GridSample",
                ["x", "grid"],
                [f"y{i}"],
                mode=_ONNX_MODES[opset][mode],
                padding_mode=padding,
                align_corners=int(corners),
            )
        )
        nodes.append(helper.make_node("Transpose", [f"y{i}"], [f"out{i}"], perm=[0, 2, 3, 1]))
        outputs.append(helper.make_tensor_value_info(f"out{i}", dtype, None))
    graph = helper.make_graph(
        nodes,
        "grid_sample_modes",
        [helper.make_tensor_value_info(n, dtype, None) for n in ("images", "grid")],
        outputs,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _all_modes():
    return list(itertools.product(INTERPOLATIONS, PADDING_MODES, (False, True)))


def _identify_mode(model, boundary, images, grid_shape, dtype, opset):
    """Measure which GridSample mode the sampler's subgraph computes (see the module docstring)."""
    sub = onnx.utils.Extractor(model).extract_model(
        [boundary.images, boundary.grid], [boundary.output]
    )
    rng = np.random.default_rng(0)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    images = rng.standard_normal(images.shape).astype(np_dtype)
    # Points up to 1.6 out reach every padding rule; no point sits on a pixel centre or a tie.
    grid = rng.uniform(-1.6, 1.6, grid_shape).astype(np_dtype)
    feeds = {boundary.images: images, boundary.grid: grid}
    (expected,) = session_of(sub).run([boundary.output], feeds)
    candidates = session_of(_grid_sample_modes_model(dtype, opset)).run(
        None, {"images": images, "grid": grid}
    )
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max(initial=0.0)))
    matches = [
        mode
        for mode, got in zip(_all_modes(), candidates, strict=True)
        if got.shape == expected.shape and np.abs(got - expected).max(initial=0.0) <= tolerance
    ]
    if len(matches) != 1:
        raise ValueError(
            f"The sampler in scope {boundary.scope!r} matches {len(matches)} GridSample modes "
            f"({matches}); cannot replace it by GridSample."
        )
    return matches[0]


def _affine_align_corners(theta, grid):
    """The `align_corners` with which `affine_grid(theta)` equals `grid`, or `None` if neither does."""
    _, height, width, _ = grid.shape
    for align_corners in (False, True):

        def axis(n, align_corners=align_corners):
            if align_corners:
                return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
            return (2.0 * np.arange(n) + 1.0) / n - 1.0

        y, x = np.meshgrid(axis(height), axis(width), indexing="ij")
        base = np.stack([x, y, np.ones_like(x)], axis=-1)  # HxWx3
        expected = np.einsum("hwk,bjk->bhwj", base, theta.astype(np.float64))  # BxHxWx2
        tolerance = 1e-5 * max(1.0, float(np.abs(expected).max(initial=0.0)))
        if np.abs(expected - grid).max(initial=0.0) <= tolerance:
            return align_corners
    return None


def _producer_index(graph, tensor):
    for i, node in enumerate(graph.node):
        if tensor in node.output:
            return i
    raise ValueError(f"No node produces tensor {tensor!r}.")


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


def _value_numbers(graph):
    """Number every tensor of `graph` so that equal numbers mean provably equal values.

    Two tensors get the same number when they are produced by nodes of the same type and attributes
    from equally numbered inputs (or are equal initializers); an Identity passes its input's number
    through. tf2onnx merges duplicated nodes, so the consumers inside one sampler may read a
    duplicate of the boundary tensor kept as a graph output; this finds those duplicates.
    """
    ids, numbers = {}, {}

    def intern(key):
        return ids.setdefault(key, len(ids))

    for init in graph.initializer:
        data = numpy_helper.to_array(init)
        numbers[init.name] = intern(("init", data.dtype.str, data.shape, data.tobytes()))
    for value in graph.input:
        numbers.setdefault(value.name, intern(("input", value.name)))
    for node in graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
            numbers[node.output[0]] = numbers.get(node.input[0], intern(("outer", node.input[0])))
            continue
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            key = ("unique", node.name, tuple(node.output))
        else:
            key = (
                node.domain,
                node.op_type,
                tuple(sorted(a.SerializeToString() for a in node.attribute)),
                tuple(numbers.get(i, intern(("outer", i))) for i in node.input),
            )
        node_id = intern(key)
        for k, out in enumerate(node.output):
            numbers[out] = intern((node_id, k))
    return numbers


def canonicalize(model, tensors):
    """Make every consumer of a value equal to one of `tensors` read that tensor by name (in place).

    Args:
        model: an `onnx.ModelProto`.
        tensors: names of tensors (e.g. the samplers' boundary tensors).

    Returns:
        `{name: canonical name}` for each of `tensors`: the first of `tensors` with an equal value.
    """
    graph = model.graph
    numbers = _value_numbers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    canonical = {}
    for name in tensors:
        root = name  # the source of an Identity chain, so no rewiring can close a cycle
        while root in producer and producer[root].op_type == "Identity":
            root = producer[root].input[0]
        canonical.setdefault(numbers[name], root)
    for node in graph.node:
        for i, name in enumerate(node.input):
            target = canonical.get(numbers.get(name))
            if target is not None and target != name and target not in node.output:
                node.input[i] = target
    # A graph output equal to one of `tensors` (a duplicate tf2onnx could not merge) becomes a copy.
    for output in graph.output:
        target = canonical.get(numbers.get(output.name))
        if target is not None and target != output.name:
            index = _producer_index(graph, output.name)
            if len(graph.node[index].output) == 1:
                graph.node[index].CopyFrom(helper.make_node("Identity", [target], [output.name]))
    topological_sort(model)
    return {name: canonical[numbers[name]] for name in tensors}


def topological_sort(model):
    """Reorder the nodes of `model` so each comes after the producers of its inputs (in place)."""
    graph = model.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    order, state = [], [0] * len(graph.node)  # 0 new, 1 open, 2 done
    for root in range(len(graph.node)):
        stack = [root]
        while stack:
            i = stack[-1]
            if state[i] == 2:
                stack.pop()
                continue
            if state[i] == 0:
                state[i] = 1
                deps = [producer[n] for n in _graph_inputs_of(graph.node[i]) if n in producer]
                stack.extend(d for d in deps if state[d] == 0)
                continue
            state[i] = 2
            order.append(graph.node[i])
            stack.pop()
    nodes = list(order)
    del graph.node[:]
    graph.node.extend(nodes)


def _const(graph, name, values):
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def replace_samplers(model, samplers, values, opset, use_affine_grid=True):
    """Rewrite every sampler of `model` to native GridSample (and AffineGrid) nodes, in place.

    Args:
        model: the converted `onnx.ModelProto`, with every boundary tensor still a graph output, already
            at `opset` (>= 16).
        samplers: the `SamplerBoundary`s, with ONNX tensor names.
        values: `{tensor name: numpy array}` of the boundary tensors on a sample input.
        opset: the model's opset.
        use_affine_grid: whether to emit AffineGrid for affine grids (needs opset 20). Defaults to
            `True`.

    Returns:
        A list of `(scope, (interpolation, padding_mode, align_corners), used_affine_grid)`.

    Raises:
        ValueError: if a sampler runs in a dtype GridSample does not support, or its mode cannot be
            identified.
    """
    modes_opset = 20 if opset >= 20 else 16
    renamed = canonicalize(model, [t for s in samplers for t in s.tensors()])
    unique = {}
    for boundary in samplers:
        for field in ("images", "grid", "output", "theta"):
            name = getattr(boundary, field)
            if name is not None:
                values.setdefault(renamed[name], values[name])
                setattr(boundary, field, renamed[name])
        # Two samplers computing the same value (same images, grid and mode) are replaced once.
        unique.setdefault(boundary.output, boundary)
    samplers = list(unique.values())
    graph = model.graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    rewrites = []
    for boundary in samplers:
        dtype = dtypes[boundary.images]
        if dtype not in _ORT_DTYPES or dtypes[boundary.grid] != dtype:
            raise ValueError(
                f"The sampler in scope {boundary.scope!r} samples "
                f"{TensorProto.DataType.Name(dtype)} images with a "
                f"{TensorProto.DataType.Name(dtypes[boundary.grid])} grid; the native GridSample path "
                "needs float32 or float64 for both. Export with the gather path instead."
            )
        grid_value = values[boundary.grid]
        mode = _identify_mode(
            model, boundary, values[boundary.images], (2, *grid_value.shape[1:]), dtype, modes_opset
        )
        interpolation, padding_mode, align_corners = mode
        prefix = boundary.scope.rstrip("/") + "/native"
        new_nodes = [
            helper.make_node(
                "Transpose", [boundary.images], [f"{prefix}/images_nchw"], perm=[0, 3, 1, 2]
            )
        ]
        grid = boundary.grid
        affine = False
        if use_affine_grid and opset >= AFFINE_GRID_OPSET and boundary.theta is not None:
            theta = values[boundary.theta]
            affine_corners = _affine_align_corners(theta, grid_value)
            if affine_corners is not None and dtypes[boundary.theta] == dtype:
                affine = True
                _, height, width, _ = grid_value.shape
                grid = f"{prefix}/affine_grid"
                new_nodes += [
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
                        [f"{prefix}/batch", _const(graph, f"{prefix}/chw", [1, height, width])],
                        [f"{prefix}/size"],
                        axis=0,
                    ),
                    helper.make_node(
                        "AffineGrid",
                        [boundary.theta, f"{prefix}/size"],
                        [grid],
                        align_corners=int(affine_corners),
                    ),
                ]
        new_nodes += [
            helper.make_node(
                "GridSample",
                [f"{prefix}/images_nchw", grid],
                [f"{prefix}/sampled_nchw"],
                mode=_ONNX_MODES[modes_opset][interpolation],
                padding_mode=padding_mode,
                align_corners=int(align_corners),
            ),
            helper.make_node(
                "Transpose", [f"{prefix}/sampled_nchw"], [boundary.output], perm=[0, 2, 3, 1]
            ),
        ]
        index = _producer_index(graph, boundary.output)
        del graph.node[index]
        for offset, node in enumerate(new_nodes):
            graph.node.insert(index + offset, node)
        rewrites.append((boundary.scope, mode, affine))
    return rewrites
