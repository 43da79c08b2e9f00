"""Training a compiled Keras model on several workers with Keras's `fit` contract, under
`tf.distribute.MultiWorkerMirroredStrategy`, with checkpoint-based resume.

Why not `model.fit`: under `MultiWorkerMirroredStrategy` with two or more workers, Keras 3's
TensorFlow trainer fails before the first step (measured with Keras 3.15; 3.8 has the same code).
`fit` first builds the model symbolically from one batch and, to get that batch, calls
`strategy.reduce("MEAN", (x, y))` on the whole `(x, y)` tuple; the multi-worker strategy's reduce
accepts one distributed value, not a tuple, and raises `ValueError: Attempt to convert a value
(PerReplica:...)`. Working around that only reaches the next defect: `reduce_per_replica` averages
the per-step scalar metrics with `reduce("MEAN", v, axis=0)`, which fails on a scalar. Both are
private Keras code paths, so `DistributedTrainer` does not patch them. It runs the pieces Keras's
own `train_step` is made of (`model.compute_loss`, the model's optimizer, `model.compute_metrics`,
`model.test_step`) under `strategy.run`, and drives Keras callbacks as `fit` does.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from stn_keras import distribute_data as data
from stn_keras.ops.validation import check_int

# Callbacks that assume one process owns their files; `checkpoint_dir` is the multi-worker way.
_SINGLE_WORKER_CALLBACKS = (keras.callbacks.BackupAndRestore,)


def worker_task(strategy=None):
    """This process's place in the cluster: `(task_index, num_workers, is_chief)`.

    Args:
        strategy: a `tf.distribute.Strategy`. Defaults to the current one.

    Returns:
        `(index, count, chief)`: `(0, 1, True)` outside a multi-worker cluster. The chief is
        worker 0 (or the task of type `"chief"`, when the cluster has one).
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().jobs:
        return 0, 1, True
    spec = resolver.cluster_spec().as_dict()
    count = sum(len(tasks) for job, tasks in spec.items() if job in ("chief", "worker"))
    kind, index = resolver.task_type, int(resolver.task_id)
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in spec)
    # Workers after a chief are numbered after it, so that indices run over 0..count-1.
    offset = 1 if kind == "worker" and "chief" in spec else 0
    return index + offset, count, chief


def _pythonify(logs):
    """Logs as `fit` gives them to callbacks: Python floats (arrays for non-scalars)."""
    out = {}
    for key, value in logs.items():
        value = np.asarray(value)
        out[key] = float(value) if value.ndim == 0 else value
    return out


def _check_callbacks(callbacks, workers):
    """`callbacks` as a list, refusing those that cannot run on several workers."""
    callbacks = list(callbacks or [])
    if workers > 1 and any(isinstance(c, _SINGLE_WORKER_CALLBACKS) for c in callbacks):
        raise ValueError(
            "`BackupAndRestore` writes one backup that every worker would overwrite; on several "
            "workers pass `checkpoint_dir` instead (a checkpoint per worker, resumed at the newest "
            "epoch all of them saved)."
        )
    return callbacks


def _needs_batch_logs(callbacks):
    """Whether a callback reads the logs of each batch (the progress bar, `TerminateOnNaN`, one
    saving every N batches, ...): reading the metrics of every replica each step is an
    all-reduce per metric variable, 0.65x the example's throughput on 2 workers."""
    base = keras.callbacks.Callback
    for callback in callbacks:
        if getattr(callback, "save_freq", None) == "epoch":  # ModelCheckpoint, BackupAndRestore
            continue
        for hook in ("on_train_batch_end", "on_batch_end"):
            if hook in vars(callback) or getattr(type(callback), hook) is not getattr(base, hook):
                return True
    return False


def _metrics_sync_on_write(model):
    """Whether the model's metric variables synchronise on every write (Keras < 3.9 under
    tf.distribute): their updates then need a cross-replica call, which cannot run inside a nested
    compiled function."""
    on_write = tf.VariableSynchronization.ON_WRITE
    return any(
        getattr(getattr(v, "value", v), "synchronization", None) == on_write
        for v in model.metrics_variables
    )


class DistributedTrainer:
    """Train a compiled Keras model under any `tf.distribute` strategy, multi-worker included.

    Build and compile the model inside `strategy.scope()`, then

        trainer = DistributedTrainer(model, strategy)
        history = trainer.fit(x, y, batch_size=64, epochs=10, checkpoint_dir="ckpt")

    `fit`, `evaluate` and `predict` keep Keras's contract: the loss, metrics, loss weights and
    optimizer come from `model.compile` (string names resolved by Keras), inputs and targets may
    be arrays, lists or dicts of arrays (multi-input, multi-output) or a `tf.data.Dataset`, and
    callbacks see `model.stop_training`, 0-based epochs and the same `logs` as under `fit`
    (`loss`, each metric, `val_*`). `fit` returns the `History`.

    Every worker runs the same script on the same arrays. Each step takes one global batch of
    `batch_size` examples, drawn from a permutation of the data that depends only on `seed` and
    the epoch (or in order with `shuffle=False`), and gives each replica its consecutive slice:
    the global batch, and therefore the update, is the same whatever the number of workers (up to
    float summation order). The last `N % batch_size` examples of an epoch are left out, so that
    every replica runs the same steps on the same share. Each replica's forward and backward pass
    is compiled with XLA; the optimizer's cross-replica update and the metrics run outside it
    (XLA has no CPU collectives).

    Losses: as under `fit` with a strategy, Keras divides a loss's batch mean by the replicas in
    sync, so that the replicas' gradients sum to the global batch's. A custom loss must return
    per-example values `(B,)`: one that returns a scalar is passed through unscaled by Keras and
    weighs N times more on N replicas.

    Fault tolerance: with `checkpoint_dir`, every worker saves the model and the optimizer after
    each epoch to `checkpoint_dir/worker-<i>` (its own directory, so no shared file system is
    needed). `fit` restores the newest epoch that every worker has saved, so a cluster restarted
    after a worker was killed resumes from the last finished epoch.

    Args:
        model: a Keras model compiled (`model.compile`) under `strategy.scope()`.
        strategy: the `tf.distribute.Strategy`. Defaults to the current one.
        jit_compile: compile each replica's forward and backward pass with XLA. Under Keras
            versions whose metric variables synchronise on write (3.8), a model whose compiled
            loss records per-output losses runs that pass uncompiled on several replicas.
            Defaults to `True`.

    Raises:
        ValueError: if `model` is not compiled.
    """

    def __init__(self, model, strategy=None, jit_compile=True):
        if not isinstance(model, keras.Model) or getattr(model, "optimizer", None) is None:
            raise ValueError(
                "Argument `model` must be a Keras model compiled with an optimizer under "
                f"`strategy.scope()` (`model.compile(optimizer, loss, metrics)`). Received: {model!r}"
            )
        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        self.jit_compile = bool(jit_compile)
        self.initial_epoch = 0
        self._train_functions = {}  # by whether they return the batch's logs
        self._test_function = self._predict_function = None

    # ------------------------------------------------------------------------------------------
    # One step

    def _forward_backward(self, x, y, sample_weight):
        model = self.model
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            scaled = model.optimizer.scale_loss(loss)
        return tape.gradient(scaled, model.trainable_variables), loss, y_pred

    def _replica_train_step(self, forward_backward, batch):
        model = self.model
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        gradients, loss, y_pred = forward_backward(x, y, sample_weight)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        # What Keras's own train_step records: each replica's loss is its share of the mean
        # (Keras divides by the replicas in sync); weighted by its examples, they sum to the mean.
        replicas = self.strategy.num_replicas_in_sync
        examples = tf.shape(keras.tree.flatten(x)[0])[0]
        model._loss_tracker.update_state(loss * replicas, sample_weight=examples)
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _make_train_function(self, batch_logs):
        """One training step; with `batch_logs` it returns the metrics over every replica (an
        all-reduce per metric variable, so only when a callback reads a batch's logs)."""
        jit = self.jit_compile
        if jit and self.strategy.num_replicas_in_sync > 1 and _metrics_sync_on_write(self.model):
            jit = False
        forward_backward = tf.function(self._forward_backward, jit_compile=jit)

        @tf.function
        def train(batch):
            self.strategy.run(self._replica_train_step, args=(forward_backward, batch))
            # Read in cross-replica context: every replica's totals.
            return self.model.get_metrics_result() if batch_logs else {}

        return train

    def _make_test_function(self):
        @tf.function
        def test(batch):
            self.strategy.run(self.model.test_step, args=(batch,))

        return test

    # ------------------------------------------------------------------------------------------
    # Building, checkpoints

    def _build(self, sample):
        """Create the model's, the compiled loss's and metrics' and the optimizer's variables from
        one local batch, in the strategy's scope, before any distributed step or restore."""
        x, y, sample_weight = sample
        model = self.model
        with self.strategy.scope():
            y_pred = model(x, training=False)
            if y is not None:
                model.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
                )
                model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
        model.reset_metrics()

    def _restore(self, checkpoint_dir, epochs):
        """Restore the newest epoch saved by every worker; return `(manager, epoch)`."""
        index, count, _ = worker_task(self.strategy)
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
        manager = tf.train.CheckpointManager(
            checkpoint, f"{checkpoint_dir}/worker-{index}", max_to_keep=2
        )
        saved = [int(path.rsplit("-", 1)[1]) for path in manager.checkpoints]
        newest = max(saved, default=0)
        if newest > epochs:
            raise ValueError(
                f"The checkpoints in {checkpoint_dir} reach epoch {newest}, past `epochs`. "
                f"Received: epochs={epochs}"
            )
        common = self._agree(newest, epochs) if count > 1 else newest
        if common:
            if common not in saved:
                raise ValueError(
                    f"Worker {index} has no checkpoint of epoch {common}, the newest one every "
                    f"worker saved (it has epochs {saved} in {manager.directory})."
                )
            checkpoint.restore(
                f"{manager.directory}/ckpt-{common}"
            ).assert_existing_objects_matched()
        return manager, common

    def _agree(self, newest, epochs):
        """The newest epoch every worker saved: a sum of one-hot votes (tf.distribute reduces by
        SUM or MEAN only), its first nonzero entry."""
        votes = tf.function(
            lambda: self.strategy.reduce(
                tf.distribute.ReduceOp.SUM,
                self.strategy.run(lambda: tf.one_hot(newest, epochs + 1)),
                axis=None,
            )
        )().numpy()
        return int(np.flatnonzero(votes)[0])

    # ------------------------------------------------------------------------------------------
    # The loop

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_split=0.0,
        validation_data=None,
        shuffle=True,
        sample_weight=None,
        initial_epoch=0,
        steps_per_epoch=None,
        validation_batch_size=None,
        seed=0,
        checkpoint_dir=None,
    ):
        """Train as `model.fit` does, on every worker of the strategy.

        Args:
            x: inputs: an array, a list or dict of arrays, or a `tf.data.Dataset` of global
                batches `(x, y)` or `(x, y, sample_weight)` (distributed by
                `strategy.experimental_distribute_dataset`; its auto-shard policy applies).
            y: targets, like `x` (multi-output: a list or dict); `None` with a dataset.
            batch_size: the global batch size, a multiple of the replicas in sync. Defaults to
                `None`: 32 (`fit`'s default). Not with a dataset.
            epochs: the epoch to train up to (a resumed run continues from its checkpoint).
                Defaults to `1`.
            verbose: `"auto"` or `1` (a progress bar on the chief), `2` (one line per epoch on
                the chief), `0` (silent). Defaults to `"auto"`.
            callbacks: Keras callbacks, called as `fit` calls them, on every worker: on several
                workers, give a callback that writes a file (`ModelCheckpoint`, `CSVLogger`) a
                path of each worker's own (`worker_task()`). `BackupAndRestore` only on one
                worker (`checkpoint_dir` is the multi-worker equivalent). Defaults to none.
            validation_split: the fraction of the arrays, taken from their end before shuffling,
                to validate on after each epoch. Defaults to `0.0`.
            validation_data: `(x_val, y_val)`, `(x_val, y_val, sample_weight_val)` or a dataset,
                evaluated after each epoch (logged as `val_*`). Defaults to `None`.
            shuffle: whether each epoch visits the arrays in the permutation of `(seed, epoch)`
                rather than in order. Defaults to `True`.
            sample_weight: per-example weights `(N,)` (or a list/dict per output). Defaults to
                `None`.
            initial_epoch: the epoch to start from when nothing is restored. Defaults to `0`.
            steps_per_epoch: with a dataset, the steps of an epoch drawn from one iterator that
                runs on across epochs (as `fit`); `None` runs each epoch until the dataset ends.
                Defaults to `None`.
            validation_batch_size: the global batch size of validation. Defaults to `None`:
                `batch_size`.
            seed: seed of the per-epoch permutations. Defaults to `0`.
            checkpoint_dir: where every worker saves after each epoch and resumes from, or
                `None`. Defaults to `None`.

        Returns:
            The `keras.callbacks.History` (also `model.history`).

        Raises:
            ValueError: for arrays of different lengths, a `batch_size` that does not divide
                among the replicas or exceeds the data, an invalid integer argument, checkpoints
                past `epochs`, or `BackupAndRestore` on several workers.
        """
        model, replicas = self.model, self.strategy.num_replicas_in_sync
        epochs = check_int("epochs", epochs, minimum=0)
        initial_epoch = check_int("initial_epoch", initial_epoch, minimum=0)
        seed = check_int("seed", seed, minimum=0)
        verbose = 1 if verbose == "auto" else check_int("verbose", verbose, minimum=0, maximum=2)
        source = data.training_source(
            x, y, sample_weight, batch_size, replicas, validation_split, steps_per_epoch
        )
        validation = data.validation_source(
            source, validation_data, validation_batch_size, replicas
        )
        _, count, chief = worker_task(self.strategy)
        callbacks = _check_callbacks(callbacks, count)
        self._build(source.sample())
        manager = None
        if checkpoint_dir is not None:
            manager, restored = self._restore(checkpoint_dir, epochs)
            initial_epoch = max(initial_epoch, restored)
        callback_list = keras.callbacks.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=verbose != 0 and chief,
            model=model,
            verbose=verbose if chief else 0,
            epochs=epochs,
            steps=source.steps,
        )
        model.stop_training = False
        batch_logs = _needs_batch_logs(callback_list.callbacks)
        if batch_logs not in self._train_functions:
            self._train_functions[batch_logs] = self._make_train_function(batch_logs)
        self._train_function = self._train_functions[batch_logs]
        callback_list.on_train_begin()
        # BackupAndRestore (one worker) tells `fit` where to resume through this attribute.
        initial_epoch = max(initial_epoch, getattr(model, "_initial_epoch", None) or 0)
        self.initial_epoch = initial_epoch
        logs = {}
        epoch_batches = source.epochs(self.strategy, range(initial_epoch, epochs), seed, shuffle)
        for epoch, batches in zip(range(initial_epoch, epochs), epoch_batches, strict=False):
            logs = self._train_epoch(callback_list, epoch, batches, validation, manager)
            if model.stop_training:
                break
        callback_list.on_train_end(logs)
        model._initial_epoch = None
        return model.history

    def _train_epoch(self, callback_list, epoch, batches, validation, manager):
        """One epoch as `fit` runs it: steps, validation, checkpoint, `on_epoch_end`; its logs."""
        model = self.model
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        logs = {}
        for step, batch in enumerate(batches):
            callback_list.on_train_batch_begin(step)
            logs = _pythonify(self._train_function(batch))
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        logs = _pythonify(model.get_metrics_result())  # the epoch's, over every replica
        if validation is not None:
            val_logs = self._evaluate_source(validation)
            logs.update({f"val_{key}": value for key, value in val_logs.items()})
        if manager is not None:
            manager.save(checkpoint_number=epoch + 1)
        callback_list.on_epoch_end(epoch, logs)
        return logs

    def _evaluate_source(self, source):
        """Reset the metrics, run every batch of `source` through `test_step`; the logs."""
        self.model.reset_metrics()
        self._test_function = self._test_function or self._make_test_function()
        for batch in source.single_pass(self.strategy):
            self._test_function(batch)
        return _pythonify(self.model.get_metrics_result())  # over every replica

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, return_dict=False):
        """The loss and metrics on `x`, `y` as `model.evaluate` gives them, over all workers.

        Every example counts once, the last partial batch included (split among the replicas).

        Args:
            x, y, sample_weight: as for `fit` (a dataset of batches for `x`, `y=None`).
            batch_size: the global batch size. Defaults to `None`: 32.
            return_dict: return `{name: value}` instead of a list. Defaults to `False`.

        Returns:
            The loss alone (no metrics), `[loss, *metrics]`, or the dict.
        """
        source = data.evaluation_source(
            x, y, sample_weight, batch_size, self.strategy.num_replicas_in_sync
        )
        self._build(source.sample())
        logs = self._evaluate_source(source)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size=None):
        """The model's outputs on `x`, computed locally on this worker (no collectives).

        Args:
            x: inputs, an array or a list or dict of arrays `(N, ...)`.
            batch_size: examples per call. Defaults to `None`: 32.

        Returns:
            The outputs as numpy arrays `(N, ...)`, structured as the model's outputs.
        """
        batch_size = check_int("batch_size", 32 if batch_size is None else batch_size, minimum=1)
        if self._predict_function is None:
            self._predict_function = tf.function(
                lambda inputs: self.model(inputs, training=False), jit_compile=self.jit_compile
            )
        x = data.as_arrays(x)
        count = data.length(x)
        # An empty `x` still runs once, so that the result has the outputs' trailing shape.
        outputs = [
            keras.tree.map_structure(
                np.asarray,
                self._predict_function(data.take(x, slice(start, start + batch_size))),
            )
            for start in range(0, count, batch_size) or [0]
        ]
        return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outputs)


class Throughput(keras.callbacks.Callback):
    """Times every epoch: `seconds` per epoch and `images_per_second` of the steady state.

    Args:
        examples_per_epoch: the examples one epoch trains on (all workers together).
    """

    def __init__(self, examples_per_epoch):
        super().__init__()
        self.examples_per_epoch = examples_per_epoch
        self.seconds = {}  # epoch (0-based) -> seconds
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds[epoch] = time.perf_counter() - self._start

    def images_per_second(self):
        """Images per second over the epochs after the first (which pays for tracing and XLA),
        or the first epoch's figure when there is only one; `None` when no epoch ran."""
        times = list(self.seconds.values())
        later = times[1:] or times
        if not later:
            return None
        return self.examples_per_epoch * len(later) / sum(later)
