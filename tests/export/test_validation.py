"""The parity check itself: it must catch a wrong artifact, not only pass a right one."""

import keras
import numpy as np
import pytest

from stn_keras.export.validation import ParityReport, check_parity, input_specs


@pytest.fixture(scope="module")
def model():
    inputs = keras.Input((3, 4, 2), name="images")
    return keras.Model(inputs, [keras.layers.Dense(5)(inputs), keras.layers.Flatten()(inputs)])


def _keras(model):
    return lambda inputs: [o.numpy() for o in model(inputs[0])]


def _check(model, run):
    return check_parity(model, run, format="test", path="p", runtime="r")


def test_exact_artifact_passes_at_batch_1_and_5(model):
    report = _check(model, _keras(model))
    assert report.passed and report.errors == {1: 0.0, 5: 0.0}


def test_perturbed_output_fails_with_its_error(model):
    def run(inputs):
        outputs = _keras(model)(inputs)
        outputs[1] = outputs[1] + 1e-3
        return outputs

    report = _check(model, run)
    assert not report.passed
    assert report.max_abs_error == pytest.approx(1e-3, rel=1e-3)
    assert "FAIL" in report.summary()


def test_nan_output_fails(model):
    def run(inputs):
        outputs = _keras(model)(inputs)
        outputs[0][0, 0, 0, 0] = np.nan
        return outputs

    assert not _check(model, run).passed


def test_batch_size_baked_into_the_artifact_fails(model):
    report = _check(model, lambda inputs: _keras(model)([inputs[0][:1]]))
    assert report.errors[1] == 0.0 and report.errors[5] == float("inf")
    assert not report.passed


def test_wrong_number_of_outputs_raises(model):
    with pytest.raises(ValueError, match="returned 1 outputs; the model has 2"):
        _check(model, lambda inputs: _keras(model)(inputs)[:1])


def test_tolerance_scales_with_the_outputs():
    report = ParityReport("test", "p", {1: 5e-4}, tolerance=1e-4 * 10.0)
    assert report.passed


def test_input_specs_keep_unknown_sizes_unless_the_format_needs_them():
    inputs = keras.Input((None, None, 3), name="images")
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    assert input_specs(model) == [("images", (None, None, None, 3), "float32")]
    with pytest.raises(ValueError, match=r"to LiteRT: input 0 has shape \(None, None, None, 3\)"):
        input_specs(model, dynamic_sizes=False, format="LiteRT")
