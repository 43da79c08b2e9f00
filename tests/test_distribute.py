"""`DistributedTrainer` in one process: Keras's `fit` contract (histories and weights equal to
`model.fit`'s, callbacks, multi-input and multi-output models, datasets, evaluate and predict), its
batches against SGD in closed form, checkpoint resume, and its errors. Real worker processes:
tests/examples/test_multiworker.py."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from stn_keras.distribute import DistributedTrainer, Throughput, worker_task

# The learning rate is exact in float32, the dtype of Keras optimizers' learning-rate variable.
N, FEATURES, BATCH, LR = 12, 3, 4, 0.125
W0 = np.array([[0.5], [-0.25], [1.0]])


@pytest.fixture(autouse=True)
def float64():
    """Layers and losses in float64 (Keras computes compiled losses in floatx): exact comparisons.

    The dtype policy is set too: once any code has set a global policy (other tests in this
    process may have), layers follow it rather than floatx.
    """
    previous = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous[0])
    keras.config.set_dtype_policy(previous[1])


def _data(n=N):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, FEATURES)), rng.normal(size=(n, 1))


def _linear_model(lr=LR, metrics=()):
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(1, use_bias=False, name="dense")]
    )
    model.get_layer("dense").kernel.assign(W0)
    model.compile(keras.optimizers.SGD(lr), loss="mse", metrics=list(metrics))
    return model


def _kernel(model):
    return model.get_layer("dense").kernel.numpy()


def _sgd_in_closed_form(x, y, epochs, seed=0, shuffle=True):
    """The trainer's contract: epoch e visits permutation(seed, e) in global batches of BATCH."""
    w = W0
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(N) if shuffle else np.arange(N)
        for step in range(N // BATCH):
            rows = order[step * BATCH : (step + 1) * BATCH]
            # d/dw of mean_b (x_b w - y_b)^2
            w = w - LR * 2.0 / BATCH * x[rows].T @ (x[rows] @ w - y[rows])
    return w


@pytest.mark.parametrize("jit_compile", [True, False])
def test_sgd_steps_equal_the_closed_form_on_global_batches(jit_compile):
    x, y = _data()
    trainer = DistributedTrainer(_linear_model(), jit_compile=jit_compile)
    history = trainer.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    # float64, a handful of multiply-adds of O(1) terms per step: a few ulps.
    np.testing.assert_allclose(
        _kernel(trainer.model), _sgd_in_closed_form(x, y, 2), rtol=0, atol=1e-13
    )
    assert isinstance(history, keras.callbacks.History) and history.epoch == [0, 1]
    assert trainer.model.history is history and trainer.initial_epoch == 0


def _two_in_two_out():
    keras.utils.set_random_seed(3)
    a, b = keras.Input((FEATURES,), name="a"), keras.Input((2,), name="b")
    hidden = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([a, b]))
    first = keras.layers.Dense(1, name="first")(hidden)
    second = keras.layers.Dense(2, name="second")(hidden)
    model = keras.Model({"a": a, "b": b}, {"first": first, "second": second})
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss={"first": "mse", "second": "mae"},
        loss_weights={"first": 1.0, "second": 0.5},
        metrics={"first": ["mae"], "second": [keras.metrics.MeanSquaredError(name="mse")]},
    )
    return model


def _two_in_two_out_data(n=N):
    rng = np.random.default_rng(1)
    x = {"a": rng.normal(size=(n, FEATURES)), "b": rng.normal(size=(n, 2))}
    y = {"first": rng.normal(size=(n, 1)), "second": rng.normal(size=(n, 2))}
    return x, y, rng.uniform(0.5, 1.5, n)


def _assert_same_training(keras_model, keras_history, ours, our_history):
    assert list(our_history.history) == list(keras_history.history)
    # Metric totals are float32 variables updated in the same order: equal up to a few float32
    # ulps of values of order 1.
    for key, values in keras_history.history.items():
        np.testing.assert_allclose(our_history.history[key], values, rtol=1e-6, err_msg=key)
    # The weights follow the same float64 arithmetic (XLA may reorder a sum: a few ulps).
    for mine, theirs in zip(ours.get_weights(), keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-12)


def test_history_and_weights_equal_model_fit_with_string_losses_and_validation_split():
    x, y = _data(20)
    weights = np.linspace(0.5, 1.5, 20)
    options = dict(batch_size=BATCH, epochs=3, shuffle=False, verbose=0, validation_split=0.2)
    reference = _linear_model(metrics=["mae"])
    expected = reference.fit(x, y, sample_weight=weights, **options)
    ours = _linear_model(metrics=["mae"])
    history = DistributedTrainer(ours).fit(x, y, sample_weight=weights, **options)
    assert list(history.history) == ["loss", "mae", "val_loss", "val_mae"]
    _assert_same_training(reference, expected, ours, history)


def test_dict_inputs_and_outputs_train_as_model_fit_does():
    x, y, weights = _two_in_two_out_data()
    options = dict(batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    reference = _two_in_two_out()
    expected = reference.fit(x, y, sample_weight=weights, validation_data=(x, y), **options)
    ours = _two_in_two_out()
    trainer = DistributedTrainer(ours)
    history = trainer.fit(x, y, sample_weight=weights, validation_data=(x, y), **options)
    _assert_same_training(reference, expected, ours, history)
    assert trainer.evaluate(x, y, batch_size=BATCH, return_dict=True) == pytest.approx(
        reference.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True), rel=1e-6
    )
    predicted = trainer.predict(x, batch_size=5)
    for key, value in reference.predict(x, verbose=0).items():
        np.testing.assert_allclose(predicted[key], value, rtol=0, atol=1e-12)
    # With a partial last batch every example still counts once in each output's loss (Keras
    # 3.15's own evaluate weighs that batch's per-output losses like a full one).
    logs = trainer.evaluate(x, y, batch_size=5, return_dict=True)
    mse = np.mean((predicted["first"] - y["first"]) ** 2)
    mae = np.mean(np.abs(predicted["second"] - y["second"]))
    np.testing.assert_allclose([logs["first_loss"], logs["second_loss"]], [mse, mae], rtol=1e-6)


def test_a_dataset_of_batches_trains_as_the_same_arrays():
    x, y = _data()
    from_arrays = DistributedTrainer(_linear_model())
    from_arrays.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    from_dataset = DistributedTrainer(_linear_model())
    history = from_dataset.fit(dataset, epochs=2, verbose=0)
    np.testing.assert_array_equal(_kernel(from_dataset.model), _kernel(from_arrays.model))
    np.testing.assert_allclose(
        _kernel(from_arrays.model), _sgd_in_closed_form(x, y, 2, shuffle=False), atol=1e-13
    )
    assert history.epoch == [0, 1]
    # `steps_per_epoch` draws from one iterator across epochs, as `fit` does.
    again = DistributedTrainer(_linear_model())
    again.fit(dataset.repeat(), epochs=3, steps_per_epoch=2, verbose=0)
    assert int(again.model.optimizer.iterations.numpy()) == 6


def test_evaluate_counts_every_example_including_the_last_partial_batch():
    x, y = _data()
    model = _linear_model(metrics=["mae"])
    loss, mae = DistributedTrainer(model).evaluate(x, y, batch_size=5)
    residual = x @ W0 - y
    np.testing.assert_allclose(loss, np.mean(residual**2), rtol=1e-6)  # float32 loss total
    np.testing.assert_allclose(mae, np.mean(np.abs(residual)), rtol=1e-6)


def _fit_with_callbacks(train, folder):
    """Train with Keras's file-writing and schedule callbacks; what they saw and wrote."""
    folder.mkdir()
    seen = []
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: LR / (epoch + 1)),
        keras.callbacks.ModelCheckpoint(str(folder / "ckpt_{epoch}.keras")),
        keras.callbacks.CSVLogger(str(folder / "log.csv")),
        keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: seen.append(("begin", epoch)),
            on_epoch_end=lambda epoch, logs: seen.append(("end", epoch, sorted(logs))),
        ),
    ]
    model = _linear_model(metrics=["mae"])
    x, y = _data()
    options = dict(batch_size=BATCH, epochs=2, shuffle=False, callbacks=callbacks, verbose=0)
    history = train(model, x, y, **options)
    with open(folder / "log.csv") as f:
        rows = list(csv.reader(f))
    checkpoints = sorted(p.name for p in folder.glob("ckpt_*.keras"))
    rate = float(model.optimizer.learning_rate.numpy())
    return seen, rows, checkpoints, history.history, rate


def test_keras_callbacks_see_and_write_what_they_do_under_fit(tmp_path):
    expected = _fit_with_callbacks(lambda m, *a, **kw: m.fit(*a, **kw), tmp_path / "fit")
    ours = _fit_with_callbacks(
        lambda m, *a, **kw: DistributedTrainer(m).fit(*a, **kw), tmp_path / "trainer"
    )
    seen, rows, checkpoints, history, rate = ours
    keys = ["learning_rate", "loss", "mae"]
    assert seen == [("begin", 0), ("end", 0, keys), ("begin", 1), ("end", 1, keys)]
    assert seen == expected[0]
    assert checkpoints == ["ckpt_1.keras", "ckpt_2.keras"] == expected[2]
    assert rows[0] == expected[1][0] and rows[0].count("epoch") == 1
    assert [row[0] for row in rows[1:]] == ["0", "1"]
    assert history["learning_rate"] == [LR, LR / 2] and rate == LR / 2 == expected[4]
    np.testing.assert_allclose(history["loss"], expected[3]["loss"], rtol=1e-6)


def test_stop_training_is_honoured():
    x, y = _data()
    # A learning rate of 0 never improves the loss: EarlyStopping stops after `patience` epochs.
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=1)
    history = DistributedTrainer(_linear_model(lr=0.0)).fit(
        x, y, batch_size=BATCH, epochs=10, callbacks=[stopper], verbose=0
    )
    assert history.epoch == [0, 1] and stopper.stopped_epoch == 1
    # TerminateOnNaN stops at the batch whose loss is NaN.
    y_nan = y.copy()
    y_nan[5] = np.nan
    trainer = DistributedTrainer(_linear_model())
    trainer.fit(
        x,
        y_nan,
        batch_size=BATCH,
        epochs=3,
        shuffle=False,
        callbacks=[keras.callbacks.TerminateOnNaN()],
        verbose=0,
    )
    assert int(trainer.model.optimizer.iterations.numpy()) == 2  # batch 2 held the NaN


def test_reduce_lr_on_plateau_lowers_the_models_learning_rate_as_under_fit():
    x, y = _data()
    histories, rates = [], []
    for train in (
        lambda model, **kw: model.fit(x, y, **kw),
        lambda model, **kw: DistributedTrainer(model).fit(x, y, **kw),
    ):
        model = _linear_model()
        reduce = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0)
        # min_delta: no epoch counts as an improvement after the first.
        reduce.min_delta = 1e9
        history = train(model, batch_size=BATCH, epochs=3, callbacks=[reduce], verbose=0)
        histories.append(history.history["learning_rate"])
        rates.append(float(model.optimizer.learning_rate.numpy()))
    assert histories[1] == histories[0] and rates[1] == rates[0] < LR


def test_backup_and_restore_resumes_an_interrupted_run(tmp_path):
    x, y = _data()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = lambda: keras.callbacks.BackupAndRestore(str(tmp_path))  # noqa: E731
    with pytest.raises(RuntimeError, match="interrupted"):
        DistributedTrainer(_linear_model()).fit(
            x, y, batch_size=BATCH, epochs=3, callbacks=[backup(), Interrupt()], verbose=0
        )
    resumed = DistributedTrainer(_linear_model())
    history = resumed.fit(x, y, batch_size=BATCH, epochs=3, callbacks=[backup()], verbose=0)
    assert history.epoch == [1, 2] and resumed.initial_epoch == 1
    np.testing.assert_allclose(_kernel(resumed.model), _sgd_in_closed_form(x, y, 3), atol=1e-13)


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    x, y = _data()
    DistributedTrainer(_linear_model()).fit(
        x, y, batch_size=BATCH, epochs=1, checkpoint_dir=tmp_path, verbose=0
    )
    assert (tmp_path / "worker-0" / "ckpt-1.index").exists()
    # A new process would start from a fresh model: its weights come back from the checkpoint.
    resumed = DistributedTrainer(_linear_model())
    history = resumed.fit(x, y, batch_size=BATCH, epochs=3, checkpoint_dir=tmp_path, verbose=0)
    assert resumed.initial_epoch == 1 and history.epoch == [1, 2]
    np.testing.assert_allclose(_kernel(resumed.model), _sgd_in_closed_form(x, y, 3), atol=1e-13)
    assert int(resumed.model.optimizer.iterations.numpy()) == 3 * (N // BATCH)
    with pytest.raises(ValueError, match="past `epochs`"):
        DistributedTrainer(_linear_model()).fit(
            x, y, batch_size=BATCH, epochs=2, checkpoint_dir=tmp_path
        )


def test_numpy_integers_are_accepted():
    x, y = _data()
    trainer = DistributedTrainer(_linear_model())
    history = trainer.fit(x, y, batch_size=np.int64(BATCH), epochs=np.int32(2), verbose=0)
    assert history.epoch == [0, 1]


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"batch_size": 0}, "`batch_size`"),
        ({"batch_size": N + 1}, "`batch_size`"),
        ({"batch_size": 2.0}, "`batch_size`"),
        ({"epochs": -1}, "`epochs`"),
        ({"epochs": True}, "`epochs`"),
        ({"seed": -1}, "`seed`"),
        ({"validation_split": 1.0}, "`validation_split`"),
        ({"steps_per_epoch": 2}, "`steps_per_epoch`"),
        ({"x_rows": N - 1}, "same number of examples"),
    ],
)
def test_bad_arguments_raise(arguments, message):
    x, y = _data()
    arguments = {"batch_size": BATCH, "epochs": 1, **arguments}
    x = x[: arguments.pop("x_rows", N)]
    with pytest.raises(ValueError, match=message):
        DistributedTrainer(_linear_model()).fit(x, y, verbose=0, **arguments)


def test_an_uncompiled_model_is_refused():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled"):
        DistributedTrainer(model)


def test_predict_keeps_the_output_shape_for_an_empty_batch():
    x, _ = _data()
    trainer = DistributedTrainer(_linear_model())
    assert trainer.predict(x, batch_size=5).shape == (N, 1)
    assert trainer.predict(x[:0]).shape == (0, 1)


def test_throughput_times_the_epochs_after_the_first():
    x, y = _data()
    timer = Throughput(examples_per_epoch=N)
    DistributedTrainer(_linear_model()).fit(
        x, y, batch_size=BATCH, epochs=3, callbacks=[timer], verbose=0
    )
    assert sorted(timer.seconds) == [0, 1, 2]
    expected = 2 * N / (timer.seconds[1] + timer.seconds[2])
    assert timer.images_per_second() == pytest.approx(expected)
    assert Throughput(N).images_per_second() is None


def test_outside_a_cluster_this_process_is_the_only_worker_and_chief():
    assert worker_task() == (0, 1, True)


def test_batch_logs_reach_callbacks_that_read_them():
    x, y = _data()
    batches, epochs = [], []
    callback = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batches.append((batch, dict(logs))),
        on_epoch_end=lambda epoch, logs: epochs.append(dict(logs)),
    )
    DistributedTrainer(_linear_model(metrics=["mae"])).fit(
        x, y, batch_size=BATCH, epochs=1, callbacks=[callback], verbose=0
    )
    assert [batch for batch, _ in batches] == [0, 1, 2]
    assert all(sorted(logs) == ["loss", "mae"] for _, logs in batches)
    # The last batch's running means are the epoch's.
    assert batches[-1][1] == epochs[0]


def test_validation_data_may_name_no_weights():
    x, y = _data()
    history = DistributedTrainer(_linear_model()).fit(
        x, y, batch_size=BATCH, epochs=1, validation_data=(x, y, None), verbose=0
    )
    # The trained model's loss on all 12 examples: float32 loss totals, a few ulps.
    model = history.model
    expected = np.mean((x @ _kernel(model) - y) ** 2)
    np.testing.assert_allclose(history.history["val_loss"][0], expected, rtol=1e-6)
