"""Training a Keras model on several workers: a custom loop that works under
`tf.distribute.MultiWorkerMirroredStrategy`, with checkpoint-based resume.

Why not `model.fit`: under `MultiWorkerMirroredStrategy` with two or more workers, Keras 3's
TensorFlow trainer fails before the first step (measured with Keras 3.15; 3.8 has the same code).
`fit` first builds the model symbolically from one batch and, to get that batch, calls
`strategy.reduce("MEAN", (x, y))` on the whole `(x, y)` tuple; the multi-worker strategy's reduce
accepts one distributed value, not a tuple, and raises `ValueError: Attempt to convert a value
(PerReplica:...)`. Working around that (a model subclass overriding the private
`_maybe_symbolic_build`) only reaches the next defect: `reduce_per_replica` averages the per-step
scalar metrics with `reduce("MEAN", v, axis=0)`, which fails on a scalar. Both are private Keras
code paths, so `DistributedTrainer` does not patch them; it runs its own step with `strategy.run`,
a Keras optimizer and Keras metrics.
"""

import math
import time

import keras
import numpy as np
import tensorflow as tf


def _at_least_float32(values):
    """Half-precision losses (mixed precision) are summed in float32; float64 stays float64."""
    values = tf.convert_to_tensor(values)
    return tf.cast(values, "float32") if values.dtype.size < 4 else values


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


class DistributedTrainer:
    """Train a Keras model under any `tf.distribute` strategy, multi-worker included.

    Build the model, the optimizer and the metrics inside `strategy.scope()`, then

        trainer = DistributedTrainer(model, optimizer, loss, strategy, metrics=[accuracy])
        history = trainer.fit(x, y, batch_size=64, epochs=10, checkpoint_dir="ckpt")

    Every worker runs the same script on the same arrays. Each step takes one global batch of
    `batch_size` examples, drawn from a permutation of the data that depends only on `seed` and
    the epoch, and gives each replica its consecutive slice: the global batch, and therefore the
    update, is the same whatever the number of workers (up to float summation order). The loss is
    averaged over the global batch (`tf.nn.compute_average_loss`), the gradients are summed across
    replicas by the optimizer, and each replica's forward and backward pass is compiled with XLA.

    Fault tolerance: with `checkpoint_dir`, every worker saves the model and the optimizer after
    each epoch to `checkpoint_dir/worker-<i>` (its own directory, so no shared file system is
    needed). `fit` restores the newest epoch that every worker has saved, so a cluster restarted
    after a worker was killed resumes from the last finished epoch.

    Args:
        model: a Keras model, built or not, created under `strategy.scope()`.
        optimizer: a Keras optimizer created under `strategy.scope()` (a `LossScaleOptimizer`
            for `mixed_float16`).
        loss: a `keras.losses.Loss` (its per-example values are used, its reduction ignored) or a
            callable `(y_true, y_pred) -> (B,)` per-example losses.
        strategy: the `tf.distribute.Strategy`. Defaults to the current one.
        metrics: Keras metrics created under `strategy.scope()`, updated with
            `(y_true, y_pred)` each step and reset each epoch. Defaults to none.
        jit_compile: compile each replica's forward and backward pass with XLA. Defaults to
            `True`.
    """

    def __init__(self, model, optimizer, loss, strategy=None, metrics=(), jit_compile=True):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy or tf.distribute.get_strategy()
        self.metrics = list(metrics)
        self._per_example_loss = loss.call if isinstance(loss, keras.losses.Loss) else loss
        self._forward_backward = tf.function(self._gradients, jit_compile=jit_compile)
        self._train_step = tf.function(self._distributed_step)
        self._predict_step = tf.function(
            lambda x: self.model(x, training=False), jit_compile=jit_compile
        )
        self._global_batch = None

    # ------------------------------------------------------------------------------------------
    # One step

    def _gradients(self, x, y):
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            per_example = _at_least_float32(self._per_example_loss(y, y_pred))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self._global_batch)
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(
                    tf.add_n([tf.cast(term, loss.dtype) for term in self.model.losses])
                )
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.model.trainable_variables)
        return gradients, loss, y_pred

    def _replica_step(self, x, y):
        gradients, loss, y_pred = self._forward_backward(x, y)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables, strict=True))
        for metric in self.metrics:
            metric.update_state(y, y_pred)
        return loss

    def _distributed_step(self, iterator):
        x, y = next(iterator)
        losses = self.strategy.run(self._replica_step, args=(x, y))
        # Each replica's loss is its share of the global-batch mean: their sum is the mean.
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    # ------------------------------------------------------------------------------------------
    # Data

    def _dataset(self, x, y, epochs, seed, steps, context):
        """This input pipeline's per-replica batches of `epochs` (`context`: tf.distribute).

        One dataset for the whole run, so that no epoch pays for a new distributed iterator.
        """
        replicas = context.num_replicas_in_sync
        per_replica = context.get_per_replica_batch_size(self._global_batch)
        local = replicas // context.num_input_pipelines  # replicas fed by this pipeline
        first = context.input_pipeline_id * local
        rows = []
        for epoch in epochs:
            order = np.random.default_rng([seed, epoch]).permutation(len(x))
            order = order[: steps * self._global_batch].reshape(steps, replicas, per_replica)
            # Consecutive elements of a pipeline's dataset go to its replicas in turn.
            rows.append(order[:, first : first + local].reshape(steps * local, per_replica))
        # Prefetch: the next batch's gather runs while this step computes.
        return (
            tf.data.Dataset.from_tensor_slices(np.concatenate(rows))
            .map(lambda index: (tf.gather(x, index), tf.gather(y, index)))
            .prefetch(2)
        )

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def _restore(self, checkpoint_dir, epochs):
        """Restore the newest epoch saved by every worker; return it (0 when none)."""
        index, count, _ = worker_task(self.strategy)
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
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
        # Agree on the newest epoch every worker has (a worker may have died between saves): a
        # sum of one-hot vectors, since tf.distribute reduces by SUM or MEAN only.
        common = newest
        if count > 1:
            votes = tf.function(
                lambda: self.strategy.reduce(
                    tf.distribute.ReduceOp.SUM,
                    self.strategy.run(lambda: tf.one_hot(newest, epochs + 1)),
                    axis=None,
                )
            )().numpy()
            common = int(np.flatnonzero(votes)[0])
        if common:
            path = f"{manager.directory}/ckpt-{common}"
            if common not in saved:
                raise ValueError(
                    f"Worker {index} has no checkpoint of epoch {common}, the newest one every "
                    f"worker saved (it has epochs {saved} in {manager.directory})."
                )
            checkpoint.restore(path).assert_existing_objects_matched()
        return manager, common

    # ------------------------------------------------------------------------------------------
    # The loop

    def fit(
        self,
        x,
        y,
        batch_size,
        epochs,
        seed=0,
        checkpoint_dir=None,
        callbacks=(),
        verbose=1,
    ):
        """Train on arrays `x`, `y` for `epochs` epochs of `len(x) // batch_size` steps.

        Args:
            x: inputs `(N, ...)`, the same on every worker.
            y: targets `(N, ...)`.
            batch_size: the global batch size, a multiple of the number of replicas. The last
                `N % batch_size` examples of each epoch's permutation are left out of that
                epoch (every replica must run the same number of steps).
            epochs: the epoch to train up to (a resumed run continues from its checkpoint).
            seed: seed of the per-epoch permutations. Defaults to `0`.
            checkpoint_dir: where every worker saves after each epoch and resumes from, or
                `None`. Defaults to `None`.
            callbacks: Keras callbacks; `on_train_begin`, `on_epoch_begin`, `on_epoch_end` and
                `on_train_end` are called with the epoch's logs. Defaults to none.
            verbose: `1` prints one line per epoch on the chief. Defaults to `1`.

        Returns:
            A dict: `"history"`, one dict per epoch run in this call (`epoch`, `loss`, each
            metric, `seconds`, `images_per_second`), and `"initial_epoch"`, the epoch it resumed
            from (`0` for a fresh start).

        Raises:
            ValueError: if `x` and `y` differ in length, `batch_size` does not divide among the
                replicas or exceeds the data, or the checkpoints are past `epochs`.
        """
        replicas = self.strategy.num_replicas_in_sync
        if len(x) != len(y):
            raise ValueError(
                f"`x` and `y` must have the same length. Received: x.shape={np.shape(x)}, "
                f"y.shape={np.shape(y)}"
            )
        if batch_size < replicas or batch_size % replicas or batch_size > len(x):
            raise ValueError(
                f"`batch_size` must be a multiple of the {replicas} replicas in sync and at most "
                f"the {len(x)} examples. Received: batch_size={batch_size}"
            )
        self._global_batch = int(batch_size)
        steps = len(x) // batch_size
        _, _, chief = worker_task(self.strategy)
        x, y = tf.constant(x), tf.constant(y)
        with self.strategy.scope():
            # Variables must exist before a checkpoint is restored into them.
            if not self.model.built:
                self.model(x[:1])
            if not self.optimizer.built:
                self.optimizer.build(self.model.trainable_variables)
        manager, initial_epoch = (None, 0)
        if checkpoint_dir is not None:
            manager, initial_epoch = self._restore(checkpoint_dir, epochs)
        callbacks = keras.callbacks.CallbackList(list(callbacks), model=self.model)
        callbacks.on_train_begin()
        history = []
        if initial_epoch < epochs:
            run = range(initial_epoch, epochs)
            iterator = iter(
                self.strategy.distribute_datasets_from_function(
                    lambda context: self._dataset(x, y, run, seed, steps, context)
                )
            )
        for epoch in range(initial_epoch, epochs):
            callbacks.on_epoch_begin(epoch)
            for metric in self.metrics:
                metric.reset_state()
            start = time.perf_counter()
            total = 0.0
            for _ in range(steps):
                total += self._train_step(iterator)
            logs = {"epoch": epoch + 1, "loss": float(total) / steps}
            logs.update({metric.name: float(metric.result()) for metric in self.metrics})
            seconds = time.perf_counter() - start
            logs["seconds"] = round(seconds, 3)
            logs["images_per_second"] = round(steps * batch_size / seconds, 1)
            if manager is not None:
                manager.save(checkpoint_number=epoch + 1)
            history.append(logs)
            callbacks.on_epoch_end(epoch, logs)
            if verbose and chief:
                shown = " - ".join(
                    f"{key} {value:.4g}" for key, value in logs.items() if key != "epoch"
                )
                print(f"epoch {epoch + 1}/{epochs} - {shown}", flush=True)
        callbacks.on_train_end()
        return {"history": history, "initial_epoch": initial_epoch}

    def predict(self, x, batch_size=256):
        """The model's outputs on `x`, computed locally on this worker (no collectives).

        Args:
            x: inputs `(N, ...)`.
            batch_size: examples per call. Defaults to `256`.

        Returns:
            A numpy array of the outputs, `(N, ...)`.
        """
        # An empty `x` still runs once, so that the result has the outputs' trailing shape.
        starts = range(0, len(x), batch_size) or [0]
        outputs = [
            self._predict_step(tf.constant(x[start : start + batch_size])).numpy()
            for start in starts
        ]
        return np.concatenate(outputs)


def steady_throughput(history):
    """Images per second over the epochs after the first (which pays for tracing and XLA).

    Args:
        history: `fit(...)["history"]`.

    Returns:
        A float, or the first epoch's figure when there is only one epoch (`nan` for none).
    """
    later = history[1:] or history
    if not later:
        return math.nan
    images = sum(log["images_per_second"] * log["seconds"] for log in later)
    return images / sum(log["seconds"] for log in later)
