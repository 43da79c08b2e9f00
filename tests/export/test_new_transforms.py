"""The transform families and fitted transforms users bring export on every path: SavedModel, ONNX
(gather and native GridSample, opsets 19 and 20) and LiteRT, each validated against Keras."""

import keras
import numpy as np
import pytest

import stn_keras
from stn_keras.export import export

pytestmark = pytest.mark.xdist_group("new_transforms")

FAMILIES = {
    "similarity": ("similarity", None),
    "rigid": ("rigid", None),
    "tps-aster": ("tps", {"control_points": "aster"}),
    "tps-points": ("tps", {"control_points": [[-0.9, -0.8], [0.9, -0.7], [0.1, 0.9], [0.0, 0.0]]}),
}
PATHS = [
    ("savedmodel", "savedmodel", {}),
    ("onnx", "m.onnx", {}),
    ("onnx-native", "m.onnx", {}),
    ("onnx-native", "m.onnx", {"opset": 20}),
    ("litert", "m.tflite", {}),
]
PATH_IDS = ["savedmodel", "onnx", "onnx-native-19", "onnx-native-20", "litert"]


def _family_model(name):
    transform, options = FAMILIES[name]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 40, 1), name="strips"),
            stn_keras.SpatialTransformer(
                output_size=(8, 20), transform=transform, transform_options=options
            ),
        ]
    )
    # Off the identity, so that the export has a real warp to reproduce.
    regression = model.layers[0].regression
    bias = regression.bias.numpy()
    regression.bias.assign(bias + np.random.default_rng(1).uniform(-0.1, 0.1, bias.shape))
    return model


@keras.saving.register_keras_serializable(package="stn_keras_tests")
class AlignToLandmarks(keras.layers.Layer):
    """Warps an image so that 4 predicted landmarks land on canonical positions (a fitted map)."""

    CANONICAL = [[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]

    def __init__(self, fit="similarity", **kwargs):
        super().__init__(**kwargs)
        self.fit = fit
        self.dense = keras.layers.Dense(8, kernel_initializer="zeros")

    def build(self, input_shape):
        self.dense.build((input_shape[0], int(np.prod(input_shape[1:]))))

    def call(self, images):
        flat = keras.ops.reshape(images, (keras.ops.shape(images)[0], -1))
        canonical = keras.ops.convert_to_tensor(self.CANONICAL, images.dtype)
        landmarks = keras.ops.reshape(self.dense(flat), (-1, 4, 2)) + canonical
        src = keras.ops.zeros_like(landmarks) + canonical
        estimate = {
            "similarity": stn_keras.estimate_similarity,
            "affine": stn_keras.estimate_affine,
        }
        theta = estimate[self.fit](src, landmarks)
        return stn_keras.grid_sample(images, stn_keras.affine_grid(theta, (12, 12)))

    def get_config(self):
        return {**super().get_config(), "fit": self.fit}


def _fitted_model(fit):
    model = keras.Sequential([keras.Input((16, 16, 1), name="faces"), AlignToLandmarks(fit)])
    layer = model.layers[0]
    kernel = np.random.default_rng(2).normal(scale=0.01, size=layer.dense.kernel.shape)
    layer.dense.kernel.assign(kernel)
    return model


@pytest.mark.parametrize("format, file, options", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_new_families_export_on_every_path(name, format, file, options, tmp_path):
    # A spline's grid sums K kernel terms of up to 16 (r^2 log r^2 at r = 2.8) in float32, and
    # runtimes round log and the sum differently: 24 * 16 * eps32 = 5e-5 (normalised), times 20
    # pixels per unit on this 40-pixel-wide input, moves a random image's bilinear value by up to
    # 1e-3 (its steepest step is < 1). Affine families keep the exporters' default.
    tolerance = {"atol": 1e-3} if name.startswith("tps") else {}
    report = export(_family_model(name), tmp_path / file, format, **options, **tolerance)
    assert report.passed, report.summary()


@pytest.mark.parametrize("format, file, options", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("fit", ["similarity", "affine"])
def test_fitted_transforms_export_on_every_path(fit, format, file, options, tmp_path):
    report = export(_fitted_model(fit), tmp_path / file, format, **options)
    assert report.passed, report.summary()
