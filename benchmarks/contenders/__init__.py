"""The implementations the benchmark races, one module per family.

Each family module has `build(case, inputs, task)`, returning a dict of contender name ->
`Contender` for the tasks it applies to (`benchmarks.suite.TASKS`), and nothing where it does
not apply.
"""

import dataclasses
import importlib
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Contender:
    """One timed implementation of one task.

    Attributes:
        run: zero-argument callable that does the work to completion and returns its result.
        to_numpy: for forward contenders, maps `run()`'s result to the `(B, H_out, W_out, C)` numpy
            output, so the harness can check that every contender computes the same thing;
            `None` for contenders whose output is not a warp (the memcpy floor) or for backward
            passes.
    """

    run: Callable
    to_numpy: Callable | None = None


# Threads each framework may use; None leaves each at its default (all cores, for TF, torch and ORT).
THREADS = None


def set_threads(threads):
    """Give TensorFlow (and XLA), torch and onnxruntime `threads` threads each.

    Call before TensorFlow runs its first op. A single thread makes the comparison robust to other
    load on a shared machine, where a framework's parallel regions wait on descheduled threads.
    """
    global THREADS
    import tensorflow as tf

    THREADS = threads
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


# Family name -> module under `benchmarks.contenders`.
FAMILIES = {
    "ours": "ours",
    "torch": "torch_native",
    "tf": "tf_builtin",
    "onnx": "onnx_graphs",
    "floors": "floors",
}


def family_modules(names=tuple(FAMILIES)):
    """The modules of the families `names`, imported only when asked for (torch is slow to import)."""
    return {
        name: importlib.import_module(f"benchmarks.contenders.{FAMILIES[name]}") for name in names
    }
