"""Wall-clock timing of contenders side by side, so that load on a shared machine hits all alike."""

import time

import numpy as np


def _calibrate(fn, target_s):
    """Calls per sample so that one sample lasts about `target_s`."""
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    return max(1, min(1000, int(target_s / max(elapsed, 1e-7))))


def time_interleaved(contenders, rounds=7, warmup=2, target_s=0.02):
    """Median wall time of each contender, measured in interleaved rounds.

    Every contender is first called `warmup` times (tracing, XLA compilation, allocator warm-up).
    Then each of `rounds` rounds times every contender once, in turn, as one burst of calls long
    enough to last about `target_s`, so that a change of load during the run affects all
    contenders alike. Each burst starts with one untimed call: the contender before it leaves the
    caches full of its own data and its threads spinning for a moment before they sleep, which
    would otherwise bill the first call of a short burst (torch's NCHW fwd+bwd at 8x224x224x3, timed
    right after ours-xla in bursts of 2 calls: 10.1-11.1 ms without that call, 8.6 ms with it).

    Args:
        contenders: dict of name -> zero-argument callable that runs the work to completion.
        rounds: number of samples per contender. Defaults to `7`.
        warmup: untimed calls before timing. Defaults to `2`.
        target_s: approximate duration of one sample, in seconds. Defaults to `0.02`.

    Returns:
        A dict of name -> `{"median_ms", "q1_ms", "q3_ms", "samples", "calls_per_sample"}`, or
        `{"error": message}` for a contender that raised.
    """
    calls, results = {}, {}
    for name, fn in contenders.items():
        try:
            for _ in range(warmup):
                fn()
            calls[name] = _calibrate(fn, target_s)
        except Exception as error:  # one broken contender must not sink the whole run
            results[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, count in calls.items():
            fn = contenders[name]
            fn()
            start = time.perf_counter()
            for _ in range(count):
                fn()
            samples[name].append((time.perf_counter() - start) / count)
    for name, times in samples.items():
        q1, median, q3 = np.percentile(np.asarray(times) * 1e3, [25, 50, 75])
        results[name] = {
            "median_ms": float(median),
            "q1_ms": float(q1),
            "q3_ms": float(q3),
            "samples": len(times),
            "calls_per_sample": calls[name],
        }
    return results
