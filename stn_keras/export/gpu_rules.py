"""Which ops of a LiteRT flatbuffer the LiteRT GPU delegate would reject, by TensorFlow's own rules.

The delegate decides op by op (TensorFlow's `tensorflow/lite/tools/versioning/gpu_compatibility.cc`,
`CheckGpuDelegateCompatibility`); an op it rejects runs on the CPU, and every tensor crossing between
the two is copied. `tf.lite.experimental.Analyzer(gpu_compatibility=True)` cannot be the check: the
compatibility pass is compiled out of the TensorFlow wheels, and it calls every op compatible. This
module reads the flatbuffer with TensorFlow's generated schema and applies those published rules,
restated here for every op the rules accept (an op they do not list is rejected, as in the delegate).
"""

import dataclasses

from tensorflow.lite.python import schema_py_generated as schema


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One operand of an op: its type name (`"FLOAT32"`), shape and whether it is a constant."""

    type: str
    dims: tuple
    const: bool


@dataclasses.dataclass(frozen=True)
class Op:
    """One op of the flatbuffer's main graph: its builtin name, operands and options table."""

    name: str
    inputs: tuple
    outputs: tuple
    options: object


def _names(enum):
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


_OP_NAMES = _names(schema.BuiltinOperator)
_TYPE_NAMES = _names(schema.TensorType)
FLOATS = ("FLOAT32", "FLOAT16")


def read_ops(path):
    """The ops of the first subgraph of the LiteRT flatbuffer `path`, in order."""
    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    graph = model.Subgraphs(0)

    def tensor(index):
        if index < 0:  # an optional input left out
            return None
        t = graph.Tensors(index)
        buffer = model.Buffers(t.Buffer())
        const = t.Buffer() > 0 and (buffer.DataLength() > 0 or buffer.Size() > 0)
        return Tensor(_TYPE_NAMES.get(t.Type(), str(t.Type())), tuple(t.ShapeAsNumpy()), const)

    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = _OP_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
        inputs = tuple(t for t in map(tensor, op.InputsAsNumpy()) if t is not None)
        outputs = tuple(map(tensor, op.OutputsAsNumpy()))
        ops.append(Op(name, inputs, outputs, op.BuiltinOptions()))
    return ops


def _runtime(op):
    return [t for t in op.inputs if not t.const]


def _operands(op, runtime, const=None):
    """`None` when `op` has `runtime` non-constant inputs (and `const` constant ones), else why not."""
    got_const = len(op.inputs) - len(_runtime(op))
    if len(_runtime(op)) != runtime or (const is not None and got_const != const):
        return f"takes {len(_runtime(op))} run-time and {got_const} constant inputs"
    return None


def _unary(op):
    return _operands(op, 1, 0)


def _binary(op):
    if _operands(op, 2, 0) and _operands(op, 1, 1):
        return "takes 1 or 2 operands only"
    return None


def _two_inputs(op):
    return None if len(op.inputs) == 2 else f"takes 2 inputs, not {len(op.inputs)}"


def _cast(op):
    pair = (op.inputs[0].type, op.outputs[0].type)
    if (pair[0] == "BOOL" and pair[1] in FLOATS) or (pair[0] in FLOATS and pair[1] == "BOOL"):
        return None
    if set(pair) <= {"FLOAT32", "INT32"}:
        return None
    return f"casts {pair[0]} to {pair[1]}"


def _gather(op):
    if _binary(op):
        return "takes 1 or 2 operands only"
    params, indices = op.inputs[0], op.inputs[1]
    if params.type == "INT32":
        return "gathers from an INT32 tensor"
    if len(indices.dims) != 1:
        return f"has {len(indices.dims)}-D indices (1-D only)"
    return None if indices.type == "INT32" else f"has {indices.type} indices (INT32 only)"


def _int32_const_axes(op):
    axes = op.inputs[1] if len(op.inputs) > 1 else None
    if axes is None or not axes.const or axes.type != "INT32":
        return "reduces over axes that are not a constant INT32 tensor"
    return None


def _reduce(op):
    return _operands(op, 1) or _int32_const_axes(op)


def _select(op):
    if len(op.inputs) != 3:
        return "takes 3 inputs"
    condition, then, other = op.inputs
    if condition.type not in ("BOOL", *FLOATS) or {then.type, other.type} - set(FLOATS):
        return f"selects {then.type} by a {condition.type} condition (float values only)"
    shape = op.outputs[0].dims
    for branch in (then, other):
        if branch.dims and branch.dims != shape and (len(branch.dims) > 1 or branch.dims[0] > 1):
            return "broadcasts a branch that is neither the output's shape nor a scalar"
    return None


def _rank_3_or_4(op):
    rank = len(op.inputs[0].dims)
    return None if rank in (3, 4) else f"slices a {rank}-D tensor (3-D or 4-D only)"


def _strided_slice(op):
    options = schema.StridedSliceOptions()
    options.Init(op.options.Bytes, op.options.Pos)
    masks = {"EllipsisMask": "ellipsis", "NewAxisMask": "new_axis", "ShrinkAxisMask": "shrink"}
    for mask, name in masks.items():
        if getattr(options, mask)():
            return f"uses a {name} mask"
    return _rank_3_or_4(op)


def _pad(op):
    paddings = op.inputs[1] if len(op.inputs) > 1 else None
    if _operands(op, 1) or paddings is None or paddings.dims not in ((3, 2), (4, 2)):
        return "pads other than a 3-D or 4-D tensor by constant paddings"
    return None


def _fully_connected(op):
    if len(_runtime(op)) > 2 or op.inputs[0].const:
        return "has a constant input or more than 2 run-time inputs"
    return None


def _anything(op):
    return None


_RULES = {
    "ADD": _two_inputs,
    "ADD_N": _two_inputs,
    "MUL": _two_inputs,
    "CAST": _cast,
    "GATHER": _gather,
    "SELECT": _select,
    "SELECT_V2": _select,
    "SLICE": _rank_3_or_4,
    "STRIDED_SLICE": _strided_slice,
    "RESHAPE": lambda op: _operands(op, 1),  # the new shape must be a constant
    "TRANSPOSE": lambda op: _operands(op, 1),
    "TILE": lambda op: _operands(op, 1),
    "SUM": _reduce,
    "REDUCE_MAX": _reduce,
    "REDUCE_MIN": _reduce,
    "REDUCE_PROD": _reduce,
    "MEAN": lambda op: _operands(op, 1, 1) or _int32_const_axes(op),
    "PAD": _pad,
    "PADV2": _pad,
    "FULLY_CONNECTED": _fully_connected,
    "BATCH_MATMUL": _two_inputs,
    **dict.fromkeys(
        "ABS CEIL COS ELU EXP FLOOR GELU LOG LOGISTIC NEG RSQRT SIGN SIN SQRT SQUARE TANH".split(),
        _unary,
    ),
    **dict.fromkeys(
        (
            "ATAN2 DIV EQUAL FLOOR_DIV FLOOR_MOD GREATER GREATER_EQUAL LOGICAL_AND LESS "
            "LESS_EQUAL MAXIMUM MINIMUM NOT_EQUAL POW SQUARED_DIFFERENCE SUB"
        ).split(),
        _binary,
    ),
    **dict.fromkeys(
        (
            "AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE "
            "HARD_SWISH LEAKY_RELU MAX_POOL_2D PACK PRELU QUANTIZE RELU RELU6 RELU_N1_TO_1 "
            "RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V "
            "TRANSPOSE_CONV"
        ).split(),
        _anything,
    ),
}


def rejection(op):
    """Why the GPU delegate rejects `op`, or `None` when it accepts it."""
    rule = _RULES.get(op.name)
    return "is not supported" if rule is None else rule(op)


def rejected_ops(path):
    """One line per kind of op the GPU delegate would reject in the flatbuffer `path`.

    Returns:
        A sorted list such as `["GATHER has 2-D indices (1-D only) (x4)", "RANGE is not supported"]`;
        empty when the delegate takes every op.
    """
    counts = {}
    for op in read_ops(path):
        why = rejection(op)
        if why is not None:
            line = f"{op.name} {why}"
            counts[line] = counts.get(line, 0) + 1
    return sorted(f"{line} (x{n})" if n > 1 else line for line, n in counts.items())
