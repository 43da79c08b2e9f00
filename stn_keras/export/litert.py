"""Export to a LiteRT (TFLite) flatbuffer with builtin ops only, validated in the LiteRT interpreter.

Keras 3's `model.export(format="litert")` enables TF "Flex" ops by default, which would hide an op
with no builtin kernel until the file reaches a device without the Flex delegate; here the converter
is restricted to `tf.lite.OpsSet.TFLITE_BUILTINS`, so such a model fails to convert instead. Our
sampler converts to builtins (GATHER / GATHER_ND) and never produces a negative gather index, on
which TFLite would abort.
"""

import warnings

import tensorflow as tf

from stn_keras.export import files, validation
from stn_keras.export.savedmodel import SERVING_SIGNATURE, signature_runner


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


def litert_runner(path, specs):
    """`(inputs: list of arrays) -> outputs in the model's order` running `path` in LiteRT.

    The signature runner resizes the inputs to each call's batch size before running.
    """
    runtime, name = interpreter(path)
    return signature_runner(runtime.get_signature_runner(SERVING_SIGNATURE), specs), name


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
        model: a Keras model with known inputs (see `validation.input_specs`).
        path: the `.tflite` file to write.
        force: whether to replace an existing `path`. Defaults to `False`.
        validate: whether to run the file and compare it with the model before moving it into place.
            Defaults to `True`.
        batch_sizes: batch sizes to validate at (the input is resized to each). Defaults to `(1, 5)`.
        atol: validation tolerance (see `validation.DEFAULT_ATOL`). Defaults to `1e-4`.

    Returns:
        The `ParityReport`, or `None` with `validate=False`.

    Raises:
        FileExistsError: if `path` exists and `force` is false.
        ValueError: if `path` does not end in `.tflite`, or the model needs an op that is not a
            LiteRT builtin.
        ValidationError: if the interpreter's results do not match the model; nothing is written then.
    """
    if not str(path).endswith(".tflite"):
        raise ValueError(f"Argument `path` must end with '.tflite'. Received: path={str(path)!r}")
    specs = validation.input_specs(model)
    report = None
    with files.staged_output(path, force=force) as staging:
        try:
            model.export(
                staging,
                format="litert",
                verbose=False,
                target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
            )
        except Exception as e:  # the converter raises ConverterError, a subclass of Exception only.
            message = " ".join(str(e).split())[:300]
            raise ValueError(f"LiteRT conversion with builtin ops only failed: {message}") from None
        if validate:
            run, runtime = litert_runner(staging, specs)
            report = validation.check_parity(
                model,
                run,
                format="litert",
                path=path,
                runtime=runtime,
                batch_sizes=batch_sizes,
                atol=atol,
            )
            validation.raise_unless_passed(report)
    return report
