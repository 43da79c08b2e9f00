"""OpenCV's pixel matrices (`theta_from_cv2`, `cv2_from_theta`) against OpenCV itself:
`grid_sample(affine_grid(theta_from_cv2(M)))` is `cv2.warpAffine(M)`, and the same for
`warpPerspective`, to OpenCV's own rounding of the sampling position to 1/32 pixel."""

import cv2
import numpy as np
import pytest

from stn_keras import (
    affine_grid,
    cv2_from_theta,
    grid_sample,
    projective_grid,
    theta_from_cv2,
)

IN_SIZE, OUT_SIZE = (23, 31), (19, 27)  # (H, W): non-square, input and output differ


def _smooth_image(rng, size):
    """A smooth float32 image, so that OpenCV's position rounding moves values little."""
    y, x = np.mgrid[0 : size[0], 0 : size[1]] / 4.0
    phase = rng.uniform(0, 6, size=3)
    return (np.sin(x + phase[0]) * np.cos(0.7 * y + phase[1]) + 0.3 * np.sin(x - y + phase[2]))[
        ..., None
    ].astype(np.float32)


def _opencv_bound(image):
    """OpenCV rounds the sampling position to 1/32 pixel (INTER_BITS = 5): off by at most 1/64 per
    axis, which moves a bilinear value by the image's steepest neighbour difference per axis."""
    steps = [np.max(np.abs(np.diff(image, axis=a))) for a in (0, 1)]
    return sum(steps) / 64 + 1e-5


def _random_affine(rng):
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.7, 1.3)
    rotation = cv2.getRotationMatrix2D((14.0, 10.0), np.degrees(angle), scale)
    rotation[:, 2] += rng.uniform(-4, 4, size=2)
    rotation[0, 1] += rng.uniform(-0.2, 0.2)  # a shear
    return rotation


def _ours(image, grid_fn, theta, align_corners):
    grid = grid_fn(theta[None].astype(np.float64), OUT_SIZE, align_corners=align_corners)
    images = image[None].astype(np.float64)
    return grid_sample(images, grid, align_corners=align_corners).numpy()[0, ..., 0]


def _warp_flags(inverse_map):
    return cv2.INTER_LINEAR | (cv2.WARP_INVERSE_MAP if inverse_map else 0)


@pytest.mark.parametrize("inverse_map", [False, True])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_affine_grid_of_the_theta_is_warp_affine(seed, align_corners, inverse_map):
    rng = np.random.default_rng(seed)
    image, matrix = _smooth_image(rng, IN_SIZE), _random_affine(rng)
    theta = theta_from_cv2(matrix, IN_SIZE, OUT_SIZE, align_corners, inverse_map=inverse_map)
    want = cv2.warpAffine(
        image[..., 0],
        matrix,
        OUT_SIZE[::-1],
        flags=_warp_flags(inverse_map),
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    got = _ours(image, affine_grid, theta, align_corners)
    np.testing.assert_allclose(got, want, rtol=0, atol=_opencv_bound(image))
    assert np.count_nonzero(want) > 0.5 * want.size  # most of the output reads the image


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_grid_of_the_homography_is_warp_perspective(align_corners):
    rng = np.random.default_rng(5)
    image = _smooth_image(rng, IN_SIZE)
    corners = np.float32([[0, 0], [30, 0], [30, 22], [0, 22]])
    moved = corners + rng.uniform(-4, 4, size=(4, 2)).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(corners, moved)
    homography = theta_from_cv2(matrix, IN_SIZE, OUT_SIZE, align_corners)
    want = cv2.warpPerspective(
        image[..., 0], matrix, OUT_SIZE[::-1], flags=cv2.INTER_LINEAR, borderValue=0
    )
    got = _ours(image, projective_grid, homography, align_corners)
    np.testing.assert_allclose(got, want, rtol=0, atol=_opencv_bound(image))


@pytest.mark.parametrize("inverse_map", [False, True])
@pytest.mark.parametrize("align_corners", [False, True])
def test_the_conversions_invert_each_other_batched(align_corners, inverse_map):
    rng = np.random.default_rng(1)
    matrices = np.stack([_random_affine(rng) for _ in range(4)])
    options = dict(align_corners=align_corners, inverse_map=inverse_map)
    thetas = theta_from_cv2(matrices, IN_SIZE, OUT_SIZE, **options)
    assert thetas.shape == (4, 2, 3)
    np.testing.assert_allclose(
        cv2_from_theta(thetas, IN_SIZE, OUT_SIZE, **options), matrices, rtol=0, atol=1e-12
    )
    homography = np.vstack([matrices[0], [1e-3, -2e-3, 1.0]])
    back = cv2_from_theta(
        theta_from_cv2(homography, IN_SIZE, OUT_SIZE, **options), IN_SIZE, OUT_SIZE, **options
    )
    np.testing.assert_allclose(back, homography, rtol=0, atol=1e-12)


def test_closed_forms_identity_and_a_pixel_shift():
    size = (10, 20)
    np.testing.assert_allclose(
        theta_from_cv2(np.eye(2, 3), size, size), [[1, 0, 0], [0, 1, 0]], atol=1e-15
    )
    # Moving the image 3 pixels right reads each output pixel 3 pixels left: -3 * 2 / W in x.
    shift = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(
        theta_from_cv2(shift, size, size), [[1, 0, -0.3], [0, 1, 0]], atol=1e-15
    )
    np.testing.assert_allclose(
        theta_from_cv2(shift, size, size, align_corners=True),
        [[1, 0, -6 / 19], [0, 1, 0]],
        atol=1e-15,
    )


@pytest.mark.parametrize(
    "matrix, sizes, options, message",
    [
        (np.eye(3, 4), (IN_SIZE, OUT_SIZE), {}, r"shape \(2, 3\) or \(3, 3\)"),
        (np.zeros((2, 3)), (IN_SIZE, OUT_SIZE), {}, "singular"),
        (np.full((2, 3), np.nan), (IN_SIZE, OUT_SIZE), {}, "must be finite"),
        (np.eye(2, 3), ((1, 5), OUT_SIZE), {"align_corners": True}, "at least 2 pixels"),
        (np.eye(2, 3), ((0, 5), OUT_SIZE), {}, "size"),
        (np.eye(2, 3), (IN_SIZE, OUT_SIZE), {"inverse_map": "yes"}, "inverse_map"),
    ],
    ids=["shape", "singular", "nan", "one-pixel-corners", "zero-size", "flag"],
)
def test_bad_input_raises_naming_it(matrix, sizes, options, message):
    with pytest.raises(ValueError, match=message):
        theta_from_cv2(matrix, *sizes, **options)
