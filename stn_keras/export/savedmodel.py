"""Export to a TensorFlow SavedModel (TF Serving, `tf.saved_model.load`), validated after reloading."""

import re

import tensorflow as tf

from stn_keras.export import files, validation

SERVING_SIGNATURE = "serving_default"


def signature_runner(fn, specs, keep_alive=None):
    """Wrap a signature function as `(inputs: list of arrays) -> outputs in the model's order`.

    Keras names the signature's inputs after the model's inputs and its outputs `output_0`,
    `output_1`, ... in the model's flattened output order (SavedModel and LiteRT alike).

    Args:
        fn: a callable taking the inputs as keyword arguments and returning a dict of outputs.
        specs: the model's `validation.input_specs`.
        keep_alive: an object to keep referenced while the runner lives (the loaded SavedModel).
    """
    names = [name for name, _, _ in specs]

    def run(inputs):
        outputs = fn(**dict(zip(names, inputs, strict=True)))
        keys = sorted(outputs, key=lambda k: int(re.sub(r"\D", "", k) or 0))
        return [getattr(outputs[k], "numpy", lambda k=k: outputs[k])() for k in keys]

    run.keep_alive = keep_alive
    return run


def savedmodel_runner(path, specs):
    """`(inputs: list of arrays) -> outputs in the model's order` running the SavedModel in `path`."""
    loaded = tf.saved_model.load(path)
    return signature_runner(loaded.signatures[SERVING_SIGNATURE], specs, keep_alive=loaded)


def export_savedmodel(
    model,
    path,
    *,
    force=False,
    validate=True,
    batch_sizes=validation.DEFAULT_BATCH_SIZES,
    atol=validation.DEFAULT_ATOL,
):
    """Export `model` as a SavedModel with a `serving_default` signature and a dynamic batch size.

    Uses Keras 3's own exporter (`model.export(format="tf_saved_model")`), then reloads the directory
    with `tf.saved_model.load` and checks `serving_default` against the model.

    Args:
        model: a Keras model with known inputs (see `validation.input_specs`).
        path: the SavedModel directory to create.
        force: whether to replace an existing `path`. Defaults to `False`.
        validate: whether to validate the reloaded artifact before moving it into place. Defaults to
            `True`.
        batch_sizes: batch sizes to validate at. Defaults to `(1, 5)`.
        atol: validation tolerance (see `validation.DEFAULT_ATOL`). Defaults to `1e-4`.

    Returns:
        The `ParityReport`, or `None` with `validate=False`.

    Raises:
        FileExistsError: if `path` exists and `force` is false.
        ValueError: if the model's inputs are unknown.
        ValidationError: if the reloaded model does not match; nothing is written then.
    """
    specs = validation.input_specs(model)
    report = None
    with files.staged_output(path, force=force) as staging:
        model.export(staging, format="tf_saved_model", verbose=False)
        if validate:
            report = validation.check_parity(
                model,
                savedmodel_runner(staging, specs),
                format="savedmodel",
                path=path,
                runtime=f"tf.saved_model {tf.__version__}",
                batch_sizes=batch_sizes,
                atol=atol,
            )
            validation.raise_unless_passed(report)
    return report
