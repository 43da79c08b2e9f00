"""Transforms fitted to point correspondences, against scikit-image's estimators (Umeyama,
least-squares affine, normalised DLT with weights), OpenCV's four-point homography and closed
forms; finite differences for the gradients; degenerate sets."""

import cv2
import numpy as np
import pytest
import tensorflow as tf
from skimage import transform as skt

from stn_keras import (
    affine_grid,
    estimate_affine,
    estimate_homography,
    estimate_similarity,
    projective_grid,
)

ESTIMATORS = {
    "similarity": (estimate_similarity, skt.SimilarityTransform, 2),
    "affine": (estimate_affine, skt.AffineTransform, 3),
    "homography": (estimate_homography, skt.ProjectiveTransform, 4),
}


def _noisy_pairs(seed, batch=3, n=12):
    rng = np.random.default_rng(seed)
    src = rng.uniform(-1, 1, size=(batch, n, 2))
    matrix = np.eye(3) + rng.uniform(-0.3, 0.3, size=(batch, 3, 3)) * [
        [1, 1, 1],
        [1, 1, 1],
        [0.2, 0.2, 0],
    ]
    homogeneous = np.concatenate([src, np.ones((batch, n, 1))], -1) @ np.transpose(
        matrix, [0, 2, 1]
    )
    dst = homogeneous[..., :2] / homogeneous[..., 2:] + rng.normal(scale=0.02, size=src.shape)
    weights = rng.uniform(0.2, 2.0, size=(batch, n))
    return src, dst, weights


def _as_3x3(matrix):
    return (
        matrix
        if matrix.shape[-2] == 3
        else np.concatenate([matrix, [[[0, 0, 1]]] * len(matrix)], 1)
    )


@pytest.mark.parametrize(
    "name, weighted", [("similarity", False), ("homography", False), ("homography", True)]
)
def test_matches_scikit_image_on_noisy_points(name, weighted):
    estimate, oracle, _ = ESTIMATORS[name]
    src, dst, weights = _noisy_pairs(seed=len(name))
    got = _as_3x3(estimate(src, dst, weights if weighted else None).numpy())
    for b in range(len(src)):
        fitted = oracle.from_estimate(
            src[b], dst[b], **({"weights": weights[b]} if weighted else {})
        )
        want = fitted.params / fitted.params[2, 2]
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-9, err_msg=f"batch {b}")


@pytest.mark.parametrize("weighted", [False, True])
def test_affine_is_the_weighted_least_squares_fit(weighted):
    # numpy's lstsq (an SVD) on the rows scaled by sqrt(w): scikit-image's AffineTransform minimises
    # an algebraic error instead, which is not least squares once the points are noisy.
    src, dst, weights = _noisy_pairs(seed=6)
    weights = weights if weighted else np.ones_like(weights)
    got = estimate_affine(src, dst, weights if weighted else None).numpy()
    for b in range(len(src)):
        design = (
            np.concatenate([src[b], np.ones((len(src[b]), 1))], -1) * np.sqrt(weights[b])[:, None]
        )
        solution, *_ = np.linalg.lstsq(design, dst[b] * np.sqrt(weights[b])[:, None], rcond=None)
        np.testing.assert_allclose(got[b], solution.T, rtol=0, atol=1e-12)


def test_similarity_recovers_a_known_similarity_and_excludes_reflection():
    angle, scale, shift = 0.7, 1.3, np.array([0.2, -0.1])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(-1, 1, size=(1, 5, 2))
    got = estimate_similarity(src, src @ rotation.T + shift).numpy()[0]
    np.testing.assert_allclose(got, np.hstack([rotation, shift[:, None]]), rtol=0, atol=1e-12)
    mirrored = src * [-1, 1]  # a reflection: the best proper similarity has det > 0
    linear = estimate_similarity(src, mirrored).numpy()[0, :, :2]
    assert np.linalg.det(linear) >= 0


def test_homography_of_four_corners_is_opencvs():
    src = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    dst = src + np.random.default_rng(1).uniform(-0.2, 0.2, size=(4, 2))
    got = estimate_homography(src[None], dst[None]).numpy()[0]
    # Four exact correspondences fix the homography: it maps each corner exactly.
    mapped = np.concatenate([src, np.ones((4, 1))], -1) @ got.T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], dst, rtol=0, atol=1e-12)
    # OpenCV's four-point solve takes float32 points (about 1e-7 relative).
    want = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_fitted_transforms_feed_the_grids_as_landmark_alignment():
    # Canonical (output) landmarks as src, the image's (input) landmarks as dst: the grid at each
    # canonical landmark samples the image at its landmark.
    canonical = np.array([[[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]])
    observed = canonical @ np.array([[0.9, 0.2], [-0.1, 1.1]]).T + 0.05
    theta = estimate_affine(canonical, observed)
    grid = affine_grid(theta, (4, 4), align_corners=False).numpy()[
        0
    ]  # pixel centres at +-0.25, +-0.75
    homography = estimate_homography(canonical, observed)
    grid_h = projective_grid(homography, (4, 4)).numpy()[0]
    np.testing.assert_allclose(grid_h, grid, rtol=0, atol=1e-12)  # an affine fit, exactly
    centre = canonical @ np.array([[0.5, 0], [0, 0.5]])  # the 4 pixels at +-0.25
    np.testing.assert_allclose(
        grid[[1, 1, 2, 2], [1, 2, 2, 1]],
        (centre @ np.array([[0.9, 0.2], [-0.1, 1.1]]).T + 0.05)[0],
        atol=1e-12,
    )


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_gradients_match_finite_differences(name):
    estimate, _, _ = ESTIMATORS[name]
    src, dst, weights = _noisy_pairs(seed=4, batch=1, n=6)
    # float64 central differences with a small step: their error is step^2 times the third
    # derivative, well below the tolerance.
    theoretical, numerical = tf.test.compute_gradient(
        lambda s, d, w: estimate(s, d, w),
        [tf.constant(src), tf.constant(dst), tf.constant(weights)],
        delta=1e-5,
    )
    for got, want in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_runs_under_xla_with_a_dynamic_batch(name):
    estimate, _, _ = ESTIMATORS[name]
    src, dst, _ = _noisy_pairs(seed=5)
    fn = tf.function(estimate, input_signature=[tf.TensorSpec([None, 12, 2])] * 2, jit_compile=True)
    got = fn(tf.constant(src, tf.float32), tf.constant(dst, tf.float32)).numpy()
    want = estimate(src, dst).numpy()
    # float32: a 9x9 (at most) eigenproblem of well-spread normalised points.
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-4)


DEGENERATE = {
    "similarity": np.zeros((1, 3, 2)),  # one point, thrice
    "affine": np.array([[[0, 0], [0.5, 0.5], [1, 1.0]]]),  # collinear
    "homography": np.array([[[0, 0], [0.5, 0.5], [1, 1.0], [-1, -1.0]]]),  # collinear
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_degenerate_points_raise_eagerly_and_flag_when_traced(name):
    estimate, _, _ = ESTIMATORS[name]
    src = DEGENERATE[name]
    dst = src + 0.1
    with pytest.raises(ValueError, match="degenerate"):
        estimate(src, dst)
    both = np.concatenate([src, np.random.default_rng(0).uniform(-1, 1, size=src.shape)])
    traced = tf.function(lambda s, d: estimate(s, d, return_valid=True))
    out, valid = traced(tf.constant(both), tf.constant(both + 0.1))
    assert valid.numpy().tolist() == [False, True]
    assert np.all(np.isfinite(out.numpy()))
    identity = np.eye(3) if name == "homography" else np.eye(2, 3)
    np.testing.assert_array_equal(out.numpy()[0], identity)


@pytest.mark.parametrize(
    "src, dst, message",
    [
        (np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), "at least 2 points"),
        (np.zeros((1, 3, 2)), np.zeros((1, 4, 2)), r"dst.*\(B, 3, 2\)"),
        (np.zeros((1, 3, 3)), np.zeros((1, 3, 3)), r"src.*\(B, N, 2\)"),
    ],
)
def test_shapes_that_do_not_fit_raise_naming_them(src, dst, message):
    with pytest.raises(ValueError, match=message):
        estimate_similarity(src, dst)
