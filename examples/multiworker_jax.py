"""`examples.multiworker --backend jax`: Keras's own `model.fit` across processes on JAX.

Each worker joins the cluster with `keras.distribution.initialize` (JAX's coordination service on
the first worker's address; CPU collectives over gloo), then trains the ST-CNN under
`keras.distribution.DataParallel` over every process's devices: Keras shards each global batch of
a `tf.data` pipeline across the processes and JAX all-reduces the gradients, so every worker
holds the same weights after every step. With `--workers 1` the same code trains in this process.

Outside the launcher, set `STN_KERAS_JAX_CLUSTER` on every machine to
`{"coordinator": "HOST:PORT", "processes": N, "process": I}` and run the same command.

The files are those of the TensorFlow path (`examples/multiworker.py`), with checkpoints of every
finished epoch in `checkpoints/worker-<i>/epoch-<n>.npz` (weights and optimizer state, the last
two kept); a rerun resumes from the newest epoch every worker has. The data order of epoch `e`
depends on `--seed` and `e` only, so a resumed run trains on what an uninterrupted one would.
The workers keep every program XLA compiled in `checkpoints/xla-cache/` (JAX's persistent
compilation cache, its one-second threshold lowered to 0: besides its train step a Keras worker
compiles a few hundred small programs, initialisers and the data's distortions op by op, which
together take longer). A rerun in the same directory compiles again only what the cache lacks;
JAX writes the cache from the first process only, and its keys name the directory.
"""

import json
import os

import numpy as np

from examples import multiworker
from examples.outputs import claim_output, write_atomically

CLUSTER_VARIABLE = "STN_KERAS_JAX_CLUSTER"
KEEP_CHECKPOINTS = 2


def cluster():
    """`(coordinator, processes, process)` from `STN_KERAS_JAX_CLUSTER`, or `None` outside one.

    Raises:
        ValueError: naming the variable, if it is not that JSON object.
    """
    raw = os.environ.get(CLUSTER_VARIABLE)
    if not raw:
        return None
    try:
        config = json.loads(raw)
        coordinator, processes, process = (
            str(config["coordinator"]),
            int(config["processes"]),
            int(config["process"]),
        )
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"{CLUSTER_VARIABLE} must be a JSON object "
            f'{{"coordinator": "HOST:PORT", "processes": N, "process": I}}. Received: {raw!r}'
        ) from None
    if not 0 <= process < processes:
        raise ValueError(f"{CLUSTER_VARIABLE}: process {process} is not in [0, {processes})")
    return coordinator, processes, process


def _join(members, dtype, cache):
    """Join the cluster (if any) and train data-parallel over every process's devices, keeping
    compiled programs in the directory `cache`."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache))
    # Every program, not only those that took over a second (see the module docstring).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    # Collectives between CPU devices of different processes (GPUs use NCCL whatever this says).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX computes in float32 whatever Keras asks for, unless 64-bit types are enabled.
    jax.config.update("jax_enable_x64", dtype == "float64")
    import keras

    if members is not None:
        coordinator, processes, process = members
        keras.distribution.initialize(coordinator, num_processes=processes, process_id=process)
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return jax.process_index(), jax.process_count()


def _batches(x, y, batch_size, seed, epochs, start):
    """The global batches of epochs `start` to `epochs - 1`, each epoch in its own seeded order
    (whole batches only: every process must take the same number of steps)."""
    import tensorflow as tf

    steps = len(x) // batch_size
    orders = [
        np.random.default_rng([seed, epoch]).permutation(len(x))[: steps * batch_size]
        for epoch in range(start, epochs)
    ]
    images, labels = tf.constant(x), tf.constant(y)
    indices = tf.data.Dataset.from_tensor_slices(np.concatenate(orders).astype("int64"))
    batches = indices.batch(batch_size, drop_remainder=True)
    return batches.map(lambda i: (tf.gather(images, i), tf.gather(labels, i))), steps


def _state(model):
    """The variables a resumed run needs: the model's, then the optimizer's."""
    return [*model.variables, *model.optimizer.variables]


def _checkpoint_callback(directory):
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            arrays = [np.asarray(v) for v in _state(self.model)]
            path = directory / f"epoch-{epoch + 1}.npz"
            write_atomically(path, lambda partial: np.savez(partial, *arrays))
            for old in _saved_epochs(directory)[:-KEEP_CHECKPOINTS]:
                (directory / f"epoch-{old}.npz").unlink()

    return EpochCheckpoint()


def _saved_epochs(directory):
    return sorted(int(path.stem.split("-")[1]) for path in directory.glob("epoch-*.npz"))


def _restore(model, directory, epochs, process, processes):
    """Load the newest epoch every worker has saved; return it (0: start afresh)."""
    saved = _saved_epochs(directory)
    newest = saved[-1] if saved else 0
    if newest > epochs:
        raise ValueError(
            f"The checkpoints in {directory} reach epoch {newest}, past --epochs {epochs}"
        )
    common = newest
    if processes > 1:
        from jax.experimental import multihost_utils

        common = int(np.min(multihost_utils.process_allgather(np.int64(newest))))
    if common == 0:
        return 0
    if common not in saved:
        raise ValueError(
            f"Worker {process} has no checkpoint of epoch {common}, the newest one every worker "
            f"has (it keeps the last {KEEP_CHECKPOINTS}: {saved}); remove {directory.parent} to "
            "start afresh"
        )
    model.optimizer.build(model.trainable_variables)
    with np.load(directory / f"epoch-{common}.npz") as stored:
        for variable, key in zip(_state(model), stored.files, strict=True):
            variable.assign(stored[key])
    return common


def run_worker(args):
    """Train as one worker of a JAX cluster (or alone); write this worker's outputs."""
    multiworker.require_backend("jax")
    members = cluster()
    out = claim_output(args.out, multiworker.EXAMPLE, args.force)
    describe = f"JAX worker with {CLUSTER_VARIABLE}={os.environ.get(CLUSTER_VARIABLE)}"
    with multiworker._Watchdog(args.cluster_timeout if members else None, describe) as watchdog:
        import keras

        from stn_keras.distribute import Throughput

        process, processes = _join(members, args.dtype, out / "checkpoints" / "xla-cache")
        with multiworker.dtype_policy(args.dtype):
            x_train, y_train, x_test, y_test = multiworker.load_data(args)
            keras.utils.set_random_seed(args.seed)
            steps = len(x_train) // args.batch_size
            model = multiworker.compiled_model(args, x_train.shape[1], args.epochs * steps)
            directory = out / "checkpoints" / f"worker-{process}"
            directory.mkdir(parents=True, exist_ok=True)
            start = _restore(model, directory, args.epochs, process, processes)
            images_per_epoch = steps * args.batch_size
            throughput = Throughput(images_per_epoch)
            chief = process == 0
            callbacks = multiworker._callbacks(
                watchdog, process, args.kill_worker, args.kill_at_epoch, args.epochs, chief
            )
            history = keras.callbacks.History()  # stays empty when every epoch is done
            history.on_train_begin()
            if start < args.epochs:
                data, steps = _batches(
                    x_train, y_train, args.batch_size, args.seed, args.epochs, start
                )
                history = model.fit(
                    data,
                    epochs=args.epochs,
                    initial_epoch=start,
                    steps_per_epoch=steps,
                    callbacks=[throughput, _checkpoint_callback(directory), *callbacks],
                    shuffle=False,  # each epoch's order is `_batches`'
                    verbose=0,
                )
            watchdog.cancel()
            # Every process holds every weight: predict locally, outside the distribution.
            keras.distribution.set_distribution(None)
            logits = model.predict(x_test, batch_size=256, verbose=0)
            run = {
                "task": process,
                "workers": processes,
                "chief": chief,
                "replicas": len(keras.distribution.list_devices()),
                "test_accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
                "initial_epoch": start,
                "throughput": throughput,
                "history": history,
                "images_per_epoch": images_per_epoch,
                "train_images": len(x_train),
                "test_images": len(x_test),
            }
            multiworker.write_results(out, args, model, run)
    return 0
