"""The implementations the benchmark races, one module per family.

Each family module has `build(case, inputs, task)`, returning a dict of contender name ->
`Contender` for the tasks it applies to (`benchmarks.suite.TASKS`), and nothing where it does
not apply.
"""

import dataclasses
import importlib
import os
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
    """Give TensorFlow (and XLA), torch and onnxruntime `threads` threads each, on `threads` CPUs.

    Call before TensorFlow runs its first op. A single thread makes the comparison robust to other
    load on a shared machine, where a framework's parallel regions wait on descheduled threads.
    The whole process is also confined to `threads` CPUs (where the OS allows it): XLA runs the
    independent loops of one call concurrently on the calling thread and its pool's, so with a
    pool of one thread it would still use two cores.
    """
    global THREADS
    import tensorflow as tf

    THREADS = threads
    _confine_to_cpus(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _confine_to_cpus(count):
    """Pin every thread of this process (and so the threads it starts later) to `count` of its CPUs.

    A no-op where the OS has no `sched_setaffinity` (macOS, Windows).
    """
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))[:count]
    try:
        tasks = [int(task) for task in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: pin the calling thread, which the later ones inherit
        tasks = [0]
    for task in tasks:
        try:
            os.sched_setaffinity(task, cpus)
        except OSError:  # a thread that has exited since the listing
            pass


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
