"""The sampler's export kernel (`stn_keras.ops.portable`): what it computes and which ops it traces.

Its numbers are also checked against onnxruntime with every other execution mode
(`stn_keras.testing.ops.EXECUTION_MODES` includes `"export"`); here are what only it has: its
rounding without `ROUND`, its index dtype, and the ops its traced graph holds.
"""

import numpy as np
import pytest
import tensorflow as tf

from stn_keras import INTERPOLATIONS, PADDING_MODES, affine_grid, grid_sample
from stn_keras.ops import portable
from tests import oracle


def _traced_ops(fn, *specs):
    """The types of the ops the traced outputs depend on (a converter drops the rest), and the graph."""
    with portable.export_kernel():
        graph = tf.function(fn).get_concrete_function(*specs).graph
    needed, stack = set(), [t.op for t in graph.outputs]
    while stack:
        op = stack.pop()
        if op.name not in needed:
            needed.add(op.name)
            stack.extend(t.op for t in op.inputs)
    return {graph.get_operation_by_name(name).type for name in needed}, graph


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rounding_is_half_to_even_where_floor_of_x_plus_half_would_not_be(dtype):
    below_half = np.nextafter(np.array(0.5, dtype), 0)  # 0.49999997 in float32: + 0.5 rounds to 1
    values = np.array(
        [below_half, -below_half, 0.5, -0.5, 1.5, 2.5, -2.5, 3.5, 2.0**22 + 0.5, -7.0, 1e-30],
        dtype,
    )
    got = portable._round_half_even(tf.constant(values)).numpy()
    np.testing.assert_array_equal(got, np.round(values))  # numpy rounds half to even


def test_nearest_sampling_at_half_pixels_matches_the_oracle():
    images = np.arange(9.0)[None, None, :, None]  # 1x1x9x1, value = column
    # align_corners=True on 9 pixels: x = -1 + k / 4 sits exactly on pixel k, and on k + 1/2 halfway.
    pixels = np.array([0.5, 1.5, 2.5, 3.5, 7.5, 2.0, 6.25, 6.75])
    grid = np.stack([-1 + pixels / 4, np.zeros(len(pixels))], -1)[None, None]
    with portable.export_kernel():
        out = grid_sample(images, grid, interpolation="nearest", align_corners=True).numpy()
    want = oracle.grid_sample(images, grid, "nearest", "zeros", True)
    np.testing.assert_array_equal(out.ravel(), want.ravel())
    np.testing.assert_array_equal(out.ravel(), [0, 2, 2, 4, 8, 2, 6, 7])


# What onnxruntime-web's WebGL and WebGPU backends, TensorRT or LiteRT's GPU delegate lack or get wrong.
NOT_PORTABLE = {"IsFinite", "IsNan", "IsInf", "All", "Sum", "AddN", "Round", "ZerosLike"}
# With static sizes (what LiteRT's GPU delegate takes), nothing inserts or drops an axis either.
NOT_STATIC = {"ExpandDims", "Squeeze"}


@pytest.mark.parametrize("batch", [None, 2], ids=["dynamic", "static"])
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_traced_graph_has_no_op_that_portable_runtimes_lack(interpolation, batch):
    def sample(images, theta):
        return grid_sample(images, affine_grid(theta, (5, 6)), interpolation, "reflection")

    ops, _ = _traced_ops(sample, tf.TensorSpec([batch, 7, 8, 3]), tf.TensorSpec([batch, 2, 3]))
    lacking = NOT_PORTABLE | (NOT_STATIC if batch else set())
    assert not ops & lacking, ops & lacking


@pytest.mark.parametrize(
    "batch, index_dtype", [(2, tf.int32), (None, tf.int64)], ids=["static", "dynamic"]
)
def test_rows_are_int32_only_when_every_size_is_known(batch, index_dtype):
    _, graph = _traced_ops(
        lambda images, grid: grid_sample(images, grid),
        tf.TensorSpec([batch, 7, 8, 3]),
        tf.TensorSpec([batch, 5, 6, 2]),
    )
    gathers = [op for op in graph.get_operations() if op.type == "GatherV2"]
    assert len(gathers) == 4
    assert {op.inputs[1].dtype for op in gathers} == {index_dtype}
    assert all(op.inputs[1].shape.rank == 1 for op in gathers)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_static_and_dynamic_traces_agree_with_the_oracle(padding_mode):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 7, 8, 3))
    grid = rng.uniform(-1.2, 1.2, size=(2, 5, 6, 2))
    want = oracle.grid_sample(images, grid, "bicubic", padding_mode, False)
    for batch in (2, None):
        fn = tf.function(
            lambda i, g: grid_sample(i, g, "bicubic", padding_mode),
            input_signature=[
                tf.TensorSpec([batch, 7, 8, 3], tf.float64),
                tf.TensorSpec([batch, 5, 6, 2], tf.float64),
            ],
        )
        with portable.export_kernel():
            got = fn(images, grid).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_export_kernel_is_scoped_to_its_block():
    assert not portable.active()
    with portable.export_kernel():
        assert portable.active()
        with portable.export_kernel():
            assert portable.active()
        assert portable.active()
    assert not portable.active()
