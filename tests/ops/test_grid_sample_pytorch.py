"""grid_sample against PyTorch's own numbers, where PyTorch is the specification and the other oracles
are silent: gradients at exact borders and folds, and NaN pixels. The numbers are fixtures written by
`tests/fixtures/make_torch_fixtures.py` (torch is not a test dependency)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from stn_keras import affine_grid, grid_sample

with open(os.path.join(os.path.dirname(__file__), "..", "fixtures", "torch_grid_sample.json")) as f:
    FIXTURES = json.load(f)

# float64 throughout: a handful of taps, each a product of three terms of magnitude <= 15, so a few
# hundred ulps of the largest term bounds every difference of summation order.
EPS64 = np.finfo(np.float64).eps


def _tolerance(*arrays):
    scale = max(1.0, *(float(np.max(np.abs(a), initial=0.0)) for a in arrays))
    return 256 * EPS64 * scale


def _border_inputs(align_corners):
    from tests.fixtures.make_torch_fixtures import border_inputs  # numpy only; torch not imported

    return border_inputs(align_corners)


def _gradients(images, grid, upstream, jit, **options):
    def run(images, grid):
        with tf.GradientTape() as tape:
            tape.watch([images, grid])
            out = grid_sample(images, grid, **options)
            loss = tf.reduce_sum(out * upstream)
        return (out, *tape.gradient(loss, [images, grid]))

    fn = tf.function(run, jit_compile=True) if jit else run
    return [t.numpy() for t in fn(tf.constant(images), tf.constant(grid))]


def _case_id(case):
    corners = "corners" if case["align_corners"] else "edges"
    return f"{case['interpolation']}-{case['padding_mode']}-{corners}"


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("case", FIXTURES["borders"], ids=_case_id)
def test_gradients_at_exact_borders_and_folds_match_pytorch(case, jit):
    images, grid, upstream = _border_inputs(case["align_corners"])
    options = {k: case[k] for k in ("interpolation", "padding_mode", "align_corners")}
    out, d_images, d_grid = _gradients(images, grid, upstream, jit, **options)
    for name, got in (("output", out), ("d_images", d_images), ("d_grid", d_grid)):
        want = np.array(case[name])
        np.testing.assert_allclose(got, want, rtol=0, atol=_tolerance(want), err_msg=name)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("case", FIXTURES["nan_images"], ids=_case_id)
def test_nan_pixel_spreads_only_where_pytorch_spreads_it(case, jit):
    from tests.fixtures.make_torch_fixtures import nan_inputs_numpy

    images, theta = nan_inputs_numpy()
    options = {k: case[k] for k in ("interpolation", "padding_mode", "align_corners")}
    grid = affine_grid(theta, (8, 8), align_corners=case["align_corners"]).numpy()
    out, _, d_grid = _gradients(images, grid, np.ones((1, 8, 8, 1)), jit, **options)
    assert np.argwhere(~np.isfinite(out)).tolist() == case["output_not_finite"]
    not_finite = np.argwhere(~np.isfinite(d_grid)).tolist()
    if jit:
        # PyTorch multiplies a NaN coordinate gradient by the clip's zero slope (NaN); XLA rewrites a
        # product with a 0/1 mask into a select (0). Never more than PyTorch's.
        assert all(index in case["d_grid_not_finite"] for index in not_finite)
    else:
        assert not_finite == case["d_grid_not_finite"]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_non_finite_grid_point_reads_zero_even_on_a_nan_pixel(interpolation, padding_mode):
    images = np.ones((2, 4, 4, 1))
    images[0, 0, 0, 0] = np.nan  # the pixel a sanitised (non-finite) point is parked on
    grid = np.zeros((2, 1, 2, 2))
    grid[:, 0, 0, 0] = np.nan
    grid[:, 0, 1, 1] = np.inf
    options = dict(interpolation=interpolation, padding_mode=padding_mode)
    out, d_images, d_grid = _gradients(images, grid, np.ones((2, 1, 2, 1)), False, **options)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(d_images, 0.0)
    np.testing.assert_array_equal(d_grid, 0.0)


def test_identity_stn_first_step_theta_gradient_matches_pytorch():
    from tests.fixtures.make_torch_fixtures import identity_stn_inputs

    images, upstream = identity_stn_inputs()
    theta = tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        grid = affine_grid(theta, (28, 28), align_corners=True)
        out = grid_sample(images, grid, padding_mode="border", align_corners=True)
        loss = tf.reduce_sum(out * upstream)
    want = np.array(FIXTURES["identity_stn"]["d_theta"])
    got = tape.gradient(loss, theta).numpy()
    # 784 terms of magnitude <= 2 each.
    np.testing.assert_allclose(got, want, rtol=0, atol=784 * 4 * 16 * EPS64)
