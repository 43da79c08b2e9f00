"""Train a model with a SpatialTransformer under `tf.distribute.MirroredStrategy` on 2 logical CPUs.

Run as a script (by `test_distribution.py`, in a fresh process): logical devices must be configured
before TensorFlow initialises, which other tests in a pytest worker may already have done. Prints
one JSON line with what the test checks.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from stn_keras import SpatialTransformer  # noqa: E402
from stn_keras.distribute import DistributedTrainer  # noqa: E402


def trainer_error_against_sgd_in_closed_form(strategy):
    """Max |w - w_closed_form| after 2 epochs of `DistributedTrainer` with 2 replicas.

    A linear least-squares model in float64, SGD with an exact float32 learning rate: each
    replica takes half of every global batch of 4, and their update must be the batch mean's.
    """
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 1))
    w0, lr, batch = np.array([[0.5], [-0.25], [1.0]]), 0.125, 4
    previous = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")  # the compiled loss is computed in floatx
    keras.config.set_dtype_policy("float64")
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((3,), dtype="float64"),
                keras.layers.Dense(1, use_bias=False, dtype="float64"),
            ]
        )
        model.layers[0].kernel.assign(w0)
        model.compile(keras.optimizers.SGD(lr), loss="mse")
    trainer = DistributedTrainer(model, strategy)
    trainer.fit(x, y, batch_size=batch, epochs=2, verbose=0)
    keras.config.set_floatx(previous[0])
    keras.config.set_dtype_policy(previous[1])
    w = w0
    for epoch in range(2):  # the trainer's documented batches
        order = np.random.default_rng([0, epoch]).permutation(12)
        for step in range(3):
            rows = order[step * batch : (step + 1) * batch]
            w = w - lr * 2.0 / batch * x[rows].T @ (x[rows] @ w - y[rows])
    return float(np.max(np.abs(model.layers[0].kernel.numpy() - w)))


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((16, 16, 1)),
                SpatialTransformer(output_size=(8, 8), name="st"),
                keras.layers.Flatten(),
                keras.layers.Dense(3),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    rng = np.random.default_rng(0)
    images = rng.random((16, 16, 16, 1)).astype("float32")
    labels = np.arange(16) % 3
    regression = model.get_layer("st").regression
    before = regression.kernel.numpy().copy()
    history = model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "mirrored": isinstance(regression.kernel.value, tf.distribute.DistributedValues),
                "losses": history.history["loss"],
                "regression_moved": bool(np.any(regression.kernel.numpy() != before)),
                "trainer_error": trainer_error_against_sgd_in_closed_form(strategy),
            }
        )
    )


if __name__ == "__main__":
    main()
