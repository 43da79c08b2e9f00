"""The native rewrite reads what the ops recorded: unit tests on tiny traced graphs."""

import numpy as np
import onnx
import pytest
import tensorflow as tf
from onnx import helper

from stn_keras import affine_grid, grid_sample
from stn_keras.export import onnx_gridsample
from stn_keras.ops import recording


def _graph(fn, *specs):
    return tf.function(fn).get_concrete_function(*specs).graph


@pytest.mark.parametrize(
    "name, record",
    [
        (
            "m/warp/grid_sample.bicubic.reflection.corners1/output",
            {"kind": "grid_sample", "interpolation": "bicubic", "padding_mode": "reflection"},
        ),
        ("m/warp/grid_sample.nearest.zeros.corners0_3/images", {"align_corners": False}),
        ("a/affine_grid.corners1_1/theta", {"kind": "affine_grid", "align_corners": True}),
    ],
)
def test_scope_names_parse_back_to_the_options(name, record):
    parsed = recording.parse_scope(name)
    assert parsed is not None and parsed["prefix"] == name[: name.rindex("/") + 1]
    assert record.items() <= parsed.items()


@pytest.mark.parametrize("name", ["m/grid_sample/x", "m/grid_samplers.a.b.corners1/x", "m/x"])
def test_other_names_are_not_records(name):
    assert recording.parse_scope(name) is None


def test_sampler_of_an_affine_grid_is_found_with_its_mode_theta_and_size():
    def fn(images, theta):
        grid = affine_grid(theta, (3, 4), align_corners=True)
        return grid_sample(
            images, grid, interpolation="bicubic", padding_mode="reflection", align_corners=True
        )

    graph = _graph(fn, tf.TensorSpec([None, 5, 6, 2]), tf.TensorSpec([None, 2, 3]))
    (sampler,) = onnx_gridsample.find_samplers(graph)
    assert sampler.mode == ("bicubic", "reflection", True)
    assert sampler.size == (3, 4) and sampler.affine_align_corners is True
    assert sampler.dtypes == ("float32", "float32", "float32")
    assert sampler.images == "images:0" and sampler.theta == "theta:0"


def test_sampler_of_a_given_grid_has_no_theta_and_a_dynamic_size_has_none():
    def fn(images, grid):
        return grid_sample(images, grid, interpolation="nearest")

    graph = _graph(fn, tf.TensorSpec([None, 5, 6, 2]), tf.TensorSpec([None, None, 4, 2]))
    (sampler,) = onnx_gridsample.find_samplers(graph)
    assert sampler.mode == ("nearest", "zeros", False)
    assert sampler.theta is None and sampler.size is None


def test_two_samplers_are_found_in_graph_order():
    def fn(images, theta):
        first = grid_sample(images, affine_grid(theta, (3, 3)), padding_mode="border")
        return grid_sample(first, affine_grid(theta, (2, 2)), padding_mode="zeros")

    graph = _graph(fn, tf.TensorSpec([None, 5, 6, 1]), tf.TensorSpec([None, 2, 3]))
    samplers = onnx_gridsample.find_samplers(graph)
    assert [s.mode[1] for s in samplers] == ["border", "zeros"]
    assert [s.size for s in samplers] == [(3, 3), (2, 2)]


def test_a_graph_without_a_sampler_has_none():
    graph = _graph(lambda x: tf.nn.relu(x) * 2.0, tf.TensorSpec([None, 3]))
    assert onnx_gridsample.find_samplers(graph) == []


def test_use_affine_grids_feeds_gridsample_from_affinegrid_at_opset_20():
    from onnx import TensorProto, helper

    boundary = onnx_gridsample.SamplerBoundary(
        scope="s/",
        images="x",
        grid="g",
        output="y",
        mode=("bilinear", "zeros", False),
        dtypes=("float32", "float32", "float32"),
        size=(3, 4),
        theta="theta",
        affine_align_corners=False,
    )
    sampler = helper.make_node("GridSample", ["x_nchw", "g"], ["y"], name="s/native/GridSample")
    shapes = {"x_nchw": ["B", 1, 5, 6], "g": ["B", 3, 4, 2], "theta": ["B", 2, 3]}
    graph = helper.make_graph(
        [sampler],
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1, 3, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    report = onnx_gridsample.use_affine_grids(model, [(boundary, True)], opset=20)
    assert report == [("s/", ("bilinear", "zeros", False), True)]
    ops = [node.op_type for node in model.graph.node]
    assert ops[-2:] == ["AffineGrid", "GridSample"]
    assert model.graph.node[-1].input[1] == model.graph.node[-2].output[0]
    onnx.checker.check_model(model)


def test_nodes_are_sorted_after_their_producers_before_pruning():
    # An AffineGrid inserted before the Identity that produces its theta (tf2onnx's order after it
    # merged identical thetas): sorting first keeps that producer when unused nodes are pruned.
    theta = helper.make_tensor_value_info("theta_in", onnx.TensorProto.FLOAT, [1, 2, 3])
    out = helper.make_tensor_value_info("grid", onnx.TensorProto.FLOAT, [1, 2, 2, 2])
    nodes = [
        helper.make_node("AffineGrid", ["theta", "size"], ["grid"]),
        helper.make_node("Identity", ["theta_in"], ["theta"]),
        helper.make_node("Identity", ["theta_in"], ["unused"]),
    ]
    size = onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.int64), "size")
    model = helper.make_model(
        helper.make_graph(nodes, "g", [theta], [out], [size]),
        opset_imports=[helper.make_opsetid("", 20)],
    )
    onnx_gridsample.sort_nodes(model)
    onnx_gridsample.prune(model)
    assert [n.output[0] for n in model.graph.node] == ["theta", "grid"]
    onnx.checker.check_model(model)
    broken = helper.make_model(
        helper.make_graph(nodes[:1], "g", [theta], [out], [size]),
        opset_imports=[helper.make_opsetid("", 20)],
    )
    with pytest.raises(ValueError, match="reads a tensor nothing produces"):
        onnx_gridsample.sort_nodes(broken)
