"""grid_sample's gradients against finite differences (float64), eagerly and under XLA."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from stn_keras import PADDING_MODES, affine_grid, grid_sample
from tests import oracle

SMOOTH = ["bilinear", "bicubic"]


def _case(seed):
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.normal(size=(1, 4, 5, 2)))
    # Points spread over and around the image, away from the integer pixel positions where the
    # interpolants have kinks (finite differences straddling a kink are not derivatives).
    grid = rng.uniform(-1.3, 1.3, size=(1, 3, 3, 2))
    return images, tf.constant(grid)


def _compiled(fn, jit):
    return tf.function(fn, jit_compile=True) if jit else fn


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("interpolation", SMOOTH)
def test_gradient_matches_finite_differences(interpolation, padding_mode, align_corners, jit):
    images, grid = _case(seed=3)
    fn = _compiled(
        functools.partial(
            grid_sample,
            interpolation=interpolation,
            padding_mode=padding_mode,
            align_corners=align_corners,
        ),
        jit,
    )
    theoretical, numerical = tf.test.compute_gradient(fn, [images, grid], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6, err_msg="d/dimages")
    np.testing.assert_allclose(theoretical[1], numerical[1], atol=1e-5, err_msg="d/dgrid")


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
    theoretical, numerical = tf.test.compute_gradient(lambda x: fn(x, grid), [images], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_theta_gradient_through_affine_grid_matches_finite_differences(jit):
    rng = np.random.default_rng(5)
    images = tf.constant(rng.normal(size=(2, 6, 7, 3)))
    theta = tf.constant(oracle.random_thetas(rng, 2))

    def warp(t):
        return grid_sample(
            images, affine_grid(t, (5, 4)), interpolation="bicubic", padding_mode="border"
        )

    theoretical, numerical = tf.test.compute_gradient(_compiled(warp, jit), [theta], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-5)


def test_reduced_precision_images_get_gradients_of_their_dtype():
    images = tf.random.normal((1, 5, 5, 2), dtype=tf.bfloat16)
    grid = tf.random.uniform((1, 3, 3, 2), -1, 1)
    with tf.GradientTape() as tape:
        tape.watch([images, grid])
        loss = tf.reduce_sum(tf.cast(grid_sample(images, grid), tf.float32) ** 2)
    d_images, d_grid = tape.gradient(loss, [images, grid])
    assert d_images.dtype == tf.bfloat16 and d_grid.dtype == tf.float32
    assert np.all(np.isfinite(d_grid.numpy())) and np.any(d_grid.numpy() != 0)
