"""Half-precision models for runtimes without half-precision kernels: a float32 twin.

LiteRT's builtin kernels take no float16 `Conv2D`, `MatMul` or gathers, so a model under a
`mixed_float16` (or `mixed_bfloat16`) policy does not convert. Its twin is the same model, rebuilt
from its config with every half-precision dtype policy replaced by `float32`, holding the same
weights (a mixed policy keeps its variables in float32 already): it computes what the model
computes, in float32 instead of float16. The exporter converts and validates the twin and says so.
"""

import keras

_HALF = ("float16", "bfloat16", "mixed_float16", "mixed_bfloat16")
_POLICIES = ("DTypePolicy", "FloatDTypePolicy")


def _is_half_policy(node):
    return (
        isinstance(node, dict)
        and node.get("class_name") in _POLICIES
        and isinstance(node.get("config"), dict)
        and node["config"].get("name") in _HALF
    )


def _replace_policies(node, found):
    """`node` (a serialised config) with every half-precision dtype policy made `float32`; the
    policy names replaced are added to `found`."""
    if _is_half_policy(node):
        found.add(node["config"]["name"])
        return {**node, "config": {**node["config"], "name": "float32"}}
    if isinstance(node, dict):
        return {key: _replace_policies(value, found) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_policies(value, found) for value in node]
    return node


def float32_twin(model):
    """`model` rebuilt with float32 compute everywhere, holding the same weights.

    Args:
        model: a Keras model whose config round-trips (functional, Sequential, registered layers).

    Returns:
        `(twin, policies)`: the twin (the model itself when nothing computes in half precision)
        and the sorted names of the half-precision policies replaced.
    """
    found = set()
    config = _replace_policies(keras.saving.serialize_keras_object(model), found)
    if not found:
        return model, []
    twin = keras.saving.deserialize_keras_object(config)
    twin.set_weights(model.get_weights())
    return twin, sorted(found)
