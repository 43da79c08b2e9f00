"""`run_layer_test` catches the layer defects it is there to catch."""

import keras
import numpy as np
import pytest

from stn_keras.testing.layers import run_layer_test


@keras.saving.register_keras_serializable(package="stn_keras_tests")
class ForgetsItsConfig(keras.layers.Layer):
    """Takes `units` but leaves it out of `get_config`."""

    def __init__(self, units=2, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, inputs):
        return inputs @ self.kernel

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {k: v for k, v in super().get_config().items() if k != "units"}


@keras.saving.register_keras_serializable(package="stn_keras_tests")
class WrongOutputShape(ForgetsItsConfig):
    """Declares one more output unit than it returns."""

    def get_config(self):
        return {**super().get_config(), "units": self.units}

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units + 1)


@keras.saving.register_keras_serializable(package="stn_keras_tests")
class Float16Weights(WrongOutputShape):
    """Creates its weight in the compute dtype: 16-bit under mixed precision."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)


@pytest.mark.parametrize(
    "layer_cls, match",
    [
        (ForgetsItsConfig, "symbolic call"),
        (WrongOutputShape, "symbolic call"),
        (Float16Weights, "Under mixed_float16"),
    ],
)
def test_flags_a_broken_layer(layer_cls, match):
    with pytest.raises(AssertionError, match=match):
        run_layer_test(
            layer_cls,
            {"units": 3},
            np.ones((2, 4), "float32"),
            expected_output_shape=(2, 3),
            expected_num_trainable_weights=1,
        )
