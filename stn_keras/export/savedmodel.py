"""Export to a TensorFlow SavedModel (TF Serving, `tf.saved_model.load`), validated after reloading."""

import keras
import tensorflow as tf

from stn_keras.export import pipeline, runners, validation

# The endpoint `model.export` names, and the signature TF Serving and LiteRT's converter read.
SERVING_ENDPOINT = "serve"
SERVING_SIGNATURE = runners.SERVING_SIGNATURE


def signature_output_names(model):
    """The names Keras's exporter gives `model`'s outputs in a signature, in the flattened output order.

    A dict of outputs keeps its keys (flattened in sorted order, as `keras.tree.flatten` does); a
    single output or a list of them is named `output_0`, `output_1`, ... (SavedModel and LiteRT alike).
    The structure is read from the model's output on one sample input, which every model has (a
    reloaded `Sequential` has no symbolic output until it is called).
    """
    specs = validation.input_specs(model)
    inputs = validation.sample_inputs(specs, 1)
    structure = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    if isinstance(structure, dict):
        return [str(k) for k in sorted(structure)]
    return [f"output_{i}" for i in range(len(keras.tree.flatten(structure)))]


def write(model, path, input_signature=None, gradients=True):
    """Write `model` as a SavedModel whose `serve` endpoint and `serve` / `serving_default`
    signatures run the model on `input_signature` (the model's own inputs by default), with the
    variable lists Keras's `ExportArchive` saves: what `model.export` writes, traced once.
    `gradients=False` leaves out the samplers' custom gradients (TensorFlow traces each one to save
    it), for a SavedModel that is only converted.

    `model.export` traces the model three times: its endpoint is a `tf.function`, which
    `tf.saved_model.save` retraces under its save context, and the archive walks the model for
    resources through the model's `_default_save_signature`, a new `tf.function` at every access.
    On a model of many samplers that is most of an export's time. Here the object saved holds the
    one traced concrete function, and resources (lookup tables) are found by a walk that lists no
    functions.
    """
    from keras.src.export.export_utils import get_input_signature, make_tf_tensor_spec

    signature = get_input_signature(model) if input_signature is None else input_signature
    signature = keras.tree.map_structure(make_tf_tensor_spec, signature)
    serve = tf.function(lambda *inputs: model(*inputs), input_signature=signature, autograph=False)
    serve = serve.get_concrete_function()
    root = tf.__internal__.tracking.AutoTrackable()
    root.serve = serve
    root.variables = list(model.variables)
    root.trainable_variables = list(model.trainable_variables)
    root.non_trainable_variables = list(model.non_trainable_variables)
    root._all_variables = list(serve.variables)
    root._misc_assets = [
        item
        for item in tf.train.TrackableView(model).descendants()
        if isinstance(item, tf.saved_model.experimental.TrackableResource)
    ]
    signatures = {SERVING_ENDPOINT: serve, SERVING_SIGNATURE: serve}
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=gradients)
    tf.saved_model.save(root, path, signatures=signatures, options=options)


def prepare(model, specs, target):
    """The `pipeline.Plan` of a SavedModel: what Keras 3's exporter writes (`write`), run by
    `tf.saved_model.load`."""
    names = signature_output_names(model)
    return pipeline.Plan(
        write=lambda staging: write(model, staging),
        runner=lambda staging: runners.savedmodel(staging, specs, names),
    )


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

    Writes what Keras 3's own exporter writes (`model.export(format="tf_saved_model")`, see
    `write`), then reloads the directory with `tf.saved_model.load` and checks `serving_default`
    against the model. Inputs with dynamic spatial sizes stay dynamic and are validated at two sizes.

    Args:
        model: a Keras model with known inputs (see `validation.input_specs`).
        path: the SavedModel directory to create.
        force: whether to replace an existing SavedModel directory at `path` (never any other
            directory). Defaults to `False`.
        validate: whether to validate the reloaded artifact before moving it into place. Defaults to
            `True`.
        batch_sizes: batch sizes to validate at. Defaults to `(1, 5)`.
        atol: validation tolerance (see `validation.DEFAULT_ATOL`). Defaults to `1e-4`.

    Returns:
        The `ParityReport`, or `None` with `validate=False`.

    Raises:
        ValueError: if `path` is one `files.check_target` refuses, or the model's inputs are unknown.
        FileExistsError: if `path` exists and `force` is false.
        PermissionError: if the directory that should hold `path` is not writable.
        ValidationError: if the reloaded model does not match; nothing is written then.
    """
    return pipeline.export(
        model,
        path,
        "savedmodel",
        force=force,
        validate=validate,
        batch_sizes=batch_sizes,
        atol=atol,
    )
