"""Thin-plate-spline grids: interpolation, affine reproduction, SciPy's spline, gradients, XLA.

The independent reference for positions between the control points is SciPy's `RBFInterpolator`
with the thin-plate kernel and a degree-1 polynomial: its kernel `r^2 log r` is half of ours
(`r^2 log r^2`), which only halves the weights, so both give the same spline.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy.interpolate import RBFInterpolator

from stn_keras import tps_grid
from stn_keras.ops import tps
from stn_keras.testing.ops import EXECUTION_MODES
from tests import oracle


def lattice(k):
    """The K x K control points `(K, K, 2)`, `(x, y)` on `linspace(-1, 1, K)`, x along columns."""
    axis = np.linspace(-1.0, 1.0, k)
    x, y = np.meshgrid(axis, axis)  # KxK each
    return np.stack([x, y], axis=-1)


def random_targets(rng, batch, k, jitter=0.3):
    """Targets `(batch, K, K, 2)`: the lattice moved by up to `jitter` per coordinate."""
    return lattice(k) + rng.uniform(-jitter, jitter, (batch, k, k, 2))


def pixel_positions(size, align_corners):
    """Normalised `(x, y)` of the output pixels `(H * W, 2)`, row-major, from the closed forms."""

    def axis(n):
        return np.linspace(-1.0, 1.0, n) if align_corners else (2.0 * np.arange(n) + 1.0) / n - 1.0

    x, y = np.meshgrid(axis(size[1]), axis(size[0]))  # HxW each
    return np.stack([x.ravel(), y.ravel()], axis=-1)


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_grid_at_control_points_returns_targets(k, dtype, atol):
    # A K x K output with align_corners=True puts its pixel centres exactly on the control points.
    targets = random_targets(np.random.default_rng(k), 2, k)
    grid = tps_grid(tf.constant(targets, dtype), (k, k), align_corners=True)
    assert grid.dtype == tf.as_dtype(dtype)
    np.testing.assert_allclose(grid.numpy(), targets, rtol=0, atol=atol)


@pytest.mark.parametrize("k", [2, 4, 5])
@pytest.mark.parametrize("size, align_corners", [((6, 7), False), ((5, 3), True), ((1, 1), False)])
def test_identity_targets_reproduce_base_grid(k, size, align_corners):
    grid = tps_grid(lattice(k)[None], size, align_corners=align_corners)
    want = oracle.affine_grid(np.array([[[1.0, 0, 0], [0, 1.0, 0]]]), size, align_corners)
    np.testing.assert_allclose(grid.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_motion_of_control_points_matches_affine_grid(align_corners):
    theta = oracle.random_thetas(np.random.default_rng(0), 3)  # Bx2x3
    source = np.concatenate([lattice(4), np.ones((4, 4, 1))], axis=-1)  # KxKx3, (x, y, 1)
    targets = np.einsum("bjk,hwk->bhwj", theta, source)  # BxKxKx2
    grid = tps_grid(targets, (6, 7), align_corners=align_corners)
    want = oracle.affine_grid(theta, (6, 7), align_corners)
    np.testing.assert_allclose(grid.numpy(), want, rtol=0, atol=1e-12)


def test_affine_motion_of_control_points_gives_zero_kernel_weights():
    theta = oracle.random_thetas(np.random.default_rng(1), 2)  # Bx2x3
    source = np.concatenate([lattice(4), np.ones((4, 4, 1))], axis=-1)  # KxKx3
    targets = np.einsum("bjk,hwk->bhwj", theta, source)  # BxKxKx2
    weights, affine = tps.thin_plate_spline(4).coefficients(targets)
    assert weights.shape == (2, 16, 2) and affine.shape == (2, 3, 2)
    np.testing.assert_allclose(weights.numpy(), 0.0, atol=1e-12)
    # Rows (1, x, y) of the affine part are theta's columns (t, a_x, a_y).
    want = np.transpose(theta[:, :, [2, 0, 1]], (0, 2, 1))
    np.testing.assert_allclose(affine.numpy(), want, atol=1e-12)


def test_non_affine_motion_gives_nonzero_kernel_weights_that_sum_to_zero():
    targets = random_targets(np.random.default_rng(2), 1, 4)
    weights, _ = tps.thin_plate_spline(4).coefficients(targets)
    source = lattice(4).reshape(16, 2)
    assert np.abs(weights.numpy()).max() > 1e-2
    # The side conditions: sum_i w_i = 0 and sum_i w_i c_i = 0 (no affine part in the kernel term).
    np.testing.assert_allclose(weights.numpy()[0].sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(source.T @ weights.numpy()[0], 0.0, atol=1e-12)


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("size, align_corners", [((7, 9), False), ((5, 4), True)])
def test_matches_scipy_thin_plate_spline_between_control_points(k, size, align_corners):
    targets = random_targets(np.random.default_rng(3), 2, k)
    grid = tps_grid(targets, size, align_corners=align_corners).numpy()
    points = pixel_positions(size, align_corners)
    for b in range(2):
        spline = RBFInterpolator(
            lattice(k).reshape(-1, 2), targets[b].reshape(-1, 2), kernel="thin_plate_spline"
        )
        want = spline(points).reshape(*size, 2)
        np.testing.assert_allclose(grid[b], want, rtol=0, atol=1e-10)


def test_gradient_matches_finite_differences():
    targets = tf.constant(random_targets(np.random.default_rng(4), 2, 3))
    theoretical, numerical = tf.test.compute_gradient(
        lambda t: tps_grid(t, (4, 5)), [targets], delta=1e-5
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-8)


@pytest.mark.parametrize("mode", EXECUTION_MODES)
def test_dynamic_batch_and_size(mode):
    # Batch and output size are only known when the function runs; K must be static.
    signature = [tf.TensorSpec([None, 4, 4, 2], tf.float64), tf.TensorSpec([2], tf.int32)]

    def fn(targets, size):
        return tps_grid(targets, size)

    if mode != "eager":
        fn = tf.function(fn, input_signature=signature, jit_compile=mode == "xla")
    targets = random_targets(np.random.default_rng(5), 3, 4)
    for batch, size in [(1, (3, 5)), (3, (6, 2))]:
        got = fn(tf.constant(targets[:batch]), tf.constant(size))
        want = tps_grid(targets[:batch], size)  # static sizes, checked against SciPy above
        assert got.shape == (batch, *size, 2)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-12)


def test_kernel_matrices_are_built_once_per_lattice():
    assert tps.thin_plate_spline(4) is tps.thin_plate_spline(np.int64(4))
    assert tps.thin_plate_spline(3) is not tps.thin_plate_spline(4)


@pytest.mark.parametrize(
    "shape", [(1, 16, 2), (1, 3, 4, 2), (1, 1, 1, 2), (1, 3, 3, 3), (3, 3, 2)], ids=str
)
def test_wrong_targets_shape_raises(shape):
    with pytest.raises(ValueError, match=r"\(B, K, K, 2\).*targets.shape=\(" + str(shape[0])):
        tps_grid(tf.zeros(shape), (4, 4))


def test_targets_for_another_lattice_raise():
    with pytest.raises(ValueError, match=r"\(B, 4, 4, 2\).*targets.shape=\(1, 3, 3, 2\)"):
        tps.thin_plate_spline(4).grid(tf.zeros((1, 3, 3, 2)), (4, 4))


def test_integer_targets_raise():
    with pytest.raises(ValueError, match="targets.dtype=int32"):
        tps_grid(tf.zeros((1, 3, 3, 2), tf.int32), (4, 4))


def test_bad_size_raises():
    with pytest.raises(ValueError, match="size"):
        tps_grid(lattice(3)[None], (4, 0))


@pytest.mark.parametrize("control_points", [1, 2.0, False], ids=repr)
def test_invalid_lattice_raises(control_points):
    with pytest.raises(ValueError, match="control_points="):
        tps.ThinPlateSpline(control_points)
