"""Independent references for the ops: onnxruntime's CPU `GridSample` and `AffineGrid` (opset 20).

onnxruntime's kernels are written independently of ours and their own tests are generated from PyTorch, so
they stand in for `torch.nn.functional.grid_sample` / `affine_grid`; run in float64 they match PyTorch to
float precision in all 18 mode x padding x align_corners combinations. (`onnx.reference` is not used: its
bicubic + border clamps the coordinate instead of each tap and disagrees with PyTorch by up to 0.5.)
"""

import functools
import json
import pathlib

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

# Our interpolation names -> ONNX opset-20 GridSample modes.
ONNX_MODES = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}


def _session(nodes, inputs, output):
    graph = helper.make_graph(
        nodes,
        "oracle",
        [helper.make_tensor_value_info(name, dtype, None) for name, dtype in inputs],
        [helper.make_tensor_value_info(output, TensorProto.DOUBLE, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@functools.cache
def _grid_sample_session(interpolation, padding_mode, align_corners):
    node = helper.make_node(
        "GridSample",
        ["X", "G"],
        ["Y"],
        mode=ONNX_MODES[interpolation],
        padding_mode=padding_mode,
        align_corners=int(align_corners),
    )
    return _session([node], [("X", TensorProto.DOUBLE), ("G", TensorProto.DOUBLE)], "Y")


@functools.cache
def _affine_grid_session(align_corners):
    node = helper.make_node("AffineGrid", ["T", "S"], ["G"], align_corners=int(align_corners))
    return _session([node], [("T", TensorProto.DOUBLE), ("S", TensorProto.INT64)], "G")


def grid_sample(images, grid, interpolation, padding_mode, align_corners):
    """PyTorch-semantics grid sampling, float64: channels-last `images` `(B, H, W, C)` at `grid`
    `(B, Ho, Wo, 2)`, or volumes `(B, D, H, W, C)` at `(B, Do, Ho, Wo, 3)` (5-D GridSample)."""
    session = _grid_sample_session(interpolation, padding_mode, align_corners)
    channels_first = np.ascontiguousarray(np.moveaxis(np.asarray(images, np.float64), -1, 1))
    (out,) = session.run(None, {"X": channels_first, "G": np.asarray(grid, np.float64)})
    return np.moveaxis(out, 1, -1)


def affine_grid(theta, size, align_corners):
    """PyTorch-semantics affine grid, float64: `(B, H, W, 2)` of `theta` `(B, 2, 3)` for
    `size = (H, W)`, or `(B, D, H, W, 3)` of `(B, 3, 4)` for `(D, H, W)`."""
    theta = np.asarray(theta, np.float64)
    shape = np.array([theta.shape[0], 1, *size], np.int64)
    (out,) = _affine_grid_session(align_corners).run(None, {"T": theta, "S": shape})
    return out


def random_thetas(rng, batch):
    """Affine thetas `(batch, 2, 3)` that rotate, shear, zoom out and translate, some reaching outside."""
    angle = rng.uniform(-np.pi, np.pi, batch)
    scale = rng.uniform(0.6, 1.6, (batch, 2))
    shear = rng.uniform(-0.4, 0.4, batch)
    shift = rng.uniform(-0.5, 0.5, (batch, 2))
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # Bx2x2
    shear_m = np.stack(
        [np.stack([np.ones(batch), shear], -1), np.stack([np.zeros(batch), np.ones(batch)], -1)], -2
    )
    linear = rotation @ shear_m * scale[:, :, None]  # Bx2x2
    return np.concatenate([linear, shift[:, :, None]], axis=-1)  # Bx2x3


def batched_jacobians(fn, images, grid, delta=1e-6, jit=False):
    """Analytic and central finite-difference Jacobians of `fn(images, grid)` for a batch of one.

    Samples of a batch are independent (`grid_sample` never mixes them), so every perturbation of the
    finite differences is one sample of a single batched call, and every row of the analytic Jacobian
    one sample of a single batched backward pass with a one-hot output gradient. The same numbers as
    `tf.test.compute_gradient`, in two calls instead of one per input element.

    Args:
        fn: `(images (P, ...), grid (P, ...)) -> (P, ...)`, float64.
        images, grid: numpy arrays with a batch of 1.
        delta: the finite-difference step. Defaults to `1e-6`.
        jit: whether to compile `fn` with XLA. Defaults to `False`.

    Returns:
        `((analytic_images, numerical_images), (analytic_grid, numerical_grid))`, each `(M, N)`: the
        derivative of each of the M output elements w.r.t. each of the N input elements.
    """
    import tensorflow as tf

    images, grid = np.asarray(images, np.float64), np.asarray(grid, np.float64)
    n_images, n_grid = images.size, grid.size
    count = n_images + n_grid
    steps = np.eye(count) * delta  # one perturbation per row
    stacked_images = images.reshape(1, -1) + np.concatenate([steps, -steps])[:, :n_images]
    stacked_grid = grid.reshape(1, -1) + np.concatenate([steps, -steps])[:, n_images:]

    def backward(images, grid, upstream):
        with tf.GradientTape() as tape:
            tape.watch([images, grid])
            out = fn(images, grid)
        return tape.gradient(out, [images, grid], output_gradients=upstream)

    forward = tf.function(fn, jit_compile=True) if jit else fn
    backward = tf.function(backward, jit_compile=True) if jit else backward
    out = forward(
        tf.constant(stacked_images.reshape(2 * count, *images.shape[1:])),
        tf.constant(stacked_grid.reshape(2 * count, *grid.shape[1:])),
    ).numpy()
    out = out.reshape(2 * count, -1)
    numerical = ((out[:count] - out[count:]) / (2 * delta)).T  # MxN
    outputs = numerical.shape[0]
    upstream = np.eye(outputs).reshape(outputs, *out.shape[1:])
    d_images, d_grid = backward(
        tf.constant(np.repeat(images, outputs, axis=0)),
        tf.constant(np.repeat(grid, outputs, axis=0)),
        tf.constant(upstream.reshape(outputs, *fn(images, grid).shape[1:])),
    )
    return (
        (d_images.numpy().reshape(outputs, -1), numerical[:, :n_images]),
        (d_grid.numpy().reshape(outputs, -1), numerical[:, n_images:]),
    )


def grid_of_flow(flow):
    """The normalised grid (align_corners=False) reading pixel p + flow[p], computed in numpy from
    the definition: pixel i of n sits at (2 i + 1) / n - 1; flow in "ij" order."""
    size = flow.shape[1:-1]
    positions = np.stack(np.meshgrid(*(np.arange(n) for n in size), indexing="ij"), -1)
    target = positions + flow  # array order
    normalised = (2.0 * target + 1.0) / np.array(size) - 1.0
    return normalised[..., ::-1]  # (x, y[, z])


def monai_field_cases():
    """MONAI's own `DVF2DDF` and `Warp` outputs (tests/fixtures/make_monai_fixtures.py)."""
    path = pathlib.Path(__file__).parent / "fixtures" / "monai_fields.json"
    return json.loads(path.read_text())["cases"]


# MONAI computes in float32: each bilinear warp of O(1) values is a few dozen float32 operations
# (~1e-6 relative), and each squaring step can amplify earlier errors by 1 + |grad v| (< 2 here),
# so 3 steps stay within 2e-5 of displacements of a few pixels.
MONAI_ATOL = 2e-5
