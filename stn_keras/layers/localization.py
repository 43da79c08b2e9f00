"""The default localisation network of `SpatialTransformer`."""

import keras

# The default network looks at the input at this fixed resolution, so it takes images of any size.
DEFAULT_VIEW_SIZE = (32, 32)


def default_localization(dtype=None, name="localization"):
    """A small convolutional localisation network: images `(B, H, W, C)` -> features `(B, 32)`.

    The input is first resized (bilinear) to `DEFAULT_VIEW_SIZE`, then goes through two
    5x5 convolution + 2x2 max-pooling stages (8 and 16 filters) and a 32-unit dense layer, about
    16k weights for RGB input, the size of the paper's MNIST localisation networks. It works on
    inputs of any (even dynamic) size and channel count. The resize runs in float32 under every
    policy; the layers after it follow `dtype`.

    Args:
        dtype: dtype policy of the network's layers. Defaults to `None` (the global policy).
        name: the network's name. Defaults to `"localization"`.

    Returns:
        A `keras.Sequential` model, unbuilt.
    """
    return keras.Sequential(
        [
            # Resized in float32 whatever the policy: the resize is cheap, and its float16 form
            # converts to an ONNX graph that mixes float16 and float32 operands (which
            # onnxruntime refuses), so mixed-precision models could not be exported.
            keras.layers.Resizing(*DEFAULT_VIEW_SIZE, interpolation="bilinear", dtype="float32"),
            keras.layers.Conv2D(8, 5, activation="relu", dtype=dtype),
            keras.layers.MaxPooling2D(2, dtype=dtype),
            keras.layers.Conv2D(16, 5, activation="relu", dtype=dtype),
            keras.layers.MaxPooling2D(2, dtype=dtype),
            keras.layers.Flatten(dtype=dtype),
            keras.layers.Dense(32, activation="relu", dtype=dtype),
        ],
        name=name,
    )
