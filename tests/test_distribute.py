"""`DistributedTrainer` in one process: its batches and loss scale against SGD in closed form,
checkpoint resume, and its errors. Real worker processes: tests/examples/test_multiworker.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from stn_keras.distribute import DistributedTrainer, steady_throughput, worker_task

# The learning rate is exact in float32, the dtype of Keras optimizers' learning-rate variable.
N, FEATURES, BATCH, LR = 12, 3, 4, 0.125


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, FEATURES)), rng.normal(size=(N, 1))


def _linear_trainer(jit_compile=True):
    model = keras.Sequential(
        [
            keras.Input((FEATURES,), dtype="float64"),
            keras.layers.Dense(1, use_bias=False, dtype="float64"),
        ]
    )
    model.layers[0].kernel.assign(np.array([[0.5], [-0.25], [1.0]]))

    def squared_error(y_true, y_pred):  # per example, (B,)
        return tf.reduce_sum((y_pred - y_true) ** 2, axis=-1)

    return DistributedTrainer(
        model, keras.optimizers.SGD(LR), squared_error, jit_compile=jit_compile
    )


def _sgd_in_closed_form(x, y, epochs, seed=0):
    """The trainer's contract: epoch e visits permutation(seed, e) in global batches of BATCH."""
    w = np.array([[0.5], [-0.25], [1.0]])
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(N)
        for step in range(N // BATCH):
            rows = order[step * BATCH : (step + 1) * BATCH]
            # d/dw of mean_b (x_b w - y_b)^2
            w = w - LR * 2.0 / BATCH * x[rows].T @ (x[rows] @ w - y[rows])
    return w


@pytest.mark.parametrize("jit_compile", [True, False])
def test_sgd_steps_equal_the_closed_form_on_global_batches(jit_compile):
    x, y = _data()
    trainer = _linear_trainer(jit_compile)
    result = trainer.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    # float64, a handful of multiply-adds of O(1) terms per step: a few ulps.
    np.testing.assert_allclose(
        trainer.model.layers[0].kernel.numpy(), _sgd_in_closed_form(x, y, 2), rtol=0, atol=1e-13
    )
    assert [log["epoch"] for log in result["history"]] == [1, 2]
    assert result["initial_epoch"] == 0
    assert steady_throughput(result["history"]) > 0


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    x, y = _data()
    first = _linear_trainer()
    first.fit(x, y, batch_size=BATCH, epochs=1, checkpoint_dir=tmp_path, verbose=0)
    assert (tmp_path / "worker-0" / "ckpt-1.index").exists()
    # A new process would start from a fresh model: its weights come back from the checkpoint.
    resumed = _linear_trainer()
    result = resumed.fit(x, y, batch_size=BATCH, epochs=3, checkpoint_dir=tmp_path, verbose=0)
    assert result["initial_epoch"] == 1
    assert [log["epoch"] for log in result["history"]] == [2, 3]
    np.testing.assert_allclose(
        resumed.model.layers[0].kernel.numpy(), _sgd_in_closed_form(x, y, 3), rtol=0, atol=1e-13
    )
    assert int(resumed.optimizer.iterations.numpy()) == 3 * (N // BATCH)
    with pytest.raises(ValueError, match="past `epochs`"):
        _linear_trainer().fit(x, y, batch_size=BATCH, epochs=2, checkpoint_dir=tmp_path)


def test_callbacks_see_each_epoch_and_its_logs():
    x, y = _data()
    seen = []
    callback = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seen.append(("begin", epoch)),
        on_epoch_end=lambda epoch, logs: seen.append(("end", epoch, sorted(logs))),
    )
    _linear_trainer().fit(x, y, batch_size=BATCH, epochs=2, callbacks=[callback], verbose=0)
    keys = ["epoch", "images_per_second", "loss", "seconds"]
    assert seen == [("begin", 0), ("end", 0, keys), ("begin", 1), ("end", 1, keys)]


@pytest.mark.parametrize(
    "batch_size, x_rows, message",
    [(0, N, "`batch_size`"), (N + 1, N, "`batch_size`"), (BATCH, N - 1, "same length")],
)
def test_bad_arguments_raise(batch_size, x_rows, message):
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        _linear_trainer().fit(x[:x_rows], y, batch_size=batch_size, epochs=1)


def test_predict_keeps_the_output_shape_for_an_empty_batch():
    x, _ = _data()
    trainer = _linear_trainer()
    assert trainer.predict(x, batch_size=5).shape == (N, 1)
    assert trainer.predict(x[:0]).shape == (0, 1)


def test_outside_a_cluster_this_process_is_the_only_worker_and_chief():
    assert worker_task() == (0, 1, True)
