"""Transforms fitted to point correspondences, in the graph: similarity, affine, homography.

Each estimator takes point sets `src` and `dst`, `(B, N, 2)` `(x, y)` in normalised coordinates,
and returns the transform that maps `src` onto `dst` in the least-squares sense (optionally
weighted per point): a `(B, 2, 3)` theta for `affine_grid` (similarity, affine) or a `(B, 3, 3)`
homography for `projective_grid`. A grid maps *output* positions to *input* positions, so to warp
an image's landmarks onto canonical positions, pass the canonical (output) points as `src` and the
image's (input) points as `dst`. All three are differentiable w.r.t. both point sets and run under
XLA.

Degenerate sets (too few points, all points equal, collinear points for an affine or projective
fit) have no unique answer. Given as numpy arrays or eager tensors they raise `ValueError`; traced,
they cannot, so with `return_valid=True` each estimator also returns a bool `(B,)` flag, and a
degenerate sample's transform is the identity, never NaN.
"""

import numpy as np
import tensorflow as tf

from stn_keras.ops import backend, coordinates, grids

# A system whose smallest scale falls below this fraction of its largest has no unique solution.
_RELATIVE_TOLERANCE = 1e-9


def _points(src, dst, weights, minimum):
    """`src`, `dst` as `(B, N, 2)` tensors of one compute dtype and weights `(B, N, 1)`."""
    src = grids.check_params(src, "src", (None, 2), "(B, N, 2)")
    n = src.shape[1]
    dst = grids.check_params(dst, "dst", (n, 2), f"(B, {n}, 2) like `src`")
    if n is not None and n < minimum:
        raise ValueError(
            f"Arguments `src` and `dst` must hold at least {minimum} points for this fit. "
            f"Received: src.shape={tf.TensorShape(src.shape)}"
        )
    dtype = coordinates.compute_dtype(src.dtype, dst.dtype)
    if weights is None:
        weights = tf.ones_like(tf.cast(src[..., :1], dtype))
    else:
        weights = grids.check_params(weights, "weights", (n,), f"(B, {n})")
        weights = tf.cast(weights, dtype)[..., None]
    return tf.cast(src, dtype), tf.cast(dst, dtype), weights, src.dtype


def _weighted_mean(points, weights):
    return tf.reduce_sum(points * weights, axis=1, keepdims=True) / tf.reduce_sum(
        weights, axis=1, keepdims=True
    )


def _finish(transform, valid, identity, dtype, return_valid, name):
    """Replace degenerate samples by the identity; raise for them when the values are known."""
    safe = tf.where(valid[:, None, None], transform, tf.cast(identity, transform.dtype))
    if tf.executing_eagerly() and not bool(tf.reduce_all(valid)):
        bad = np.flatnonzero(~valid.numpy()).tolist()
        raise ValueError(
            f"The points of batch entries {bad} are degenerate for {name} (too few distinct "
            "points, or collinear ones): no unique transform maps `src` onto `dst`."
        )
    out = tf.cast(safe, dtype)
    return (out, valid) if return_valid else out


@backend.tensorflow_only
def estimate_similarity(src, dst, weights=None, return_valid=False):
    """The least-squares similarity (rotation, isotropic scale, translation) mapping `src` onto `dst`.

    Umeyama's estimate without reflection; in 2-D it has a closed form: with the points centred
    (weighted) and read as complex numbers `z` (src) and `w` (dst), the scaled rotation is
    `a = sum conj(z) w / sum |z|^2` and the translation `mean(dst) - a mean(src)`.

    Args:
        src, dst: float `(B, N, 2)`, N >= 2, normalised `(x, y)`.
        weights: optional float `(B, N)`, >= 0. Defaults to `None` (equal weights).
        return_valid: also return the bool `(B,)` flag of non-degenerate samples. Defaults to
            `False`.

    Returns:
        `(B, 2, 3)` theta `[[a_r, -a_i, t_x], [a_i, a_r, t_y]]` in `src`'s dtype (and the flag).

    Raises:
        ValueError: for shapes that do not fit, fewer than 2 points, or (known values) all `src`
            points of a sample equal.
    """
    src, dst, weights, dtype = _points(src, dst, weights, minimum=2)
    src_mean, dst_mean = _weighted_mean(src, weights), _weighted_mean(dst, weights)
    z, w = src - src_mean, dst - dst_mean
    zx, zy, wx, wy = z[..., 0], z[..., 1], w[..., 0], w[..., 1]
    wt = weights[..., 0]
    norm = tf.reduce_sum(wt * (zx * zx + zy * zy), axis=1)  # B
    real = tf.reduce_sum(wt * (zx * wx + zy * wy), axis=1)
    imag = tf.reduce_sum(wt * (zx * wy - zy * wx), axis=1)
    spread = tf.reduce_sum(wt * (wx * wx + wy * wy), axis=1) + norm
    valid = norm > _RELATIVE_TOLERANCE * tf.maximum(spread, tf.reduce_sum(wt, axis=1))
    safe_norm = tf.where(valid, norm, tf.ones_like(norm))
    a_r, a_i = real / safe_norm, imag / safe_norm
    linear = tf.stack([tf.stack([a_r, -a_i], -1), tf.stack([a_i, a_r], -1)], -2)  # Bx2x2
    shift = dst_mean[:, 0] - tf.linalg.matvec(linear, src_mean[:, 0])  # Bx2
    theta = tf.concat([linear, shift[..., None]], axis=-1)
    return _finish(theta, valid, np.eye(2, 3), dtype, return_valid, "a similarity")


def _solve_centred_normal_equations(design, targets, weights):
    """Weighted least squares `min sum w |design @ X - targets|^2` for a centred `(B, N, 2)` design:
    the 2 x 2 normal equations inverted in closed form (no matrix-solve op, so the graph exports
    to ONNX and LiteRT), and whether the solution is unique (`design` not on one line)."""
    gram = tf.linalg.matmul(design * weights, design, transpose_a=True)  # Bx2x2
    moment = tf.linalg.matmul(design * weights, targets, transpose_a=True)  # Bx2xJ
    xx, xy, yy = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
    determinant = xx * yy - xy * xy
    valid = determinant > _RELATIVE_TOLERANCE * tf.square(xx + yy)
    safe = tf.where(valid, determinant, tf.ones_like(determinant))
    inverse = tf.stack([tf.stack([yy, -xy], -1), tf.stack([-xy, xx], -1)], -2) / safe[:, None, None]
    return tf.linalg.matmul(inverse, moment), valid


@backend.tensorflow_only
def estimate_affine(src, dst, weights=None, return_valid=False):
    """The least-squares affine map taking `src` onto `dst` (6 parameters).

    Args:
        src, dst: float `(B, N, 2)`, N >= 3, normalised `(x, y)`, not all `src` on one line.
        weights: optional float `(B, N)`, >= 0. Defaults to `None`.
        return_valid: also return the bool `(B,)` flag of non-degenerate samples. Defaults to
            `False`.

    Returns:
        `(B, 2, 3)` theta in `src`'s dtype (and the flag).

    Raises:
        ValueError: for shapes that do not fit, fewer than 3 points, or (known values) collinear
            `src` points.
    """
    src, dst, weights, dtype = _points(src, dst, weights, minimum=3)
    # Centred first: the normal equations of raw coordinates far from 0 lose precision.
    src_mean, dst_mean = _weighted_mean(src, weights), _weighted_mean(dst, weights)
    linear_t, valid = _solve_centred_normal_equations(src - src_mean, dst - dst_mean, weights)
    linear = tf.transpose(linear_t, [0, 2, 1])
    shift = dst_mean[:, 0] - tf.linalg.matvec(linear, src_mean[:, 0])
    theta = tf.concat([linear, shift[..., None]], axis=-1)
    return _finish(theta, valid, np.eye(2, 3), dtype, return_valid, "an affine map")


def _normaliser(points):
    """The similarity `(B, 3, 3)` that centres `points` and scales their coordinates to a root mean
    square of 1 (Hartley's normalisation in scikit-image's RMS form; unweighted: it only
    conditions the problem)."""
    mean = tf.reduce_mean(points, axis=1)  # Bx2
    rms = tf.sqrt(tf.reduce_mean(tf.square(points - mean[:, None]), axis=[1, 2]))  # B
    scale = 1.0 / tf.maximum(rms, 1e-30)
    zero, one = tf.zeros_like(scale), tf.ones_like(scale)
    rows = [
        tf.stack([scale, zero, -scale * mean[:, 0]], -1),
        tf.stack([zero, scale, -scale * mean[:, 1]], -1),
        tf.stack([zero, zero, one], -1),
    ]
    return tf.stack(rows, axis=-2)


def _apply(matrix, points):
    return tf.linalg.matmul(points, matrix[:, :2, :2], transpose_b=True) + matrix[:, None, :2, 2]


@backend.tensorflow_only
def estimate_homography(src, dst, weights=None, return_valid=False):
    """The homography taking `src` onto `dst` by the normalised direct linear transform (DLT).

    Hartley's normalisation (each set centred, coordinates scaled to a root mean square of 1, as
    scikit-image does), then the unit vector `h`
    minimising the weighted algebraic error `|A h|` (the eigenvector of `A^T W A` with the smallest
    eigenvalue), denormalised and scaled to `h33 = 1` when that entry is not near 0. Exact for
    four or more exact correspondences; with noise, the algebraic least-squares fit (as
    scikit-image's `ProjectiveTransform.estimate`; OpenCV's `findHomography` refines it further).

    Args:
        src, dst: float `(B, N, 2)`, N >= 4, normalised `(x, y)`, no three `src` points on a line
            for N = 4.
        weights: optional float `(B, N)`, >= 0. Defaults to `None`.
        return_valid: also return the bool `(B,)` flag of non-degenerate samples. Defaults to
            `False`.

    Returns:
        `(B, 3, 3)` homography for `projective_grid`, in `src`'s dtype (and the flag).

    Raises:
        ValueError: for shapes that do not fit, fewer than 4 points, or (known values) a
            degenerate configuration.
    """
    src, dst, weights, dtype = _points(src, dst, weights, minimum=4)
    t_src, t_dst = _normaliser(src), _normaliser(dst)
    s, d = _apply(t_src, src), _apply(t_dst, dst)
    x, y, u, v = s[..., 0], s[..., 1], d[..., 0], d[..., 1]
    one, zero = tf.ones_like(x), tf.zeros_like(x)
    rows_u = tf.stack([x, y, one, zero, zero, zero, -u * x, -u * y, -u], -1)  # BxNx9
    rows_v = tf.stack([zero, zero, zero, x, y, one, -v * x, -v * y, -v], -1)
    design = tf.concat([rows_u, rows_v], axis=1)  # Bx2Nx9
    w = tf.concat([weights, weights], axis=1)
    gram = tf.linalg.matmul(design * w, design, transpose_a=True)  # Bx9x9
    eigenvalues, eigenvectors = tf.linalg.eigh(gram)
    # Unique when only one direction has (near) zero algebraic error.
    valid = eigenvalues[:, 1] > _RELATIVE_TOLERANCE * tf.maximum(eigenvalues[:, -1], 1e-30)
    normalised = tf.reshape(eigenvectors[..., 0], [-1, 3, 3])
    homography = tf.linalg.solve(t_dst, tf.linalg.matmul(normalised, t_src))
    corner = homography[:, 2:3, 2:3]
    scale = tf.where(tf.abs(corner) > 1e-12, corner, tf.ones_like(corner))
    homography = homography / scale
    valid &= tf.reduce_all(tf.math.is_finite(homography), axis=[1, 2])
    return _finish(homography, valid, np.eye(3), dtype, return_valid, "a homography")
