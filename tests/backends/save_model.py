"""Write a trained-looking ST model as `.keras` and its predictions, on this process's backend:

    KERAS_BACKEND=jax python -m tests.backends.save_model OUT_DIR

`OUT_DIR/<backend>-<family>.keras` and `OUT_DIR/<backend>-<family>.npz` (inputs and outputs), and
the same for a two-input registration model (`Warp`, `IntegrateVelocity`), for `test_layers.py` to
load under another backend."""

import pathlib
import sys

import keras
import numpy as np

import stn_keras
from stn_keras import IntegrateVelocity, Warp

FAMILIES = ("affine", "attention", "similarity", "rigid", "projective", "tps")


def build(family, spatial=2):
    """A small ST classifier whose transformer is not the identity (random regression kernel)."""
    keras.utils.set_random_seed(7)
    size = (12, 12) if spatial == 2 else (8, 8, 8)
    model = keras.Sequential(
        [
            keras.Input((*size, 1)),
            stn_keras.SpatialTransformer(output_size=(10,) * spatial, transform=family),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    regression = model.layers[0].regression
    kernel = np.random.default_rng(1).normal(0.0, 0.05, regression.kernel.shape)
    regression.kernel.assign(kernel.astype("float32"))
    return model


def registration_model(shape=(12, 12, 1), steps=3):
    """`[moving, fixed] -> [warped, flow]`: a convolution predicts a velocity, integrated and applied."""
    moving, fixed = keras.Input(shape, name="moving"), keras.Input(shape, name="fixed")
    spatial = len(shape) - 1
    conv = keras.layers.Conv2D if spatial == 2 else keras.layers.Conv3D
    features = keras.layers.Concatenate()([moving, fixed])
    velocity = conv(
        spatial,
        3,
        padding="same",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=0),
        name="velocity",
    )(features)
    flow = IntegrateVelocity(steps=steps, name="integrate")(velocity)
    warped = Warp(padding_mode="border", name="warp")([moving, flow])
    return keras.Model([moving, fixed], [warped, flow], name="registration")


def inputs(spatial=2):
    size = (12, 12) if spatial == 2 else (8, 8, 8)
    return np.random.default_rng(2).random((3, *size, 1)).astype("float32")


def main(out):
    out = pathlib.Path(out)
    backend = keras.backend.backend()
    cases = [(family, 2) for family in FAMILIES] + [("affine", 3)]
    for family, spatial in cases:
        name = f"{backend}-{family}{'-3d' if spatial == 3 else ''}"
        model = build(family, spatial)
        x = inputs(spatial)
        model.save(out / f"{name}.keras")
        np.savez(out / f"{name}.npz", x=x, y=keras.ops.convert_to_numpy(model(x)))
    keras.utils.set_random_seed(7)
    model = registration_model()
    pair = np.random.default_rng(3).random((2, 3, 12, 12, 1)).astype("float32")
    warped, flow = (keras.ops.convert_to_numpy(y) for y in model([pair[0], pair[1]]))
    model.save(out / f"{backend}-registration.keras")
    np.savez(
        out / f"{backend}-registration.npz", moving=pair[0], fixed=pair[1], warped=warped, flow=flow
    )


if __name__ == "__main__":
    main(sys.argv[1])
