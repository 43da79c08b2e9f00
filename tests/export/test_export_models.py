"""Valid models that exports once failed on: dict outputs, 1-pixel axes with align_corners, mixed
precision, dynamic spatial sizes; and the LiteRT converter's whole error message."""

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

import stn_keras
from stn_keras.export import export_litert, export_onnx, export_savedmodel

# One xdist worker converts these models: each module's conversions are independent but heavy.
pytestmark = pytest.mark.xdist_group("export_models")

# A zoom-out with a shift and shear, so that outputs differ from the input and read outside it.
THETA = [1.3, 0.2, 0.1, -0.15, 1.2, -0.05]


def _theta_head(images, seed=0):
    """`images -> theta (B, 6)` that depends on the images, near `THETA`; works at any spatial size."""
    features = keras.layers.GlobalAveragePooling2D()(images)
    return keras.layers.Dense(
        6,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed),
        bias_initializer=keras.initializers.Constant(THETA),
    )(features)


def test_dict_outputs_pair_by_name_in_savedmodel_and_litert(tmp_path):
    images = keras.Input((6, 7, 2), name="images")
    theta = _theta_head(images)
    main = stn_keras.TransformSampler(output_size=(4, 5))([images, theta])
    aux = stn_keras.TransformSampler(output_size=(3, 3), interpolation="nearest")([images, theta])
    # Keras flattens a dict by sorted key ("aux1" before "main"); names must pair, not digits.
    model = keras.Model(images, {"main": main, "aux1": aux})
    assert export_savedmodel(model, tmp_path / "sm").passed
    assert export_litert(model, tmp_path / "m.tflite").passed
    assert export_onnx(model, tmp_path / "m.onnx").passed


def test_savedmodel_holds_what_model_export_writes_traced_once(tmp_path):
    # `savedmodel.write` replaces `model.export` (which traces the model three times): the same
    # endpoint, signatures (input names, dict outputs by key), variable lists, and outputs.
    from stn_keras.export import savedmodel

    images, theta = keras.Input((6, 7, 2), name="images"), keras.Input((6,), name="theta")
    warped = stn_keras.TransformSampler(output_size=(4, 5))([images, theta])
    scale = keras.layers.Dense(1, name="scale")(keras.layers.Flatten()(warped))
    model = keras.Model({"images": images, "theta": theta}, {"warped": warped, "scale": scale})
    model.export(tmp_path / "keras", format="tf_saved_model", verbose=False)
    (sampler,) = [layer for layer in model.layers if isinstance(layer, stn_keras.TransformSampler)]
    calls = []
    original_call = sampler.call
    sampler.call = lambda *args, **kwargs: calls.append(1) or original_call(*args, **kwargs)
    savedmodel.write(model, tmp_path / "ours")
    sampler.call = original_call
    assert len(calls) == 1, f"the model was traced {len(calls)} times"
    theirs, ours = (tf.saved_model.load(tmp_path / name) for name in ("keras", "ours"))
    for key in ("serve", "serving_default"):
        want, got = theirs.signatures[key], ours.signatures[key]
        assert got.structured_input_signature == want.structured_input_signature
        assert got.structured_outputs == want.structured_outputs
    for collection in ("variables", "trainable_variables", "non_trainable_variables"):
        names = [v.name for v in getattr(ours, collection)]
        assert names == [v.name for v in getattr(theirs, collection)], collection
    assert len(ours.trainable_variables) == 2  # the dense layer's kernel and bias
    x = {"images": tf.random.uniform((3, 6, 7, 2)), "theta": tf.constant([THETA] * 3)}
    want = theirs.signatures["serving_default"](**x)
    for name, value in ours.signatures["serving_default"](**x).items():
        np.testing.assert_array_equal(value.numpy(), want[name].numpy(), err_msg=name)


@pytest.mark.parametrize(
    "input_shape, output_size",
    [((5, 6, 1), (1, 8)), ((5, 6, 1), (8, 1)), ((1, 6, 2), None)],
    ids=["output-1x8", "output-8x1", "image-1x6"],
)
def test_one_pixel_axis_with_align_corners_exports_natively(tmp_path, input_shape, output_size):
    images = keras.Input(input_shape, name="images")
    theta = _theta_head(images)
    warped = stn_keras.TransformSampler(output_size=output_size, align_corners=True)(
        [images, theta]
    )
    model = keras.Model(images, warped)
    report = export_onnx(model, tmp_path / "m.onnx", native_gridsample=True, opset=20)
    assert report.passed, report.summary()
    ops = {node.op_type for node in onnx.load(tmp_path / "m.onnx").graph.node}
    assert "GridSample" in ops
    if 1 in (output_size or input_shape[:2]):
        # onnxruntime's AffineGrid puts a lone pixel at -1, PyTorch at 0: the grid stays explicit.
        assert "AffineGrid" not in ops


def test_affine_grid_still_used_when_no_axis_is_a_lone_pixel(tmp_path):
    images = keras.Input((5, 6, 1), name="images")
    warped = stn_keras.TransformSampler(output_size=(2, 3), align_corners=True)(
        [images, _theta_head(images)]
    )
    model = keras.Model(images, warped)
    assert export_onnx(model, tmp_path / "m.onnx", native_gridsample=True, opset=20).passed
    ops = {node.op_type for node in onnx.load(tmp_path / "m.onnx").graph.node}
    assert {"AffineGrid", "GridSample"} <= ops and "Gather" not in ops


def test_default_spatial_transformer_exports_to_onnx_under_mixed_float16(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        images = keras.Input((12, 12, 1), name="images")
        model = keras.Model(images, stn_keras.SpatialTransformer(output_size=(8, 8))(images))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert export_onnx(model, tmp_path / "gather.onnx", atol=1e-2).passed
    with pytest.warns(UserWarning, match="stays on the gather path"):
        assert export_onnx(
            model, tmp_path / "native.onnx", native_gridsample=True, atol=1e-2
        ).passed


def test_mixed_precision_model_exports_to_litert_as_its_float32_twin(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        images = keras.Input((12, 12, 1), name="images")
        features = keras.layers.Conv2D(4, 3)(
            stn_keras.SpatialTransformer(output_size=(8, 8))(images)
        )
        logits = keras.layers.Dense(3, dtype="float32")(keras.layers.Flatten()(features))
        model = keras.Model(images, logits)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = export_litert(model, tmp_path / "m.tflite")
    assert report.passed and "float32 twin of a mixed_float16 model" in report.runtime
    # The twin is the same model: the artifact agrees with the float16 model to float16's
    # precision (11 bits: relative 2**-11 per rounding, a few dozen roundings deep).
    from stn_keras.export import runners
    from stn_keras.export.savedmodel import signature_output_names
    from stn_keras.export.validation import input_specs

    run, _ = runners.litert(
        str(tmp_path / "m.tflite"), input_specs(model), signature_output_names(model)
    )
    x = np.random.default_rng(0).random((5, 12, 12, 1)).astype("float32")
    expected = model(x).numpy()
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(run([x])[0], expected, rtol=0, atol=5e-2 * scale)


@pytest.fixture(scope="module")
def dynamic_model():
    """`(B, None, None, 3) -> [warp at its own size, warp at a fixed size]`, affine, non-identity."""
    images = keras.Input((None, None, 3), name="images")
    theta = _theta_head(images, seed=3)
    same = stn_keras.TransformSampler(interpolation="bicubic", padding_mode="reflection")(
        [images, theta]
    )
    fixed = stn_keras.TransformSampler(output_size=(5, 4))([images, theta])
    return keras.Model(images, [same, fixed])


@pytest.mark.parametrize(
    "exporter, name, options",
    [
        (export_savedmodel, "sm", {}),
        (export_onnx, "m.onnx", {}),
        (export_onnx, "native.onnx", {"native_gridsample": True}),
    ],
    ids=["savedmodel", "onnx", "onnx-native"],
)
def test_dynamic_spatial_sizes_export_and_validate_at_two_sizes(
    dynamic_model, tmp_path, exporter, name, options
):
    report = exporter(dynamic_model, tmp_path / name, **options)
    assert report.passed, report.summary()
    assert len(set(report.spatial_sizes)) == 2, report.summary()
    assert "at size 11" in report.summary() and "at size 14" in report.summary()


def test_dynamic_spatial_sizes_are_refused_by_litert_with_a_reason(dynamic_model, tmp_path):
    with pytest.raises(ValueError, match=r"LiteRT needs every size but the batch to be known"):
        export_litert(dynamic_model, tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


@keras.saving.register_keras_serializable(package="stn_keras_tests")
class _Determinant(keras.layers.Layer):
    """A layer whose op has no LiteRT builtin kernel."""

    def call(self, x):
        return tf.linalg.det(x)


def test_litert_conversion_error_keeps_the_converter_message_whole(tmp_path):
    inputs = keras.Input((3, 3), name="matrices")
    model = keras.Model(inputs, _Determinant()(inputs))
    with pytest.raises(ValueError, match="builtin ops only failed") as error:
        export_litert(model, tmp_path / "m.tflite")
    message = str(error.value)
    assert "(no builtin kernel for tf.MatrixDeterminant)" in message
    assert "Some ops are not supported by the native TFLite runtime" in message  # the tail
    assert list(tmp_path.iterdir()) == []
    np.testing.assert_allclose(model(np.eye(3, dtype=np.float32)[None]), [1.0])
