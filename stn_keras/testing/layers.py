"""`run_layer_test`: the behaviour every stn-keras layer must have, checked in one call.

Modelled on keras-hub's `TestCase.run_layer_test`: config round trip, build, symbolic and eager
call, a fit step, and mixed precision. Layer tests open with it, then pin their own behaviour.
"""

import json

import keras
import numpy as np
import tensorflow as tf

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _shapes(data):
    shapes = [tuple(np.shape(x)) for x in _as_list(data)]
    return shapes if isinstance(data, (list, tuple)) else shapes[0]


def _symbolic_inputs(data):
    inputs = [
        keras.Input(batch_shape=(None, *np.shape(x)[1:]), dtype=str(np.asarray(x).dtype))
        for x in _as_list(data)
    ]
    return inputs if isinstance(data, (list, tuple)) else inputs[0]


def _shape_list(shapes):
    """A list of shape tuples from one shape or a list/tuple of shapes."""
    shapes = list(shapes)
    if shapes and isinstance(shapes[0], (list, tuple)):
        return [tuple(shape) for shape in shapes]
    return [tuple(shapes)]


def _check_shapes(actual, expected, what):
    if _shape_list(actual) != _shape_list(expected):
        raise AssertionError(
            f"{what}: expected shapes {_shape_list(expected)}, got {_shape_list(actual)}"
        )


def _output_shapes(outputs):
    return [tuple(o.shape) for o in _as_list(outputs)]


def check_config_round_trip(layer):
    """Serialise `layer`, pass it through JSON, and revive it.

    Args:
        layer: a Keras layer.

    Returns:
        The revived layer (of the same class, with the same config).

    Raises:
        AssertionError: if the revived layer has another class or another config.
    """
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    revived = keras.saving.deserialize_keras_object(config)
    if type(revived) is not type(layer):
        raise AssertionError(f"Revived a {type(revived).__name__}, expected {type(layer).__name__}")
    before = json.loads(json.dumps(layer.get_config()))
    after = json.loads(json.dumps(revived.get_config()))
    if before != after:
        raise AssertionError(f"Config changed in a round trip:\n{before}\n!=\n{after}")
    return revived


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=0,
    run_training_check=True,
    run_mixed_precision_check=True,
):
    """Check the behaviour every Keras layer must have.

    1. The config survives a JSON round trip and `from_config` rebuilds an equal layer (used for
       the symbolic call of step 3).
    2. `build` on the input shape creates the expected numbers of weights.
    3. A symbolic call (batch size `None`) and an eager call give the expected shapes, which agree
       with `compute_output_shape`, and finite eager outputs.
    4. One `fit` step of a functional model around the layer (mean-squared error to zeros, SGD)
       gives a finite loss and changes at least one trainable weight.
    5. Under `mixed_float16` and `mixed_bfloat16` the weights are float32, the first output is in
       the compute dtype and finite.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_data: a numpy array `(B, ...)` or a list of them (the layer's inputs).
        expected_output_shape: the eager output's shape, or a list of shapes for several outputs.
        expected_num_trainable_weights: expected number of trainable weights after `build`, or
            `None` to skip the check. Defaults to `None`.
        expected_num_non_trainable_weights: expected number of non-trainable weights. Defaults to
            `0`.
        run_training_check: whether to run step 4. Defaults to `True`.
        run_mixed_precision_check: whether to run step 5. Defaults to `True`.

    Raises:
        AssertionError: naming the first check that fails.
    """
    layer = layer_cls(**init_kwargs)
    layer.build(_shapes(input_data))
    if not layer.built:
        raise AssertionError("`build` did not mark the layer built")
    if expected_num_trainable_weights is not None:
        if len(layer.trainable_weights) != expected_num_trainable_weights:
            raise AssertionError(
                f"Expected {expected_num_trainable_weights} trainable weights, "
                f"got {len(layer.trainable_weights)}"
            )
    if len(layer.non_trainable_weights) != expected_num_non_trainable_weights:
        raise AssertionError(
            f"Expected {expected_num_non_trainable_weights} non-trainable weights, "
            f"got {len(layer.non_trainable_weights)}"
        )

    expected = _shape_list(expected_output_shape)
    symbolic_expected = [(None, *shape[1:]) for shape in expected]

    # The symbolic call uses the layer revived from its config: a constructor argument missing
    # from `get_config` shows up as a wrong output shape or a failed call.
    symbolic_layer = check_config_round_trip(layer_cls(**init_kwargs))
    inputs = _symbolic_inputs(input_data)
    symbolic_outputs = symbolic_layer(inputs)
    _check_shapes(_output_shapes(symbolic_outputs), symbolic_expected, "symbolic call")
    computed = symbolic_layer.compute_output_shape(
        [tuple(i.shape) for i in inputs] if isinstance(inputs, list) else tuple(inputs.shape)
    )
    _check_shapes(computed, symbolic_expected, "compute_output_shape")

    eager_outputs = layer(input_data)
    _check_shapes(_output_shapes(eager_outputs), expected, "eager call")
    for output in _as_list(eager_outputs):
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(tf.cast(output, tf.float32)))):
            raise AssertionError("The eager call returned non-finite values")

    if run_training_check:
        _run_fit_step(layer_cls, init_kwargs, input_data)
    if run_mixed_precision_check:
        for policy in MIXED_POLICIES:
            _run_mixed_precision_check(layer_cls, init_kwargs, input_data, policy)


def _run_fit_step(layer_cls, init_kwargs, input_data):
    layer = layer_cls(**init_kwargs)
    inputs = _symbolic_inputs(input_data)
    outputs = _as_list(layer(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=["mse"] * len(outputs))
    targets = [np.zeros((len(_as_list(input_data)[0]), *o.shape[1:]), "float32") for o in outputs]
    before = [w.numpy().copy() for w in model.trainable_weights]
    if not before:
        raise AssertionError("The layer has no trainable weights to fit")
    history = model.fit(input_data, targets, epochs=1, batch_size=len(targets[0]), verbose=0)
    loss = history.history["loss"][-1]
    if not np.isfinite(loss):
        raise AssertionError(f"The fit step gave a non-finite loss: {loss}")
    after = [w.numpy() for w in model.trainable_weights]
    if all(np.array_equal(b, a) for b, a in zip(before, after, strict=True)):
        raise AssertionError("The fit step changed no trainable weight")


def _run_mixed_precision_check(layer_cls, init_kwargs, input_data, policy):
    layer = layer_cls(**{**init_kwargs, "dtype": policy})
    outputs = _as_list(layer(input_data))
    for weight in layer.weights:
        if weight.dtype != "float32":
            raise AssertionError(f"Under {policy}, weight {weight.path} is {weight.dtype}")
    compute_dtype = keras.DTypePolicy(policy).compute_dtype
    if keras.backend.standardize_dtype(outputs[0].dtype) != compute_dtype:
        raise AssertionError(
            f"Under {policy}, the output is {outputs[0].dtype}, expected {compute_dtype}"
        )
    for output in outputs:
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(tf.cast(output, tf.float32)))):
            raise AssertionError(f"Under {policy}, the layer returned non-finite values")
