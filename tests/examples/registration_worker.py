"""Train the registration example's model (`[moving, fixed] -> [warped, flow]`) with
`DistributedTrainer`: on the worker of `TF_CONFIG` when it is set, else alone. Run as a script by
`test_multiworker.py`; writes `OUT/worker-<i>.npz` (weights) and `OUT/worker-<i>.json` (history).

    python tests/examples/registration_worker.py OUT
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

PAIRS, BATCH, EPOCHS = 16, 8, 2


def main(out):
    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy()
        if os.environ.get("TF_CONFIG")
        else tf.distribute.get_strategy()
    )
    from examples import register
    from stn_keras.distribute import DistributedTrainer, worker_task

    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    moving, fixed = register.digit_pairs(PAIRS, np.random.default_rng(0))
    moving, fixed = moving.astype("float64"), fixed.astype("float64")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = register.build_model(moving.shape[1:], steps=3, width=4)
        register.compile_model(model)
    zeros = np.zeros((*moving.shape[:-1], 2))
    trainer = DistributedTrainer(model, strategy)
    history = trainer.fit(
        [moving, fixed], [fixed, zeros], batch_size=BATCH, epochs=EPOCHS, verbose=0
    )
    index, _, _ = worker_task(strategy)
    out = pathlib.Path(out)
    np.savez(out / f"worker-{index}.npz", *model.get_weights())
    (out / f"worker-{index}.json").write_text(json.dumps(history.history))


if __name__ == "__main__":
    main(sys.argv[1])
