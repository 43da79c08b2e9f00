"""OpenCV's pixel matrices as the ops' normalised transforms, and back.

`cv2.warpAffine(src, M, (W_out, H_out))` computes `dst(p) = src(M^-1 p)` for every output pixel
`p = (x, y, 1)`, with pixel centres at integer coordinates; with `cv2.WARP_INVERSE_MAP` it reads
`src(M p)` instead. `affine_grid(theta)` maps normalised output coordinates to normalised input
coordinates (`stn_keras.ops.coordinates`). So the theta of an OpenCV warp is

    theta = N_in @ A @ N_out^-1,    A = M^-1 (or M with WARP_INVERSE_MAP),

where `N` maps a size's pixel coordinates to normalised ones: `x_n = (2 x + 1) / W - 1` with
`align_corners=False`, `x_n = 2 x / (W - 1) - 1` with `align_corners=True`. A `(2, 3)` matrix is
`warpAffine`'s and gives the `(2, 3)` theta of `affine_grid`; a `(3, 3)` one is
`warpPerspective`'s and gives the homography of `projective_grid`. These are conversions of
constants (what a ported OpenCV pipeline holds), in float64 numpy, batched or not.
"""

import numpy as np

from stn_keras.ops.validation import check_bool, check_size


def _normalizer(size, align_corners):
    """The `(3, 3)` map from pixel coordinates `(x, y, 1)` of an `(H, W)` image to normalised ones."""
    height, width = size
    if align_corners:
        if min(height, width) < 2:
            raise ValueError(
                "With align_corners=True a size needs at least 2 pixels per axis to define a "
                f"scale (-1 and 1 are the corner pixels' centres). Received: size={size}"
            )
        return np.array(
            [[2.0 / (width - 1), 0.0, -1.0], [0.0, 2.0 / (height - 1), -1.0], [0.0, 0.0, 1.0]]
        )
    return np.array(
        [[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0, 0, 1]]
    )


def _homogeneous(matrices, name):
    """`matrices` `(2, 3)`, `(3, 3)`, `(B, 2, 3)` or `(B, 3, 3)` as float64 `(B, 3, 3)`, and
    whether they were affine and batched."""
    array = np.asarray(matrices, dtype=np.float64)
    if array.ndim not in (2, 3) or array.shape[-2:] not in ((2, 3), (3, 3)):
        raise ValueError(
            f"Argument `{name}` must have shape (2, 3) or (3, 3), or (B, 2, 3) or (B, 3, 3) for a "
            f"batch. Received: {name}.shape={array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"Argument `{name}` must be finite. Received: {name}={array.tolist()}")
    batched = array.ndim == 3
    affine = array.shape[-2] == 2
    array = array if batched else array[None]
    if affine:
        last = np.broadcast_to([0.0, 0.0, 1.0], (array.shape[0], 1, 3))
        array = np.concatenate([array, last], axis=1)
    return array, affine, batched


def _invert(matrices, name):
    if np.any(np.abs(np.linalg.det(matrices)) < 1e-12 * np.max(np.abs(matrices)) ** 2):
        raise ValueError(
            f"Argument `{name}` is singular: OpenCV's warp has no inverse map. "
            f"Received: {name}={matrices.tolist()}"
        )
    return np.linalg.inv(matrices)


def _result(matrices, affine, batched):
    out = matrices[:, :2] if affine else matrices
    return out if batched else out[0]


def theta_from_cv2(matrix, input_size, output_size, align_corners=False, inverse_map=False):
    """The `affine_grid` theta (or `projective_grid` homography) of an OpenCV warp.

    `grid_sample(images, affine_grid(theta, output_size, align_corners), align_corners=...)` then
    computes what `cv2.warpAffine(image, matrix, (W_out, H_out), flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_CONSTANT)` computes, up to OpenCV's fixed-point interpolation (it rounds
    the bilinear weights to multiples of 1/32).

    Args:
        matrix: `cv2.warpAffine`'s `(2, 3)` or `cv2.warpPerspective`'s `(3, 3)` pixel matrix, or a
            batch of them `(B, 2, 3)` / `(B, 3, 3)`, mapping input pixels to output pixels.
        input_size: the source image's `(H_in, W_in)`.
        output_size: the destination's `(H_out, W_out)` (OpenCV's `dsize` is `(W_out, H_out)`).
        align_corners: the convention the grid is sampled with. Defaults to `False`.
        inverse_map: whether `matrix` already maps output pixels to input pixels
            (`cv2.WARP_INVERSE_MAP`). Defaults to `False`.

    Returns:
        float64 numpy: `(2, 3)` (or `(B, 2, 3)`) for an affine matrix, `(3, 3)` (or `(B, 3, 3)`)
        for a perspective one, normalised so that `affine_grid` / `projective_grid` take it.

    Raises:
        ValueError: for a matrix of another shape, non-finite or singular (without
            `inverse_map`), or sizes that are not pairs of positive ints (at least 2 per axis with
            `align_corners=True`).
    """
    check_bool("align_corners", align_corners)
    check_bool("inverse_map", inverse_map)
    input_size = tuple(check_size(input_size, dims=(2,)))
    output_size = tuple(check_size(output_size, dims=(2,)))
    matrices, affine, batched = _homogeneous(matrix, "matrix")
    pixels = matrices if inverse_map else _invert(matrices, "matrix")  # output px -> input px
    theta = (
        _normalizer(input_size, align_corners)
        @ pixels
        @ np.linalg.inv(_normalizer(output_size, align_corners))
    )
    return _result(theta, affine, batched)


def cv2_from_theta(theta, input_size, output_size, align_corners=False, inverse_map=False):
    """The OpenCV pixel matrix of an `affine_grid` theta (or `projective_grid` homography).

    The inverse of `theta_from_cv2`: `cv2.warpAffine(image, cv2_from_theta(theta, ...), (W_out,
    H_out))` computes what `grid_sample(images, affine_grid(theta, output_size, align_corners),
    align_corners=...)` computes.

    Args:
        theta: `(2, 3)` / `(3, 3)`, or a batch `(B, 2, 3)` / `(B, 3, 3)`, mapping normalised
            output coordinates to normalised input coordinates.
        input_size, output_size, align_corners: as in `theta_from_cv2`.
        inverse_map: whether to return the matrix for `cv2.WARP_INVERSE_MAP` (output pixels to
            input pixels) rather than OpenCV's default (input pixels to output pixels). Defaults
            to `False`.

    Returns:
        float64 numpy, the pixel matrix, shaped as `theta`.

    Raises:
        ValueError: for a theta of another shape, non-finite or (without `inverse_map`)
            singular, or invalid sizes.
    """
    check_bool("align_corners", align_corners)
    check_bool("inverse_map", inverse_map)
    input_size = tuple(check_size(input_size, dims=(2,)))
    output_size = tuple(check_size(output_size, dims=(2,)))
    thetas, affine, batched = _homogeneous(theta, "theta")
    pixels = (
        np.linalg.inv(_normalizer(input_size, align_corners))
        @ thetas
        @ _normalizer(output_size, align_corners)
    )  # output px -> input px
    matrix = pixels if inverse_map else _invert(pixels, "theta")
    if not affine:
        last = matrix[:, 2:3, 2:3]
        matrix = matrix / np.where(last != 0.0, last, 1.0)  # OpenCV's homographies: h33 = 1
    return _result(matrix, affine, batched)
