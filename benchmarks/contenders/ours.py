"""stn-keras's `affine_grid` + `grid_sample` (and `warp` by a displacement field), eagerly, in
`tf.function` and XLA-compiled."""

import tensorflow as tf

import stn_keras
from benchmarks.contenders import Contender


def task_functions(out_size, ops=stn_keras):
    """`{task: function}` of the benchmark's tasks, with `ops` (a module with `affine_grid` and
    `grid_sample`: stn_keras, or another revision of it, see `benchmarks.ab`)."""

    def forward(images, theta):
        return ops.grid_sample(images, ops.affine_grid(theta, out_size))

    # The backward passes return the output too, as a training step uses it (for the loss): otherwise
    # XLA would drop the forward pass's own work, which PyTorch's timings include.
    def backward_theta(images, theta, upstream):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            out = forward(images, theta)
        return out, tape.gradient(out, theta, output_gradients=upstream)

    def backward_all(images, theta, upstream):
        with tf.GradientTape() as tape:
            tape.watch([images, theta])
            out = forward(images, theta)
        return out, tape.gradient(out, [images, theta], output_gradients=upstream)

    def warp_forward(images, flow):
        return ops.warp(images, flow)

    def warp_backward(images, flow, upstream):
        with tf.GradientTape() as tape:
            tape.watch([images, flow])
            out = warp_forward(images, flow)
        return out, tape.gradient(out, [images, flow], output_gradients=upstream)

    return {
        "forward": forward,
        "backward_theta": backward_theta,
        "backward_all": backward_all,
        "warp_forward": warp_forward,
        "warp_backward": warp_backward,
    }


def task_arguments(task):
    """The names of `make_inputs`' arrays a task function takes, in order."""
    if task.startswith("warp"):
        return ("images", "flow") + (("warp_upstream",) if task == "warp_backward" else ())
    return ("images", "theta") + (("upstream",) if task != "forward" else ())


def build(case, inputs, task):
    """Contenders `ours-eager`, `ours-graph` and `ours-xla` for any task."""
    fn = task_functions(case.out_size)[task]
    args = tuple(tf.constant(inputs[name]) for name in task_arguments(task))
    to_numpy = (lambda out: out.numpy()) if task in ("forward", "warp_forward") else None
    variants = {
        "ours-eager": fn,
        "ours-graph": tf.function(fn),
        "ours-xla": tf.function(fn, jit_compile=True),
    }
    return {
        name: Contender(run=lambda f=f: f(*args), to_numpy=to_numpy) for name, f in variants.items()
    }
