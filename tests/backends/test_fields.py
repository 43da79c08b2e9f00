"""The field ops and thin-plate splines on the Keras backend of this process, against the oracles
the TensorFlow tests use: onnxruntime's float64 `GridSample` on base grid + flow (and its finite
differences for the gradients), MONAI's own `DVF2DDF` / `Warp` outputs, SciPy's thin-plate
`RBFInterpolator`, `numpy.gradient`, and closed forms."""

import keras
import numpy as np
import pytest
from scipy.interpolate import RBFInterpolator

import stn_keras
from tests import oracle
from tests.backends.harness import float64, run, value_and_grads
from tests.ops.test_tps import lattice, pixel_positions

EPS64 = np.finfo(np.float64).eps
EPS32 = 2.0**-24
CASES = {"image": ((2, 5, 7, 3), (2, 5, 7, 2)), "volume": ((2, 4, 3, 5, 2), (2, 4, 3, 5, 3))}


def _field(kind, seed=0, amplitude=1.5):
    rng = np.random.default_rng(seed)
    images_shape, flow_shape = CASES[kind]
    return rng.normal(size=images_shape), rng.uniform(-amplitude, amplitude, flow_shape)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("kind", CASES)
def test_warp_matches_onnxruntime_on_base_grid_plus_flow(kind, padding_mode, interpolation):
    images, flow = _field(kind)
    options = {"interpolation": interpolation, "padding_mode": padding_mode}
    with float64():
        got = run(lambda x, f: stn_keras.warp(x, f, **options), images, flow)
    want = oracle.grid_sample(images, oracle.grid_of_flow(flow), align_corners=False, **options)
    # Positions p + flow[p] of a few pixels, normalised and back: a few float64 ulps of the
    # position; bilinear weights move by as much, on values of ~3.
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * EPS64 * 8)


@pytest.mark.parametrize("kind", CASES)
def test_warp_gradients_match_finite_differences_of_onnxruntime(kind):
    images, flow = _field(kind, seed=1)
    upstream = np.random.default_rng(2).normal(size=images.shape)
    with float64():
        _, d_images, d_flow = value_and_grads(
            lambda x, f: stn_keras.warp(x, f, padding_mode="border"), [images, flow], upstream
        )
    rng = np.random.default_rng(3)
    for got, index in ((d_images, 0), (d_flow, 1)):
        for _ in range(3):  # directional derivatives along random directions
            direction = rng.normal(size=got.shape)
            step = 1e-6

            def loss(sign, direction=direction, index=index, step=step):
                moved = [images, flow]
                moved[index] = moved[index] + sign * step * direction
                grid = oracle.grid_of_flow(moved[1])
                out = oracle.grid_sample(moved[0], grid, "bilinear", "border", False)
                return np.sum(out * upstream)

            numerical = (loss(1.0) - loss(-1.0)) / (2 * step)
            # Bilinear is piecewise linear: the difference is exact but for rounding, eps * |loss|
            # (a sum of ~400 products of ~1) over the step, twice.
            scale = np.sum(np.abs(upstream)) * np.abs(images).max() * 4
            np.testing.assert_allclose(
                np.sum(got * direction), numerical, rtol=0, atol=2 * EPS64 * scale / step
            )


@pytest.mark.parametrize(
    "case", oracle.monai_field_cases(), ids=lambda c: "x".join(map(str, c["shape"]))
)
def test_integration_and_warp_match_monai(case):
    velocity = np.array(case["velocity"], "float32")
    flow = run(
        lambda v: stn_keras.integrate_velocity(v, case["steps"], padding_mode="zeros"), velocity
    )
    np.testing.assert_allclose(
        flow, np.array(case["dvf2ddf_zeros"]), rtol=0, atol=oracle.MONAI_ATOL
    )
    image, ddf = np.array(case["image"], "float32"), np.array(case["dvf2ddf_zeros"], "float32")
    for padding_mode in ("zeros", "border"):
        warped = run(lambda x, f, p=padding_mode: stn_keras.warp(x, f, padding_mode=p), image, ddf)
        # One bilinear (trilinear) sample of values in [0, 1]: a few float32 ulps.
        want = np.array(case["warp"][padding_mode])
        np.testing.assert_allclose(warped, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", CASES)
def test_constant_fields_integrate_compose_and_resize_in_closed_form(kind):
    _, shape = CASES[kind]
    constant = np.broadcast_to(np.arange(1.0, shape[-1] + 1.0) * 0.25, shape).astype("float32")
    # A constant velocity's squarings read it back unchanged with border padding.
    integrated = run(lambda v: stn_keras.integrate_velocity(v, steps=5), constant)
    np.testing.assert_allclose(integrated, constant, rtol=0, atol=16 * EPS32)
    composed = run(stn_keras.compose_flows, constant, 2.0 * constant)
    np.testing.assert_allclose(composed, 3.0 * constant, rtol=0, atol=16 * EPS32)
    new = tuple(2 * n for n in shape[1:-1])
    resized = run(lambda f: stn_keras.resize_flow(f, new), constant)
    assert resized.shape == (shape[0], *new, shape[-1])
    vector = constant[(0,) * (len(shape) - 1)]  # every pixel's displacement
    np.testing.assert_allclose(
        resized, np.broadcast_to(2.0 * vector, resized.shape), rtol=0, atol=16 * EPS32
    )


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_to_flow_is_the_affine_map_of_each_pixel_in_pixels(align_corners):
    theta = oracle.random_thetas(np.random.default_rng(4), 2)
    size = (5, 7)
    with float64():
        flow = run(lambda t: stn_keras.affine_to_flow(t, size, align_corners=align_corners), theta)
    grid = oracle.affine_grid(theta, size, align_corners)  # B x H x W x (x, y)
    n = np.array(size[::-1], np.float64)
    if align_corners:
        pixels = (grid + 1.0) / 2.0 * (n - 1.0)
    else:
        pixels = ((grid + 1.0) * n - 1.0) / 2.0
    rows, columns = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    want = np.stack([pixels[..., 1] - rows, pixels[..., 0] - columns], axis=-1)  # "ij"
    np.testing.assert_allclose(flow, want, rtol=0, atol=64 * EPS64 * max(size))


@pytest.mark.parametrize("kind", CASES)
def test_jacobian_determinant_matches_numpy_gradient(kind):
    _, flow = _field(kind, seed=5)
    with float64():
        got = run(stn_keras.jacobian_determinant, flow)
    spatial = flow.ndim - 2
    # d (p_k + u_k) / d p_a, components and axes in array order.
    derivatives = np.stack(np.gradient(flow, axis=tuple(range(1, spatial + 1))), axis=-1)
    jacobians = derivatives + np.eye(spatial)
    np.testing.assert_allclose(got, np.linalg.det(jacobians), rtol=0, atol=1e-12)


@pytest.mark.parametrize("points", ["constant", "tensor"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_from_points_matches_scipy(points, align_corners):
    rng = np.random.default_rng(6)
    targets = stn_keras.fiducial_points(20)
    sources = targets + rng.uniform(-0.15, 0.15, size=(2, 20, 2))
    size = (8, 25)
    with float64():
        if points == "constant":
            got = run(
                lambda s: stn_keras.tps_grid_from_points(s, targets, size, 0.0, align_corners),
                sources,
            )
        else:
            got = run(
                lambda s, t: stn_keras.tps_grid_from_points(s, t, size, 0.0, align_corners),
                sources,
                targets,
            )
    positions = pixel_positions(size, align_corners)
    want = np.stack(
        [RBFInterpolator(targets, s, kernel="thin_plate_spline")(positions) for s in sources]
    )
    # A solve of a 23 x 23 system (condition ~1e3) in float64.
    np.testing.assert_allclose(got, want.reshape(2, *size, 2), rtol=0, atol=1e-10)


def test_tps_lattice_of_an_affine_motion_is_its_affine_grid():
    theta = oracle.random_thetas(np.random.default_rng(7), 2)
    control = lattice(4)  # KxKx2, (x, y)
    targets = np.einsum("bjk,...k->b...j", theta, np.concatenate([control, np.ones((4, 4, 1))], -1))
    with float64():
        got, d_targets = value_and_grads(
            lambda t: stn_keras.tps_grid(t, (6, 9)), [targets], np.ones((2, 6, 9, 2))
        )[:2]
    np.testing.assert_allclose(got, oracle.affine_grid(theta, (6, 9), False), rtol=0, atol=1e-12)
    # The grid is linear in the targets and reproduces constants: moving every target by 1 moves
    # every grid point by 1, so the gradient of the sum sums to the number of points.
    np.testing.assert_allclose(d_targets.sum(), 2 * 6 * 9 * 2, rtol=1e-12)


@pytest.mark.parametrize(
    "images_shape, flow_shape, message",
    [
        ((1, 4, 5, 1), (1, 4, 6, 2), r"same spatial shape.*\(1, 4, 5, 1\).*\(1, 4, 6, 2\)"),
        ((1, 4, 5, 1), (1, 4, 5, 3), r"one displacement per spatial axis.*\(1, 4, 5, 3\)"),
    ],
)
def test_mismatched_fields_are_refused_naming_the_shapes(images_shape, flow_shape, message):
    with pytest.raises(ValueError, match=message):
        stn_keras.warp(keras.ops.zeros(images_shape), keras.ops.zeros(flow_shape))
