"""Peak memory of a backward pass: how far one call raises memory use above its level before it.

TensorFlow (graph and XLA) allocates through its own caching allocator on CPU (oneDNN's BFC), which
never hands memory back to the OS, so its peak comes from the allocator's statistics
(`tf.config.experimental.get_memory_info`). TensorFlow keeps those statistics only in some
configurations (not with oneDNN off, the default on AMD CPUs); there the rise of the resident set is
measured instead, and each record names its `method`. PyTorch allocates CPU tensors with plain `malloc`: its
peak is the rise of the process's peak resident set size during the call, measured in a child process
(`python -m benchmarks.memory REQUEST_JSON`) started with a fixed glibc mmap threshold, so that every
large buffer is mapped on allocation and unmapped on release. Linux only (`/proc/self/clear_refs`).
"""

import gc
import json
import os
import subprocess
import sys

from benchmarks.suite import Case, make_inputs

MEMORY_TASK = "backward_all"
WARP_MEMORY_TASK = "warp_backward"
MEMORY_CONTENDERS = ("ours-graph", "ours-xla", "torch-nchw", "torch-cl")
_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"No {field} in /proc/self/status")


def _warm(fn):
    fn()
    fn()  # traced, compiled, allocators warm
    gc.collect()


def peak_rise_mib(fn):
    """MiB by which one call of `fn` raises the resident set size above its level before it."""
    _warm(fn)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024.0


def tf_peak_rise_mib(fn):
    """MiB by which one call of `fn` raises TensorFlow's CPU allocator above its level before it.

    Returns:
        `(mib, method)`: `"allocator"` from TensorFlow's statistics, or `"rss"` (see `peak_rise_mib`)
        where this build keeps none for the CPU.
    """
    import tensorflow as tf

    _warm(fn)
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
    except ValueError:  # "Cannot reset memory stats for device 'CPU:0'"
        return peak_rise_mib(fn), "rss"
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    fn()
    return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20, "allocator"


def measure(cases, families=("ours", "torch"), task=MEMORY_TASK):
    """`[{case, contender, task, peak_mib, method}]` for `MEMORY_CONTENDERS` of `families` on each
    case, running `task` (`MEMORY_TASK`, or `WARP_MEMORY_TASK` for the warp's cases)."""
    from benchmarks.contenders import family_modules

    modules = family_modules(families).values()
    results = []
    for case in cases:
        inputs = make_inputs(case)
        contenders = {}
        for module in modules:
            contenders.update(module.build(case, inputs, task))
        for name in MEMORY_CONTENDERS:
            if name in contenders:
                if name.startswith("ours-"):
                    peak, method = tf_peak_rise_mib(contenders[name].run)
                else:
                    peak, method = peak_rise_mib(contenders[name].run), "rss"
                results.append(
                    {
                        "case": case.name,
                        "contender": name,
                        "task": task,
                        "peak_mib": peak,
                        "method": method,
                    }
                )
    return results


def measure_in_child(
    cases, families=("ours", "torch"), threads=None, timeout_s=900, task=MEMORY_TASK
):
    """Run `measure` in a fresh Python with the allocator settings above; returns its records."""
    request = {
        "cases": [vars(case) for case in cases],
        "families": list(families),
        "threads": threads,
        "task": task,
    }
    payload = json.dumps(request)
    env = {**os.environ, **_ENV}
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", payload],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if child.returncode != 0:
        raise RuntimeError(f"Memory measurement failed:\n{child.stderr[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    request = json.loads(sys.argv[1])
    if request["threads"]:
        from benchmarks.contenders import set_threads

        set_threads(request["threads"])
    cases = [Case(**fields) for fields in request["cases"]]
    print(json.dumps(measure(cases, request["families"], request["task"])))
