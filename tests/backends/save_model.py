"""Write a trained-looking ST model as `.keras` and its predictions, on this process's backend:

    KERAS_BACKEND=jax python -m tests.backends.save_model OUT_DIR

`OUT_DIR/<backend>-<family>.keras` and `OUT_DIR/<backend>-<family>.npz` (inputs and outputs), for
`test_layers.py` to load under another backend."""

import pathlib
import sys

import keras
import numpy as np

import stn_keras

FAMILIES = ("affine", "attention", "similarity", "rigid", "projective")


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


if __name__ == "__main__":
    main(sys.argv[1])
