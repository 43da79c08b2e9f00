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

import keras
import tensorflow as tf

from stn_keras.export import gpu_rules, pipeline, precision, runners, validation
from stn_keras.export import savedmodel as savedmodel_format
from stn_keras.export.savedmodel import signature_output_names
from stn_keras.ops import portable

SERVING_SIGNATURE = runners.SERVING_SIGNATURE


def _static_batch_signature(model, batch_size):
    """The model's input signature with its batch axis fixed to `batch_size` (Keras's own structure)."""
    from keras.src.export.export_utils import get_input_signature

    def fixed(spec):
        return tf.TensorSpec((batch_size, *spec.shape[1:]), spec.dtype, name=spec.name)

    return keras.tree.map_structure(fixed, get_input_signature(model))


def _convert(model, staging, batch_size=None):
    """Write the builtin-ops-only flatbuffer of `model` to `staging`.

    Through the SavedModel Keras's own exporter writes (`savedmodel.write`, without the custom
    gradients a converter never reads) and `tf.lite.TFLiteConverter.from_saved_model`, which every
    supported Keras has (`model.export(format="litert")` appeared only in Keras 3.10), so the
    flatbuffer's `serving_default` signature names its inputs and outputs as the SavedModel does.
    """
    with tempfile.TemporaryDirectory(prefix="stn_keras_litert_") as scratch:
        savedmodel = os.path.join(scratch, "savedmodel")
        signature = None if batch_size is None else _static_batch_signature(model, batch_size)
        with portable.export_kernel():  # the samplers in ops the LiteRT builtins (and GPU) have
            savedmodel_format.write(model, savedmodel, signature, gradients=False)
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


def _write(model, staging, target):
    """Convert to `staging`; for the GPU delegate, refuse (nothing written) an op it rejects."""
    _convert(model, staging, target.static_batch)
    if target.gpu_delegate:
        rejected = gpu_rules.rejected_ops(staging)
        if rejected:
            raise ValueError(
                f"LiteRT's GPU delegate would reject {len(rejected)} op(s), leaving them to the CPU: "
                + "; ".join(rejected)
                + ". Nothing was written."
            )


def prepare(model, specs, target):
    """The `pipeline.Plan` of a LiteRT flatbuffer (builtin ops only), run by the LiteRT interpreter.

    A model that computes in half precision is converted and validated as its float32 twin
    (`stn_keras.export.precision`), and the report says so.
    """
    names = signature_output_names(model)
    twin, policies = precision.float32_twin(model)
    notes = [f"float32 twin of a {'/'.join(policies)} model"] if policies else []
    if target.caveat:
        notes.append(target.caveat)
    return pipeline.Plan(
        write=lambda staging: _write(twin, staging, target),
        runner=lambda staging: runners.litert(staging, specs, names),
        model=twin,
        notes=notes,
        batch_sizes=(target.static_batch,) if target.static_batch else None,
    )


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
    return pipeline.export(
        model,
        path,
        "litert",
        force=force,
        validate=validate,
        batch_sizes=batch_sizes,
        atol=atol,
    )
