"""The floors no sampler can go below on this machine: memory bandwidth and TensorFlow's call cost."""

import numpy as np
import tensorflow as tf

from benchmarks.contenders import Contender


def build(case, inputs, task):
    """Contenders `memcpy` (forward only) and `xla-call` (every task).

    `memcpy` is `np.copyto` of a float32 buffer the size of the output: a bilinear warp must at
    least write its output and read about as much from the input, so a copy of the output's bytes
    bounds what any sampler can reach. `xla-call` calls a `tf.function(jit_compile=True)` that takes
    the task's arguments and does almost nothing (returns `2 * theta`): what every XLA-compiled
    TensorFlow call costs before any work, and what `ours-xla` pays on top of its loops.
    """
    if task.startswith("warp"):  # the floors are the sampling tasks'
        return {}
    tensors = {name: tf.constant(value) for name, value in inputs.items()}
    names = ("images", "theta") if task == "forward" else ("images", "theta", "upstream")
    args = tuple(tensors[name] for name in names)
    call = tf.function(lambda *args: 2.0 * args[1], jit_compile=True)
    contenders = {"xla-call": Contender(run=lambda: call(*args))}
    if task == "forward":
        source = np.random.default_rng(0).standard_normal(case.output_bytes // 4)
        source = source.astype(np.float32)
        target = np.empty_like(source)
        contenders["memcpy"] = Contender(run=lambda: np.copyto(target, source))
    return contenders
