"""The transform families' grids: attention, projective, and the `Transform` interface of all four.

References: the closed-form pixel positions of PyTorch's identity grid, onnxruntime's `AffineGrid`
(`tests.oracle`) and homographies written out by hand in numpy. The TPS family's own maths is
pinned in `test_tps.py`.
"""

import numpy as np
import pytest
import tensorflow as tf

from stn_keras import (
    attention_grid,
    fiducial_points,
    grid_sample,
    projective_grid,
    tps_grid_from_points,
)
from stn_keras.ops.grids import PROJECTIVE_MIN_W
from stn_keras.ops.transforms import TRANSFORMS, get_transform
from stn_keras.testing.ops import EXECUTION_MODES, run_op
from tests import oracle


def base_grid(size, align_corners):
    """PyTorch's identity grid `(H, W, 2)`, from the pixel-centre formulas (a lone pixel: 0)."""

    def axis(n):
        if n == 1:
            return np.zeros(1)
        if align_corners:
            return np.linspace(-1.0, 1.0, n)
        return (2.0 * np.arange(n) + 1.0) / n - 1.0

    height, width = size
    x, y = np.meshgrid(axis(width), axis(height))  # HxW each
    return np.stack([x, y], axis=-1)


def random_homographies(rng, batch):
    """Homographies `(batch, 3, 3)`, h33 = 1, whose w stays in [0.5, 1.5] on [-1, 1]^2."""
    homography = np.eye(3) + rng.uniform(-0.3, 0.3, (batch, 3, 3))
    homography[:, 2, :2] = rng.uniform(-0.25, 0.25, (batch, 2))
    homography[:, 2, 2] = 1.0
    return homography


def perturbed_params(name, batch, rng):
    """A family's `Transform` and `(batch, P)` parameters near its identity (w stays near 1)."""
    transform = get_transform(name, **({"control_points": 3} if name == "tps" else {}))
    return transform, transform.identity + rng.uniform(-0.2, 0.2, (batch, transform.num_params))


# --- The interface: parameter counts, identities, dtypes, execution modes. ---


@pytest.mark.parametrize(
    "name, options, num_params",
    [
        ("attention", {}, 3),
        ("affine", {}, 6),
        ("projective", {}, 8),
        ("tps", {}, 32),
        ("tps", {"control_points": 3}, 18),
        ("tps", {"control_points": np.int64(5)}, 50),
        ("tps", {"control_points": "aster"}, 40),
        ("tps", {"control_points": [[-1, -1], [1, -1], [0, 1]]}, 6),
        ("similarity", {}, 4),
        ("rigid", {}, 3),
    ],
)
def test_num_params_per_family(name, options, num_params):
    transform = get_transform(name, **options)
    assert transform.num_params == num_params
    assert transform.identity.shape == (num_params,)
    assert transform.identity.dtype == np.float64


@pytest.mark.parametrize(
    "control_points", ["aster", "clovaai", np.array([[-0.8, -0.5], [0.7, -0.6], [0.1, 0.9]])]
)
def test_tps_through_any_control_points_is_tps_grid_from_points(control_points):
    transform = get_transform("tps", control_points=control_points)
    points = transform.identity.reshape(-1, 2)
    if isinstance(control_points, str):
        margins = {"aster": (0.05, 0.05), "clovaai": (0, 0)}[control_points]
        np.testing.assert_array_equal(points, fiducial_points(20, margins))
    sources = points + np.random.default_rng(0).uniform(-0.1, 0.1, size=(2, *points.shape))
    got = transform.grid(sources.reshape(2, -1), (6, 9)).numpy()
    want = tps_grid_from_points(sources, points, (6, 9)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    identity = transform.grid(points.reshape(1, -1), (6, 9)).numpy()
    np.testing.assert_allclose(
        identity, oracle.affine_grid(np.eye(2, 3)[None], (6, 9), False), atol=1e-12
    )
    assert get_transform("tps", **transform.options).options == transform.options  # serialisable


@pytest.mark.parametrize("align_corners", [False, True])
def test_similarity_and_rigid_are_their_affine_thetas(align_corners):
    params = np.array([[0.8, 0.3, 0.1, -0.2], [1.0, 0.0, 0.0, 0.0]])
    a, b, tx, ty = params.T
    theta = np.stack([np.stack([a, -b, tx], -1), np.stack([b, a, ty], -1)], 1)
    got = get_transform("similarity").grid(params, (5, 7), align_corners).numpy()
    np.testing.assert_allclose(got, oracle.affine_grid(theta, (5, 7), align_corners), atol=1e-12)
    angle = np.array([np.pi / 2, -0.3])
    rigid = np.stack([angle, [0.1, 0.0], [0.0, -0.2]], -1)
    cos, sin = np.cos(angle), np.sin(angle)
    theta = np.stack(
        [np.stack([cos, -sin, rigid[:, 1]], -1), np.stack([sin, cos, rigid[:, 2]], -1)], 1
    )
    got = get_transform("rigid").grid(rigid, (5, 7), align_corners).numpy()
    np.testing.assert_allclose(got, oracle.affine_grid(theta, (5, 7), align_corners), atol=1e-12)


def test_tps_options_are_recorded_for_serialisation():
    assert get_transform("tps").options == {"control_points": 4}
    assert get_transform("tps", control_points=np.int64(3)).options == {"control_points": 3}
    assert type(get_transform("tps", control_points=np.int64(3)).options["control_points"]) is int


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("size", [(3, 5), (4, 1), (1, 1)], ids=str)
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_params_give_base_grid(name, size, align_corners):
    transform = get_transform(name)
    grid = transform.grid(transform.identity[None], size, align_corners=align_corners)
    assert grid.shape == (1, *size, 2)
    np.testing.assert_allclose(grid[0].numpy(), base_grid(size, align_corners), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_grid_has_params_dtype(name, dtype):
    transform, params = perturbed_params(name, 2, np.random.default_rng(0))
    grid = transform.grid(tf.cast(params, dtype), (4, 5))
    assert grid.dtype == tf.as_dtype(dtype)
    want = transform.grid(tf.cast(tf.cast(params, dtype), tf.float64), (4, 5)).numpy()
    tol = {"float16": 4e-3, "bfloat16": 2e-2, "float32": 1e-5, "float64": 0.0}[dtype]
    np.testing.assert_allclose(tf.cast(grid, tf.float64).numpy(), want, atol=tol)


@pytest.mark.parametrize("mode", EXECUTION_MODES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_runs_eager_graph_and_xla_with_dynamic_batch(name, mode):
    transform, params = perturbed_params(name, 3, np.random.default_rng(1))
    want = transform.grid(params, (4, 5)).numpy()
    for batch in (1, 3):
        got = run_op(transform.grid, params[:batch], mode=mode, size=(4, 5))
        assert got.shape == (batch, 4, 5, 2)
        np.testing.assert_allclose(got.numpy(), want[:batch], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_empty_batch_gives_empty_grid(name):
    transform = get_transform(name)
    grid = transform.grid(tf.zeros((0, transform.num_params)), (3, 4))
    assert grid.shape == (0, 3, 4, 2)


@pytest.mark.parametrize("name", ["attention", "projective", "tps"])
def test_gradient_matches_finite_differences(name):
    transform, params = perturbed_params(name, 2, np.random.default_rng(2))
    theoretical, numerical = tf.test.compute_gradient(
        lambda p: transform.grid(p, (3, 4), align_corners=False), [tf.constant(params)], delta=1e-5
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-8)


# --- Attention. ---


@pytest.mark.parametrize("align_corners", [False, True])
def test_attention_matches_affine_grid_of_scaled_identity(align_corners):
    rng = np.random.default_rng(3)
    params = np.stack([rng.uniform(0.3, 1.5, 4), *rng.uniform(-0.6, 0.6, (2, 4))], axis=-1)  # Bx3
    s, tx, ty = params.T
    zeros = np.zeros(4)
    theta = np.stack([np.stack([s, zeros, tx], -1), np.stack([zeros, s, ty], -1)], -2)  # Bx2x3
    grid = attention_grid(params, (5, 6), align_corners=align_corners)
    want = oracle.affine_grid(theta, (5, 6), align_corners)
    np.testing.assert_allclose(grid.numpy(), want, rtol=0, atol=1e-12)


def test_attention_half_scale_window_covers_the_centre_quarter():
    # s = 0.5 centred at (0, 0): a 2x2 output samples pixel centres (+-0.25, +-0.25) of the input's
    # middle, the pixel centres of a 2x2 output scaled by a half.
    grid = attention_grid(tf.constant([[0.5, 0.0, 0.0]]), (2, 2))
    np.testing.assert_allclose(grid[0, ..., 0].numpy(), [[-0.25, 0.25], [-0.25, 0.25]])
    np.testing.assert_allclose(grid[0, ..., 1].numpy(), [[-0.25, -0.25], [0.25, 0.25]])


# --- Projective. ---


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_matches_hand_computed_perspective_warp(align_corners):
    # A pure perspective warp along x, then a shift: (x, y) -> ((x + 0.1), y) / (1 + p x).
    p = 0.4
    homography = np.array([[[1.0, 0.0, 0.1], [0.0, 1.0, 0.0], [p, 0.0, 1.0]]])
    grid = projective_grid(homography, (4, 6), align_corners=align_corners)[0].numpy()
    x, y = np.moveaxis(base_grid((4, 6), align_corners), -1, 0)
    want = np.stack([(x + 0.1) / (1.0 + p * x), y / (1.0 + p * x)], axis=-1)
    np.testing.assert_allclose(grid, want, rtol=0, atol=1e-12)


def test_projective_matches_general_homography_entry_by_entry():
    homography = random_homographies(np.random.default_rng(4), 3)
    grid = projective_grid(homography, (5, 4)).numpy()
    x, y = np.moveaxis(base_grid((5, 4), False), -1, 0)
    for b, h in enumerate(homography):
        w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
        want_x = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
        want_y = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
        np.testing.assert_allclose(grid[b], np.stack([want_x, want_y], -1), rtol=0, atol=1e-12)


def test_projective_is_invariant_to_homography_scale():
    homography = random_homographies(np.random.default_rng(5), 2)
    np.testing.assert_allclose(
        projective_grid(-2.5 * homography, (3, 4)).numpy(),
        projective_grid(homography, (3, 4)).numpy(),
        atol=1e-12,
    )


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_with_affine_params_matches_affine_grid(align_corners):
    theta = oracle.random_thetas(np.random.default_rng(6), 3)
    params = np.concatenate([theta.reshape(3, 6), np.zeros((3, 2))], axis=-1)  # Bx8
    grid = get_transform("projective").grid(params, (5, 3), align_corners=align_corners)
    want = oracle.affine_grid(theta, (5, 3), align_corners)
    np.testing.assert_allclose(grid.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_projective_zero_homogeneous_coordinate_gives_finite_grid_and_gradient(dtype):
    # w = 1 - x is exactly 0 on the last column with align_corners=True (x = 1).
    params = tf.constant([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0]], dtype)
    transform = get_transform("projective")
    with tf.GradientTape() as tape:
        tape.watch(params)
        grid = transform.grid(params, (3, 3), align_corners=True)
    gradient = tape.gradient(grid, params)
    assert np.all(np.isfinite(grid.numpy())) and np.all(np.isfinite(gradient.numpy()))
    # The division by w = 0 reads w as +PROJECTIVE_MIN_W: x = 1 / 1e-6, y = y / 1e-6.
    np.testing.assert_allclose(grid[0, :, 2, 0].numpy(), [1 / PROJECTIVE_MIN_W] * 3, rtol=1e-6)
    np.testing.assert_allclose(grid[0, :, 2, 1].numpy(), [-1e6, 0.0, 1e6], rtol=1e-6)
    # Elsewhere the formula holds: x = 0 has w = 1, x = -1 has w = 2.
    np.testing.assert_allclose(grid[0, :, 0].numpy(), [[-0.5, -0.5], [-0.5, 0.0], [-0.5, 0.5]])
    # The sampler reads the horizon column as outside the image.
    out = grid_sample(tf.ones((1, 3, 3, 1), dtype), grid, align_corners=True)
    np.testing.assert_array_equal(out[0, :, 2, 0].numpy(), [0.0, 0.0, 0.0])


def test_projective_guard_keeps_the_sign_of_a_small_negative_w():
    # w = (1 - 5e-7) - x = -5e-7 at x = 1: clamped to -PROJECTIVE_MIN_W, not flipped to +.
    homography = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0 - 5e-7]]])
    grid = projective_grid(homography, (1, 3), align_corners=True).numpy()
    np.testing.assert_allclose(grid[0, 0, 2, 0], -1.0 / PROJECTIVE_MIN_W, rtol=1e-6)


# --- Bad input. ---


@pytest.mark.parametrize("shape", [(3,), (1, 2), (1, 3, 1), (1, 6)], ids=str)
def test_attention_wrong_params_shape_raises(shape):
    with pytest.raises(ValueError, match=r"params.shape=\(" + ", ".join(map(str, shape))):
        attention_grid(tf.zeros(shape), (4, 4))


@pytest.mark.parametrize("shape", [(3, 3), (1, 2, 3), (1, 8), (1, 3, 3, 1)], ids=str)
def test_projective_wrong_homography_shape_raises(shape):
    with pytest.raises(ValueError, match=r"homography.shape=\(" + ", ".join(map(str, shape))):
        projective_grid(tf.zeros(shape), (4, 4))


def test_integer_params_raise():
    with pytest.raises(ValueError, match="params.dtype=int32"):
        attention_grid(tf.ones((1, 3), tf.int32), (4, 4))
    with pytest.raises(ValueError, match="homography.dtype=int64"):
        projective_grid(tf.ones((1, 3, 3), tf.int64), (4, 4))


@pytest.mark.parametrize("fn, shape", [(attention_grid, (1, 3)), (projective_grid, (1, 3, 3))])
def test_bad_size_or_align_corners_raises(fn, shape):
    with pytest.raises(ValueError, match="size"):
        fn(tf.ones(shape), (0, 4))
    with pytest.raises(ValueError, match="align_corners=1"):
        fn(tf.ones(shape), (4, 4), align_corners=1)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_wrong_number_of_params_raises(name):
    transform = get_transform(name)
    with pytest.raises(ValueError, match=rf"\(B, {transform.num_params}\).*params.shape=\(2, 7\)"):
        transform.grid(tf.zeros((2, 7)), (4, 4))


def test_unknown_transform_raises():
    with pytest.raises(ValueError, match="Expected one of .*Received: transform='perspective'"):
        get_transform("perspective")


@pytest.mark.parametrize("name", ["attention", "affine", "projective"])
def test_option_the_family_does_not_take_raises(name):
    with pytest.raises(
        ValueError, match=rf"Unknown option\(s\) \['control_points'\] for the '{name}'"
    ):
        get_transform(name, control_points=4)


def test_misspelt_tps_option_raises():
    with pytest.raises(ValueError, match=r"\['controlpoints'\].*Expected options among"):
        get_transform("tps", controlpoints=4)


@pytest.mark.parametrize(
    "control_points, message",
    [
        *[
            (k, r"Expected an integer >= 2.*control_points=")
            for k in (1, 0, -3, 2.5, 4.0, True, None)
        ],
        ("4", r"Expected one of \('aster', 'clovaai'\)"),
        ([4], r"`control_points` must have shape \(K, 2\)"),
        ([[0, 0], [1, 1], [-1, -1]], "degenerate"),
    ],
    ids=repr,
)
def test_invalid_tps_control_points_raises(control_points, message):
    with pytest.raises(ValueError, match=message):
        get_transform("tps", control_points=control_points)
