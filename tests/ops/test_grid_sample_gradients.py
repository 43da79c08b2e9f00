"""grid_sample's gradients against finite differences (float64), eagerly and under XLA."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from stn_keras import PADDING_MODES, affine_grid, grid_sample
from tests import oracle

SMOOTH = ["bilinear", "bicubic"]


def _case(seed, channels=2):
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.normal(size=(1, 3, 4, channels)))
    # Points spread over and around the image, away from the integer pixel positions where the
    # interpolants have kinks (finite differences straddling a kink are not derivatives). As many
    # points as pixels, so odd channel counts take the padded image-gradient scatter.
    grid = rng.uniform(-1.3, 1.3, size=(1, 3, 4, 2))
    return images, tf.constant(grid)


def _compiled(fn, jit):
    return tf.function(fn, jit_compile=True) if jit else fn


# The backward pass sums over up to 4 channels one at a time and reduces over more, and scatters the
# image gradient of an odd channel count in rows one channel wider (see `stn_keras.ops.sampling.backward`):
# 1 channel takes the per-channel layout unpadded, 3 and 5 take one layout each, padded. Eagerly in
# both align_corners; under XLA (the same graph, compiled) in one, which keeps the suite in budget.
@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize(
    "align_corners, jit",
    [(False, False), (True, False), (False, True)],
    ids=["eager", "eager-ac", "xla"],
)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("interpolation", SMOOTH)
def test_gradient_matches_finite_differences(
    interpolation, padding_mode, align_corners, jit, channels
):
    images, grid = _case(seed=3, channels=channels)
    fn = functools.partial(
        grid_sample,
        interpolation=interpolation,
        padding_mode=padding_mode,
        align_corners=align_corners,
    )
    (d_images, fd_images), (d_grid, fd_grid) = oracle.batched_jacobians(fn, images, grid, jit=jit)
    np.testing.assert_allclose(d_images, fd_images, atol=1e-6, err_msg="d/dimages")
    np.testing.assert_allclose(d_grid, fd_grid, atol=1e-5, err_msg="d/dgrid")


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_nearest_grid_gradient_is_zero_and_image_gradient_exact(padding_mode, jit):
    images, grid = _case(seed=4)
    fn = _compiled(
        functools.partial(grid_sample, interpolation="nearest", padding_mode=padding_mode), jit
    )

    def grid_gradient(images, grid):
        with tf.GradientTape() as tape:
            tape.watch(grid)
            out = fn(images, grid)
        return tape.gradient(out, grid)

    grid_grad = _compiled(grid_gradient, jit)(images, grid)
    assert grid_grad is not None, "PyTorch returns a zero gradient, not None"
    np.testing.assert_array_equal(grid_grad.numpy(), 0.0)
    nearest = functools.partial(grid_sample, interpolation="nearest", padding_mode=padding_mode)
    (d_images, fd_images), _ = oracle.batched_jacobians(nearest, images, grid, jit=jit)
    np.testing.assert_allclose(d_images, fd_images, atol=1e-6)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_theta_gradient_through_affine_grid_matches_finite_differences(jit):
    rng = np.random.default_rng(5)
    images = rng.normal(size=(1, 6, 7, 3))
    theta = oracle.random_thetas(rng, 1)

    def warp(images, theta):
        return grid_sample(
            images, affine_grid(theta, (5, 4)), interpolation="bicubic", padding_mode="border"
        )

    # Every perturbation of theta (and of the images) is one sample of one batched call.
    (d_images, fd_images), (d_theta, fd_theta) = oracle.batched_jacobians(
        warp, images, theta, jit=jit
    )
    np.testing.assert_allclose(d_theta, fd_theta, atol=1e-5)
    np.testing.assert_allclose(d_images, fd_images, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 6])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("interpolation", SMOOTH)
def test_non_finite_points_and_clamped_coordinates_get_zero_grid_gradient(
    interpolation, padding_mode, jit, channels
):
    rng = np.random.default_rng(6)
    images = tf.constant(rng.normal(size=(2, 4, 5, channels)))
    good = rng.uniform(-1.3, 1.3, size=(2, 2, 3, 2))
    bad = [[np.nan, 0.2], [0.1, np.inf], [-np.inf, -np.inf], [1e30, 0.3], [0.0, -3e38]]
    grid = good.copy()
    for k, point in enumerate(bad):  # sample 0's points; sample 1 stays good
        grid[0, k // 3, k % 3] = point
    upstream = tf.constant(rng.normal(size=(2, 2, 3, channels)))

    def grid_gradient(grid):
        with tf.GradientTape() as tape:
            tape.watch(grid)
            out = grid_sample(images, grid, interpolation=interpolation, padding_mode=padding_mode)
        return tape.gradient(out, grid, output_gradients=upstream)

    d_grid = _compiled(grid_gradient, jit)(tf.constant(grid)).numpy()
    d_good = _compiled(grid_gradient, jit)(tf.constant(good)).numpy()
    assert np.all(np.isfinite(d_grid))
    # Zero: both coordinates of a non-finite point, and a coordinate clamped at +-1e6 (the other one
    # still moves the point along the border under border or reflection padding).
    zero = np.zeros(grid.shape, bool)
    zero[0].reshape(-1, 2)[: len(bad)] = ~np.isfinite(bad) | (np.abs(bad) > 1e6)
    zero[0].reshape(-1, 2)[:3] = True  # the three points with a non-finite coordinate
    np.testing.assert_array_equal(d_grid[zero], 0.0)
    # A point's gradient depends on that point alone: the good points' gradients are untouched.
    good_points = np.ones((2, 2, 3), bool)
    good_points[0].flat[: len(bad)] = False
    np.testing.assert_allclose(d_grid[good_points], d_good[good_points], rtol=0, atol=1e-12)


def test_reduced_precision_images_get_gradients_of_their_dtype():
    images = tf.random.normal((1, 5, 5, 2), dtype=tf.bfloat16)
    grid = tf.random.uniform((1, 3, 3, 2), -1, 1)
    with tf.GradientTape() as tape:
        tape.watch([images, grid])
        loss = tf.reduce_sum(tf.cast(grid_sample(images, grid), tf.float32) ** 2)
    d_images, d_grid = tape.gradient(loss, [images, grid])
    assert d_images.dtype == tf.bfloat16 and d_grid.dtype == tf.float32
    assert np.all(np.isfinite(d_grid.numpy())) and np.any(d_grid.numpy() != 0)
