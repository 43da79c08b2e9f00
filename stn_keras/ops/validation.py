"""Argument checks shared by the ops and layers, with error messages that name the offending value."""

import tensorflow as tf


def check_choice(name, value, allowed):
    """Raise `ValueError` unless `value` is one of `allowed`.

    Args:
        name: the argument's name, as the user wrote it.
        value: the value received.
        allowed: tuple of accepted values.

    Raises:
        ValueError: naming the argument, the accepted values and the value received.
    """
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one of {allowed}. "
            f"Received: {name}={value!r}"
        )


def check_bool(name, value):
    """Raise `ValueError` unless `value` is a Python bool (a tensor here would silently trace a branch)."""
    if not isinstance(value, bool):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a Python bool. Received: {name}={value!r}"
        )


def check_rank(x, name, expected, layout):
    """Raise `ValueError` unless `x` has static rank `expected`.

    Args:
        x: a tensor (or anything with `.shape`).
        name: the argument's name.
        expected: the required rank.
        layout: the expected layout for the message, e.g. `"(B, H, W, C)"`.

    Raises:
        ValueError: naming the argument, the expected layout and the shape received.
    """
    shape = tf.TensorShape(x.shape)
    if shape.rank != expected:
        raise ValueError(
            f"Argument `{name}` must be a rank-{expected} tensor of shape {layout}. "
            f"Received: {name}.shape={shape}"
        )


def check_same_batch(a, a_name, b, b_name):
    """Raise `ValueError` when the static batch sizes of `a` and `b` are both known and differ."""
    na, nb = a.shape[0], b.shape[0]
    if na is not None and nb is not None and na != nb:
        raise ValueError(
            f"Arguments `{a_name}` and `{b_name}` must have the same batch size. "
            f"Received: {a_name}.shape={tf.TensorShape(a.shape)}, "
            f"{b_name}.shape={tf.TensorShape(b.shape)}"
        )
