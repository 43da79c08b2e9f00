"""Export to a LiteRT (TFLite) flatbuffer with builtin ops only, validated in the LiteRT interpreter.

Keras 3's `model.export(format="litert")` enables TF "Flex" ops by default, which would hide an op
with no builtin kernel until the file reaches a device without the Flex delegate; here the converter
is restricted to `tf.lite.OpsSet.TFLITE_BUILTINS`, so such a model fails to convert instead, with the
converter's whole message. Our
sampler converts to builtins (GATHER / GATHER_ND) and never produces a negative gather index, on
which TFLite would abort.
"""

import os
import re
import tempfile
import warnings

import tensorflow as tf

from stn_keras.export import artifacts, precision, validation
from stn_keras.export.savedmodel import (
    SERVING_SIGNATURE,
    signature_output_names,
    signature_runner,
)


def interpreter(path):
    """A LiteRT interpreter for `path`: `ai_edge_litert`'s when installed, else `tf.lite`'s.

    Returns:
        `(interpreter, runtime name)`.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=path), "ai_edge_litert"
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            return tf.lite.Interpreter(model_path=path), f"tf.lite {tf.__version__}"


def litert_runner(path, specs, output_names):
    """`(inputs: list of arrays) -> outputs in the model's order` running `path` in LiteRT.

    The signature runner resizes the inputs to each call's batch size before running.

    Returns:
        `(run, runtime name)`.
    """
    runtime, name = interpreter(path)
    runner = runtime.get_signature_runner(SERVING_SIGNATURE)
    return signature_runner(runner, specs, output_names), name


def _convert(model, staging):
    """Write the builtin-ops-only flatbuffer of `model` to `staging`.

    Through Keras's own SavedModel export and `tf.lite.TFLiteConverter.from_saved_model`, which every
    supported Keras has (`model.export(format="litert")` appeared only in Keras 3.10), so the
    flatbuffer's `serving_default` signature names its inputs and outputs as the SavedModel does.
    """
    with tempfile.TemporaryDirectory(prefix="stn_keras_litert_") as scratch:
        savedmodel = os.path.join(scratch, "savedmodel")
        model.export(savedmodel, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            savedmodel, signature_keys=[SERVING_SIGNATURE]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flatbuffer = converter.convert()
        except Exception as e:  # the converter raises ConverterError, a subclass of Exception only.
            message = " ".join(str(e).split())
            missing = sorted(
                set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", message))
            )
            summary = f" (no builtin kernel for {', '.join(missing)})" if missing else ""
            raise ValueError(
                f"LiteRT conversion with builtin ops only failed{summary}: {message}"
            ) from None
    with open(staging, "wb") as f:
        f.write(flatbuffer)


def export_litert(
    model,
    path,
    *,
    force=False,
    validate=True,
    batch_sizes=validation.DEFAULT_BATCH_SIZES,
    atol=validation.DEFAULT_ATOL,
):
    """Export `model` to a LiteRT flatbuffer (builtin ops only), validated in the LiteRT interpreter.

    Args:
        model: a Keras model with known inputs (see `validation.input_specs`) and static spatial
            sizes.
        path: the `.tflite` file to write.
        force: whether to replace an existing file at `path`. Defaults to `False`.
        validate: whether to run the file and compare it with the model before moving it into place.
            Defaults to `True`.
        batch_sizes: batch sizes to validate at (the input is resized to each). Defaults to `(1, 5)`.
        atol: validation tolerance (see `validation.DEFAULT_ATOL`). Defaults to `1e-4`.

    A model that computes in half precision (a `mixed_float16` or `mixed_bfloat16` policy) is
    converted as its float32 twin (`stn_keras.export.precision`): the same layers and weights,
    computing in float32, since LiteRT's builtin kernels take no float16 convolutions or gathers.
    The twin is what is validated, and the report's runtime says so.

    Returns:
        The `ParityReport`, or `None` with `validate=False`.

    Raises:
        FileExistsError: if `path` exists and `force` is false.
        PermissionError: if the directory that should hold `path` is not writable.
        ValueError: if `path` does not end in `.tflite` or is refused by `files.check_target`, an
            input has a dynamic size other than the batch, or the model needs an op that is not a
            LiteRT builtin (with the converter's whole message).
        ValidationError: if the interpreter's results do not match the model; nothing is written then.
    """
    if not str(path).endswith(".tflite"):
        raise ValueError(f"Argument `path` must end with '.tflite'. Received: path={str(path)!r}")
    specs = validation.input_specs(model, dynamic_sizes=False, format="LiteRT")
    names = signature_output_names(model)
    model, policies = precision.float32_twin(model)
    note = f", float32 twin of a {'/'.join(policies)} model" if policies else ""

    def runner(staging):
        run, runtime = litert_runner(staging, specs, names)
        return run, runtime + note

    return artifacts.export_validated(
        model,
        path,
        format="litert",
        write=lambda staging: _convert(model, staging),
        runner=runner,
        force=force,
        validate=validate,
        batch_sizes=batch_sizes,
        atol=atol,
    )
