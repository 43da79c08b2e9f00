"""Run an op the ways users run it: eagerly, traced by `tf.function`, compiled by XLA, and traced as an
exporter traces it (`stn_keras.ops.portable`)."""

import contextlib
import functools

import tensorflow as tf

from stn_keras.ops import portable

EXECUTION_MODES = ("eager", "graph", "xla", "export")


def run_op(fn, *tensors, mode="eager", **options):
    """Call `fn(*tensors, **options)` eagerly, inside `tf.function`, under `jit_compile=True`, or
    inside `tf.function` traced under `portable.export_kernel()` (`"export"`).

    The tensors are traced with fully unknown shapes (`tf.TensorSpec` of unknown dimensions), so graph and
    XLA runs also check that `fn` does not depend on static batch or spatial sizes.

    Args:
        fn: the op to call.
        *tensors: its tensor arguments.
        mode: one of `EXECUTION_MODES`. Defaults to `"eager"`.
        **options: its non-tensor keyword arguments (fixed at trace time).

    Returns:
        What `fn` returns, as eager tensors.

    Raises:
        ValueError: for an unknown `mode`.
    """
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    if mode == "eager":
        return fn(*tensors, **options)
    if mode not in EXECUTION_MODES:
        raise ValueError(f"Expected mode in {EXECUTION_MODES}. Received: mode={mode!r}")
    signature = [tf.TensorSpec([None] * t.shape.rank, t.dtype) for t in tensors]
    traced = tf.function(
        functools.partial(fn, **options), input_signature=signature, jit_compile=mode == "xla"
    )
    with portable.export_kernel() if mode == "export" else contextlib.nullcontext():
        return traced(*tensors)
