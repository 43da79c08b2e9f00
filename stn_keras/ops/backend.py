"""Which Keras backend runs the ops, and where its kernels live.

The ops validate their arguments once, in one vocabulary, whatever the backend. On TensorFlow they
then run their own TensorFlow code (XLA-tuned, recorded for the exporters). On JAX and PyTorch,
the few backend-specific kernels (the sampler, the affine grid and a full-precision product of
points by matrices) live in `kernels_jax` and `kernels_torch`, imported only when that backend is
the one Keras runs, so that neither framework is needed to use the other.
"""

import functools
import importlib

import keras

_KERNEL_MODULES = {"jax": "stn_keras.ops.kernels_jax", "torch": "stn_keras.ops.kernels_torch"}
SUPPORTED = ("tensorflow", *_KERNEL_MODULES)


def name():
    """The Keras backend in use: `"tensorflow"`, `"jax"` or `"torch"` (or another, unsupported)."""
    return keras.backend.backend()


_loaded = {}


def kernels():
    """The backend's kernel module, or `None` on TensorFlow (the ops' own code).

    `stn_keras.ops` loads it on import (`load`), so that what `torch.compile` traces here is a
    dictionary lookup, not an import.

    Raises:
        ValueError: on a Keras backend stn-keras has no kernels for (e.g. `"numpy"`).
    """
    backend = name()
    if backend not in _loaded:
        load()
    if backend not in _loaded:
        raise ValueError(
            f"stn-keras runs on the Keras backends {SUPPORTED}. Received: KERAS_BACKEND={backend!r}"
        )
    return _loaded[backend]


def load():
    """Import the kernel module of the backend Keras runs (none for TensorFlow; nothing for a
    backend stn-keras does not run on, whose ops then raise)."""
    backend = name()
    if backend not in SUPPORTED:
        return
    module = _KERNEL_MODULES.get(backend)
    _loaded[backend] = None if module is None else importlib.import_module(module)


# What runs on JAX and PyTorch so far, for the message of everything else.
ON_EVERY_BACKEND = (
    "every grid (affine, attention, projective, thin-plate spline), grid_sample, the field ops "
    "(warp, integrate_velocity, ...) and every layer"
)


def require_tensorflow(what):
    """Raise `NotImplementedError` naming `what` and the backend unless Keras runs TensorFlow."""
    if name() != "tensorflow":
        raise NotImplementedError(
            f"{what} runs on the TensorFlow backend only (so far); this process has "
            f"KERAS_BACKEND={name()!r}. On JAX and PyTorch: {ON_EVERY_BACKEND}."
        )


def tensorflow_only(fn):
    """Mark an op written in TensorFlow only: on another backend it raises `NotImplementedError`
    naming the op and the backend, rather than failing inside TensorFlow on a foreign tensor."""

    @functools.wraps(fn)
    def op(*args, **kwargs):
        require_tensorflow(f"stn_keras.{fn.__name__}")
        return fn(*args, **kwargs)

    return op
