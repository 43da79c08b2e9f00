"""`SpatialTransformer` under `tf.distribute.MirroredStrategy` (two logical CPU devices)."""

import json
import math
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).with_name("mirrored_fit.py")


def test_fit_and_distributed_trainer_train_under_mirrored_strategy_on_two_devices():
    # A fresh process: logical devices must be set up before TensorFlow initialises.
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["mirrored"]
    assert all(math.isfinite(loss) for loss in report["losses"])
    assert report["regression_moved"]
    # DistributedTrainer with two replicas in one process: float64 SGD, a few ulps from the
    # closed form (tests/test_distribute.py has the one-replica case).
    assert report["trainer_error"] < 1e-13
