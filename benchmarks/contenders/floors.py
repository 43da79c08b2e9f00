"""The floors no sampler can go below on this machine: memory bandwidth, TensorFlow's call cost and,
for the image gradient, XLA's scatter-add."""

import itertools
import math

import numpy as np
import tensorflow as tf

from benchmarks.contenders import Contender


def build(case, inputs, task):
    """Contenders `memcpy` (forward only), `xla-call` (every task) and `xla-scatter`
    (`backward_all`).

    `memcpy` is `np.copyto` of a float32 buffer the size of the output: a bilinear warp must at
    least write its output and read about as much from the input, so a copy of the output's bytes
    bounds what any sampler can reach. `xla-call` calls a `tf.function(jit_compile=True)` that takes
    the task's arguments and does almost nothing (returns `2 * theta`): what every XLA-compiled
    TensorFlow call costs before any work, and what `ours-xla` pays on top of its loops.
    `xla-scatter` is the image gradient's scatter-adds alone (`_scatter_floor`).
    """
    if task.startswith("warp"):  # the floors are the sampling tasks'
        return {}
    tensors = {name: tf.constant(value) for name, value in inputs.items()}
    names = ("images", "theta") if task == "forward" else ("images", "theta", "upstream")
    args = tuple(tensors[name] for name in names)
    call = tf.function(lambda *args: 2.0 * args[1], jit_compile=True)
    contenders = {"xla-call": Contender(run=lambda: call(*args))}
    if task == "backward_all":
        contenders["xla-scatter"] = _scatter_floor(case, tensors["upstream"])
    if task == "forward":
        source = np.random.default_rng(0).standard_normal(case.output_bytes // 4)
        source = source.astype(np.float32)
        target = np.empty_like(source)
        contenders["memcpy"] = Contender(run=lambda: np.copyto(target, source))
    return contenders


def _scatter_floor(case, upstream):
    """What the image gradient's bilinear scatter-adds cost in XLA, with nothing else to compute.

    One `tensor_scatter_nd_add` per tap (4 for an image, 8 for a volume), chained as the sampler's
    backward pass chains them, of the output gradient into a zero image, at the rows of a resize
    (each output pixel's nearest input pixel, plus the tap's offset): the same number of updates,
    of the same width, landing on neighbouring rows as a smooth warp's do. The rows are arguments,
    so that none of their arithmetic is timed. XLA runs a scatter-add on one thread, in order.
    """
    in_size, out_size = case.in_size, case.out_size
    nearest = np.meshgrid(
        *(np.arange(o) * i // o for o, i in zip(out_size, in_size, strict=True)), indexing="ij"
    )
    base = np.ravel_multi_index(nearest, in_size)[None]
    base = base + math.prod(in_size) * np.arange(case.batch).reshape((-1,) + (1,) * len(in_size))
    strides = [math.prod(in_size[a + 1 :]) for a in range(len(in_size))]
    last = case.batch * math.prod(in_size) - 1
    rows = [
        tf.constant(np.minimum(base + np.dot(tap, strides), last)[..., None])
        for tap in itertools.product((0, 1), repeat=len(in_size))
    ]
    shape = (last + 1, case.channels)
    flat = tf.reshape(upstream, (-1, case.channels))

    @tf.function(jit_compile=True)
    def scatter(flat, *rows):
        gradient = tf.zeros(shape, flat.dtype)
        for tap_rows in rows:
            gradient = tf.tensor_scatter_nd_add(gradient, tf.reshape(tap_rows, (-1, 1)), flat)
        return gradient

    return Contender(run=lambda: scatter(flat, *rows))
