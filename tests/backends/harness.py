"""Run an op on whichever Keras backend this process has (`KERAS_BACKEND`), from numpy to numpy:
its values, and its gradients by the backend's own autodiff (TensorFlow's tape, `jax.vjp`,
`torch.autograd`), eagerly or compiled (XLA via `tf.function`, `jax.jit`, `torch.compile`)."""

import contextlib

import keras
import numpy as np

BACKEND = keras.backend.backend()


def float64():
    """A context in which the backend keeps float64 (JAX truncates to float32 unless x64 is on)."""
    if BACKEND == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def compiled(fn):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    import torch

    # Every test compiles its own function: a fresh cache, so none counts as another's recompile.
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=False)


def run(fn, *arrays, jit=False):
    """`fn(*tensors)` as numpy, the tensors made from `arrays` on the backend."""
    fn = compiled(fn) if jit else fn
    return keras.ops.convert_to_numpy(fn(*(keras.ops.convert_to_tensor(a) for a in arrays)))


def value_and_grads(fn, arrays, upstream, jit=False):
    """`(fn(*arrays), d sum(fn * upstream) / d arrays...)`, all numpy."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def step(*args):
            with tf.GradientTape() as tape:
                tape.watch(args)
                out = fn(*args)
                loss = tf.reduce_sum(out * tf.cast(upstream, out.dtype))
            return (out, *tape.gradient(loss, args))

        step = tf.function(step, jit_compile=True) if jit else step
        return [t.numpy() for t in step(*(tf.constant(a) for a in arrays))]
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def step(*args):
            out, vjp = jax.vjp(fn, *args)
            return (out, *vjp(jnp.asarray(upstream, out.dtype)))

        step = jax.jit(step) if jit else step
        return [np.asarray(t) for t in step(*(jnp.asarray(a) for a in arrays))]
    import torch

    def forward(*args):
        return fn(*args)

    forward = compiled(forward) if jit else forward
    args = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = forward(*args)
    out.backward(torch.as_tensor(upstream, dtype=out.dtype))
    return [out.detach().numpy(), *(a.grad.numpy() for a in args)]
