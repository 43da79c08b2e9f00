"""The warp exported to ONNX and run in onnxruntime: our gather graph and the native GridSample op.

The graphs are built here, minimally, so the benchmark does not depend on the exporters: ours is
`tf2onnx.convert.from_function` on a `tf.function` calling our ops (the same forward code the
exporters carry); the native one is a hand-built graph of ONNX's `AffineGrid` and `GridSample`
(opset 20), which runs on NCHW images, its natural layout.
"""

import numpy as np

from benchmarks import contenders
from benchmarks.contenders import Contender

try:
    import onnx
    import onnxruntime
    import tf2onnx
    from onnx import TensorProto, helper
except ImportError:  # the `export` extra
    onnxruntime = None

OPSET = 20


def available():
    return onnxruntime is not None


def _session(model):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = contenders.THREADS or 0  # 0: onnxruntime's default
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def ours_model(case):
    """Our `affine_grid` + `grid_sample`, converted by tf2onnx with a dynamic batch."""
    import tensorflow as tf

    from stn_keras import affine_grid, grid_sample

    n = len(case.in_size)
    signature = [
        tf.TensorSpec((None, *case.in_size, case.channels), tf.float32, name="images"),
        tf.TensorSpec((None, n, n + 1), tf.float32, name="theta"),
    ]

    @tf.function(input_signature=signature)
    def warp(images, theta):
        return grid_sample(images, affine_grid(theta, case.out_size))

    model, _ = tf2onnx.convert.from_function(warp, input_signature=signature, opset=17)
    return model


def native_model(case):
    """ONNX `AffineGrid` + `GridSample` (bilinear, zeros, align_corners=0) on NCHW images (NCDHW
    volumes)."""
    n = len(case.in_size)
    out_shape = [case.batch, case.channels, *case.out_size]
    size = helper.make_tensor("size", TensorProto.INT64, [n + 2], out_shape)
    nodes = [
        helper.make_node("AffineGrid", ["theta", "size"], ["grid"], align_corners=0),
        helper.make_node(
            "GridSample",
            ["images", "grid"],
            ["output"],
            mode="linear",
            padding_mode="zeros",
            align_corners=0,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "native_warp",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, [case.batch, case.channels, *case.in_size]
            ),
            helper.make_tensor_value_info("theta", TensorProto.FLOAT, [case.batch, n, n + 1]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        initializer=[size],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def build(case, inputs, task):
    """Contenders `onnx-ours` and `onnx-native` (forward only; none without onnxruntime)."""
    if task != "forward" or onnxruntime is None:
        return {}
    ours = _session(ours_model(case))
    names = [node.name for node in ours.get_inputs()]  # tf2onnx may decorate the names
    ours_feed = dict(zip(names, (inputs["images"], inputs["theta"]), strict=True))
    native = _session(native_model(case))
    native_feed = {
        "images": np.ascontiguousarray(np.moveaxis(inputs["images"], -1, 1)),
        "theta": inputs["theta"],
    }
    return {
        "onnx-ours": Contender(run=lambda: ours.run(None, ours_feed)[0], to_numpy=lambda out: out),
        "onnx-native": Contender(
            run=lambda: native.run(None, native_feed)[0],
            to_numpy=lambda out: np.moveaxis(out, 1, -1),
        ),
    }


def describe():
    if onnxruntime is None:
        return {"onnxruntime": None}
    return {"onnxruntime": onnxruntime.__version__, "tf2onnx": tf2onnx.__version__}
