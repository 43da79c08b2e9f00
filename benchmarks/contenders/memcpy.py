"""The memory-bandwidth floor: one copy of as many bytes as the warp writes."""

import numpy as np

from benchmarks.contenders import Contender


def build(case, inputs, task):
    """Contender `memcpy` (forward only): `np.copyto` of a float32 buffer the size of the output.

    A bilinear warp must at least write its output and read about as much from the input, so a copy
    of the output's bytes bounds what any sampler can reach on this machine.
    """
    if task != "forward":
        return {}
    source = np.random.default_rng(0).standard_normal(case.output_bytes // 4).astype(np.float32)
    target = np.empty_like(source)
    return {"memcpy": Contender(run=lambda: np.copyto(target, source))}
