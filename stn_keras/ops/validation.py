"""Argument checks shared by the ops and layers, with error messages that name the offending value."""

import keras
import numpy as np
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


def is_int(value):
    """Whether `value` is a Python or numpy integer (a bool is not)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(name, value, minimum=None, maximum=None):
    """Return `value` as a Python int; raise `ValueError` unless it is an integer in range.

    Python and numpy integers are accepted alike (`np.int64(5)` from an array's shape or a config);
    bools, floats and strings are not, even when they compare equal to an integer.

    Args:
        name: the argument's name, as the user wrote it.
        value: the value received.
        minimum: the smallest accepted value, or `None`. Defaults to `None`.
        maximum: the largest accepted value, or `None`. Defaults to `None`.

    Returns:
        `int(value)`.

    Raises:
        ValueError: naming the argument, the accepted range and the value received.
    """
    if (
        not is_int(value)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        bounds = [(">=", minimum), ("<=", maximum)]
        expected = " and ".join(f"{op} {bound}" for op, bound in bounds if bound is not None)
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected an integer{' ' + expected if expected else ''}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def static_shape(x):
    """`x`'s static shape as a tuple, `None` for sizes known only at run time; `None` for an unknown
    rank. `x` is a tensor of any backend or a shape. Plain Python, which `torch.compile` traces."""
    shape = getattr(x, "shape", x)
    if getattr(shape, "rank", 0) is None:
        return None
    return tuple(None if d is None else int(d) for d in shape)


def shape_text(x):
    """`x`'s static shape as messages print it: `(2, None, 3)`, `<unknown>` for an unknown rank."""
    shape = static_shape(x)
    return "<unknown>" if shape is None else "(" + ", ".join(map(str, shape)) + ")"


def fits(x, pattern):
    """Whether `x`'s static shape may be `pattern` (a tuple with `None` for any size)."""
    shape = static_shape(x)
    return shape is None or (
        len(shape) == len(pattern)
        and all(a is None or b is None or a == b for a, b in zip(shape, pattern, strict=True))
    )


FLOATING = ("float16", "bfloat16", "float32", "float64")


def dtype_name(x):
    """The name of `x`'s dtype in Keras's vocabulary (`"float32"`, ...), whatever the backend."""
    return keras.backend.standardize_dtype(x.dtype)


def is_floating(x):
    """Whether `x` (a tensor of any backend, or an array) holds floating-point numbers."""
    return dtype_name(x) in FLOATING


def as_tensor(x):
    """`x` as a tensor of the Keras backend in use (TensorFlow's own conversion on TensorFlow)."""
    if keras.backend.backend() == "tensorflow":
        return tf.convert_to_tensor(x)
    return keras.ops.convert_to_tensor(x)


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
    shape = static_shape(x)
    if shape is None or len(shape) != expected:
        raise ValueError(
            f"Argument `{name}` must be a rank-{expected} tensor of shape {layout}. "
            f"Received: {name}.shape={shape_text(x)}"
        )


def check_same_batch(a, a_name, b, b_name):
    """Raise `ValueError` when the static batch sizes of `a` and `b` are both known and differ."""
    na, nb = a.shape[0], b.shape[0]
    if na is not None and nb is not None and na != nb:
        raise ValueError(
            f"Arguments `{a_name}` and `{b_name}` must have the same batch size. "
            f"Received: {a_name}.shape={shape_text(a)}, {b_name}.shape={shape_text(b)}"
        )


def _is_size(value):
    """Whether `value` is a Python or numpy integer (not a bool) of at least 1."""
    return is_int(value) and value >= 1


# The layouts of an output size by its number of entries: an image's, then a volume's.
SIZE_LAYOUTS = {2: "(H_out, W_out)", 3: "(D_out, H_out, W_out)"}


def check_size(size, name="size", dims=(2,), allow_tensors=True):
    """Validate an output size: 2 (image) or 3 (volume) positive integers, or (for ops) integer tensors.

    Python and numpy integers are accepted alike and returned as Python ints. With `allow_tensors`, a
    1-D integer tensor, or a sequence whose entries are scalar tensors, is accepted too: its values
    are checked now when it is eager, and at run time (where assertions run) when it is symbolic.

    Args:
        size: the size received.
        name: the argument's name, for the message. Defaults to `"size"`.
        dims: the accepted numbers of entries, among 2 (`(H_out, W_out)`) and 3
            (`(D_out, H_out, W_out)`). Defaults to `(2,)`.
        allow_tensors: whether tensors may stand for the sizes. Defaults to `True`.

    Returns:
        A tuple of Python ints or scalar tensors, in array order: `(H_out, W_out)` or
        `(D_out, H_out, W_out)`.

    Raises:
        ValueError: naming the argument, the accepted layouts and the value received.
    """

    def invalid():
        layouts = " or ".join(SIZE_LAYOUTS[n] for n in dims)
        what = {(2,): "a pair of", (3,): "three"}.get(tuple(dims), " or ".join(map(str, dims)))
        return ValueError(
            f"Invalid value for argument `{name}`. Expected {what} positive integers {layouts}. "
            f"Received: {name}={size!r}"
        )

    if allow_tensors and isinstance(size, tf.Tensor | tf.Variable):
        # A length known only at run time stands for the one accepted length, if there is one.
        count = size.shape[0] if size.shape.rank == 1 and size.shape[0] is not None else None
        if count is None and size.shape.rank == 1 and len(dims) == 1:
            count = dims[0]
        if count not in dims or not size.dtype.is_integer:
            raise invalid()
        if hasattr(size, "numpy"):  # eager: its values are known now
            if not all(v >= 1 for v in size.numpy().tolist()):
                raise invalid()
        else:
            check = tf.debugging.assert_positive(
                size, message=f"Argument `{name}` must be positive"
            )
            with tf.control_dependencies([check]):
                size = tf.identity(size)
        return tuple(size[i] for i in range(count))
    try:
        entries = tuple(size)
    except TypeError:
        raise invalid() from None
    if len(entries) not in dims:
        raise invalid()
    checked = []
    for value in entries:
        if allow_tensors and isinstance(value, tf.Tensor | tf.Variable):
            if value.shape.rank != 0 or not value.dtype.is_integer:
                raise invalid()
            if hasattr(value, "numpy") and int(value.numpy()) < 1:
                raise invalid()
            checked.append(value)
        elif _is_size(value):
            checked.append(int(value))
        else:
            raise invalid()
    return tuple(checked)
