"""The input side of `DistributedTrainer`: arrays (or nests of them) and datasets, as per-replica
batches under a `tf.distribute` strategy.

Arrays are batched here so that every worker sees the same global batches: step `s` of epoch `e`
takes examples `order[s * B:(s + 1) * B]` of the epoch's order (a permutation of `(seed, e)`, or
`0..N-1`), and replica `r` takes its consecutive slice of them. A dataset is the user's and is
distributed with tf.distribute's own rules.
"""

import itertools

import keras
import numpy as np
import tensorflow as tf

from stn_keras.ops.validation import check_int

DEFAULT_BATCH_SIZE = 32  # `model.fit`'s


def as_arrays(x):
    """`x`, a nest (list, tuple, dict) of array-likes, with numpy arrays as leaves and lists made
    tuples (tf.data would stack a list of arrays into one tensor; Keras's adapters do the same)."""
    return keras.tree.map_structure(np.asarray, keras.tree.lists_to_tuples(x))


def length(x):
    """The number of examples of a nest of arrays (its first leaf's length)."""
    leaves = keras.tree.flatten(x)
    return len(leaves[0]) if leaves else 0


def take(x, index):
    """The examples `index` (a slice or an index array) of every leaf of a nest of arrays."""
    return keras.tree.map_structure(lambda leaf: leaf[index], x)


def _pack(x, y, sample_weight):
    """`(x,)`, `(x, y)` or `(x, y, sample_weight)`: what `keras.utils.unpack_x_y_sample_weight`
    takes apart."""
    if sample_weight is not None:
        return (x, y, sample_weight)
    return (x,) if y is None else (x, y)


def _check_lengths(parts):
    """Raise `ValueError` naming the shapes unless every array of `parts` has one length."""
    leaves = [(name, leaf) for name, part in parts for leaf in keras.tree.flatten(part)]
    lengths = {len(leaf) for _, leaf in leaves}
    if len(lengths) > 1:
        shapes = ", ".join(f"{name}: {np.shape(leaf)}" for name, leaf in leaves)
        raise ValueError(
            f"Arguments `x`, `y` and `sample_weight` must have the same number of examples. "
            f"Received shapes {shapes}"
        )


def _check_batch_size(batch_size, replicas, examples=None):
    """`batch_size` (default 32) as an int, a multiple of `replicas`, at most `examples`."""
    batch_size = check_int(
        "batch_size", DEFAULT_BATCH_SIZE if batch_size is None else batch_size, minimum=1
    )
    if batch_size % replicas or (examples is not None and batch_size > examples):
        limit = "" if examples is None else f" and at most the {examples} examples"
        raise ValueError(
            f"Invalid value for argument `batch_size`. Expected a multiple of the {replicas} "
            f"replicas in sync{limit}. Received: batch_size={batch_size}"
        )
    return batch_size


def _local_rows(order, steps, batch, context):
    """The rows of `steps` global batches of `order` that this input pipeline's replicas read,
    `(steps * local replicas, batch // replicas)`: consecutive elements of a pipeline's dataset
    go to its replicas in turn, and replica `r` reads its consecutive slice of each batch."""
    replicas = context.num_replicas_in_sync
    local = replicas // context.num_input_pipelines  # replicas fed by this pipeline
    first = context.input_pipeline_id * local
    grid = order[: steps * batch].reshape(steps, replicas, batch // replicas)
    return grid[:, first : first + local].reshape(steps * local, batch // replicas)


class ArraySource:
    """Arrays (nests of them) cut into global batches of `batch_size`, one slice per replica.

    Args:
        parts: `(x,)`, `(x, y)` or `(x, y, sample_weight)`, nests of numpy arrays of one length.
        batch_size: the global batch size, a multiple of the replicas.
    """

    def __init__(self, parts, batch_size):
        self.parts = parts
        self.batch_size = batch_size
        self.count = length(parts[0])
        self.steps = self.count // batch_size  # the partial last batch is left out in training

    def sample(self):
        """One example of each part, `(x, y, sample_weight)` (missing parts `None`), to build
        variables from."""
        first = take(self.parts, slice(0, 1))
        return keras.utils.unpack_x_y_sample_weight(first)

    def split(self, fraction):
        """`(training, validation)`: the last `fraction` of the examples validate (`fit`'s rule)."""
        split_at = int(np.floor(self.count * (1.0 - fraction)))
        return (
            take(self.parts, slice(0, split_at)),
            take(self.parts, slice(split_at, None)),
        )

    def _dataset(self, rows_per_replica):
        """The dataset function of `distribute_datasets_from_function` feeding each input
        pipeline its replicas' rows: `rows_per_replica(context)` gives a list of index arrays."""
        tensors = keras.tree.map_structure(tf.constant, self.parts)

        def dataset(context):
            first, *rest = rows_per_replica(context)
            indices = first
            for chunk in rest:
                indices = indices.concatenate(chunk)
            gather = lambda index: keras.tree.map_structure(  # noqa: E731
                lambda t: tf.gather(t, index), tensors
            )
            # Prefetch: the next batch's gather runs while this step computes.
            return indices.map(gather).prefetch(2)

        return dataset

    def epochs(self, strategy, epochs, seed, shuffle):
        """Per epoch, an iterator of its `steps` distributed batches; one dataset for the whole
        run, so that no epoch pays for a new distributed iterator."""
        epochs = list(epochs)
        if not epochs:
            return iter(())
        orders = [
            np.random.default_rng([seed, epoch]).permutation(self.count)
            if shuffle
            else np.arange(self.count)
            for epoch in epochs
        ]
        steps, batch = self.steps, self.batch_size

        def rows(context):
            return [
                tf.data.Dataset.from_tensor_slices(_local_rows(order, steps, batch, context))
                for order in orders
            ]

        iterator = iter(strategy.distribute_datasets_from_function(self._dataset(rows)))
        return ((next(iterator) for _ in range(steps)) for _ in epochs)

    def single_pass(self, strategy):
        """Every example once, in order, the last partial batch split among the replicas (some
        may get none): what evaluation reads. The full batches and the partial one are two
        datasets, so that each keeps a static batch size (Keras weighs per-output losses by it)."""
        steps, batch = self.steps, self.batch_size
        order = np.arange(self.count)

        def full(context):
            return [tf.data.Dataset.from_tensor_slices(_local_rows(order, steps, batch, context))]

        def partial(context):
            replicas = context.num_replicas_in_sync
            local = replicas // context.num_input_pipelines
            first = context.input_pipeline_id * local
            rest = np.array_split(order[steps * batch :], replicas)[first : first + local]
            return [tf.data.Dataset.from_tensors(r) for r in rest]

        passes = [full] + ([partial] if self.count % batch else [])
        return itertools.chain.from_iterable(
            strategy.distribute_datasets_from_function(self._dataset(rows)) for rows in passes
        )


class DatasetSource:
    """A `tf.data.Dataset` of global batches, distributed by the strategy.

    Args:
        dataset: batches `(x, y)` or `(x, y, sample_weight)` (or `(x,)`).
        steps_per_epoch: steps per epoch from one iterator that runs on across epochs, or `None`
            (each epoch is one pass).
    """

    def __init__(self, dataset, steps_per_epoch=None):
        self.dataset = dataset
        self.steps_per_epoch = steps_per_epoch
        cardinality = int(dataset.cardinality())
        self.steps = steps_per_epoch or (cardinality if cardinality > 0 else None)

    def sample(self):
        batch = next(iter(self.dataset))
        return keras.utils.unpack_x_y_sample_weight(take(batch, slice(0, 1)))

    def epochs(self, strategy, epochs, seed, shuffle):
        distributed = strategy.experimental_distribute_dataset(self.dataset)
        if self.steps_per_epoch is None:
            return (iter(distributed) for _ in epochs)
        iterator = iter(distributed)
        return (_take(iterator, self.steps_per_epoch) for _ in epochs)

    def single_pass(self, strategy):
        return strategy.experimental_distribute_dataset(self.dataset)


def _take(iterator, steps):
    """Up to `steps` elements of `iterator` (fewer when it runs out, as `fit` does)."""
    for _ in range(steps):
        try:
            yield next(iterator)
        except StopIteration:
            return


def _source(x, y, sample_weight, batch_size, replicas, steps_per_epoch=None):
    """An `ArraySource` or a `DatasetSource` of the user's arguments, checked (a batch larger
    than the training examples is refused by `training_source`, once they are split)."""
    if isinstance(x, tf.data.Dataset):
        if y is not None or sample_weight is not None or batch_size is not None:
            raise ValueError(
                "With a `tf.data.Dataset` as `x`, its elements hold the targets and weights and "
                "its batches are the global batches: pass no `y`, `sample_weight` or "
                f"`batch_size`. Received: y={type(y).__name__}, batch_size={batch_size!r}"
            )
        if steps_per_epoch is not None:
            steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        return DatasetSource(x, steps_per_epoch)
    if x is None:
        raise ValueError("Argument `x` is required: arrays, a list or dict of them, or a dataset.")
    parts = _pack(*(None if p is None else as_arrays(p) for p in (x, y, sample_weight)))
    _check_lengths(zip(("x", "y", "sample_weight"), parts, strict=False))
    return ArraySource(parts, _check_batch_size(batch_size, replicas))


def training_source(x, y, sample_weight, batch_size, replicas, validation_split, steps_per_epoch):
    """`fit`'s training data: a source, with `validation` set when `validation_split` > 0."""
    if not isinstance(validation_split, int | float) or not 0.0 <= validation_split < 1.0:
        raise ValueError(
            "Invalid value for argument `validation_split`. Expected a number in [0, 1). "
            f"Received: validation_split={validation_split!r}"
        )
    if steps_per_epoch is not None and not isinstance(x, tf.data.Dataset):
        raise ValueError(
            "Argument `steps_per_epoch` applies to a dataset; arrays make `N // batch_size` "
            f"steps. Received: steps_per_epoch={steps_per_epoch!r}"
        )
    source = _source(x, y, sample_weight, batch_size, replicas, steps_per_epoch)
    source.validation = None
    if validation_split:
        if isinstance(source, DatasetSource):
            raise ValueError(
                "`validation_split` splits arrays; with a dataset pass `validation_data`."
            )
        train, held_out = source.split(validation_split)
        source = ArraySource(train, source.batch_size)
        source.validation = held_out
    if isinstance(source, ArraySource):
        _check_batch_size(source.batch_size, replicas, source.count)
    return source


def validation_source(source, validation_data, batch_size, replicas):
    """The validation source of `fit`, or `None`."""
    if validation_data is None and source.validation is None:
        return None
    if validation_data is not None and source.validation is not None:
        raise ValueError("Pass `validation_split` or `validation_data`, not both.")
    default = getattr(source, "batch_size", None)
    if source.validation is not None:
        return ArraySource(source.validation, _check_batch_size(batch_size or default, replicas))
    if isinstance(validation_data, tf.data.Dataset):
        return DatasetSource(validation_data)
    if not isinstance(validation_data, tuple | list) or len(validation_data) not in (2, 3):
        raise ValueError(
            "Invalid value for argument `validation_data`. Expected `(x_val, y_val)`, "
            f"`(x_val, y_val, sample_weight_val)` or a dataset. Received: {type(validation_data)}"
        )
    given = (None if p is None else as_arrays(p) for p in validation_data)
    parts = _pack(*given, *[None] * (3 - len(validation_data)))
    _check_lengths(zip(("x_val", "y_val", "sample_weight_val"), parts, strict=False))
    return ArraySource(parts, _check_batch_size(batch_size or default, replicas))


def evaluation_source(x, y, sample_weight, batch_size, replicas):
    """`evaluate`'s data: every example once (no lower limit on the number of examples)."""
    return _source(x, y, sample_weight, batch_size, replicas)
