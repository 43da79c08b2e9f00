"""grid_sample's numbers: against onnxruntime (PyTorch semantics) and against closed-form warps."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from stn_keras import INTERPOLATIONS, PADDING_MODES, affine_grid, grid_sample
from stn_keras.testing.ops import EXECUTION_MODES, run_op
from tests import oracle

COMBOS = list(itertools.product(INTERPOLATIONS, PADDING_MODES, (False, True)))
COMBO_IDS = [f"{i}-{p}-{'ac' if a else 'noac'}" for i, p, a in COMBOS]


def _random_case(seed, dtype=np.float64, batch=3, in_size=(5, 7), out_size=(6, 9), channels=3):
    """Non-square images and a grid of another size from thetas that rotate, shear, zoom and shift."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, *in_size, channels)).astype(dtype)
    theta = oracle.random_thetas(rng, batch)
    grid = oracle.affine_grid(theta, out_size, False).astype(dtype)
    return images, grid


@pytest.mark.parametrize("mode", EXECUTION_MODES)
@pytest.mark.parametrize("interpolation, padding_mode, align_corners", COMBOS, ids=COMBO_IDS)
def test_matches_onnxruntime_grid_sample(interpolation, padding_mode, align_corners, mode):
    images, grid = _random_case(seed=len(mode))
    options = dict(
        interpolation=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
    got = run_op(grid_sample, images, grid, mode=mode, **options)
    want = oracle.grid_sample(images, grid, **options)
    assert got.shape == want.shape == (3, 6, 9, 3)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["eager", "xla"])
@pytest.mark.parametrize("interpolation, padding_mode, align_corners", COMBOS, ids=COMBO_IDS)
def test_float32_matches_onnxruntime_to_float_precision(
    interpolation, padding_mode, align_corners, mode
):
    images, grid = _random_case(
        seed=7, dtype=np.float32, batch=2, in_size=(16, 11), out_size=(9, 20)
    )
    options = dict(
        interpolation=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
    got = run_op(grid_sample, images, grid, mode=mode, **options)
    want = oracle.grid_sample(images, grid, **options)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-5)


# ---- closed-form warps -------------------------------------------------------------------------------


def _warp(images, theta, out_size=None, **options):
    images = tf.convert_to_tensor(images)
    out_size = out_size or images.shape[1:3]
    theta = tf.constant(np.broadcast_to(theta, (images.shape[0], 2, 3)), images.dtype)
    grid = affine_grid(theta, out_size, align_corners=options.get("align_corners", False))
    return grid_sample(images, grid, **options).numpy()


def _ramp(shape=(2, 6, 6, 3)):
    return np.arange(np.prod(shape), dtype=np.float64).reshape(shape) / 10.0


@pytest.mark.parametrize("interpolation, padding_mode, align_corners", COMBOS, ids=COMBO_IDS)
def test_identity_theta_returns_input(interpolation, padding_mode, align_corners):
    images = _ramp((2, 5, 7, 3))
    out = _warp(
        images,
        [[1, 0, 0], [0, 1, 0]],
        interpolation=interpolation,
        padding_mode=padding_mode,
        align_corners=align_corners,
    )
    np.testing.assert_allclose(out, images, atol=1e-12)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_rotation_by_90_degrees_equals_rot90(interpolation, align_corners):
    images = _ramp()
    # Output (x, y) reads input (-y, x): out[i, j] = in[j, N - 1 - i], numpy's counter-clockwise rot90.
    out = _warp(
        images, [[0, -1, 0], [1, 0, 0]], interpolation=interpolation, align_corners=align_corners
    )
    np.testing.assert_allclose(out, np.rot90(images, k=1, axes=(1, 2)), atol=1e-12)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_negated_axes_flip_the_image(interpolation, align_corners):
    images = _ramp((1, 4, 5, 2))
    options = dict(interpolation=interpolation, align_corners=align_corners)
    np.testing.assert_allclose(
        _warp(images, [[-1, 0, 0], [0, 1, 0]], **options), images[:, :, ::-1], atol=1e-12
    )
    np.testing.assert_allclose(
        _warp(images, [[1, 0, 0], [0, -1, 0]], **options), images[:, ::-1], atol=1e-12
    )


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("shift", [-2, 1, 3])
def test_integer_shift_moves_pixels(interpolation, padding_mode, shift):
    images = _ramp((1, 4, 6, 2))
    width = images.shape[2]
    # align_corners=False: one pixel is 2 / W in normalised units.
    out = _warp(
        images,
        [[1, 0, 2.0 * shift / width], [0, 1, 0]],
        interpolation=interpolation,
        padding_mode=padding_mode,
    )
    columns = np.arange(width) + shift
    if padding_mode == "border":
        want = images[:, :, np.clip(columns, 0, width - 1)]
    elif padding_mode == "reflection":  # mirror about the outer pixel edges: -1 -> 0, W -> W - 1
        want = images[
            :,
            :,
            np.where(
                columns < 0,
                -1 - columns,
                np.where(columns >= width, 2 * width - 1 - columns, columns),
            ),
        ]
    else:
        inside = (columns >= 0) & (columns < width)
        want = np.where(
            inside[None, None, :, None], images[:, :, np.clip(columns, 0, width - 1)], 0
        )
    np.testing.assert_allclose(out, want, atol=1e-12)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_zoom_out_by_two_subsamples_and_pads_with_zeros(interpolation):
    images = _ramp((1, 7, 7, 1))
    n, mid = 7, 3
    # align_corners=True: pixel k sits at -1 + 2k/(N-1); reading at twice that lands on pixel 2k - mid.
    out = _warp(images, [[2, 0, 0], [0, 2, 0]], interpolation=interpolation, align_corners=True)
    src = 2 * np.arange(n) - mid
    inside = (src >= 0) & (src < n)
    want = np.zeros_like(images)
    want[0, np.ix_(inside, inside)[0], np.ix_(inside, inside)[1]] = images[
        0, np.ix_(src[inside], src[inside])[0], np.ix_(src[inside], src[inside])[1]
    ]
    np.testing.assert_allclose(out, want, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_midpoint_averages_neighbours(align_corners):
    images = np.array([[[0.0, 10.0], [20.0, 30.0]]])[..., None]  # 1x2x2x1
    # The midpoint between all four pixel centres is the origin whatever align_corners says.
    out = grid_sample(images, np.zeros((1, 1, 1, 2)), align_corners=align_corners)
    np.testing.assert_allclose(out.numpy().ravel(), [15.0])


def test_nearest_rounds_ties_to_even():
    images = np.arange(5.0)[None, None, :, None]  # 1x1x5x1, value = column
    # align_corners=True on 5 pixels: x = -1 + k / 2 sits at pixel k; half-pixel points are ties.
    pixels = np.array([0.5, 1.5, 2.5, 3.5])
    grid = np.stack([-1 + pixels / 2, np.zeros(4)], -1)[None, None]  # 1x1x4x2
    out = grid_sample(images, grid, interpolation="nearest", align_corners=True)
    np.testing.assert_array_equal(out.numpy().ravel(), [0.0, 2.0, 2.0, 4.0])


def test_batched_equals_per_sample():
    images, grid = _random_case(seed=11, batch=4)
    batched = grid_sample(images, grid, interpolation="bicubic", padding_mode="reflection").numpy()
    for b in range(4):
        single = grid_sample(
            images[b : b + 1], grid[b : b + 1], interpolation="bicubic", padding_mode="reflection"
        ).numpy()
        np.testing.assert_array_equal(batched[b : b + 1], single)
