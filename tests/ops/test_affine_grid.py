import numpy as np
import pytest
import tensorflow as tf

from stn_keras import affine_grid
from stn_keras.testing.ops import EXECUTION_MODES, run_op
from tests import oracle

SIZES = [(1, 1), (1, 5), (4, 1), (3, 7), (8, 5)]


# onnxruntime puts a lone pixel at -1 with align_corners=True, PyTorch (the spec) at 0: those cases are
# pinned by test_single_pixel_axis_sits_at_zero instead.
ORACLE_CASES = [(s, ac) for s in SIZES for ac in (False, True) if not (ac and 1 in s)]


@pytest.mark.parametrize("mode", EXECUTION_MODES)
@pytest.mark.parametrize("size, align_corners", ORACLE_CASES)
def test_matches_onnx_affine_grid(size, align_corners, mode):
    theta = oracle.random_thetas(np.random.default_rng(0), 3)
    got = run_op(
        affine_grid, theta, np.array(size, np.int32), mode=mode, align_corners=align_corners
    )
    want = oracle.affine_grid(theta, size, align_corners)
    assert got.shape == (3, *size, 2)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_theta_gives_pixel_centres(align_corners):
    height, width = 3, 4
    grid = affine_grid(
        tf.constant([[[1.0, 0, 0], [0, 1.0, 0]]], tf.float64),
        (height, width),
        align_corners=align_corners,
    )[0].numpy()
    if align_corners:
        xs, ys = np.linspace(-1, 1, width), np.linspace(-1, 1, height)
    else:  # pixel centres of a [-1, 1] span cut into equal cells
        xs, ys = (
            (np.arange(width) + 0.5) / width * 2 - 1,
            (np.arange(height) + 0.5) / height * 2 - 1,
        )
    np.testing.assert_allclose(grid[..., 0], np.broadcast_to(xs, (height, width)), atol=1e-15)
    np.testing.assert_allclose(
        grid[..., 1], np.broadcast_to(ys[:, None], (height, width)), atol=1e-15
    )


@pytest.mark.parametrize("align_corners", [False, True])
def test_single_pixel_axis_sits_at_zero(align_corners):
    # PyTorch's linspace_from_neg_one returns 0 for a single step, whatever align_corners says.
    grid = affine_grid(
        tf.constant([[[1.0, 0, 0.25], [0, 1.0, -0.5]]]), (1, 1), align_corners=align_corners
    )
    np.testing.assert_allclose(grid.numpy().reshape(2), [0.25, -0.5])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_output_has_theta_dtype(dtype):
    theta = tf.cast(oracle.random_thetas(np.random.default_rng(1), 2), dtype)
    grid = affine_grid(theta, (5, 6))
    assert grid.dtype == theta.dtype
    want = oracle.affine_grid(tf.cast(theta, tf.float64).numpy(), (5, 6), False)
    tol = {"float16": 4e-3, "bfloat16": 2e-2, "float32": 1e-6, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(tf.cast(grid, tf.float64).numpy(), want, atol=tol)


def test_dynamic_size_under_xla():
    fn = tf.function(lambda t, s: affine_grid(t, s), jit_compile=True)
    theta = oracle.random_thetas(np.random.default_rng(2), 2)
    for size in [(3, 4), (6, 2)]:
        got = fn(tf.constant(theta), tf.constant(size))
        np.testing.assert_allclose(got.numpy(), oracle.affine_grid(theta, size, False), atol=1e-12)


def test_empty_batch_returns_empty_grid():
    assert affine_grid(tf.zeros((0, 2, 3)), (4, 5)).shape == (0, 4, 5, 2)


def test_gradient_matches_finite_differences():
    theta = tf.constant(oracle.random_thetas(np.random.default_rng(3), 2))
    theoretical, numerical = tf.test.compute_gradient(lambda t: affine_grid(t, (3, 4)), [theta])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-8)


@pytest.mark.parametrize(
    "theta_shape", [(2, 3), (1, 3, 3), (1, 2, 2), (1, 2, 3, 1)], ids=lambda s: str(s)
)
def test_wrong_theta_shape_raises(theta_shape):
    with pytest.raises(ValueError, match=r"theta.shape=\(" + ", ".join(map(str, theta_shape))):
        affine_grid(tf.zeros(theta_shape), (4, 4))


@pytest.mark.parametrize("size", [(4,), (4, 4, 4), (0, 3), (3, -1), "ab"], ids=str)
def test_bad_size_raises(size):
    with pytest.raises(ValueError, match="size"):
        affine_grid(tf.zeros((1, 2, 3)), size)


def test_non_bool_align_corners_raises():
    with pytest.raises(ValueError, match="align_corners='yes'"):
        affine_grid(tf.zeros((1, 2, 3)), (4, 4), align_corners="yes")


def test_integer_theta_raises():
    with pytest.raises(ValueError, match="theta.dtype=int32"):
        affine_grid(tf.zeros((1, 2, 3), tf.int32), (4, 4))


def test_eager_size_tensor_with_a_zero_raises_naming_it():
    with pytest.raises(
        ValueError, match=r"Invalid value for argument `size`.*numpy=array\(\[0, 5\]"
    ):
        affine_grid(tf.zeros((1, 2, 3)), tf.constant([0, 5]))


def test_symbolic_size_tensor_with_a_zero_fails_at_run_time_naming_the_argument():
    fn = tf.function(
        lambda size: affine_grid(tf.zeros((1, 2, 3)), size),
        input_signature=[tf.TensorSpec([2], tf.int32)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="Argument `size` must be positive"):
        fn(tf.constant([0, 4]))


@pytest.mark.parametrize("size", [(np.int64(3), 4), (np.int32(3), np.uint8(4)), [3, 4]], ids=str)
def test_numpy_integer_sizes_are_accepted(size):
    assert affine_grid(tf.zeros((1, 2, 3)), size).shape == (1, 3, 4, 2)
