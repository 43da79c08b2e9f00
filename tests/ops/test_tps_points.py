"""Thin-plate splines through any control points (`tps_grid_from_points`): against SciPy's
`RBFInterpolator` (thin-plate kernel, degree-1 polynomial, `smoothing`), finite differences, the
lattice `tps_grid`, and the layouts that have no spline."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.interpolate import RBFInterpolator

from stn_keras import fiducial_points, tps_grid, tps_grid_from_points
from stn_keras.ops import tps
from tests.ops.test_tps import lattice, pixel_positions

SIZE = (8, 25)  # a text strip: wide, not square


def _case(seed, batch=2, count=20):
    rng = np.random.default_rng(seed)
    targets = fiducial_points(count)
    sources = targets + rng.uniform(-0.15, 0.15, size=(batch, count, 2))
    return sources, targets


def _scipy_grid(sources, targets, size, smoothing, align_corners):
    """SciPy's spline from each target point to its source point, at the output pixels."""
    positions = pixel_positions(size, align_corners)
    grids = []
    for b in range(len(sources)):
        t = targets if targets.ndim == 2 else targets[b]
        spline = RBFInterpolator(t, sources[b], kernel="thin_plate_spline", smoothing=smoothing)
        grids.append(spline(positions).reshape(*size, 2))
    return np.stack(grids)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.05])
@pytest.mark.parametrize("points", ["constant", "tensor", "per-sample tensor"])
def test_matches_scipy_thin_plate_spline(points, smoothing, align_corners):
    sources, targets = _case(seed=len(points))
    if points == "per-sample tensor":
        rng = np.random.default_rng(9)
        targets = targets + rng.uniform(-0.05, 0.05, size=sources.shape)
    given = targets if points == "constant" else tf.constant(targets)

    @tf.function  # a traced tensor: solved in the graph, not cached
    def traced(s, t):
        return tps_grid_from_points(s, t, SIZE, smoothing, align_corners)

    if points == "constant":
        got = tps_grid_from_points(sources, given, SIZE, smoothing, align_corners)
    else:
        got = traced(tf.constant(sources), given)
    want = _scipy_grid(sources, targets, SIZE, smoothing, align_corners)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)


def test_without_regularization_each_target_point_samples_its_source_point():
    # An output of 2 x 10 pixels with align_corners=True puts its pixel centres exactly on
    # clovaai's fiducials (margins 0): top row y=-1, bottom row y=1, x on linspace(-1, 1, 10).
    targets = fiducial_points(20, margins=(0.0, 0.0))
    sources = targets + np.random.default_rng(0).uniform(-0.2, 0.2, size=(3, 20, 2))
    grid = tps_grid_from_points(sources, targets, (2, 10), align_corners=True).numpy()
    np.testing.assert_allclose(grid.reshape(3, 20, 2), sources, rtol=0, atol=1e-12)


def test_the_lattice_tps_grid_is_a_special_case():
    rng = np.random.default_rng(4)
    targets = lattice(4) + rng.uniform(-0.2, 0.2, size=(2, 4, 4, 2))
    want = tps_grid(targets, SIZE).numpy()
    got = tps_grid_from_points(targets.reshape(2, 16, 2), lattice(4).reshape(16, 2), SIZE)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("points", ["constant", "tensor"])
def test_gradients_match_finite_differences(points):
    sources, targets = _case(seed=2, batch=1, count=6)
    if points == "constant":
        fn = lambda s: tps_grid_from_points(s, targets, (3, 4), 0.01)  # noqa: E731
        args = [tf.constant(sources)]
    else:
        fn = lambda s, t: tps_grid_from_points(s, t, (3, 4), 0.01)  # noqa: E731
        args = [tf.constant(sources), tf.constant(targets[None])]
    # U = r^2 log r^2 has an unbounded third derivative where an output point nears a control
    # point, so the central difference's error is delta^2 times it: a small delta in float64.
    theoretical, numerical = tf.test.compute_gradient(fn, args, delta=1e-5)
    for got, want in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("points", ["constant", "tensor"])
def test_runs_under_xla_with_a_dynamic_batch(points):
    sources, targets = _case(seed=3, batch=3)
    given = targets if points == "constant" else tf.constant(targets, tf.float32)
    fn = tf.function(
        lambda s: tps_grid_from_points(s, given, SIZE),
        input_signature=[tf.TensorSpec([None, 20, 2], tf.float32)],
        jit_compile=True,
    )
    got = fn(tf.constant(sources, tf.float32)).numpy()
    # A float32 solve: relative error up to the system's condition number times float32's epsilon.
    condition = np.linalg.cond(tps._system(targets, 0.0))
    atol = condition * np.finfo(np.float32).eps * np.max(np.abs(sources))
    np.testing.assert_allclose(got, _scipy_grid(sources, targets, SIZE, 0.0, False), atol=atol)


def test_half_precision_sources_are_solved_in_float32():
    sources, targets = _case(seed=5)
    got = tps_grid_from_points(tf.constant(sources, tf.float16), targets, SIZE)
    assert got.dtype == tf.float16
    want = _scipy_grid(sources.astype(np.float16).astype(np.float64), targets, SIZE, 0.0, False)
    # float16 output: 11 bits of a value up to ~1.3 (half an ulp), plus the float16 sources.
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    "targets, regularization, message",
    [
        (
            [[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.5]],
            0.0,
            "degenerate: the points are collinear",
        ),
        ([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0], [0.0, 1.0]], 0.0, "degenerate"),
        ([[-1.0, -1.0], [1.0, -1.0]], 0.0, "at least 3 points"),
        ([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0]], -0.1, "regularization"),
        ([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0]], float("nan"), "regularization"),
        ([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 1.0, 0.0]], 0.0, r"\(K, 2\)"),
    ],
    ids=["collinear", "repeated", "two-points", "negative", "nan", "three-columns"],
)
def test_layouts_without_a_spline_raise_naming_them(targets, regularization, message):
    sources = np.zeros((1, len(targets), 2))
    with pytest.raises(ValueError, match=message):
        tps_grid_from_points(sources, np.array(targets), SIZE, regularization)


def test_a_repeated_point_is_allowed_with_regularization():
    targets = np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0], [0.0, 1.0]])
    sources = targets[None] + [[[0, 0], [0, 0], [0.1, 0], [-0.1, 0]]]  # the pair disagrees
    grid = tps_grid_from_points(sources, targets, SIZE, regularization=0.1)
    want = _scipy_grid(sources, targets, SIZE, 0.1, False)
    np.testing.assert_allclose(grid.numpy(), want, rtol=0, atol=1e-9)


def test_source_points_of_another_count_raise_naming_both():
    with pytest.raises(ValueError, match=r"source_points.*\(B, 20, 2\)"):
        tps_grid_from_points(np.zeros((1, 19, 2)), fiducial_points(), SIZE)


def test_fiducial_points_are_asters_and_clovaais_layouts():
    aster = fiducial_points()
    assert aster.shape == (20, 2)
    np.testing.assert_allclose(aster[:10, 0], np.linspace(-0.9, 0.9, 10), atol=1e-15)
    np.testing.assert_allclose(aster[:10, 1], -0.9)
    np.testing.assert_allclose(aster[10:, 1], 0.9)
    clovaai = fiducial_points(20, margins=(0, 0))
    np.testing.assert_allclose(clovaai[10:], np.stack([np.linspace(-1, 1, 10), np.ones(10)], -1))
    for count, margins in ((7, (0, 0)), (2, (0, 0)), (20, (0.5, 0))):
        with pytest.raises(ValueError):
            fiducial_points(count, margins)
