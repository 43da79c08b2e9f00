"""`SpatialTransformer`: Keras layer behaviour, identity start, serialisation, XLA, precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from stn_keras import SpatialTransformer, affine_grid, grid_sample
from stn_keras.ops import tps
from stn_keras.ops.transforms import TRANSFORMS, get_transform
from stn_keras.testing.layers import check_config_round_trip, run_layer_test

FAMILY_OPTIONS = {"tps": {"control_points": 3}}
NUM_CLASSES = 3


def _images(shape=(4, 12, 10, 1), seed=0):
    return np.random.default_rng(seed).random(shape).astype("float32")


def _small_localization(dtype=None):
    return keras.Sequential(
        [
            keras.layers.Conv2D(2, 3, strides=2, activation="tanh", dtype=dtype),
            keras.layers.Flatten(dtype=dtype),
        ],
        name="small_localization",
    )


def _perturb_regression(layer, seed=0):
    """Give the regression layer a non-zero kernel, so that the transform depends on the input."""
    kernel = layer.regression.kernel
    values = np.random.default_rng(seed).normal(scale=0.05, size=kernel.shape)
    kernel.assign(values.astype(kernel.dtype))


def test_behaves_as_a_keras_layer():
    run_layer_test(
        SpatialTransformer,
        {"output_size": (6, 5)},
        _images(),
        expected_output_shape=(4, 6, 5, 1),
        expected_num_trainable_weights=6 + 2,  # default localisation: 2 convs, 1 dense
    )


def test_behaves_as_a_keras_layer_when_returning_the_transform():
    run_layer_test(
        SpatialTransformer,
        {"localization": _small_localization(), "transform": "attention", "return_transform": True},
        _images(),
        expected_output_shape=[(4, 12, 10, 1), (4, 3)],
        expected_num_trainable_weights=2 + 2,
    )


@pytest.mark.parametrize("align_corners", [False, True])
def test_initial_transform_reproduces_the_input(align_corners):
    images = _images((2, 9, 11, 3)).astype("float64")
    outputs = SpatialTransformer(align_corners=align_corners, dtype="float64")(images)
    np.testing.assert_allclose(outputs, images, rtol=0, atol=1e-12)
    outputs32 = SpatialTransformer(align_corners=align_corners)(images.astype("float32"))
    np.testing.assert_allclose(outputs32, images, rtol=0, atol=1e-5)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_every_family_starts_at_the_identity(transform):
    images = _images((2, 8, 8, 1)).astype("float64")
    layer = SpatialTransformer(
        localization=_small_localization("float64"),
        transform=transform,
        transform_options=FAMILY_OPTIONS.get(transform),
        return_transform=True,
        dtype="float64",
    )
    outputs, params = layer(images)
    np.testing.assert_allclose(outputs, images, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(params, np.tile(layer.sampler.family.identity, (2, 1)))
    assert layer.num_params == layer.sampler.family.num_params


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_config_round_trip_keeps_the_family_and_its_options(transform):
    options = FAMILY_OPTIONS.get(transform)
    layer = SpatialTransformer(transform=transform, transform_options=options)
    revived = check_config_round_trip(layer)
    assert revived.sampler.family.name == transform
    assert revived.num_params == layer.num_params
    assert revived.get_config()["transform_options"] == (options or {})


@pytest.mark.parametrize(
    "options",
    [{"control_points": "aster"}, {"control_points": [[-0.9, -0.9], [0.9, -0.9], [0.0, 0.9]]}],
)
def test_tps_through_named_or_given_points_round_trips_a_keras_file(options, tmp_path):
    model = keras.Sequential(
        [
            keras.Input((16, 40, 1)),
            SpatialTransformer(output_size=(8, 20), transform="tps", transform_options=options),
        ]
    )
    x = np.random.default_rng(0).random((2, 16, 40, 1)).astype("float32")
    # Identity at init: the view is the input resampled on the output grid, up to the float32
    # spline: its points move by up to cond(system) * eps (normalised), that is times W / 2 pixels,
    # and the bilinear view by that times the largest step between neighbouring pixels (< 1).
    want = grid_sample(x, affine_grid(np.tile(np.eye(2, 3), (2, 1, 1)), (8, 20))).numpy()
    spline = model.layers[0].sampler.family.options["control_points"]
    points = get_transform("tps", control_points=spline).identity.reshape(-1, 2)
    condition = np.linalg.cond(tps._system(points, 0.0))
    atol = condition * np.finfo(np.float32).eps * 40 / 2
    np.testing.assert_allclose(model(x).numpy(), want, rtol=0, atol=atol)
    model.save(tmp_path / "m.keras")
    revived = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(revived(x).numpy(), model(x).numpy())


@keras.saving.register_keras_serializable(package="stn_keras_tests")
class FlatDense(keras.layers.Layer):
    """A custom localisation layer that defines neither `compute_output_shape` nor `get_config`."""

    def build(self, input_shape):
        self.dense = keras.layers.Dense(4, activation="tanh")
        self.dense.build((input_shape[0], int(np.prod(input_shape[1:]))))

    def call(self, inputs):
        return self.dense(keras.ops.reshape(inputs, (keras.ops.shape(inputs)[0], -1)))


def test_any_custom_layer_can_localize(tmp_path):
    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, SpatialTransformer(localization=FlatDense())(inputs))
    images = _images((2, 6, 6, 1))
    np.testing.assert_allclose(model(images), images, atol=1e-5)
    model.save(tmp_path / "model.keras")
    revived = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(revived(images), model(images))


def test_output_size_none_keeps_a_dynamic_input_size():
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, SpatialTransformer()(inputs))
    for size in [(20, 30), (33, 17)]:
        assert model(_images((1, *size, 2))).shape == (1, *size, 2)


def test_mixed_precision_keeps_the_regression_and_params_float32():
    for policy in ("mixed_float16", "mixed_bfloat16"):
        layer = SpatialTransformer(return_transform=True, dtype=policy)
        outputs, params = layer(_images())
        assert outputs.dtype == keras.DTypePolicy(policy).compute_dtype
        assert params.dtype == "float32"
        assert layer.regression.compute_dtype == "float32"
        assert {w.dtype for w in layer.weights} == {"float32"}
        # The localisation branch computes in 16 bits.
        assert layer.localization.layers[1].compute_dtype == keras.DTypePolicy(policy).compute_dtype


def test_localization_gradient_scale_scales_only_the_localization_gradients():
    images = _images()

    def gradients(scale):
        keras.utils.set_random_seed(0)
        inputs = keras.Input(images.shape[1:])
        transformer = SpatialTransformer(localization_gradient_scale=scale)
        x = keras.layers.Flatten()(transformer(inputs))
        model = keras.Model(inputs, keras.layers.Dense(1)(x))
        _perturb_regression(transformer)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images) ** 2)
        in_transformer = [any(w is v for v in transformer.weights) for w in model.trainable_weights]
        return tape.gradient(loss, model.trainable_weights), in_transformer

    full, in_transformer = gradients(1.0)
    scaled, _ = gradients(0.1)
    assert sum(in_transformer) == 8 and len(in_transformer) == 10
    for grad, grad_scaled, localization in zip(full, scaled, in_transformer, strict=True):
        assert np.any(grad.numpy() != 0)
        factor = 0.1 if localization else 1.0
        np.testing.assert_allclose(grad_scaled, factor * grad.numpy(), rtol=1e-3, atol=1e-9)


def test_gradient_matches_finite_differences():
    # Through both paths: the sampled images and the localisation -> parameters -> grid branch.
    images = tf.constant(_images((1, 5, 5, 1)), tf.float64)
    layer = SpatialTransformer(localization=_small_localization("float64"), dtype="float64")
    layer.build(images.shape)
    _perturb_regression(layer, seed=1)
    analytic, numeric = tf.test.compute_gradient(layer, [images], delta=1e-6)
    np.testing.assert_allclose(analytic[0], numeric[0], rtol=1e-5, atol=1e-7)


class Classifier(keras.Model):
    """A subclassed model with a spatial transformer in front."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.transformer = SpatialTransformer(output_size=(8, 8))
        self.flatten = keras.layers.Flatten()
        self.head = keras.layers.Dense(NUM_CLASSES)

    def call(self, inputs):
        return self.head(self.flatten(self.transformer(inputs)))


def _sequential():
    return keras.Sequential(
        [
            keras.Input((12, 10, 1)),
            SpatialTransformer(output_size=(8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )


def _functional():
    inputs = keras.Input((12, 10, 1))
    x, params = SpatialTransformer(localization=_small_localization(), return_transform=True)(
        inputs
    )
    x = keras.layers.Dense(NUM_CLASSES)(keras.layers.Flatten()(x))
    return keras.Model(inputs, [x, params])


def _fit(model, jit_compile=False):
    returns_params = not isinstance(model, (keras.Sequential, Classifier))
    images = _images((8, 12, 10, 1))
    labels = np.arange(8) % NUM_CLASSES
    # The heads output logits: probabilities clipped at 0 or 1 would have no gradient at all.
    loss, targets = keras.losses.SparseCategoricalCrossentropy(from_logits=True), labels
    if returns_params:
        # The functional model also returns the parameters: pull them towards the identity.
        identity = np.tile([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], (8, 1)).astype("float32")
        loss, targets = [loss, "mse"], [labels, identity]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=jit_compile)
    history = model.fit(images, targets, batch_size=4, epochs=1, verbose=0)
    return history.history["loss"][-1]


@pytest.mark.parametrize("build", [_sequential, _functional, Classifier], ids=lambda f: f.__name__)
def test_trains_in_sequential_functional_and_subclassed_models(build):
    model = build()
    model(_images((1, 12, 10, 1)))  # builds the subclassed model
    before = [w.numpy().copy() for w in model.trainable_weights]
    assert np.isfinite(_fit(model))
    regression = [
        (b, w)
        for b, w in zip(before, model.trainable_weights, strict=True)
        if "regression" in w.path
    ]
    assert regression and any(not np.array_equal(b, w.numpy()) for b, w in regression)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_trains_under_mixed_precision(policy):
    model = keras.Sequential(
        [
            keras.Input((12, 10, 1)),
            SpatialTransformer(output_size=(8, 8), dtype=policy),
            keras.layers.Flatten(dtype=policy),
            keras.layers.Dense(NUM_CLASSES, dtype="float32"),
        ]
    )
    assert np.isfinite(_fit(model))
    assert model.layers[0].regression.kernel.dtype == "float32"


def test_fit_step_compiles_with_xla():
    model = _sequential()
    assert np.isfinite(_fit(model, jit_compile=True))
    assert model.jit_compile


@pytest.mark.parametrize("build", [_sequential, _functional], ids=lambda f: f.__name__)
def test_keras_file_round_trip_gives_identical_outputs(build, tmp_path):
    model = build()
    _fit(model)
    _perturb_regression(next(la for la in model.layers if isinstance(la, SpatialTransformer)))
    path = tmp_path / "model.keras"
    model.save(path)
    revived = keras.saving.load_model(path)
    images = _images((3, 12, 10, 1), seed=5)
    for expected, actual in zip(
        keras.tree.flatten(model(images)), keras.tree.flatten(revived(images)), strict=True
    ):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"localization": "conv"}, "`localization`"),
        ({"output_size": (0, 4)}, "`output_size`"),
        ({"output_size": 8}, "`output_size`"),
        ({"output_size": (True, 4)}, "`output_size`"),
        ({"output_size": (4.0, 4)}, "`output_size`"),
        ({"transform": "perspective"}, "`transform`"),
        ({"transform_options": ["control_points", 3]}, "`transform_options`"),
        ({"interpolation": "area"}, "`interpolation`"),
        ({"padding_mode": "wrap"}, "`padding_mode`"),
        ({"align_corners": "yes"}, "`align_corners`"),
        ({"return_transform": 1}, "`return_transform`"),
        ({"localization_gradient_scale": 0.0}, "`localization_gradient_scale`"),
        ({"localization_gradient_scale": "0.1"}, "`localization_gradient_scale`"),
    ],
)
def test_invalid_constructor_argument_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpatialTransformer(**kwargs)


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 8, 8, 1, 1, 1)])
def test_input_of_the_wrong_rank_raises(shape):
    with pytest.raises(ValueError, match=r"\(B, H, W, C\) or volumes.*inputs.shape"):
        SpatialTransformer()(np.zeros(shape, "float32"))


def test_localization_with_dynamic_feature_size_raises():
    localization = keras.layers.Conv2D(2, 3)
    with pytest.raises(ValueError, match="static size"):
        SpatialTransformer(localization=localization)(keras.Input((None, None, 1)))


def test_numpy_integer_output_size_is_accepted_and_serialises_as_ints():
    layer = SpatialTransformer(output_size=(np.int64(14), 14))
    assert layer(keras.Input((20, 20, 1))).shape == (None, 14, 14, 1)
    size = layer.get_config()["output_size"]
    assert size == (14, 14) and all(type(v) is int for v in size)
