"""What TensorFlow and Keras already ship: `ImageProjectiveTransformV3` and `map_coordinates`.

Both take pixel coordinates (integer = pixel centre, as ours after unnormalising) and read 0
outside the image, so with bilinear interpolation they compute the same warp as ours with
`padding_mode="zeros"`; the harness checks that. Both are forward-only here: neither has a
gradient w.r.t. the transform.
"""

import keras
import numpy as np
import tensorflow as tf

from benchmarks.contenders import Contender

# map_coordinates takes one coordinate per output *element* and per input axis
# (4 x B x Ho x Wo x C) and takes seconds past this many output elements: skip the bigger cases.
MAP_COORDINATES_MAX_ELEMENTS = 2_000_000


def pixel_transforms(theta, in_size, out_size):
    """`ImageProjectiveTransformV3` transforms equal to `affine_grid(theta)`, align_corners=False.

    Output pixel `j` has the normalised position `(2 j + 1) / W_out - 1` and input pixel
    coordinate `((x + 1) W - 1) / 2` belongs to normalised `x`; composing both with theta gives an
    affine map from output to input pixels: `x_in = a0 j + a1 i + a2`, `y_in = b0 j + b1 i + b2`.

    Args:
        theta: numpy `(B, 2, 3)`.
        in_size, out_size: `(H, W)` and `(H_out, W_out)`.

    Returns:
        float32 numpy `(B, 8)`: `[a0, a1, a2, b0, b1, b2, 0, 0]`.
    """
    (height, width), (out_height, out_width) = in_size, out_size
    # Normalised output position = scale * pixel + offset, per axis (x, y).
    scale = np.array([2.0 / out_width, 2.0 / out_height])
    offset = np.array([1.0 / out_width - 1.0, 1.0 / out_height - 1.0])
    linear = theta[:, :, :2] * scale  # Bx2x2: d(normalised input) / d(output pixel)
    shift = theta[:, :, :2] @ offset + theta[:, :, 2]  # Bx2
    half = np.array([width / 2.0, height / 2.0])  # d(input pixel) / d(normalised input)
    linear = linear * half[None, :, None]
    shift = shift * half + (half * 2.0 - 1.0) / 2.0
    rows = np.concatenate([linear, shift[..., None]], axis=-1)  # Bx2x3
    zeros = np.zeros((theta.shape[0], 2))
    return np.concatenate([rows.reshape(-1, 6), zeros], axis=-1).astype(np.float32)


def build(case, inputs, task):
    """Contenders `tf-projective` and `keras-map-coordinates` (forward only, images only: TF's
    projective transform is 2-D)."""
    if task != "forward" or case.is_volume:
        return {}
    images = tf.constant(inputs["images"])
    transforms = pixel_transforms(inputs["theta"], (case.height, case.width), case.out_size)
    transforms = tf.constant(transforms)
    out_shape = tf.constant(case.out_size, tf.int32)

    def projective():
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=out_shape,
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )

    contenders = {"tf-projective": Contender(projective, to_numpy=lambda out: out.numpy())}
    if (
        case.batch * case.out_height * case.out_width * case.channels
        <= MAP_COORDINATES_MAX_ELEMENTS
    ):
        coordinates = tf.constant(_map_coordinates_input(case, transforms.numpy()))
        map_coordinates = tf.function(
            lambda: keras.ops.image.map_coordinates(
                images, coordinates, order=1, fill_mode="constant", fill_value=0.0
            )
        )
        contenders["keras-map-coordinates"] = Contender(
            map_coordinates, to_numpy=lambda out: out.numpy()
        )
    return contenders


def _map_coordinates_input(case, transforms):
    """The `(4, B, H_out, W_out, C)` coordinate array of `map_coordinates`: batch, y, x, channel."""
    b, i, j, c = np.meshgrid(
        np.arange(case.batch),
        np.arange(case.out_height),
        np.arange(case.out_width),
        np.arange(case.channels),
        indexing="ij",
    )
    t = transforms[:, None, None, None, :]  # Bx1x1x1x8
    x = t[..., 0] * j + t[..., 1] * i + t[..., 2]
    y = t[..., 3] * j + t[..., 4] * i + t[..., 5]
    return np.stack([b, y, x, c]).astype(np.float32)
