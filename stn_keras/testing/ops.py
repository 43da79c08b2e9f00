"""Run an op the ways users run it: eagerly, traced by `tf.function`, and compiled by XLA."""

import functools

import tensorflow as tf

EXECUTION_MODES = ("eager", "graph", "xla")


def run_op(fn, *tensors, mode="eager", **options):
    """Call `fn(*tensors, **options)` eagerly, inside `tf.function`, or under `jit_compile=True`.

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
    return traced(*tensors)
